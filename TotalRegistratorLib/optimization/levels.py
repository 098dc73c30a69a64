"""Instance optimisation's pyramid levels and the similarity loss on one level.

A :class:`Level` holds the fixed and moving features (:class:`Similarity`) of one
pyramid level and which fixed voxels' similarity windows lie inside the fixed
field of view. The loss of a map at a level counts only fixed voxels whose window
also lies inside the moving field of view once mapped (:func:`sees_moving`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import fields
from ..core.grid import Grid, matrix_apply_planar
from ..core.preprocess import Prepared
from ..core.sampling import Sampler
from ..core.transform import Transform
from ..registry import SIMILARITY_TABLE
from . import similarity

FOV_TOLERANCE = 1e-3  # voxels: points on an edge voxel centre count as inside whatever rounding says


SIMILARITY_SPECS = {spec.name: spec for spec in SIMILARITY_TABLE}


@dataclass
class Level:
    """Fixed and moving features and masks at one pyramid level."""

    grid: Grid
    fixed: torch.Tensor
    moving: Sampler  # the moving features, sampled at LPS points
    fixed_statistics: tuple | None
    fixed_valid: torch.Tensor  # [1, K, J, I] bool: similarity windows inside the fixed field of view


class Similarity:
    """A similarity measure of :data:`~TotalRegistratorLib.registry.SIMILARITY_TABLE` as features (computed
    once per image), what the loss precomputes from the fixed features, and a loss between features."""

    def __init__(self, name: str, ncc_radius: int, generator: torch.Generator):
        self.name = name
        self.ncc_radius = ncc_radius
        self.generator = generator
        reach = SIMILARITY_SPECS[name].reach
        self.reach = ncc_radius if reach == "radius" else int(reach)  # voxels around a voxel its loss looks at
        self.features, self.fixed_statistics, self._loss = getattr(self, f"_{name}")()
        self.pointwise = self.features is _same  # features are the intensities: any lattice will do

    def loss(self, level: Level, warped: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._loss(level, warped, mask)

    def _ncc(self):
        return (_same, lambda fixed: similarity.local_statistics(fixed, self.ncc_radius),
                lambda level, warped, mask: similarity.local_ncc(level.fixed, warped, mask, self.ncc_radius,
                                                                 level.fixed_statistics))

    def _mind(self):
        return (similarity.mind_ssc, _nothing,
                lambda level, warped, mask: similarity.mind_loss(level.fixed, warped, mask))

    def _mi(self):
        return (_same, _nothing, lambda level, warped, mask: similarity.mutual_information(
            level.fixed, warped, mask, generator=self.generator))


def _same(image: torch.Tensor) -> torch.Tensor:
    return image


def _nothing(fixed: torch.Tensor) -> None:
    return None


def downsample(image: torch.Tensor, grid: Grid, factor: int, domain: Grid) -> tuple[torch.Tensor, Grid]:
    """Blur by a box of about ``factor`` voxels, then sample on the grid ``factor`` times coarser.

    The blur is a normalised convolution over voxels inside ``domain`` (the
    image's field of view), so padding outside it never bleeds into the image.
    """
    if factor == 1:
        return image, grid
    coarse = grid.scaled(factor)
    radius = factor // 2
    points = grid.world_points(image.device, image.dtype)
    weight = fields.inside(points, domain, margin=FOV_TOLERANCE)[:, None].to(image.dtype)
    blurred = similarity.box_sum(image * weight, radius) / similarity.box_sum(weight, radius).clamp_min(1e-6)
    return fields.sample(blurred, grid, coarse.world_points(image.device, image.dtype)), coarse


def erode(valid: torch.Tensor, radius: int) -> torch.Tensor:
    """Keep voxels whose whole (2r+1)^3 box is valid, so no similarity window reaches outside the data."""
    if radius == 0:
        return valid
    full = (2 * radius + 1) ** 3 - 0.5
    return similarity.box_sum(valid[:, None].to(torch.float32), radius)[:, 0] >= full


def build_levels(fixed: Prepared, moving: Prepared, factors, sim: Similarity) -> dict[int, Level]:
    """The pyramid: one :class:`Level` per downsampling factor (1: the working grids themselves, except that
    a pointwise similarity samples the moving scan's :attr:`~Prepared.detail`, when it has one, there)."""
    levels = {}
    for f in sorted(set(factors)):
        fixed_image, grid = downsample(fixed.tensor, fixed.grid, f, fixed.domain)
        moving_image, moving_grid = moving.detail if f == 1 and moving.detail is not None and sim.pointwise \
            else downsample(moving.tensor, moving.grid, f, moving.domain)
        fixed_features = sim.features(fixed_image)
        in_view = fields.inside(grid.world_points(fixed_image.device), fixed.domain, margin=FOV_TOLERANCE)
        fixed_valid = erode(in_view, sim.reach)
        levels[f] = Level(grid, fixed_features, Sampler(sim.features(moving_image), moving_grid),
                          sim.fixed_statistics(fixed_features), fixed_valid)
    return levels


def mapped_index(level: Level, transform: Transform) -> torch.Tensor:
    """Planar moving indices [3, K * J * I] (:meth:`Sampler.index`) of ``transform``'s points at ``level.grid``'s
    voxels: what :func:`warp` and :func:`sees_moving` take."""
    return level.moving.index(transform.points(level.grid, level.fixed.device))


def warp(level: Level, index: torch.Tensor) -> torch.Tensor:
    """The moving features [1, C, K, J, I] at planar moving indices [3, K * J * I] (:meth:`Sampler.index` of
    the mapped points of ``level.grid``'s voxels)."""
    return level.moving.at(index).view(1, -1, *level.grid.shape)


def sees_moving(level: Level, index: torch.Tensor, domain: Grid, sim: Similarity) -> torch.Tensor:
    """[1, K, J, I] bool: fixed voxels whose window of mapped points (planar moving indices, as for
    :func:`warp`) lies inside the moving field of view ``domain``."""
    in_domain = matrix_apply_planar(domain.world_to_index @ level.moving.to_world, index)
    in_view = fields.within(in_domain, domain.size, FOV_TOLERANCE, dim=0).view(1, *level.grid.shape)
    return erode(in_view, sim.reach)


def masked_loss(level: Level, warped: torch.Tensor, sim: Similarity, seen: torch.Tensor) -> torch.Tensor:
    """The similarity loss of ``warped`` (:func:`warp`) over fixed voxels valid in both fields of view
    (``seen``: the moving one's part, :func:`sees_moving`, possibly narrowed by the caller)."""
    return sim.loss(level, warped, (level.fixed_valid & seen)[:, None].to(warped.dtype))


def step_loss(level: Level, index: torch.Tensor, domain: Grid, sim: Similarity,
              seen: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`masked_loss` of the moving features at planar moving indices ``index``; ``seen`` when the caller
    already has it."""
    return masked_loss(level, warp(level, index), sim, sees_moving(level, index, domain, sim) if seen is None else seen)
