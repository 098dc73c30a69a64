"""The scanner around the phantom: the table height, scan grids as scanners store them, voxel points in slabs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ...core.grid import Grid, matrix_apply
from .anatomy import Phantom


def table_height(ph: Phantom) -> float:
    """World y of the table top: a few mm behind the patient's back."""
    return float(ph.body_box()[1][1] + 4.0)


def world_point_chunks(grid: Grid, chunk: int = 1 << 18) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The grid's voxel centres in whole slices of about ``chunk`` points: (start, stop, LPS points [P, 3] float64),
    with start/stop indexing the flattened [K, J, I] array."""
    k_size, j_size, i_size = grid.shape
    j, i = torch.meshgrid(torch.arange(j_size, dtype=torch.float64), torch.arange(i_size, dtype=torch.float64),
                          indexing="ij")
    plane = torch.stack([i.ravel(), j.ravel()], -1)
    slices = max(1, chunk // plane.shape[0])
    for k0 in range(0, k_size, slices):
        k = torch.arange(k0, min(k0 + slices, k_size), dtype=torch.float64)
        idx = torch.cat([plane.repeat(len(k), 1), k.repeat_interleave(plane.shape[0])[:, None]], 1)
        yield k0 * plane.shape[0], (k0 + len(k)) * plane.shape[0], matrix_apply(grid.index_to_world, idx)


SLICE_THICKNESSES = (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
LPS_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # NIfTI written from RAS


def scan_grid(ph: Phantom, rng: np.random.Generator, spacing: float | Sequence[float] | None = None,
              size: Sequence[int] | None = None, cover: np.ndarray | None = None) -> Grid:
    """A scanner-like grid for the phantom: chest-abdomen-pelvis range, square in-plane field of view,
    in-plane 0.6-1 mm and slices 0.8-5 mm (unless ``spacing`` (mm, scalar or x, y, z) or ``size`` is given),
    stored as DICOM (LPS identity) or RAS-style NIfTI (direction diag(-1, -1, 1)).

    ``cover`` (n, 3): world points the scan must include (it grows to cover them).
    """
    lower, upper = ph.body_box((rng.uniform(-440, -400), rng.uniform(335, 380)))
    upper[1] = table_height(ph) + 50  # the table is in the field of view
    centre_xy = (lower[:2] + upper[:2]) / 2
    half = np.max(upper[:2] - lower[:2]) / 2 + rng.uniform(10, 40)
    lower[:2], upper[:2] = centre_xy - half, centre_xy + half
    if cover is not None:
        lower, upper = np.minimum(lower, cover.min(axis=0) - 5), np.maximum(upper, cover.max(axis=0) + 5)
    if size is not None:
        grid = Grid.covering(lower, upper, size=size)
    else:
        if spacing is None:
            in_plane = np.clip((upper[0] - lower[0]) / 512, 0.6, 1.0)
            spacing = (in_plane, in_plane, float(rng.choice(SLICE_THICKNESSES)))
        grid = Grid.covering(lower, upper, spacing=spacing)
    if rng.random() < 0.5:
        return grid
    # the same box stored RAS-style: index 0 at the right-anterior corner
    first = grid.transform_indices(np.array([grid.size[0] - 1, grid.size[1] - 1, 0]))
    return Grid(grid.size, grid.spacing, tuple(first), RAS_DIRECTION)
