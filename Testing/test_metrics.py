"""Registration metrics on hand-made inputs with known answers: Dice, folding, SDlogJ and TRE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import rotation

from TotalRegistratorLib.core import fields
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.metrics import dice, jacobian_statistics, target_registration_error

# --- Dice -----------------------------------------------------------------------------------------


def test_dice_on_hand_made_label_maps():
    a = np.zeros((4, 5, 6), np.uint8)
    b = np.zeros((4, 5, 6), np.uint8)
    a[0, :, :] = 1  # 30 voxels
    b[0, :, :3] = 1  # 15 voxels, all inside a's label 1
    a[1, 0, :4] = 2  # 4 voxels
    b[1, 0, 2:6] = 2  # 4 voxels, 2 shared
    a[2, 2, 2] = 3  # label 3 only in a
    b[3, 4, 5] = 7  # label 7 only in b
    scores = dice(a, b)
    assert list(scores) == [1, 2, 3, 7]  # background excluded, sorted, labels from both maps
    assert scores[1] == pytest.approx(2 * 15 / (30 + 15))
    assert scores[2] == pytest.approx(2 * 2 / (4 + 4))
    assert scores[3] == 0.0
    assert scores[7] == 0.0
    assert all(isinstance(k, int) for k in scores)


def test_dice_is_symmetric_and_one_for_identical_maps():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(6, 7, 8))
    b = np.where(rng.random(a.shape) < 0.2, rng.integers(0, 5, size=a.shape), a)
    assert dice(a, b) == pytest.approx(dice(b, a))
    assert dice(a, a) == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    # brute force against the definition
    for label, score in dice(a, b).items():
        expected = 2 * np.sum((a == label) & (b == label)) / (np.sum(a == label) + np.sum(b == label))
        assert score == pytest.approx(expected)


def test_dice_with_given_labels():
    a = np.array([[[0, 1, 1, 2]]])
    b = np.array([[[0, 1, 2, 2]]])
    scores = dice(a, b, labels=[2, 5, 0])
    assert list(scores) == [2, 5, 0]
    assert scores[2] == pytest.approx(2 * 1 / 3)
    assert math.isnan(scores[5])  # absent from both maps
    assert scores[0] == 1.0  # background counts when asked for explicitly
    assert list(dice(a, b, labels=np.array([1]))) == [1]


def test_dice_rejects_different_shapes():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 3, 4)), np.zeros((2, 4, 3)))


# --- Jacobian statistics ---------------------------------------------------------------------------


def folding_field(grid: Grid, start: int, stop: int, slope: float) -> torch.Tensor:
    """Displacement along the grid's i axis, with d u_i / d x_i = ``slope`` over index steps start..stop-1.

    Central differences see slope / 2 on the two voxels at the ends of the ramp, so with slope < -2 every
    voxel i in [start, stop] has det J = 1 + slope or 1 + slope / 2 <= 0 and all others det J = 1.
    """
    steps = np.zeros(grid.size[0] - 1)
    steps[start:stop] = slope * grid.spacing[0]
    profile = np.concatenate([[0.0], np.cumsum(steps)])  # along i
    axis = grid.direction_matrix[:, 0]
    u = profile[None, None, None, :] * axis[:, None, None, None]  # [3, 1, 1, I]
    return torch.as_tensor(np.broadcast_to(u, (3, *grid.shape)).copy())[None]


def test_folding_percent_of_a_field_that_folds_a_known_fraction(oblique_grid):
    grid = Grid((20, 6, 5), oblique_grid.spacing, oblique_grid.origin, oblique_grid.direction)
    field = folding_field(grid, 5, 9, -3.0)
    det = fields.jacobian_determinant(field, grid)[0].numpy()
    np.testing.assert_allclose(det[:, :, 6:9], -2.0, atol=1e-9)  # sanity of the construction
    stats = jacobian_statistics(field, grid)
    assert stats["folding_percent"] == pytest.approx(100.0 * 5 / 20)  # voxels i = 5..9 of 20
    assert stats["jacobian_min"] == pytest.approx(-2.0, abs=1e-9)
    assert stats["jacobian_max"] == pytest.approx(1.0, abs=1e-9)
    # only the masked voxels count
    mask = np.zeros(grid.shape, bool)
    mask[..., :5] = True
    assert jacobian_statistics(field, grid, mask)["folding_percent"] == 0.0
    mask[..., 7] = True  # 6 columns masked, one of them folded
    assert jacobian_statistics(field, grid, mask)["folding_percent"] == pytest.approx(100.0 / 6)
    # a compressing but not folding ramp (det 0.5 and 0.75) folds nothing
    assert jacobian_statistics(folding_field(grid, 5, 9, -0.5), grid)["folding_percent"] == 0.0


def test_sdlogj_of_an_affine_field_is_zero(oblique_grid):
    matrix = np.eye(4)
    matrix[:3, :3] = rotation("z", 15) @ np.diag([1.2, 0.9, 1.05])
    matrix[:3, 3] = [3.0, -4.0, 6.0]
    field = fields.affine_field(matrix, oblique_grid, dtype=torch.float64)
    stats = jacobian_statistics(field, oblique_grid)
    det = float(np.linalg.det(matrix[:3, :3]))
    assert stats["sdlogj"] < 1e-9
    assert stats["folding_percent"] == 0.0
    assert stats["jacobian_min"] == pytest.approx(det, rel=1e-6)
    assert stats["jacobian_max"] == pytest.approx(det, rel=1e-6)
    # the field is float32 in use: the statistics are computed in float64 anyway
    assert jacobian_statistics(field.float(), oblique_grid)["sdlogj"] < 1e-5


def test_sdlogj_of_a_varying_field_is_the_std_of_log_det():
    grid = Grid((40, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    x = np.arange(40, dtype=float)
    # u_x = 0.3 sin(x / 4): d u_x / dx = 0.075 cos(x / 4); central differences differ slightly from analytic
    u = np.zeros((3, 4, 4, 40))
    u[0] = 0.3 * np.sin(x / 4.0)
    det = 1.0 + np.gradient(u[0, 0, 0], x)
    stats = jacobian_statistics(torch.as_tensor(u)[None], grid)
    assert stats["sdlogj"] == pytest.approx(float(np.log(det).std()), rel=1e-9)
    assert stats["sdlogj"] == pytest.approx(float(np.log(1 + 0.075 * np.cos(x / 4.0)).std()), rel=0.05)


# --- target registration error ------------------------------------------------------------------------


def test_tre_with_a_translation_transform():
    rng = np.random.default_rng(1)
    fixed = rng.uniform(-50, 50, size=(6, 3))
    t = np.array([3.0, -4.0, 12.0])  # |t| = 13
    transform = sitk.TranslationTransform(3, t.tolist())
    # the transform maps fixed points into the moving image: moving = fixed + t is perfectly registered
    np.testing.assert_allclose(target_registration_error(fixed, fixed + t, transform), 0.0, atol=1e-12)
    # unregistered distances
    np.testing.assert_allclose(target_registration_error(fixed, fixed + t), 13.0, atol=1e-12)
    # the wrong sign would give 0 here: the transform must be applied to the fixed points
    np.testing.assert_allclose(target_registration_error(fixed, fixed - t, transform), 26.0, atol=1e-12)
    # per-point distances, in order
    moving = fixed + t
    moving[2] += [0.0, 0.0, 2.0]
    moving[4] += [-6.0, 8.0, 0.0]
    np.testing.assert_allclose(target_registration_error(fixed, moving, transform), [0, 0, 2, 0, 10, 0], atol=1e-12)


def test_tre_with_a_displacement_field_transform():
    grid = Grid((20, 18, 16), (4.0, 4.0, 4.0), (-40.0, -36.0, -30.0))
    pts = grid.world_points(dtype=torch.float64)[0].numpy()
    # u(x) = (2, -1, 0.5) + 0.05 * (y, z, x): linear, so the field transform interpolates it exactly
    u = np.stack([2.0 + 0.05 * pts[..., 1], -1.0 + 0.05 * pts[..., 2], 0.5 + 0.05 * pts[..., 0]], -1)
    image = sitk.GetImageFromArray(u, isVector=True)
    grid.apply_to(image)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))
    rng = np.random.default_rng(2)
    fixed = rng.uniform(-20, 20, size=(8, 3))
    mapped = fixed + np.stack([2.0 + 0.05 * fixed[:, 1], -1.0 + 0.05 * fixed[:, 2], 0.5 + 0.05 * fixed[:, 0]], -1)
    np.testing.assert_allclose(target_registration_error(fixed, mapped, transform), 0.0, atol=1e-9)
    expected = np.linalg.norm(mapped - fixed, axis=1)
    np.testing.assert_allclose(target_registration_error(fixed, fixed, transform), expected, atol=1e-9)
    np.testing.assert_allclose(target_registration_error(fixed, mapped), expected, atol=1e-12)


def test_tre_rejects_mismatched_landmarks():
    with pytest.raises(ValueError, match="landmark"):
        target_registration_error(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="landmark"):
        target_registration_error(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="landmark"):
        target_registration_error(np.zeros(3), np.zeros(3))
