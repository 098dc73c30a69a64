"""Instance optimisation: registration of one CT pair by gradient descent, no weights needed.

Stages, all on LPS-aligned working grids around the bodies (see
:mod:`TotalRegistratorLib.core.preprocess`):

1. A starting translation (:mod:`.alignment`): the best scoring at the coarsest level
   of the identity, the body-centroid translation and shifts along z that keep the
   bodies overlapping (scans of different ranges: partial overlap); or a given start
   (the cascade's map) unless it scores worse than that translation.
2. Affine (12 parameters) about the fixed body centroid, coarse to fine.
3. A dense displacement field in mm on the fixed working grid, coarse to fine,
   loss = similarity + ``smoothness`` * diffusion, optimised with Adam.
4. A guard: the result is kept only when it scores at least as well as the affine
   stage's map and the start on their common overlap; otherwise the best of those.

The pyramid levels and the loss, which counts only voxels whose similarity window
lies inside both fields of view, are in :mod:`.levels`. Learning rates anneal within
each level. The result is a :class:`~TotalRegistratorLib.core.transform.Transform`:
the affine stage's matrix plus a residual field (LPS mm) on the finest parameter grid.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..core import fields, runtime
from ..core.grid import Grid, matrix_apply_planar
from ..core.preprocess import Prepared
from ..core.transform import Transform
from ..errors import InputError
from ..registry import (
    DEFAULT_AFFINE_ITERATIONS,
    DEFAULT_ITERATIONS,
    DEFAULT_LEARNING_RATES,
    DEFAULT_SIMILARITY,
    SIMILARITIES,
)
from . import alignment
from .adam import Adam
from .levels import Level, Similarity, build_levels, mapped_index, masked_loss, sees_moving, step_loss, warp
from .regularization import diffusion

Progress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` while a stage runs."""

VIEW_REFRESH = 5  # steps between updates of which fixed windows see moving data (it changes slowly)


@dataclass
class OptimizationSettings:
    """Settings of :func:`optimize`; lengths in mm, iterations and learning rates per pyramid level (coarse
    first)."""

    similarity: str = DEFAULT_SIMILARITY
    spacing: float = 2.5
    max_voxels: int = 2_500_000
    affine_levels: tuple[int, ...] = (4, 2)
    affine_iterations: tuple[int, ...] = DEFAULT_AFFINE_ITERATIONS
    deformable_levels: tuple[int, ...] = (2, 1)
    deformable_iterations: tuple[int, ...] = DEFAULT_ITERATIONS
    smoothness: float = 1.0
    field_factor: int = 2
    ncc_radius: int = 2
    # mm per Adam step of the dense field, per deformable level: large coarse steps reach large deformations in
    # few iterations (validation inter-patient pairs: 0.5 mm needed 100 coarse steps for the Dice 2.0 mm reaches in 40)
    learning_rates: tuple[float, ...] = DEFAULT_LEARNING_RATES
    affine_learning_rate: float = 0.02  # per step of the linear part; the shift moves 100x this in mm
    adam_eps: float = 1e-2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if len(self.affine_levels) != len(self.affine_iterations):
            raise ValueError("affine_levels and affine_iterations must have the same length")
        if len(self.deformable_levels) != len(self.deformable_iterations):
            raise ValueError("deformable_levels and deformable_iterations must have the same length")
        if len(self.deformable_levels) != len(self.learning_rates):
            raise ValueError("deformable_levels and learning_rates must have the same length")

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available here (use auto or cpu)")
    return torch.device(name)


def _affine_matrix(linear: torch.Tensor, shift: torch.Tensor, centre: np.ndarray,
                   start: np.ndarray) -> torch.Tensor:
    """4 x 4 LPS matrix: x -> start (I + linear) (x - c) + c + shift, c = ``centre`` (mm).

    ``start`` is the 4 x 4 initial matrix (e.g. the centroid translation).
    """
    dtype = linear.dtype
    c = torch.as_tensor(centre, dtype=dtype)
    m = torch.eye(4, dtype=dtype)
    a = torch.eye(3, dtype=dtype) + linear
    m = torch.cat([torch.cat([a, (c - a @ c + shift)[:, None]], 1), m[3:]], 0)
    return torch.as_tensor(start, dtype=dtype) @ m


