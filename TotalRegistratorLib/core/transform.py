"""The one representation of a registration result: a map of fixed LPS points to moving LPS points.

``T(x) = A x + r(x)``: ``A`` a 4 x 4 homogeneous matrix (float64, LPS mm), ``r``
an optional residual displacement [1, 3, K, J, I] (float32, LPS mm, components
x, y, z) on a :class:`~TotalRegistratorLib.core.grid.Grid`, trilinear inside
that grid and extended with its border values outside. The affine part stays
exact everywhere; only the residual is sampled. The library's pullback field of
``T`` on any grid is ``T(x) - x`` (:mod:`TotalRegistratorLib.core.fields`), and
``TransformPoint`` of the exported ITK transform is ``T``.

The cascade's output, instance optimisation's start and result, the phantom
pairs' ground truth and every export are a :class:`Transform`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from .fields import affine_field, resample_field, sample
from .grid import Grid, matrix_apply
from .itk_bridge import field_to_transform, image_to_field, transform_to_field

SLAB_VOXELS = 4_000_000  # fields on large grids are filled in slabs of this many voxels (bounded memory)


@dataclass(frozen=True)
class Transform:
    """``T(x) = affine @ x + residual(x)``: fixed LPS points -> moving LPS points, in mm (see the module)."""

    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    residual: torch.Tensor | None = None
    grid: Grid | None = None  # the residual's grid

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64).reshape(4, 4))
        if (self.residual is None) != (self.grid is None):
            raise ValueError("a residual needs its grid and a grid needs a residual")
        if self.residual is not None and tuple(self.residual.shape) != (1, 3, *self.grid.shape):
            raise ValueError(f"residual of shape {tuple(self.residual.shape)} does not fit the grid {self.grid.size}")

    # --- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_field(cls, displacement: torch.Tensor, grid: Grid) -> Transform:
        """The map ``x -> x + u(x)`` of a pullback field ``u`` [1, 3, K, J, I] (LPS mm) on ``grid``."""
        return cls(np.eye(4), displacement.detach().float(), grid)

    @classmethod
    def from_sitk(cls, transform: sitk.Transform, grid: Grid | None = None) -> Transform:
        """An ITK transform: linear ones exactly; a displacement field on its own grid; anything else
        (composites, B-splines) evaluated on ``grid``."""
        if isinstance(transform, sitk.DisplacementFieldTransform):
            return cls.from_field(*image_to_field(transform.GetDisplacementField()))
        linear = _linear_matrix(transform)
        if linear is not None:
            return cls(linear)
        if grid is None:
            raise ValueError(f"a {transform.GetName()} needs a grid to be sampled on")
        return cls.from_field(transform_to_field(transform, grid), grid)

    @classmethod
    def load(cls, path: str | os.PathLike, grid: Grid | None = None) -> Transform:
        """Read an ITK transform file (see :meth:`from_sitk`); bad files raise ``InputError`` naming the file."""
        from ..io.images import read_transform

        return cls.from_sitk(read_transform(path), grid)

    # --- composition ------------------------------------------------------------------------------------------
    @property
    def is_linear(self) -> bool:
        return self.residual is None

    def then(self, matrix: np.ndarray) -> Transform:
        """``C(T(x))``: this map followed by the 4 x 4 moving -> moving matrix ``C`` (exact)."""
        matrix = np.asarray(matrix, np.float64)
        if self.residual is None:
            return Transform(matrix @ self.affine)
        linear = torch.as_tensor(matrix[:3, :3], dtype=self.residual.dtype, device=self.residual.device)
        return Transform(matrix @ self.affine, torch.einsum("ab,nb...->na...", linear, self.residual), self.grid)

    def plus(self, residual: torch.Tensor, grid: Grid) -> Transform:
        """``T(x) + r(x)``: an extra residual ``r`` on ``grid``; the residuals are added on ``grid``."""
        residual = residual.detach().float()
        if self.residual is not None:
            residual = residual + resample_field(self.residual.to(residual.device), self.grid, grid)
        return Transform(self.affine, residual, grid)

    def to(self, device: torch.device | str) -> Transform:
        return self if self.residual is None else Transform(self.affine, self.residual.to(device), self.grid)

    # --- evaluation ---------------------------------------------------------------------------------------------
    def apply(self, points: np.ndarray) -> np.ndarray:
        """``T`` at LPS points (..., 3), float64."""
        points = np.asarray(points, np.float64)
        mapped = matrix_apply(self.affine, points)
        if self.residual is not None:
            flat = torch.as_tensor(points.reshape(1, -1, 3), dtype=torch.float64)
            r = sample(self.residual.cpu().double(), self.grid, flat, padding_mode="border")
            mapped = mapped + r[0].T.numpy().reshape(points.shape)
        return mapped

    def field_on(self, target: Grid, device: torch.device | str | None = None,
                 max_voxels: int = SLAB_VOXELS) -> torch.Tensor:
        """The pullback field ``T(x) - x`` on ``target`` [1, 3, K, J, I] float32 (LPS mm), filled in slabs of
        at most ``max_voxels`` so a whole-body CT's grid needs no full-size float64 temporaries."""
        device = device if device is not None else ("cpu" if self.residual is None else self.residual.device)
        slabs = target.slabs(max_voxels)
        parts = []
        for slab in slabs:
            part = affine_field(self.affine, slab, device)
            if self.residual is not None:
                part += resample_field(self.residual.to(device), self.grid, slab)
            parts.append(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def points(self, target: Grid, device: torch.device | str | None = None) -> torch.Tensor:
        """``T(x)`` at every voxel centre of ``target``, [1, K, J, I, 3] float32 (LPS mm)."""
        field_on = self.field_on(target, device)
        return target.world_points(field_on.device, field_on.dtype) + field_on.movedim(1, -1)

    # --- ITK -----------------------------------------------------------------------------------------------------
    def to_sitk(self, target: Grid | None = None) -> sitk.Transform:
        """An ITK transform: affine when linear, else a DisplacementFieldTransform on ``target`` (default:
        the residual's own grid)."""
        if self.residual is None:
            transform = sitk.AffineTransform(3)
            transform.SetMatrix(self.affine[:3, :3].ravel().tolist())
            transform.SetTranslation(self.affine[:3, 3].tolist())
            return transform
        target = target or self.grid
        return field_to_transform(self.field_on(target), target)

    def save(self, path: str | os.PathLike, target: Grid | None = None) -> None:
        """Write :meth:`to_sitk` to an ITK transform file (.h5, .tfm), atomically."""
        from ..io.images import write_transform

        write_transform(self.to_sitk(target), path)


def _linear_matrix(transform: sitk.Transform) -> np.ndarray | None:
    """The 4 x 4 matrix of a linear ITK transform (identity, translation, rigid, affine, ...), else None."""
    if not transform.IsLinear():
        return None
    # a linear transform is determined by where it maps the origin and the unit points
    basis = np.vstack([np.zeros(3), np.eye(3)])
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in basis])
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T
    return matrix
