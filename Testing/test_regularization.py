"""Smoothness penalties against analytic values on oblique, anisotropic grids, and their resolution independence.

Convention (see the module): finite differences per mm along the grid axes, squared and averaged over
voxels *and the three displacement components*, summed over the axes. For u(x) = A x + b that is
||A||_F^2 / 3 (the sum of the squared entries of the displacement gradient, averaged over components);
for u_c(x) = x^T H_c x / 2 the bending energy is sum_c ||H_c||_F^2 / 3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import rotation

from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.optimization.regularization import bending_energy, diffusion

A = np.array([[0.05, -0.12, 0.03], [0.08, 0.02, -0.04], [-0.06, 0.1, 0.07]])
SHIFT = np.array([3.0, -2.0, 5.0])


def field_from(grid: Grid, function) -> torch.Tensor:
    """[1, 3, K, J, I] float64 field from a function of (..., 3) LPS points relative to the grid centre."""
    pts = grid.world_points(dtype=torch.float64)[0]
    centre = torch.as_tensor(grid.corners().mean(axis=0))
    return function(pts - centre).movedim(-1, 0)[None]


def affine(rel: torch.Tensor) -> torch.Tensor:
    return rel @ torch.as_tensor(A).T + torch.as_tensor(SHIFT)


HESSIANS = [np.array([[0.004, 0.001, -0.002], [0.001, -0.003, 0.0015], [-0.002, 0.0015, 0.002]]),
            np.array([[-0.001, 0.0025, 0.0], [0.0025, 0.002, -0.001], [0.0, -0.001, 0.003]]),
            np.array([[0.002, 0.0, 0.001], [0.0, 0.0, 0.002], [0.001, 0.002, -0.004]])]


def quadratic(rel: torch.Tensor) -> torch.Tensor:
    comps = [0.5 * torch.einsum("...a,ab,...b->...", rel, torch.as_tensor(h), rel) for h in HESSIANS]
    return torch.stack(comps, -1) + affine(rel)  # an affine part must not change the bending energy


def smooth(rel: torch.Tensor) -> torch.Tensor:
    x, y, z = rel.unbind(-1)
    return torch.stack([4.0 * torch.sin(y / 15.0) * torch.cos(z / 20.0), 3.0 * torch.cos(x / 18.0),
                        5.0 * torch.sin((x + z) / 25.0)], -1)


def test_constant_field_has_no_energy(oblique_grid):
    field = torch.tensor([4.0, -2.0, 7.5], dtype=torch.float64).view(1, 3, 1, 1, 1).expand(1, 3, *oblique_grid.shape)
    assert float(diffusion(field, oblique_grid)) == pytest.approx(0.0, abs=1e-20)
    assert float(bending_energy(field, oblique_grid)) == pytest.approx(0.0, abs=1e-20)


def test_diffusion_of_an_affine_field_is_analytic(oblique_grid):
    field = field_from(oblique_grid, affine)
    expected = float((A**2).sum()) / 3.0
    assert float(diffusion(field, oblique_grid)) == pytest.approx(expected, rel=1e-9)
    # with identity direction the same holds: the value does not depend on the orientation of the grid
    aligned = Grid(oblique_grid.size, oblique_grid.spacing, oblique_grid.origin)
    assert float(diffusion(field_from(aligned, affine), aligned)) == pytest.approx(expected, rel=1e-9)


def test_diffusion_divides_by_the_spacing_per_axis():
    """u_x = a * x on an axis-aligned grid: only the i-axis derivative a is non-zero -> a^2 / 3."""
    grid = Grid((6, 5, 4), (0.5, 2.0, 3.5), (1.0, 2.0, 3.0))
    field = field_from(grid, lambda rel: torch.stack([0.2 * rel[..., 0], 0 * rel[..., 0], 0 * rel[..., 0]], -1))
    assert float(diffusion(field, grid)) == pytest.approx(0.04 / 3.0, rel=1e-9)
    field = field_from(grid, lambda rel: torch.stack([0 * rel[..., 0], 0 * rel[..., 0], -0.3 * rel[..., 2]], -1))
    assert float(diffusion(field, grid)) == pytest.approx(0.09 / 3.0, rel=1e-9)


def test_bending_energy_of_any_affine_field_is_zero(oblique_grid):
    field = field_from(oblique_grid, affine)
    assert float(bending_energy(field, oblique_grid)) == pytest.approx(0.0, abs=1e-14)
    field = field_from(oblique_grid, lambda rel: rel @ torch.as_tensor(rotation("z", 30) - np.eye(3)).T)
    assert float(bending_energy(field, oblique_grid)) == pytest.approx(0.0, abs=1e-14)


def test_bending_energy_of_a_quadratic_field_is_analytic(oblique_grid):
    field = field_from(oblique_grid, quadratic)
    expected = sum(float((h**2).sum()) for h in HESSIANS) / 3.0
    assert float(bending_energy(field, oblique_grid)) == pytest.approx(expected, rel=1e-7)
    # a pure mixed term u_x = c x y on an aligned grid: only u_xy = c counts, twice
    grid = Grid((6, 7, 5), (1.5, 2.5, 3.0), (0.0, 0.0, 0.0))
    c = 0.01
    field = field_from(grid, lambda r: torch.stack([c * r[..., 0] * r[..., 1], 0 * r[..., 0], 0 * r[..., 0]], -1))
    assert float(bending_energy(field, grid)) == pytest.approx(2 * c**2 / 3.0, rel=1e-9)
    field = field_from(grid, lambda r: torch.stack([0 * r[..., 0], 0.5 * c * r[..., 2] ** 2, 0 * r[..., 0]], -1))
    assert float(bending_energy(field, grid)) == pytest.approx(c**2 / 3.0, rel=1e-9)


def test_penalties_are_resolution_independent():
    direction = tuple((rotation("z", 20) @ rotation("y", -10)).ravel())
    fine = Grid((61, 49, 41), (1.0, 1.25, 1.5), (0.0, 0.0, 0.0), direction)
    coarse = fine.scaled(2.0)  # same physical box, half as many samples per axis
    assert coarse.spacing[0] == pytest.approx(2.0)
    for penalty, tolerance in ((diffusion, 0.02), (bending_energy, 0.02)):
        a = float(penalty(field_from(fine, smooth), fine))
        b = float(penalty(field_from(coarse, smooth), coarse))
        assert a > 1e-5
        assert b == pytest.approx(a, rel=tolerance), penalty.__name__
    # the analytic cases agree across resolutions exactly
    assert float(diffusion(field_from(coarse, affine), coarse)) == pytest.approx(
        float(diffusion(field_from(fine, affine), fine)), rel=1e-9)
    assert float(bending_energy(field_from(coarse, quadratic), coarse)) == pytest.approx(
        float(bending_energy(field_from(fine, quadratic), fine)), rel=1e-7)


def test_penalties_scale_quadratically_and_have_gradients(oblique_grid):
    field = field_from(oblique_grid, smooth).requires_grad_(True)
    d = diffusion(field, oblique_grid)
    b = bending_energy(field, oblique_grid)
    assert float(diffusion(3.0 * field.detach(), oblique_grid)) == pytest.approx(9.0 * float(d.detach()), rel=1e-9)
    assert float(bending_energy(3.0 * field.detach(), oblique_grid)) == pytest.approx(9.0 * float(b.detach()), rel=1e-9)
    (d + b).backward()
    assert torch.isfinite(field.grad).all() and field.grad.abs().max() > 0


def test_penalties_skip_axes_too_short_to_differentiate():
    """A single slice has no z derivative (and fewer than three none of second order)."""
    grid = Grid((8, 7, 1), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    field = field_from(grid, affine)
    expected = float((A[:, :2] ** 2).sum()) / 3.0  # only the x and y columns of the gradient are seen
    assert float(diffusion(field, grid)) == pytest.approx(expected, rel=1e-9)
    assert float(bending_energy(field, grid)) == pytest.approx(0.0, abs=1e-14)
    grid2 = Grid((8, 7, 2), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    field2 = field_from(grid2, quadratic)
    expected2 = sum(h[0, 0] ** 2 + 2 * h[0, 1] ** 2 + h[1, 1] ** 2 for h in HESSIANS) / 3.0
    assert float(bending_energy(field2, grid2)) == pytest.approx(expected2, rel=1e-7)
