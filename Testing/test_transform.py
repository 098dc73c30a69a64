"""The Transform value type: composition, evaluation, slab filling, SimpleITK round trips, save and load."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import rotation

from TotalRegistratorLib.core.fields import affine_field
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.itk_bridge import transform_to_field
from TotalRegistratorLib.core.transform import Transform

GRID = Grid((12, 10, 8), (4.0, 4.0, 5.0), (-20.0, -18.0, -15.0))
OBLIQUE = Grid((9, 11, 7), (3.0, 3.5, 4.5), (-14.0, -19.0, -12.0),
               tuple((rotation("z", 25) @ rotation("x", 10)).ravel()))


def some_affine(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] += rng.uniform(-0.05, 0.05, (3, 3))
    affine[:3, 3] = rng.uniform(-5, 5, 3)
    return affine


def some_residual(grid: Grid, seed: int = 0) -> torch.Tensor:
    return 2 * torch.randn(1, 3, *grid.shape, generator=torch.Generator().manual_seed(seed))


def test_apply_is_affine_plus_trilinear_residual_at_voxel_centres():
    affine, residual = some_affine(), some_residual(GRID)
    t = Transform(affine, residual, GRID)
    points = GRID.transform_indices(np.array([[0, 0, 0], [3, 4, 5], [11, 9, 7]], float))
    expected = points @ affine[:3, :3].T + affine[:3, 3]
    expected += residual[0, :, [0, 5, 7], [0, 4, 9], [0, 3, 11]].T.double().numpy()
    np.testing.assert_allclose(t.apply(points), expected, atol=1e-5)


def test_affine_part_stays_exact_outside_the_residual_grid():
    """Far outside the residual's grid the affine part continues exactly; the residual keeps its border value."""
    affine, residual = some_affine(1), some_residual(GRID, 1)
    far = GRID.transform_indices(np.array([[40.0, 30.0, 25.0]]))
    corner = residual[0, :, -1, -1, -1].double().numpy()
    expected = far @ affine[:3, :3].T + affine[:3, 3] + corner
    np.testing.assert_allclose(Transform(affine, residual, GRID).apply(far), expected, atol=1e-5)


def test_field_on_in_slabs_equals_one_piece():
    target = Grid((20, 16, 14), (3.0, 3.0, 4.0), (-30.0, -24.0, -30.0))  # beyond GRID on every side
    t = Transform(some_affine(2), some_residual(GRID, 2), GRID)
    whole = t.field_on(target, max_voxels=10**9)
    assert torch.allclose(t.field_on(target, max_voxels=20 * 16 * 2), whole, atol=1e-5)  # 7 slabs
    points = target.world_points(dtype=torch.float64)[0].reshape(-1, 3).numpy()
    np.testing.assert_allclose(whole[0].reshape(3, -1).T.double().numpy(), t.apply(points) - points, atol=1e-4)


def test_then_composes_an_affine_after_the_map_exactly():
    t = Transform(some_affine(3), some_residual(GRID, 3), GRID)
    correction = some_affine(4)
    points = OBLIQUE.corners()
    mapped = t.apply(points)
    np.testing.assert_allclose(t.then(correction).apply(points), mapped @ correction[:3, :3].T + correction[:3, 3],
                               atol=1e-4)
    assert Transform(some_affine(3)).then(correction).is_linear


def test_plus_adds_residuals_on_the_new_grid():
    t = Transform(some_affine(5), some_residual(GRID, 5), GRID)
    extra = some_residual(OBLIQUE, 6)
    both = t.plus(extra, OBLIQUE)
    assert both.grid == OBLIQUE
    points = OBLIQUE.transform_indices(np.array([[2.0, 3.0, 4.0], [8.0, 10.0, 6.0]]))
    expected = t.apply(points) + extra[0, :, [4, 6], [3, 10], [2, 8]].T.double().numpy()
    np.testing.assert_allclose(both.apply(points), expected, atol=1e-4)


def test_linear_maps_export_as_itk_affine_transforms_and_back():
    affine = some_affine(7)
    exported = Transform(affine).to_sitk()
    assert exported.GetName() == "AffineTransform"
    point = (10.0, -20.0, 30.0)
    np.testing.assert_allclose(exported.TransformPoint(point), affine[:3, :3] @ point + affine[:3, 3], atol=1e-9)
    np.testing.assert_allclose(Transform.from_sitk(exported).affine, affine, atol=1e-12)
    euler = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    np.testing.assert_allclose(Transform.from_sitk(euler).apply(np.array(point)), euler.TransformPoint(point),
                               atol=1e-9)


@pytest.mark.parametrize("target", [None, OBLIQUE], ids=["own grid", "oblique grid"])
def test_itk_transform_point_agrees_with_apply(target):
    t = Transform(some_affine(8), some_residual(GRID, 8), GRID)
    exported = t.to_sitk(target)
    grid = target or GRID
    points = grid.transform_indices(np.array([[1.0, 2.0, 3.0], [4.5, 5.5, 2.5], [0.0, 0.0, 0.0]]))
    itk = np.array([exported.TransformPoint(tuple(p)) for p in points])
    if target is None:  # on its own grid ITK's linear interpolation is the residual's own
        np.testing.assert_allclose(itk, t.apply(points), atol=1e-4)
    else:  # at the target's voxel centres the export is exact
        np.testing.assert_allclose(itk[2], t.apply(points[2]), atol=1e-4)


def test_save_and_load_round_trip(tmp_path):
    t = Transform(some_affine(9), some_residual(GRID, 9), GRID)
    t.save(tmp_path / "t.h5")
    back = Transform.load(tmp_path / "t.h5")
    assert back.grid == GRID
    points = GRID.transform_indices(np.array([[1.5, 2.5, 3.5], [10.0, 8.0, 6.0]]))
    np.testing.assert_allclose(back.apply(points), t.apply(points), atol=1e-4)
    Transform(some_affine(9)).save(tmp_path / "a.tfm")
    np.testing.assert_allclose(Transform.load(tmp_path / "a.tfm").affine, some_affine(9), atol=1e-9)


def test_from_field_and_other_itk_transforms_are_sampled_on_a_grid():
    bspline = sitk.BSplineTransformInitializer(GRID.reference_image(), [2, 2, 2])
    params = np.array(bspline.GetParameters())
    bspline.SetParameters(tuple(np.random.default_rng(0).uniform(-3, 3, params.size)))
    t = Transform.from_sitk(bspline, GRID)
    expected = transform_to_field(bspline, GRID)
    assert torch.allclose(t.field_on(GRID), expected.float(), atol=1e-4)
    with pytest.raises(ValueError, match="needs a grid"):
        Transform.from_sitk(bspline)


def test_residual_must_fit_its_grid():
    with pytest.raises(ValueError, match="does not fit"):
        Transform(np.eye(4), torch.zeros(1, 3, 2, 2, 2), GRID)
    assert torch.equal(Transform().field_on(GRID), affine_field(np.eye(4), GRID))
