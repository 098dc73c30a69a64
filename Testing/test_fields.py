"""The field convention proven against SimpleITK: warp, export, TransformPoint, composition, Jacobian."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from conftest import rotation, smooth_volume

from TotalRegistratorLib.core import fields
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.itk_bridge import export_grid, field_to_transform, transform_to_field


def smooth_field(grid: Grid, amplitude: float = 6.0) -> torch.Tensor:
    """A smooth displacement (mm) plus a 7 degree rotation about the grid centre."""
    pts = grid.world_points(dtype=torch.float64)
    centre = torch.as_tensor(grid.corners().mean(axis=0))
    rel = pts - centre
    x, y, z = rel.unbind(-1)
    bump = torch.stack([torch.sin(y / 17.0), torch.cos(z / 23.0), torch.sin(x / 19.0)], -1)
    rot = torch.as_tensor(rotation("z", 7) @ rotation("x", 3))
    u = amplitude * bump + (rel @ rot.T - rel)
    return u.movedim(-1, 1).float()


def as_tensor(image: sitk.Image) -> torch.Tensor:
    return torch.as_tensor(sitk.GetArrayFromImage(image), dtype=torch.float32)[None, None]


def test_torch_warp_equals_sitk_resample(oblique_grid):
    moving = smooth_volume(oblique_grid)
    fixed_grid = Grid((36, 30, 26), (2.4, 2.2, 3.0), (-25.0, 18.0, 45.0),
                      tuple((rotation("y", -12) @ rotation("z", 8)).ravel()))
    field = smooth_field(fixed_grid)
    ours = fields.warp(as_tensor(moving), oblique_grid, field, fixed_grid)[0, 0].numpy()

    transform = field_to_transform(field, fixed_grid)
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, fixed_grid.reference_image(), transform,
                                                  sitk.sitkLinear, -1.0))
    # interior: mapped points between the moving grid's edge voxel centres (ITK and torch
    # extrapolate differently in the outer half voxel)
    interior = fields.inside(fields.mapped_points(field, fixed_grid), oblique_grid, margin=0.0)[0].numpy()
    assert interior.mean() > 0.3, "test geometry should overlap substantially"
    assert np.abs(ours - theirs)[interior].max() < 1e-3 * 1000.0


def test_transform_point_equals_field_sampling(oblique_grid):
    field = smooth_field(oblique_grid)
    transform = field_to_transform(field, oblique_grid)
    rng = np.random.default_rng(1)
    idx = rng.uniform(1, np.asarray(oblique_grid.size) - 2, size=(50, 3))
    points = oblique_grid.transform_indices(idx)
    expected = points + fields.sample(field.double(), oblique_grid, torch.as_tensor(points)[None]).numpy()[0].T
    got = np.array([transform.TransformPoint(tuple(p)) for p in points])
    assert np.abs(got - expected).max() < 0.01


def test_affine_field_matches_itk_affine(oblique_grid):
    matrix = np.eye(4)
    matrix[:3, :3] = rotation("z", 12) @ np.diag([1.05, 0.95, 1.0])
    matrix[:3, 3] = [4.0, -7.0, 2.5]
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(matrix[:3, :3].ravel())
    affine.SetTranslation(matrix[:3, 3])
    ours = fields.affine_field(matrix, oblique_grid, dtype=torch.float64)
    theirs = transform_to_field(affine, oblique_grid).double()
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_positive_shift_sign():
    """A feature at x in the fixed image sits at x + t in the moving one: u = +t."""
    grid = Grid((30, 30, 30), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    t = np.array([6.0, 0.0, 0.0])
    moving_grid = Grid(grid.size, grid.spacing, tuple(np.asarray(grid.origin) + t))
    moving = as_tensor(smooth_volume(grid))  # same voxels, physically shifted by +t
    field = torch.as_tensor(t, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, *grid.shape)
    warped = fields.warp(moving, moving_grid, field, grid)
    assert torch.allclose(warped, moving, atol=1e-3)


def test_composition_equals_sequential_warps(oblique_grid):
    """Warping once with compose(first, second) equals warping by first, then by second."""
    pts = oblique_grid.world_points(dtype=torch.float64)
    image = (pts @ torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64) + 0.01 * (pts ** 2).sum(-1))[:, None]
    first = smooth_field(oblique_grid, 4.0).double()
    second = smooth_field(oblique_grid, -3.0).flip(2).double()
    composed = fields.compose(first, second, oblique_grid)
    once = fields.warp(image, oblique_grid, composed, oblique_grid)
    twice = fields.warp(fields.warp(image, oblique_grid, first, oblique_grid), oblique_grid, second, oblique_grid)
    swapped = fields.warp(image, oblique_grid, fields.compose(second, first, oblique_grid), oblique_grid)
    mask = fields.inside(fields.mapped_points(composed, oblique_grid), oblique_grid, margin=-2)
    mask &= fields.inside(fields.mapped_points(second, oblique_grid), oblique_grid, margin=-2)
    assert mask.float().mean() > 0.2
    error = (once - twice).abs()[:, 0][mask]
    assert error.mean() < 0.2, "composition order or formula is wrong"
    assert (swapped - twice).abs()[:, 0][mask].mean() > 10 * error.mean(), "test cannot tell the order apart"


def test_composition_of_affines_is_matrix_product(oblique_grid):
    a = np.eye(4)
    a[:3, :3] = rotation("z", 10)
    a[:3, 3] = [3, 1, -2]
    b = np.eye(4)
    b[:3, :3] = rotation("x", -6) @ np.diag([1.1, 1.0, 0.9])
    b[:3, 3] = [-1, 4, 0]
    # b runs second: x -> b x, then a: a (b x)
    composed = fields.compose(fields.affine_field(a, oblique_grid, dtype=torch.float64),
                              fields.affine_field(b, oblique_grid, dtype=torch.float64), oblique_grid)
    expected = fields.affine_field(a @ b, oblique_grid, dtype=torch.float64)
    points = fields.mapped_points(fields.affine_field(b, oblique_grid, dtype=torch.float64), oblique_grid)
    interior = fields.inside(points, oblique_grid, margin=0.0)[:, None].expand_as(composed)
    assert interior.float().mean() > 0.3
    assert torch.allclose(composed[interior], expected[interior], atol=1e-6)


def test_jacobian_determinant_of_affine_and_oblique_grid(oblique_grid):
    matrix = np.eye(4)
    matrix[:3, :3] = rotation("y", 20) @ np.diag([1.2, 0.8, 1.5])
    det = fields.jacobian_determinant(fields.affine_field(matrix, oblique_grid, dtype=torch.float64), oblique_grid)
    assert torch.allclose(det, torch.full_like(det, 1.2 * 0.8 * 1.5), atol=1e-6)
    folded = np.diag([-1.0, 1.0, 1.0, 1.0])
    det = fields.jacobian_determinant(fields.affine_field(folded, oblique_grid, dtype=torch.float64), oblique_grid)
    assert (det < 0).all()


def test_exported_field_on_coarser_grid_keeps_box(oblique_grid):
    coarse = export_grid(oblique_grid, spacing=5.0)
    assert np.allclose(coarse.corners(), oblique_grid.corners(), atol=1e-6)
    assert max(coarse.spacing) <= 5.0 and coarse.num_voxels < oblique_grid.num_voxels


def test_jacobian_in_slabs_equals_one_piece():
    """The determinant is computed a few slices at a time; the slabs must join into the whole field's."""
    grid = Grid((9, 8, 23), (2.0, 3.0, 2.5), (1.0, 2.0, 3.0), tuple(rotation("y", 15).ravel()))
    field = torch.randn(1, 3, *grid.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    whole = fields.jacobian_determinant(field, grid, slab=100)
    for slab in (1, 4, 7):
        assert torch.allclose(fields.jacobian_determinant(field, grid, slab=slab), whole, atol=1e-12)
    direct = torch.linalg.det(fields.spatial_gradient(field, grid).movedim(1, -1).movedim(1, -1) + torch.eye(3,
                              dtype=torch.float64))
    assert torch.allclose(whole, direct, atol=1e-10)


def test_resample_field_on_an_aligned_grid_equals_grid_sample(oblique_grid):
    """Separable resampling (same voxel axes, other spacing and origin, reaching past the border) equals
    grid_sample's trilinear sampling with border values."""
    field = smooth_field(oblique_grid)
    target = Grid((23, 31, 19), (3.1, 1.7, 4.4), tuple(oblique_grid.transform_indices([[-4.2, 3.3, 2.5]])[0]),
                  oblique_grid.direction)
    expected = fields.sample(field.double(), oblique_grid, target.world_points(dtype=torch.float64),
                             padding_mode="border")
    got = fields.resample_field(field.double(), oblique_grid, target)
    beyond = ~fields.inside(target.world_points(dtype=torch.float64), oblique_grid, margin=0.0)
    assert beyond.any() and (~beyond).any(), "the target should reach past the field's grid"
    assert torch.allclose(got, expected, atol=1e-9)



def test_magnitude_is_the_euclidean_length_of_each_displacement():
    field = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    assert torch.allclose(fields.magnitude(field), torch.linalg.vector_norm(field, dim=1), atol=1e-12)