def optimize(fixed: Prepared, moving: Prepared, settings: OptimizationSettings | None = None,
             progress: Progress | None = None, start: Transform | None = None) -> Outcome:
    """Register ``moving`` to ``fixed`` (prepared on working grids of the same device).

    ``start`` is a map to refine (e.g. the cascade's): unless the searched translation
    scores better at the coarsest level, it replaces that initialisation, and the affine
    stage then corrects it globally in moving space (``x -> C(start(x))``); its residual
    is the deformable stage's initial value. Returns the map (its residual on the finest
    parameter grid), seconds per stage, which stage's map the guard kept and whether the
    given start was set aside.
    """
    settings = settings or OptimizationSettings()
    progress = progress or (lambda stage, done, total: None)
    runtime.configure()
    torch.manual_seed(settings.seed)
    generator = torch.Generator(device=fixed.tensor.device).manual_seed(settings.seed)
    sim = Similarity(settings.similarity, settings.ncc_radius, generator)
    timings: dict[str, float] = {}

    clock = time.perf_counter()
    levels = build_levels(fixed, moving, (*settings.affine_levels, *settings.deformable_levels), sim)
    timings["pyramid"] = time.perf_counter() - clock

    clock = time.perf_counter()
    coarsest = levels[max(settings.affine_levels, default=min(levels))]

    def coarse_loss(transform: Transform) -> float:
        return float(step_loss(coarsest, mapped_index(coarsest, transform), moving.domain, sim))

    initial = alignment.initial_translation(fixed.grid, moving.grid, fixed.centroid, moving.centroid,
                                            coarsest.grid.spacing[2], lambda matrix: coarse_loss(Transform(matrix)))
    # a given map (e.g. the cascade's) that scores worse than the searched translation is set aside
    replaced = start is not None and coarse_loss(Transform(initial)) < coarse_loss(
        start.to(fixed.tensor.device)) - alignment.CENTROID_MARGIN
    if start is None or replaced:
        start = Transform(initial)
        base = Transform(_affine_stage(levels, fixed, moving, settings, sim, progress, initial=initial))
    else:
        start = start.to(fixed.tensor.device)
        base = start.then(_affine_stage(levels, fixed, moving, settings, sim, progress, start))
    timings["affine"] = time.perf_counter() - clock

    clock = time.perf_counter()
    transform = _deformable_stage(levels, fixed, moving, settings, sim, progress, base)
    timings["deformable"] = time.perf_counter() - clock
    finest = levels[min(settings.deformable_levels or settings.affine_levels)]
    maps = {"deformable": transform, "affine": base, "start": start}
    kept = _guard(finest, moving.domain, sim, maps)
    return Outcome(maps[kept], timings, kept, replaced)


@dataclass
class Outcome:
    """What :func:`optimize` found: the map, seconds per stage, and which stage's map the guard kept
    (``deformable`` normally; ``affine`` or ``start`` when the later stages scored worse)."""

    transform: Transform
    timings: dict[str, float]
    kept: str
    start_replaced: bool = False  # the given start scored worse than the searched translation and was not used


def _guard(level: Level, domain: Grid, sim: Similarity, maps: dict[str, Transform]) -> str:
    """The name of the first of ``maps`` (latest stage first) that no other map beats on their common
    overlap: each later map must score at least as well as each earlier one where both see moving data."""
    names = list(maps)
    with torch.no_grad():
        index = {name: mapped_index(level, maps[name]) for name in names}
        warped = {name: warp(level, index[name]) for name in names}
        seen = {name: sees_moving(level, index[name], domain, sim) for name in names}

        def score(name: str, other: str) -> float:  # ``name``'s loss where it and ``other`` see moving data
            return float(masked_loss(level, warped[name], sim, seen[name] & seen[other]))

        for i, name in enumerate(names):
            if all(score(name, other) <= score(other, name) + 1e-6 for other in names[i + 1:]):
                return name
    return names[-1]


def _affine_stage(levels: dict[int, Level], fixed: Prepared, moving: Prepared, settings: OptimizationSettings,
                  sim: Similarity, progress: Progress, start: Transform | None = None,
                  initial: np.ndarray | None = None) -> np.ndarray:
    """12 affine parameters, coarse to fine: the fixed->moving matrix, starting from ``initial`` (4 x 4)
    and turning about the fixed centroid; or, given ``start``, the moving->moving correction of its
    mapped points, starting from the identity and turning about the moving centroid.
    """
    initial = np.eye(4) if initial is None else initial
    centre = fixed.centroid if start is None else moving.centroid
    linear = torch.zeros(3, 3, requires_grad=True)
    shift = torch.zeros(3, requires_grad=True)  # in dm: an Adam step of 0.01 moves about 1 mm
    optimizer = Adam([linear, shift], lr=settings.affine_learning_rate, eps=1e-5)
    total, done = sum(settings.affine_iterations), 0
    for factor, iterations in zip(settings.affine_levels, settings.affine_iterations):
        level = levels[factor]
        world = level.grid.world_points(fixed.tensor.device) if start is None \
            else start.points(level.grid, fixed.tensor.device)
        world = world.reshape(-1, 3).T.contiguous()  # planar [3, M]
        to_index = torch.as_tensor(level.moving.to_index, dtype=world.dtype)
        for step in range(iterations):
            anneal(optimizer, settings.affine_learning_rate, step, iterations)
            optimizer.zero_grad()
            index = matrix_apply_planar(to_index @ _affine_matrix(linear, 100.0 * shift, centre, initial), world)
            if step % VIEW_REFRESH == 0:
                seen = sees_moving(level, index.detach(), moving.domain, sim)
            loss = step_loss(level, index, moving.domain, sim, seen)
            loss.backward()
            optimizer.step()
            done += 1
            progress("affine", done, total)
    return _affine_matrix(linear.detach(), 100.0 * shift.detach(), centre, initial).double().numpy()


