"""Shared fixtures: oblique test geometries and the path to ../shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TotalRegistratorLib.core.grid import Grid

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{relative} (not present in this checkout)")
    return path


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


@pytest.fixture
def oblique_grid() -> Grid:
    """Anisotropic spacing, an oblique direction and a non-zero origin."""
    direction = rotation("z", 25) @ rotation("x", -15) @ rotation("y", 10)
    return Grid((40, 34, 28), (2.0, 2.6, 3.3), (-31.0, 12.5, 40.0), tuple(direction.ravel()))


def smooth_volume(grid: Grid, seed: int = 0) -> sitk.Image:
    """A smooth random image (values about 0..1000) with ``grid``'s geometry."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=grid.shape)
    from scipy import ndimage

    values = ndimage.gaussian_filter(noise, 2.5)
    values = (values - values.min()) / np.ptp(values) * 1000.0
    image = sitk.GetImageFromArray(values.astype(np.float32))
    return grid.apply_to(image)


def deformed_pair(image: sitk.Image, labels: sitk.Image, amplitude: float = 10.0, degrees: float = 4.0,
                  shift=(5.0, -4.0, 3.0), seed: int = 0):
    """Warp (image, labels) by a known smooth field plus a small rotation and shift.

    Returns (fixed, fixed_labels, field): fixed(x) = image(x + field(x)) on the
    image's own grid, so ``field`` [1, 3, K, J, I] (mm) is the ground-truth
    pullback from the new fixed image to the original (moving) image.
    """
    import torch

    from TotalRegistratorLib.core import fields

    grid = Grid.from_image(image)
    rng = np.random.default_rng(seed)
    coarse = torch.as_tensor(rng.normal(size=(1, 3, 4, 4, 4)), dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(coarse, size=grid.shape, mode="trilinear", align_corners=True)
    smooth = smooth * amplitude / smooth.abs().amax()
    pts = grid.world_points(dtype=torch.float64)
    centre = torch.as_tensor(grid.corners().mean(axis=0))
    rot = torch.as_tensor(rotation("z", degrees) @ rotation("x", degrees / 2))
    affine = ((pts - centre) @ rot.T + centre + torch.as_tensor(shift) - pts).movedim(-1, 1)
    field = (smooth + affine).float()
    hu = torch.as_tensor(sitk.GetArrayFromImage(image), dtype=torch.float32)[None, None]
    warped = fields.warp(hu + 1024.0, grid, field, grid)[0, 0].numpy() - 1024.0  # air outside
    lab = torch.as_tensor(sitk.GetArrayFromImage(labels).astype(np.float32))[None, None]
    warped_labels = fields.warp(lab, grid, field, grid, mode="nearest")[0, 0].numpy()
    fixed = grid.apply_to(sitk.GetImageFromArray(warped.astype(np.float32)))
    fixed_labels = grid.apply_to(sitk.GetImageFromArray(warped_labels.astype(np.uint8)))
    return fixed, fixed_labels, field


def torso(grid: Grid, shift=(0.0, 0.0, 0.0), noise_seed: int = 0) -> sitk.Image:
    """A small synthetic CT torso (HU) on ``grid`` with soft edges and structure along every axis.

    Body, two lungs, a liver, kidneys, ribs and a spine with discs every 30 mm,
    plus smooth texture and 12 HU noise drawn with ``noise_seed``. ``shift`` (mm) moves the anatomy: a feature at x in
    ``torso(grid)`` lies at x + shift here.
    """
    from scipy import ndimage

    pts = grid.world_points(dtype=torch_float64())[0].numpy() - np.asarray(shift)
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]

    def ellipsoid(cx, cy, cz, a, b, c):
        """Soft inside-indicator of an ellipsoid (edge width about 1.5 mm)."""
        r = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2)
        return 1.0 / (1.0 + np.exp(-(1.0 - r) * np.minimum(np.minimum(a, b), c) / 1.5))

    hu = np.full(x.shape, -1000.0)
    layers = [
        (ellipsoid(0, 0, 0, 110 + 8 * np.sin(z / 40.0), 75, 1e4), -90.0),  # body (fat)
        (ellipsoid(0, 0, 0, 95 + 8 * np.sin(z / 40.0), 62, 1e4), 40.0),  # muscle and soft tissue
        (ellipsoid(-45, -5, 45, 35, 40, 60), -850.0),  # right lung
        (ellipsoid(45, -5, 40, 33, 40, 55), -850.0),  # left lung
        (ellipsoid(-35, -5, -40, 45, 35, 35), 65.0),  # liver
        (ellipsoid(-40, 35, -60, 18, 14, 30), 150.0),  # kidneys
        (ellipsoid(40, 35, -55, 18, 14, 30), 150.0),
        (ellipsoid(0, 45, 0, 14, 14, 1e4) * (0.6 + 0.4 * np.cos(z * 2 * np.pi / 30.0)), 450.0),  # spine, discs
        # ribs: thin shells just inside the body wall, one every 25 mm along z
        ((ellipsoid(0, 0, 0, 88, 58, 1e4) - ellipsoid(0, 0, 0, 82, 52, 1e4))
         * np.clip(np.cos(z * 2 * np.pi / 25.0) * 3 - 2, 0, 1), 700.0),
    ]
    for weight, value in layers:
        hu = hu + weight * (value - hu)
    coarse = np.random.default_rng(0).normal(size=(8, 8, 8))
    # texture fixed to the anatomy: one control point every 50 mm over -200..150 mm
    texture = ndimage.map_coordinates(coarse, [(c + 200.0) / 50.0 for c in (z, y, x)], order=3, mode="nearest")
    hu = hu + np.where(hu > -950, 30.0 * texture, 0.0) + np.random.default_rng(noise_seed).normal(0.0, 12.0, hu.shape)
    return grid.apply_to(sitk.GetImageFromArray(hu.astype(np.float32)))


def torch_float64():
    import torch

    return torch.float64
