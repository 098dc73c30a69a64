"""Instance optimisation of one pair of scans, and resampling through its result.

:func:`optimize_pair` works on SimpleITK images (any size, spacing, direction and
origin) and returns a :class:`Result` whose ``transform`` maps fixed LPS points to
moving ones (:class:`~TotalRegistratorLib.core.transform.Transform`);
``sitk.Resample(moving, fixed, result.to_sitk())`` aligns the moving image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..core import preprocess
from ..core.grid import Grid
from ..core.itk_bridge import export_grid
from ..core.preprocess import Scan
from ..core.transform import Transform
from ..errors import InputError
from ..registry import AIR_HU
from .optimizer import OptimizationSettings, Progress, optimize, resolve_device


def check_overlap(fixed: Scan, moving: Scan) -> None:
    """Raise :class:`InputError` when the two images' physical boxes do not intersect at all."""
    boxes = [Grid.from_image(scan.image).corners() for scan in (fixed, moving)]
    lower = np.maximum(boxes[0].min(0), boxes[1].min(0))
    upper = np.minimum(boxes[0].max(0), boxes[1].max(0))
    if np.any(lower > upper):
        raise InputError(f"{moving.name}: does not overlap {fixed.name} in physical space (check the origins)")


def working_spacing(fixed: Scan, settings: OptimizationSettings) -> float:
    """Isotropic working spacing (mm): ``settings.spacing``, no finer than the image's own
    (geometric mean) spacing, coarsened until the body box holds at most ``settings.max_voxels``.
    """
    spacing = max(settings.spacing, float(np.prod(fixed.image.GetSpacing()) ** (1 / 3)))
    box = preprocess.body_grid(fixed.mask, spacing=spacing)
    return Grid.spacing_for(np.zeros(3), np.asarray(box.size) * spacing, spacing, settings.max_voxels)


@dataclass
class Result:
    """A finished registration of ``moving`` onto ``fixed``: the map and the working grid it was computed on."""

    fixed: sitk.Image
    moving: sitk.Image
    transform: Transform  # fixed -> moving LPS points
    grid: Grid  # the fixed working grid (reports are computed on it)
    fixed_mask: sitk.Image  # the fixed body mask (on the fixed preview's grid)
    timings: dict[str, float] = field(default_factory=dict)
    kept: str = "deformable"  # the stage whose map was kept (the optimiser's guard; ``cascade`` for the cascade)
    start_replaced: bool = False  # a given start (the cascade's map) scored worse than the searched one: unused

    def export_grid(self, spacing: float | None = None) -> Grid:
        """The grid of the exported field: by default the residual's lattice over the fixed image's box
        (same spacing and voxel positions, so ITK's linear interpolation reproduces :attr:`transform`
        exactly); with ``spacing``, the fixed image's box at ``spacing`` mm."""
        fixed = Grid.from_image(self.fixed)
        if spacing is not None:
            return export_grid(fixed, spacing)
        lattice = self.grid if self.transform.is_linear else self.transform.grid
        return lattice.aligned_cover(fixed.corners())

    def to_sitk(self, spacing: float | None = None) -> sitk.Transform:
        """The ITK transform: affine when the map is linear, else a displacement field on :meth:`export_grid`."""
        return self.transform.to_sitk(self.export_grid(spacing))


def optimize_pair(fixed: Scan, moving: Scan, settings: OptimizationSettings | None = None,
             progress: Progress | None = None, start: Transform | None = None) -> Result:
    """Register ``moving`` onto ``fixed`` (CT in HU) by instance optimisation.

    ``start`` refines an existing map of the same pair (e.g. the cascade's) instead of
    starting from the body centroids: the affine stage corrects it globally, then the
    deformable stage locally.
    """
    settings = settings or OptimizationSettings()
    device = resolve_device(settings.device)
    check_overlap(fixed, moving)
    clock = time.perf_counter()
    spacing = working_spacing(fixed, settings)

    # each scan on its own lattice: a shared one makes whole-voxel shifts (where interpolation does not blur)
    # attractive, which measurably costs accuracy (validation intra pair: error 0.90 -> 1.17 mm)
    def grid_for(scan: Scan) -> Grid:
        return preprocess.body_grid(scan.mask, spacing=spacing, margin=2 * spacing)

    prepared_fixed = preprocess.prepare(fixed, grid_for, device)
    prepared_moving = preprocess.prepare(moving, grid_for, device, keep_detail=True)
    timings = {"preprocess": time.perf_counter() - clock}
    outcome = optimize(prepared_fixed, prepared_moving, settings, progress, start)
    timings.update(outcome.timings)
    return Result(fixed.image, moving.image, outcome.transform.to("cpu"), prepared_fixed.grid, fixed.mask, timings,
                  outcome.kept, outcome.start_replaced)


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
