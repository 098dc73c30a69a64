"""Differentiable trilinear sampling of an image at LPS points: the optimiser's innermost operation.

:class:`Sampler` returns what :func:`~TotalRegistratorLib.core.fields.sample` returns (trilinear, zeros
outside the grid, voxel centres at the grid's points) and the same gradient with respect to the points.
The optimiser calls it with planar indices ([3, M]: i, j and k rows) into the image zero-padded by
:data:`PAD` (:attr:`Sampler.to_index` maps LPS mm there), so that it can fold that map into its own affine
or field and never hold points as rows of three, a layout that defeats vectorisation on the CPU.

For a one-channel image it keeps, for every voxel, the four corners of its cell that share its x index
(16 bytes a voxel, 4 times the image); the next voxel's four follow in memory, so the eight corners of a
sample are one 32-byte row gather. Seven linear interpolations give the value, and the gradient comes
from the same corners in the same pass (on 2 CPU cores a phantom registration ran 1.4x faster than with
``grid_sample`` and its backward pass). Several channels (MIND features) go through ``grid_sample``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import fields
from .grid import Grid, matrix_apply_planar

PAD = 2  # zero voxels before each axis: a point clamped to index -PAD sees only zeros, value and gradient
FLOAT32_ROWS = 2**24  # row numbers below this are exact in float32 (faster than float64 to compute)


class Sampler:
    """``image`` [1, C, K, J, I] on ``grid``, sampled at LPS points [1, ..., 3] (mm) as [1, C, ...], or at
    planar indices [3, M] (:meth:`at`)."""

    def __init__(self, image: torch.Tensor, grid: Grid):
        if image.shape[0] != 1:
            raise ValueError(f"Sampler takes one image, got a batch of {image.shape[0]}")
        self.image = image if image.shape[1] > 1 else None
        self.corners = _corner_rows(image[0, 0]) if image.shape[1] == 1 else None
        shifted = np.eye(4)
        shifted[:3, 3] = PAD
        self.to_index = shifted @ grid.world_to_index  # LPS mm -> (i, j, k) index into the zero-padded image
        self.to_world = np.linalg.inv(self.to_index)
        self._to_normalized = grid.world_to_normalized @ self.to_world  # for grid_sample (several channels)
        k, j, i = grid.shape
        # the largest padded index (i, j, k) a point is clamped to, and the row strides of the corner table
        self._high = torch.tensor([[i], [j], [k]], dtype=image.dtype, device=image.device) + PAD
        exact = torch.float32 if self.corners is not None and self.corners.shape[0] < FLOAT32_ROWS else torch.float64
        self._strides = torch.tensor([1, i + PAD + 2, (i + PAD + 2) * (j + PAD + 1)], dtype=exact,
                                     device=image.device)

    def index(self, points: torch.Tensor) -> torch.Tensor:
        """Planar padded indices [3, M] of LPS points [..., 3] (M of them)."""
        return matrix_apply_planar(self.to_index, points.reshape(-1, 3).T)

    def at(self, index: torch.Tensor) -> torch.Tensor:
        """The image [C, M] at planar padded indices [3, M]."""
        if self.corners is None:
            normalized = matrix_apply_planar(self._to_normalized, index)
            return fields.sample_normalized(self.image, normalized.T.reshape(1, -1, 1, 1, 3))[0].flatten(1)
        return _Trilinear.apply(index, self.corners, self._high, self._strides)[None]

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        return self.at(self.index(points)).reshape(1, -1, *points.shape[1:-1])


def _corner_rows(image: torch.Tensor) -> torch.Tensor:
    """[R - 1, 8]: row r holds the corners (dx, dz, dy) in {0, 1}^3 of the cell at voxel r (z, y, x order) of
    ``image`` [K, J, I] zero-padded by PAD before and 2 after each axis and cropped to K + PAD + 1,
    J + PAD + 1 and I + PAD + 2 voxels (R in all). Stored as four values (dz, dy) a voxel; row r is a view of
    voxel r's four and voxel r + 1's (its x neighbour)."""
    padded = F.pad(image, (PAD, 2) * 3)
    k, j, i = (n + PAD + 1 for n in image.shape)
    four = torch.stack([padded[dz:dz + k, dy:dy + j, :i + 1] for dz in (0, 1) for dy in (0, 1)], dim=-1)
    four = four.reshape(-1, 4)
    return four.as_strided((four.shape[0] - 1, 8), (4, 1))


class _Trilinear(torch.autograd.Function):
    """Trilinear values [M] at planar indices [3, M] (i, j, k) into the zero-padded image stored as
    :func:`_corner_rows` (clamped to ``high`` [3, 1]; ``strides``: a cell's row number per index step, in a
    dtype that holds them exactly); the backward pass multiplies by the value's gradient from the forward one."""

    @staticmethod
    def forward(ctx, index: torch.Tensor, corners: torch.Tensor, high: torch.Tensor,
                strides: torch.Tensor) -> torch.Tensor:
        x = index.clamp(min=0)
        torch.minimum(x, high.to(x.dtype), out=x)  # beyond these, every corner is padding: value and gradient 0
        w = torch.frac(x)
        row = (strides @ (x - w).to(strides.dtype)).int()
        c = corners.index_select(0, row).view(-1, 2, 2, 2)  # [M, dx, dz, dy]
        wx, wy, wz = w[0, :, None, None], w[1, :, None], w[2]
        along_x = torch.lerp(c[:, 0], c[:, 1], wx)  # [M, dz, dy]
        along_xy = torch.lerp(along_x[..., 0], along_x[..., 1], wy)  # [M, dz]
        value = torch.lerp(along_xy[:, 0], along_xy[:, 1], wz)
        step_x = c[:, 1] - c[:, 0]  # the derivatives along each axis, interpolated along the other two
        step_x = torch.lerp(step_x[..., 0], step_x[..., 1], wy)
        step_y = along_x[..., 1] - along_x[..., 0]
        gradient = torch.stack([torch.lerp(step_x[:, 0], step_x[:, 1], wz), torch.lerp(step_y[:, 0], step_y[:, 1], wz),
                                along_xy[:, 1] - along_xy[:, 0]])
        ctx.save_for_backward(gradient)
        return value

    @staticmethod
    def backward(ctx, grad_value: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return grad_value * gradient, None, None, None
