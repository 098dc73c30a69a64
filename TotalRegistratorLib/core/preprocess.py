"""Preprocessing as in the paper: body mask, crop to the body, resample, clip and scale.

Working grids are LPS-aligned (identity direction) boxes around the body, so
scans stored in any orientation become the same tensors. The network grid is
64 x 48 x 80 voxels (x, y, z) over the body box by default (the paper's
128 x 96 x 160 is :data:`PAPER_NETWORK_SIZE`; a cascade uses the size its
weights were trained on); instance optimisation uses a near-isotropic grid of
its own spacing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..errors import InputError
from .grid import Grid, physical_bounding_box

NETWORK_SIZE = (64, 48, 80)  # voxels along x (L-R), y (A-P), z (S-I): half the paper's, CPU-trainable
PAPER_NETWORK_SIZE = (128, 96, 160)  # the paper's grid (train.py --grid-size 128,96,160, e.g. on a GPU)
HU_RANGE = (-1000.0, 1000.0)
BODY_THRESHOLD_HU = -500.0
PREVIEW_SPACING = 2.0  # mm: the widest bin of a scan's preview, on which preprocessing works


def body_mask(image: sitk.Image, threshold: float = BODY_THRESHOLD_HU, name: str = "image") -> np.ndarray:
    """Boolean body mask [K, J, I]: voxels above ``threshold`` HU, opened to detach the table,
    largest connected component, holes filled in axial slices (so lungs count as body; the slices
    are those of the voxel axis closest to the patient's z, whatever order the scan stores them in).
    """
    values = sitk.GetArrayViewFromImage(image)
    mask = values > threshold
    if not mask.any():
        raise InputError(f"{name}: no body found (no voxel above {threshold:g} HU)")
    # 3 mm, at most the image's own extent (tiny voxels must not make a structuring element of GBs)
    radius = np.minimum(np.round(3.0 / np.asarray(image.GetSpacing()[::-1])), mask.shape).astype(int)
    opened = _box_opening(mask, radius) if radius.any() else mask
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


def _box_opening(mask: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Binary opening by a box of ``2 * radius + 1`` voxels (outside counts as background), as separable
    minimum and maximum filters: the same result as ``ndimage.binary_opening`` with that box, 10x faster."""
    size = tuple(2 * radius + 1)
    eroded = ndimage.minimum_filter(mask.view(np.uint8), size=size, mode="constant", cval=0)
    return ndimage.maximum_filter(eroded, size=size, mode="constant", cval=0).view(bool)


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


def body_grid(mask: sitk.Image, size=None, spacing=None, margin: float = 0.0) -> Grid:
    """LPS-aligned grid over the bounding box of the voxels set in ``mask`` (a label image with geometry),
    grown by ``margin`` mm; give ``size`` or ``spacing``."""
    lower, upper = physical_bounding_box(Grid.from_image(mask), sitk.GetArrayViewFromImage(mask) > 0)
    return Grid.covering(lower - margin, upper + margin, size=size, spacing=spacing)


def network_grid(scan: Scan, size=NETWORK_SIZE) -> Grid:
    """The network grid (default :data:`NETWORK_SIZE`, x, y, z voxels) over the body's bounding box."""
    return body_grid(scan.mask, size=size)


def normalize_intensity(hu: np.ndarray | torch.Tensor):
    """Clip to [-1000, 1000] HU and scale to [0, 1] (air is 0)."""
    low, high = HU_RANGE
    return ((hu.clip(low, high) if isinstance(hu, np.ndarray) else hu.clamp(low, high)) - low) / (high - low)


def resample(image: sitk.Image, grid: Grid, labels: bool = False, default: float = HU_RANGE[0],
             transform: sitk.Transform | None = None, antialias: bool = True) -> sitk.Image:
    """Resample onto ``grid`` (linear, or nearest for labels) through ``transform`` (identity if None).

    Images are smoothed first where the target is coarser than the source
    (Gaussian, sigma = half the target spacing), so downsampling does not alias;
    ``antialias=False`` when the caller has smoothed ``image`` already (:func:`antialiased`).
    """
    if not labels and antialias:
        image = antialiased(image, min(grid.spacing))
    return sitk.Resample(image, grid.reference_image(image.GetPixelID()), transform or sitk.Transform(),
                         sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, default, image.GetPixelID())


def antialiased(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` smoothed for sampling at ``spacing`` mm (Gaussian, sigma = half of it, less the image's own
    half spacing per axis); itself when ``spacing`` is at most 1.5 times its finest spacing."""
    source = np.asarray(image.GetSpacing())
    if spacing <= 1.5 * source.min():
        return image
    sigma = np.sqrt(np.maximum((spacing / 2) ** 2 - (source / 2) ** 2, 0.0))
    return sitk.SmoothingRecursiveGaussian(image, [float(s) for s in np.maximum(sigma, 1e-3)])


def binned(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` averaged over bins of whole voxels, each bin at most ``spacing`` mm wide (at least one
    voxel, at most the image's size); the image itself when no axis can be binned."""
    factors = [int(min(max(spacing // s, 1), n)) for s, n in zip(image.GetSpacing(), image.GetSize())]
    return image if factors == [1, 1, 1] else sitk.BinShrink(image, factors)


@dataclass
class Scan:
    """A CT volume (HU) as read, the name its messages use, and what preprocessing derives from it once.

    Work at the registration's resolution never touches the full-resolution voxels: a ``preview`` (the
    image averaged over bins of at most :data:`PREVIEW_SPACING` mm) is made once, and the body mask is
    found on it. (Kept in plain fields, not ``functools.cached_property``: before Python 3.12 that holds one
    lock for all instances, so two scans prepared in two threads took turns.)
    """

    image: sitk.Image
    name: str = "image"
    _preview: sitk.Image | None = field(default=None, init=False, repr=False, compare=False)
    _mask: sitk.Image | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def preview(self) -> sitk.Image:
        if self._preview is None:
            self._preview = binned(self.image, PREVIEW_SPACING)
        return self._preview

    @property
    def mask(self) -> sitk.Image:
        """The body mask (:func:`body_mask`) on the preview's grid, uint8 0/1."""
        if self._mask is None:
            self._mask = mask_to_image(body_mask(self.preview, name=self.name), self.preview)
        return self._mask

    def preview_finer_than(self, grid: Grid) -> bool:
        """Whether the preview's coarsest spacing is at most 0.8 x ``grid``'s finest: it holds ``grid``'s detail."""
        return max(self.preview.GetSpacing()) <= 0.8 * min(grid.spacing)

    def source_for(self, grid: Grid) -> sitk.Image:
        """The image to resample onto ``grid``: the preview unless ``grid`` is finer than it."""
        return self.preview if self.preview_finer_than(grid) else self.image


@dataclass
class Prepared:
    """A CT scan cropped to the body on a working grid, as a [1, 1, K, J, I] tensor in [0, 1]."""

    tensor: torch.Tensor
    grid: Grid
    centroid: np.ndarray  # body centroid on the working grid, LPS mm
    domain: Grid  # the original image's grid (its field of view)
    # the same content on the preview's own finer lattice (see :func:`detail`), or None
    detail: tuple[torch.Tensor, Grid] | None = None


def prepare(scan: Scan, grid_for: Callable[[Scan], Grid], device="cpu", keep_detail: bool = False) -> Prepared:
    """Crop ``scan`` to its body and resample it onto ``grid_for(scan)`` (e.g. :func:`network_grid`).

    Voxels outside the body (table, air, clothing) are set to air; the part of the scan around the grid is
    smoothed to the grid's resolution (:func:`smoothed_around`) and resampled. With ``keep_detail`` and a
    preview finer than the grid, :attr:`Prepared.detail` holds that smoothed part on its own lattice too.
    """
    grid = grid_for(scan)
    source = scan.source_for(grid)
    mask = scan.mask if source is scan.preview else resample(scan.mask, Grid.from_image(source), labels=True,
                                                                default=0)
    smooth = smoothed_around(sitk.Mask(source, mask, outsideValue=HU_RANGE[0]), grid)
    on_grid = sitk.GetArrayFromImage(resample(smooth, grid, antialias=False))
    mask_on_grid = sitk.GetArrayFromImage(resample(scan.mask, grid, labels=True, default=0))
    # centroid from the resampled mask, so a scan stored in another orientation gives the same input
    centroid = grid.transform_indices(np.argwhere(mask_on_grid)[:, ::-1].mean(axis=0))
    keep = keep_detail and scan.preview_finer_than(grid)
    return Prepared(_as_tensor(normalize_intensity(on_grid), device), grid, centroid, Grid.from_image(scan.image),
                    detail(smooth, device) if keep else None)


def smoothed_around(image: sitk.Image, grid: Grid) -> sitk.Image:
    """The part of ``image`` around ``grid``'s box (two grid spacings of context for the smoothing), as float32
    smoothed for sampling at ``grid``'s resolution (:func:`antialiased`): only that part is filtered."""
    lattice = Grid.from_image(image)
    reach = 2.0 * max(grid.spacing) / np.asarray(lattice.spacing)  # voxels
    index = lattice.transform_points(grid.corners())
    last = np.asarray(lattice.size) - 1
    lower = np.clip(np.floor(index.min(axis=0) - reach), 0, last).astype(int)
    upper = np.clip(np.ceil(index.max(axis=0) + reach), lower, last).astype(int)  # one voxel at least
    region = sitk.RegionOfInterest(image, [int(n) for n in upper - lower + 1], [int(i) for i in lower])
    return antialiased(sitk.Cast(region, sitk.sitkFloat32), min(grid.spacing))


def detail(smooth: sitk.Image, device="cpu") -> tuple[torch.Tensor, Grid]:
    """A scan's preview masked to the body and :func:`smoothed_around` the working grid, on its own lattice
    (voxel axes turned to LPS), as a [1, 1, K, J, I] tensor in [0, 1] and its grid.

    Sampled directly, this is interpolated once; the working-grid tensor, sampled again, twice, with a blur
    that depends on the two lattices' offset, which the optimiser fits as a spurious sub-millimetre
    deformation between two resamplings of one scan.
    """
    oriented = sitk.DICOMOrient(smooth, "LPS")
    return _as_tensor(normalize_intensity(sitk.GetArrayViewFromImage(oriented)), device), Grid.from_image(oriented)


def _as_tensor(array: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float32, device=device)[None, None]
