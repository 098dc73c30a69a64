"""Register two CT volumes and produce everything a user keeps: transform, warped image, subtractions.

:func:`register` works on SimpleITK images (any size, spacing, direction and
origin) and returns a :class:`Result` whose ``transform`` is one dense
DisplacementFieldTransform on the fixed image's grid, in LPS millimetres, in the
pullback sense of :mod:`TotalRegistratorLib.fields`:
``sitk.Resample(moving, fixed, result.transform)`` aligns the moving image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from . import preprocess
from .errors import InputError
from .export import export_grid, field_to_transform
from .fields import affine_field, resample_field
from .geometry import Grid
from .optimize import OptimizationSettings, Progress, optimize, resolve_device

AIR_HU = -1000.0


def check_overlap(fixed: sitk.Image, moving: sitk.Image, fixed_name: str, moving_name: str) -> None:
    """Raise :class:`InputError` when the two images' physical boxes do not intersect at all."""
    boxes = [Grid.from_image(image).corners() for image in (fixed, moving)]
    lower = np.maximum(boxes[0].min(0), boxes[1].min(0))
    upper = np.minimum(boxes[0].max(0), boxes[1].max(0))
    if np.any(lower > upper):
        raise InputError(f"{moving_name}: does not overlap {fixed_name} in physical space (check the origins)")


def working_spacing(image: sitk.Image, mask: np.ndarray, settings: OptimizationSettings) -> float:
    """Isotropic working spacing (mm): ``settings.spacing``, no finer than the image's own
    (geometric mean) spacing, coarsened until the body box holds at most ``settings.max_voxels``.
    """
    spacing = max(settings.spacing, float(np.prod(image.GetSpacing()) ** (1 / 3)))
    box = preprocess.body_grid(image, mask, spacing=spacing)
    extent = np.asarray(box.size) * spacing
    return max(spacing, float((np.prod(extent) / settings.max_voxels) ** (1 / 3)))


@dataclass
class Result:
    """A finished registration: the field on the fixed working grid and how to export it."""

    fixed: sitk.Image
    moving: sitk.Image
    field: torch.Tensor  # [1, 3, K, J, I] pullback, LPS mm, on ``grid``
    grid: Grid
    affine: np.ndarray | None  # 4 x 4 fixed -> moving LPS matrix of the affine part, if there is one
    fixed_mask: np.ndarray  # body mask on the fixed image's grid, [K, J, I]
    timings: dict[str, float] = field(default_factory=dict)

    def field_on(self, target: Grid, max_voxels: int = 4_000_000) -> torch.Tensor:
        """The field on another grid. Outside ``grid`` (the body box) the affine part continues
        exactly and only the deformable remainder is extended with its border values. Filled in
        slabs of at most ``max_voxels``, so a whole-body CT's grid needs no full-size temporaries.
        """
        if self.affine is None:
            return resample_field(self.field, self.grid, target, max_voxels)
        device, dtype = self.field.device, self.field.dtype
        remainder = self.field - affine_field(self.affine, self.grid, device, dtype)
        return torch.cat([affine_field(self.affine, slab, device, dtype) + resample_field(remainder, self.grid, slab)
                          for slab in target.slabs(max_voxels)], dim=2)

    def transform(self, spacing: float | None = None) -> sitk.DisplacementFieldTransform:
        """The dense transform on the fixed image's grid (or the same box at ``spacing`` mm)."""
        target = export_grid(Grid.from_image(self.fixed), spacing)
        return field_to_transform(self.field_on(target), target)

    def affine_transform(self) -> sitk.AffineTransform:
        """The affine part alone as an ITK transform (fixed -> moving points), e.g. for affine-only runs."""
        if self.affine is None:
            raise ValueError("this registration has no affine part")
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(self.affine[:3, :3].ravel().tolist())
        transform.SetTranslation(self.affine[:3, 3].tolist())
        return transform


def register(fixed: sitk.Image, moving: sitk.Image, settings: OptimizationSettings | None = None,
             progress: Progress | None = None, names: tuple[str, str] = ("fixed", "moving"),
             initial: Result | None = None) -> Result:
    """Register ``moving`` onto ``fixed`` (CT in HU) by instance optimisation.

    ``initial`` refines an existing registration of the same pair (e.g. the
    cascade's) instead of starting from the body centroids: the affine stage
    corrects it globally, then the deformable stage locally; the result's affine
    part is the correction composed with ``initial``'s.
    """
    settings = settings or OptimizationSettings()
    device = resolve_device(settings.device)
    check_overlap(fixed, moving, *names)
    start = time.perf_counter()
    fixed_mask = preprocess.body_mask(fixed, name=names[0])
    moving_mask = preprocess.body_mask(moving, name=names[1])
    spacing = working_spacing(fixed, fixed_mask, settings)

    def grid_for(image: sitk.Image, mask: np.ndarray) -> Grid:
        return preprocess.body_grid(image, mask, spacing=spacing, margin=2 * spacing)

    prepared_fixed = preprocess.prepare(fixed, grid_for, names[0], device, fixed_mask)
    prepared_moving = preprocess.prepare(moving, grid_for, names[1], device, moving_mask)
    timings = {"preprocess": time.perf_counter() - start}
    field_on_grid, affine, stage_times = optimize(prepared_fixed, prepared_moving, settings, progress,
                                                  None if initial is None else initial.field_on)
    timings.update(stage_times)
    if initial is not None:
        affine = None if initial.affine is None else affine @ initial.affine
    return Result(fixed, moving, field_on_grid.cpu(), prepared_fixed.grid, affine, fixed_mask, timings)


def resample_moving(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
                    labels: bool = False, default: float | None = None) -> sitk.Image:
    """``moving`` on ``reference``'s grid through ``transform`` (identity: "before registration").

    Linear for images (outside: ``default``, air by default), nearest neighbour for labels (outside: 0).
    """
    if default is None:
        default = 0.0 if labels else AIR_HU
    return sitk.Resample(moving, reference, transform or sitk.Transform(),
                         sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, default, moving.GetPixelID())


def subtraction(fixed: sitk.Image, other: sitk.Image) -> sitk.Image:
    """|fixed - other| in HU on the fixed grid (``other`` already on that grid)."""
    return sitk.Abs(sitk.Cast(fixed, sitk.sitkFloat32) - sitk.Cast(other, sitk.sitkFloat32))