def _deformable_stage(levels: dict[int, Level], fixed: Prepared, moving: Prepared, settings: OptimizationSettings,
                      sim: Similarity, progress: Progress, base: Transform) -> Transform:
    """A smooth residual field on top of ``base``'s matrix, coarse to fine, on the finest parameter grid.

    A ``base`` with a residual (a refined cascade map) gives the field its initial value: the optimised field
    is the whole non-linear part, smoothed and regularised like one found from scratch, not a correction
    on a frozen field.
    """
    device = fixed.tensor.device
    residual, residual_grid = base.residual, base.grid
    base = Transform(base.affine)
    total, done = sum(settings.deformable_iterations), 0
    for factor, iterations, rate in zip(settings.deformable_levels, settings.deformable_iterations,
                                        settings.learning_rates):
        level = levels[factor]
        # the residual field lives on a grid field_factor times coarser than the images of this level
        param_grid = level.grid.scaled(settings.field_factor) if settings.field_factor > 1 else level.grid
        residual = (torch.zeros(1, 3, *param_grid.shape, device=device) if residual is None
                    else fields.resample_field(residual.to(device), residual_grid, param_grid)).requires_grad_(True)
        residual_grid = param_grid
        # Adam ignores gradient size; scaling the mean loss by the voxel count and a finite eps make
        # directions with gradients far below the image signal (flat or unseen regions) stand still.
        optimizer = Adam([residual], lr=rate, eps=settings.adam_eps)
        scale = float(residual[0, 0].numel())
        # planar moving indices: the base map's, plus the field turned into index steps on its coarse grid
        # (turning commutes with smoothing and upsampling, which act on each component alike)
        base_index = mapped_index(level, base)
        to_steps = torch.as_tensor(level.moving.to_index[:3, :3], dtype=residual.dtype, device=device)
        for step in range(iterations):
            anneal(optimizer, rate, step, iterations)
            optimizer.zero_grad()
            smooth = smooth_field(residual)
            steps = (to_steps @ smooth.view(3, -1)).view(smooth.shape)
            index = base_index + upsample(steps, level.grid).view(3, -1)
            if step % VIEW_REFRESH == 0:
                seen = sees_moving(level, index.detach(), moving.domain, sim)
            loss = step_loss(level, index, moving.domain, sim, seen) + settings.smoothness * diffusion(
                smooth, param_grid)
            (loss * scale).backward()
            optimizer.step()
            done += 1
            progress("deformable", done, total)
        residual = smooth_field(residual.detach())
    # the residual is trilinear on its own coarse grid: kept there (exact, 8x smaller than the working grid)
    return base if residual is None else base.plus(residual, residual_grid)


def anneal(optimizer: Adam, peak: float, step: int, total: int, floor: float = 0.05) -> None:
    """Cosine learning-rate decay from ``peak`` to ``floor * peak`` over a level.

    Adam's steps do not shrink with the gradient, so with a constant rate the
    parameters keep oscillating by about one step around the optimum.
    """
    fraction = step / max(total - 1, 1)
    optimizer.lr = peak * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * fraction)))


def upsample(field: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Trilinear resize of a field [N, C, K, J, I] to ``grid``'s shape, for grids over the same box (see
    :meth:`Grid.scaled`): ``F.interpolate(..., align_corners=True)``'s values, computed as one small
    interpolation matrix per axis (three matrix products: 3x faster forward and backward on the CPU)."""
    if tuple(field.shape[2:]) == grid.shape:
        return field
    matrices = [_interpolation_matrix(size, new_size, field.dtype, field.device)
                for size, new_size in zip(field.shape[2:], grid.shape)]
    return fields.separable_resample(field, matrices)


@functools.lru_cache(maxsize=16)
def _interpolation_matrix(size: int, new_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[new_size, size]: ``size`` samples interpolated at ``new_size`` points spanning the same first and last
    sample (align_corners=True). Cached: every step of a level asks for the same three."""
    positions = np.arange(new_size) * ((size - 1) / max(new_size - 1, 1))
    return fields.interpolation_matrix(positions, size).to(dtype=dtype, device=device)


SMOOTHING = (1.0, 2.0, 3.0, 2.0, 1.0)  # / 9: two passes of a 3-voxel box


def smooth_field(field: torch.Tensor) -> torch.Tensor:
    """A Gaussian-like low-pass of the field: the 5-tap kernel [1 2 3 2 1] / 9 along each axis, edges
    replicated (two 3^3 box averages in one separable pass), as one banded matrix per axis (three matrix
    products: on the CPU several times faster forward and backward than a grouped conv3d on small grids)."""
    matrices = [_smoothing_matrix(size, field.dtype, field.device) for size in field.shape[2:]]
    return fields.separable_resample(field, matrices)


@functools.lru_cache(maxsize=16)
def _smoothing_matrix(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[size, size]: :data:`SMOOTHING` along one axis, the samples beyond either end replaced by the end's."""
    rows = torch.arange(size)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for offset, weight in zip(range(-2, 3), SMOOTHING):
        matrix.index_put_((rows, (rows + offset).clamp(0, size - 1)), torch.tensor(weight / 9.0, dtype=torch.float64),
                          accumulate=True)
    return matrix.to(dtype=dtype, device=device)
