"""Shared fixtures: oblique test geometries and the path to ../shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TotalRegistratorLib.geometry import Grid

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
