"""Displacement fields: warping, composition, Jacobians and affine maps, in PyTorch.

The one convention (see :mod:`TotalRegistratorLib.core.grid` for grids):

* A displacement field ``u`` is a tensor ``[N, 3, K, J, I]`` on a grid of the
  *fixed* side, components (x, y, z) in LPS millimetres.
* It is a pullback: the fixed point ``x`` maps to the moving point ``x + u(x)``.
  The warped moving image is ``moving(x + u(x))``. ITK's resampling transforms
  and Slicer's transform "from parent" direction have the same sense.
* An affine map is a 4 x 4 matrix ``A`` taking fixed LPS points to moving LPS
  points; its field is ``u(x) = A x - x``.
* Composition: if block A runs first and block B then registers the fixed
  image to A's output, ``w(x) = u_B(x) + u_A(x + u_B(x))`` (:func:`compose`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .grid import Grid, matrix_apply


def mapped_points(field: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The moving points ``x + u(x)`` for every voxel of ``grid``, shape [N, K, J, I, 3]."""
    return grid.world_points(field.device, field.dtype) + field.movedim(1, -1)


def sample_normalized(image: torch.Tensor, normalized: torch.Tensor, mode: str = "bilinear",
                      padding_mode: str = "zeros") -> torch.Tensor:
    """grid_sample (align_corners=True) of ``image`` [N, C, K, J, I] at normalised coordinates [N, ..., 3]."""
    return F.grid_sample(image, normalized.to(image.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


def sample(image: torch.Tensor, image_grid: Grid, points: torch.Tensor, mode: str = "bilinear",
           padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``image`` [N, C, K, J, I] on ``image_grid`` at LPS ``points`` [N, ..., 3].

    Trilinear (``mode="bilinear"``) or nearest neighbour. Returns [N, C, ...].
    Outside the grid: zeros, or the border value with ``padding_mode="border"``.
    """
    shape = points.shape
    pts = points.reshape(shape[0], -1, 1, 1, 3)
    normalized = matrix_apply(image_grid.world_to_normalized, pts)
    out = sample_normalized(image, normalized, mode, padding_mode)
    return out.reshape(*out.shape[:2], *shape[1:-1])


def warp(moving: torch.Tensor, moving_grid: Grid, field: torch.Tensor, grid: Grid,
         mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """The moving image resampled onto ``grid`` through the pullback ``field``: moving(x + u(x))."""
    return sample(moving, moving_grid, mapped_points(field, grid), mode, padding_mode)


def inside(points: torch.Tensor, domain: Grid, margin: float = 0.5) -> torch.Tensor:
    """Boolean [N, ...]: LPS points within ``domain`` (``margin`` voxels beyond the edge centres)."""
    return within(matrix_apply(domain.world_to_index, points), domain.size, margin)


def within(index: torch.Tensor, size: tuple[int, int, int], margin: float = 0.5, dim: int = -1) -> torch.Tensor:
    """Boolean: voxel indices (i, j, k along ``dim``) within a grid of ``size`` (i, j, k), ``margin`` voxels
    beyond the edge centres; ``dim`` is dropped."""
    shape = [1] * index.dim()
    shape[dim] = 3
    upper = torch.as_tensor(size, dtype=index.dtype, device=index.device).view(shape) - 1 + margin
    return ((index >= -margin) & (index <= upper)).all(dim=dim)


def resample_field(field: torch.Tensor, grid: Grid, target: Grid, max_voxels: int = 4_000_000) -> torch.Tensor:
    """The field sampled (trilinearly) on ``target``; outside ``grid`` it extends its border values.

    When ``target``'s voxel axes are ``grid``'s (same direction), trilinear sampling is separable: three
    small interpolation matrices (:func:`separable_resample`). Otherwise large targets are sampled in slabs
    of at most ``max_voxels`` to bound memory.
    """
    if np.allclose(target.direction_matrix, grid.direction_matrix, atol=1e-9):
        # target index n along axis a sits at grid index (offset_a + n * spacing_t,a) / spacing_g,a
        offset = grid.direction_matrix.T @ (np.asarray(target.origin) - np.asarray(grid.origin))
        matrices = [interpolation_matrix((offset[a] + np.arange(target.size[a]) * target.spacing[a])
                                         / grid.spacing[a], grid.size[a]) for a in (2, 1, 0)]
        return separable_resample(field, matrices)
    return torch.cat([sample(field, grid, slab.world_points(field.device, field.dtype), padding_mode="border")
                      for slab in target.slabs(max_voxels)], dim=2)


def interpolation_matrix(positions: np.ndarray, size: int) -> torch.Tensor:
    """[len(positions), size] float64: linear interpolation of ``size`` samples at ``positions`` (in samples,
    0 = the first), clamped to the first and last sample (border values beyond them)."""
    position = torch.as_tensor(np.clip(positions, 0, size - 1), dtype=torch.float64)
    low = position.floor().clamp(max=max(size - 2, 0)).long()
    fraction = position - low
    rows = torch.arange(len(position))
    matrix = torch.zeros(len(position), size, dtype=torch.float64)
    matrix[rows, low] = 1 - fraction
    if size > 1:
        matrix[rows, low + 1] += fraction
    return matrix


def separable_resample(field: torch.Tensor, matrices: list[torch.Tensor]) -> torch.Tensor:
    """``field`` [N, C, K, J, I] resampled axis by axis: ``matrices`` (along k, j, i) of shapes [K', K],
    [J', J], [I', I] (e.g. :func:`interpolation_matrix`); returns [N, C, K', J', I']. Along k first: a slab
    of a large grid (few k) then never holds more than its own voxels."""
    along_k, along_j, along_i = (m.to(dtype=field.dtype, device=field.device) for m in matrices)
    n, c, k0, j0, i0 = field.shape
    x = (along_k @ field.reshape(n, c, k0, -1)).reshape(n, c, along_k.shape[0], j0, i0)
    return (along_j @ x) @ along_i.T


def compose(first: torch.Tensor, second: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Field of applying ``first`` then ``second``: ``second(x) + first(x + second(x))``.

    ``first`` maps fixed points into the moving image; ``second`` registers the
    fixed image to the moving image already warped by ``first``. Both live on ``grid``.
    """
    return second + sample(first, grid, mapped_points(second, grid), padding_mode="border")


def affine_field(matrix: np.ndarray | torch.Tensor, grid: Grid, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """Field ``A x - x`` of a 4 x 4 fixed-to-moving LPS matrix, shape [1, 3, K, J, I].

    Affine in the voxel index too: an offset plus one step per axis (computed in float64), summed by
    broadcasting in ``dtype``; the values are displacements (small for maps near the identity), not points."""
    m = matrix.detach().cpu().double().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, float)
    change = m[:3, :3] - np.eye(3)
    offset = torch.as_tensor(change @ np.asarray(grid.origin) + m[:3, 3], dtype=dtype, device=device)
    steps = torch.as_tensor(change @ grid.linear, dtype=dtype, device=device)  # [3 components, axes i, j, k]
    (k, j, i) = grid.shape
    along = [steps[:, axis].view(3, 1, 1, 1) * torch.arange(n, dtype=dtype, device=device).view(view)
             for axis, (n, view) in enumerate(((i, (1, 1, -1)), (j, (1, -1, 1)), (k, (-1, 1, 1))))]
    return (along[2] + along[1] + along[0]).add_(offset.view(3, 1, 1, 1))[None]


def magnitude(field: torch.Tensor) -> torch.Tensor:
    """|u| at every voxel of a field [N, 3, K, J, I], as [N, K, J, I] (mm). Summed component by component:
    torch's norm over the component axis took 40x longer on a clinical working grid."""
    return (field[:, 0] * field[:, 0] + field[:, 1] * field[:, 1] + field[:, 2] * field[:, 2]).sqrt_()


def spatial_gradient(field: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Derivatives of every component along physical x, y, z: [N, C, 3, K, J, I] (per mm).

    Central differences inside, one-sided at the borders, then the chain rule
    through the grid's direction and spacing.
    """
    by_index = []
    for dim in (4, 3, 2):  # i, j, k axes of [N, C, K, J, I]
        by_index.append(torch.gradient(field, dim=dim)[0] if field.shape[dim] > 1 else torch.zeros_like(field))
    d_index = torch.stack(by_index, dim=2)  # derivative per index step, [N, C, 3(i,j,k), ...]
    # d/dx = (d/d index) @ d index/d x, with d index/d x = inv(direction @ diag(spacing))
    inv = np.linalg.inv(grid.linear)
    m = torch.as_tensor(inv, dtype=field.dtype, device=field.device)
    return torch.einsum("nca...,ab->ncb...", d_index, m)


def jacobian_determinant(field: torch.Tensor, grid: Grid, slab: int = 16) -> torch.Tensor:
    """det(I + du/dx) of the map x -> x + u(x) at every voxel, [N, K, J, I], in physical space.

    Computed ``slab`` slices along k at a time (with one slice of overlap, so the central differences are
    those of the whole field) and expanded by cofactors: memory stays a few slabs, whatever the grid.
    """
    depth = field.shape[2]
    parts = []
    for k in range(0, depth, slab):
        lower, upper = max(k - 1, 0), min(k + slab + 1, depth)
        a = spatial_gradient(field[:, :, lower:upper], grid)  # [N, component, x, k, J, I]
        a = a[:, :, :, k - lower:k - lower + min(slab, depth - k)]
        a = a + torch.eye(3, dtype=field.dtype, device=field.device).view(1, 3, 3, 1, 1, 1)
        parts.append(a[:, 0, 0] * (a[:, 1, 1] * a[:, 2, 2] - a[:, 1, 2] * a[:, 2, 1])
                     - a[:, 0, 1] * (a[:, 1, 0] * a[:, 2, 2] - a[:, 1, 2] * a[:, 2, 0])
                     + a[:, 0, 2] * (a[:, 1, 0] * a[:, 2, 1] - a[:, 1, 1] * a[:, 2, 0]))
    return torch.cat(parts, dim=1)
