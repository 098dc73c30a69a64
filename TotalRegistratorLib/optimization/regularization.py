"""Smoothness penalties of displacement fields [N, 3, K, J, I] in mm on a grid.

Derivatives are taken per millimetre along the grid axes (finite differences
divided by the spacing), so the penalties do not depend on the resolution the
field is sampled at. Both are means over voxels and the three components, in
mm^2/mm^2 (diffusion) and mm^2/mm^4 (bending energy): for u = A x the diffusion
is |A|_F^2 / 3.
"""

from __future__ import annotations

import torch

from ..core.grid import Grid


def _difference(x: torch.Tensor, dim: int, step: float) -> torch.Tensor:
    return (x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)) / step


def diffusion(field: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Mean squared first derivative, summed over the three axes (mm/mm)^2."""
    total = field.new_zeros(())
    for dim, step in zip((4, 3, 2), grid.spacing):
        if field.shape[dim] > 1:
            total = total + _difference(field, dim, step).pow(2).mean()
    return total


def bending_energy(field: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Mean squared second derivatives (Rueckert et al. 1999): sum of u_aa^2 + 2 u_ab^2 over axes a, b."""
    axes = [(dim, step) for dim, step in zip((4, 3, 2), grid.spacing) if field.shape[dim] > 2]
    total = field.new_zeros(())
    for n, (dim_a, step_a) in enumerate(axes):
        first = _difference(field, dim_a, step_a)
        total = total + _difference(first, dim_a, step_a).pow(2).mean()
        for dim_b, step_b in axes[n + 1:]:
            total = total + 2 * _difference(first, dim_b, step_b).pow(2).mean()
    return total
