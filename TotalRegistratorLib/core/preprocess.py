"""Preprocessing as in the paper: body mask, crop to the body, resample, clip and scale.

Working grids are LPS-aligned (identity direction) boxes around the body, so
scans stored in any orientation become the same tensors. The network grid is
128 x 96 x 160 voxels (x, y, z) over the body box; instance optimisation uses
a near-isotropic grid of its own spacing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..core.grid import Grid, physical_bounding_box
from ..errors import InputError

NETWORK_SIZE = (128, 96, 160)  # voxels along x (L-R), y (A-P), z (S-I)
HU_RANGE = (-1000.0, 1000.0)
BODY_THRESHOLD_HU = -500.0


def body_mask(image: sitk.Image, threshold: float = BODY_THRESHOLD_HU, name: str = "image") -> np.ndarray:
    """Boolean body mask [K, J, I]: voxels above ``threshold`` HU, opened to detach the table,
    largest connected component, holes filled in axial slices (so lungs count as body; the slices
    are those of the voxel axis closest to the patient's z, whatever order the scan stores them in).
    """
    values = sitk.GetArrayViewFromImage(image)
    mask = values > threshold
    if not mask.any():
        raise InputError(f"{name}: no body found (no voxel above {threshold:g} HU)")
    radius = np.maximum(np.round(3.0 / np.asarray(image.GetSpacing()[::-1])), 0).astype(int)
    opened = ndimage.binary_opening(mask, structure=np.ones(2 * radius + 1, bool)) if radius.any() else mask
    if opened.any():
        mask = opened
    labels, count = ndimage.label(mask)
    if count > 1:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    axial = np.zeros((3, 3, 3), bool)
    axial[_slab(_axial_array_axis(image), 1)] = ndimage.generate_binary_structure(2, 1)
    mask = ndimage.binary_fill_holes(mask, structure=axial)
    if mask.sum() * np.prod(image.GetSpacing()) < 1000.0:
        raise InputError(f"{name}: no body found (largest object above {threshold:g} HU is under 1 cm^3)")
    return mask


def _axial_array_axis(image: sitk.Image) -> int:
    """The numpy axis ([K, J, I] order) whose voxel direction is closest to the patient's z (LPS)."""
    direction = np.reshape(image.GetDirection(), (3, 3))  # columns: the i, j, k axes in LPS
    return 2 - int(np.argmax(np.abs(direction[2])))


def _slab(axis: int, index: int) -> tuple:
    return tuple(index if a == axis else slice(None) for a in range(3))


def mask_to_image(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(mask.astype(np.uint8))
    out.CopyInformation(reference)
    return out


def body_grid(image: sitk.Image, mask: np.ndarray, size=None, spacing=None, margin: float = 0.0) -> Grid:
    """LPS-aligned grid over the body's bounding box (grown by ``margin`` mm); give ``size`` or ``spacing``."""
    lower, upper = physical_bounding_box(Grid.from_image(image), mask)
    return Grid.covering(lower - margin, upper + margin, size=size, spacing=spacing)


def network_grid(scan: Scan, size=NETWORK_SIZE) -> Grid:
    """The network grid (default the paper's 128 x 96 x 160) over the body's bounding box."""
    return body_grid(scan.image, scan.mask, size=size)


def normalize_intensity(hu: np.ndarray | torch.Tensor):
    """Clip to [-1000, 1000] HU and scale to [0, 1] (air is 0)."""
    low, high = HU_RANGE
    return ((hu.clip(low, high) if isinstance(hu, np.ndarray) else hu.clamp(low, high)) - low) / (high - low)


def resample(image: sitk.Image, grid: Grid, labels: bool = False, default: float = HU_RANGE[0],
             transform: sitk.Transform | None = None) -> sitk.Image:
    """Resample onto ``grid`` (linear, or nearest for labels) through ``transform`` (identity if None).

    Images are smoothed first where the target is coarser than the source
    (Gaussian, sigma = half the target spacing), so downsampling does not alias.
    """
    if not labels:
        source = np.asarray(image.GetSpacing())
        target = min(grid.spacing)
        if target > 1.5 * source.min():
            sigma = np.sqrt(np.maximum((target / 2) ** 2 - (source / 2) ** 2, 0.0))
            image = sitk.SmoothingRecursiveGaussian(image, [float(s) for s in np.maximum(sigma, 1e-3)])
    return sitk.Resample(image, grid.reference_image(image.GetPixelID()), transform or sitk.Transform(),
                         sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, default, image.GetPixelID())


@dataclass
class Scan:
    """A CT volume (HU) as read, the name its messages use, and its body mask (computed once, on first use)."""

    image: sitk.Image
    name: str = "image"

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """:func:`body_mask` of the image, [K, J, I] bool."""
        return body_mask(self.image, name=self.name)


@dataclass
class Prepared:
    """A CT scan cropped to the body on a working grid, as a [1, 1, K, J, I] tensor in [0, 1]."""

    tensor: torch.Tensor
    grid: Grid
    centroid: np.ndarray  # body centroid on the working grid, LPS mm
    domain: Grid  # the original image's grid (its field of view)


def prepare(scan: Scan, grid_for: Callable[[Scan], Grid], device="cpu") -> Prepared:
    """Crop ``scan`` to its body and resample it onto ``grid_for(scan)`` (e.g. :func:`network_grid`).

    Voxels outside the body (table, air, clothing) are set to air before resampling.
    """
    image, mask = scan.image, scan.mask
    values = sitk.GetArrayFromImage(image)
    values[~mask] = HU_RANGE[0]
    cropped = sitk.GetImageFromArray(values)
    cropped.CopyInformation(image)
    grid = grid_for(scan)
    on_grid = sitk.GetArrayFromImage(resample(cropped, grid))
    mask_on_grid = sitk.GetArrayFromImage(resample(mask_to_image(mask, image), grid, labels=True, default=0))
    domain = Grid.from_image(image)
    # centroid from the resampled mask, so a scan stored in another orientation gives the same input
    centroid = grid.transform_indices(np.argwhere(mask_on_grid)[:, ::-1].mean(axis=0))
    return Prepared(_as_tensor(normalize_intensity(on_grid), device), grid, centroid, domain)


def _as_tensor(array: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float32, device=device)[None, None]
