"""Grid geometry proven against SimpleITK: index <-> LPS, normalised coordinates, derived grids, bounding boxes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from conftest import rotation

from TotalRegistratorLib.core import fields
from TotalRegistratorLib.core.grid import Grid, matrix_apply, physical_bounding_box


def sitk_points(grid: Grid, indices: np.ndarray) -> np.ndarray:
    image = grid.reference_image()
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in idx)) for idx in indices])


def test_from_image_reference_image_round_trip(oblique_grid):
    image = oblique_grid.reference_image(sitk.sitkInt16)
    assert image.GetSize() == oblique_grid.size
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_allclose(image.GetSpacing(), oblique_grid.spacing, rtol=0, atol=1e-12)
    np.testing.assert_allclose(image.GetOrigin(), oblique_grid.origin, rtol=0, atol=1e-12)
    np.testing.assert_allclose(image.GetDirection(), oblique_grid.direction, rtol=0, atol=1e-12)
    back = Grid.from_image(image)
    assert back == oblique_grid
    assert back.shape == (28, 34, 40)
    assert sitk.GetArrayViewFromImage(image).shape == back.shape
    assert back.num_voxels == 40 * 34 * 28


def test_grid_rejects_bad_geometry():
    with pytest.raises(ValueError, match="size"):
        Grid((4, 0, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="spacing"):
        Grid((4, 4, 4), (1.0, -1.0, 1.0), (0.0, 0.0, 0.0))


def test_transform_indices_matches_sitk(oblique_grid):
    rng = np.random.default_rng(3)
    idx = rng.uniform(-2, np.asarray(oblique_grid.size) + 2, size=(40, 3))  # continuous, some outside
    ours = oblique_grid.transform_indices(idx)
    np.testing.assert_allclose(ours, sitk_points(oblique_grid, idx), rtol=0, atol=1e-9)
    # the 4 x 4 matrix agrees with its definition: direction @ diag(spacing) @ index + origin
    d = oblique_grid.direction_matrix
    expected = idx @ (d @ np.diag(oblique_grid.spacing)).T + np.asarray(oblique_grid.origin)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
    assert not np.allclose(d, np.eye(3)), "the fixture must be oblique for this test to mean anything"


def test_world_points_match_sitk_at_every_voxel(oblique_grid):
    pts = oblique_grid.world_points(dtype=torch.float64)
    assert pts.shape == (1, 28, 34, 40, 3)
    assert pts.dtype == torch.float64
    rng = np.random.default_rng(4)
    picks = rng.integers(0, np.asarray(oblique_grid.size), size=(60, 3))  # (i, j, k)
    picks = np.vstack([picks, [[0, 0, 0], [39, 33, 27], [39, 0, 0], [0, 33, 27]]])
    got = pts[0, picks[:, 2], picks[:, 1], picks[:, 0]].numpy()  # tensor order [K, J, I]
    np.testing.assert_allclose(got, sitk_points(oblique_grid, picks), rtol=0, atol=1e-9)
    # float32 output is the same points
    np.testing.assert_allclose(oblique_grid.world_points().numpy(), pts.numpy(), rtol=0, atol=1e-4)


def test_transform_points_inverts_transform_indices(oblique_grid):
    rng = np.random.default_rng(5)
    idx = rng.uniform(-5, 45, size=(7, 5, 3))  # arbitrary leading shape
    world = oblique_grid.transform_indices(idx)
    assert world.shape == idx.shape
    np.testing.assert_allclose(oblique_grid.transform_points(world), idx, rtol=0, atol=1e-9)
    # and agrees with SimpleITK's inverse mapping
    image = oblique_grid.reference_image()
    flat = world.reshape(-1, 3)[:10]
    theirs = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in flat])
    np.testing.assert_allclose(oblique_grid.transform_points(flat), theirs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(oblique_grid.world_to_index @ oblique_grid.index_to_world, np.eye(4), atol=1e-12)


def test_world_to_normalized_maps_corner_centres_to_plus_minus_one(oblique_grid):
    corners_idx = np.array(np.meshgrid(*[[0, s - 1] for s in oblique_grid.size], indexing="ij")).reshape(3, -1).T
    world = oblique_grid.transform_indices(corners_idx)
    normalized = matrix_apply(oblique_grid.world_to_normalized, torch.as_tensor(world)).numpy()
    np.testing.assert_allclose(normalized, np.where(corners_idx == 0, -1.0, 1.0), rtol=0, atol=1e-9)
    # the centre of the grid goes to 0 and a point half way along i to (0, -1, -1)
    centre = oblique_grid.transform_indices((np.asarray(oblique_grid.size) - 1) / 2.0)
    np.testing.assert_allclose(matrix_apply(oblique_grid.world_to_normalized, torch.as_tensor(centre)).numpy(),
                               0.0, atol=1e-9)
    half_i = oblique_grid.transform_indices([19.5, 0, 0])
    np.testing.assert_allclose(matrix_apply(oblique_grid.world_to_normalized, torch.as_tensor(half_i)).numpy(),
                               [0.0, -1.0, -1.0], atol=1e-9)


def test_normalized_coordinates_drive_grid_sample_to_the_voxel_centres(oblique_grid):
    """grid_sample at the normalised coordinates of every voxel centre returns the image itself."""
    grid = Grid((9, 7, 5), oblique_grid.spacing, oblique_grid.origin, oblique_grid.direction)
    image = torch.randn(1, 1, *grid.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    normalized = matrix_apply(grid.world_to_normalized, grid.world_points(dtype=torch.float64))
    sampled = F.grid_sample(image, normalized, mode="bilinear", align_corners=True)
    torch.testing.assert_close(sampled, image, rtol=0, atol=1e-9)
    # a half-voxel step along i interpolates between neighbours along the last tensor axis
    shifted = grid.world_points(dtype=torch.float64) + torch.as_tensor(
        grid.direction_matrix[:, 0] * grid.spacing[0] / 2)
    sampled = F.grid_sample(image, matrix_apply(grid.world_to_normalized, shifted), align_corners=True)
    torch.testing.assert_close(sampled[..., :-1], (image[..., :-1] + image[..., 1:]) / 2, rtol=0, atol=1e-9)


def test_covering_with_size_puts_corner_centres_on_the_box():
    lower, upper = np.array([-40.0, 10.0, -5.0]), np.array([60.0, 52.0, 120.0])
    grid = Grid.covering(lower, upper, size=(11, 8, 26))
    assert grid.size == (11, 8, 26)
    np.testing.assert_allclose(grid.direction_matrix, np.eye(3))
    np.testing.assert_allclose(grid.spacing, (10.0, 6.0, 5.0), rtol=1e-12)
    np.testing.assert_allclose(grid.transform_indices([0, 0, 0]), lower, atol=1e-9)
    np.testing.assert_allclose(grid.transform_indices(np.asarray(grid.size) - 1), upper, atol=1e-9)
    np.testing.assert_allclose(grid.corners().min(0), lower, atol=1e-9)
    np.testing.assert_allclose(grid.corners().max(0), upper, atol=1e-9)


def test_covering_with_spacing_is_centred_on_the_box_with_exact_spacing():
    lower, upper = np.array([-40.0, 10.0, -5.0]), np.array([60.0, 52.0, 120.0])
    # whole number of voxels: the corner centres lie exactly on the box
    grid = Grid.covering(lower, upper, spacing=(2.0, 3.0, 5.0))
    assert grid.size == (51, 15, 26)
    np.testing.assert_allclose(grid.spacing, (2.0, 3.0, 5.0))
    np.testing.assert_allclose(grid.corners().min(0), lower, atol=1e-9)
    np.testing.assert_allclose(grid.corners().max(0), upper, atol=1e-9)
    # not a whole number: scalar spacing, same spacing on every axis, centred on the box
    spacing = 3.0
    grid = Grid.covering(lower, upper, spacing=spacing)
    extent = upper - lower
    assert grid.spacing == (3.0, 3.0, 3.0)
    assert grid.size == tuple(int(np.floor(e / spacing)) + 1 for e in extent)  # (34, 15, 42)
    first, last = grid.transform_indices([0, 0, 0]), grid.transform_indices(np.asarray(grid.size) - 1)
    np.testing.assert_allclose((first + last) / 2, (lower + upper) / 2, atol=1e-9)
    # the voxels (edges half a spacing beyond the centres) cover the box, the centres stay within it
    assert np.all(first - spacing / 2 <= lower + 1e-9) and np.all(last + spacing / 2 >= upper - 1e-9)
    assert np.all(np.abs(first - lower) < spacing / 2 + 1e-9) and np.all(np.abs(last - upper) < spacing / 2 + 1e-9)


def test_scaled_keeps_the_corner_centres(oblique_grid):
    for factor in (2.0, 3.0, 4.5, 0.5):
        coarse = oblique_grid.scaled(factor)
        assert coarse.direction == oblique_grid.direction
        np.testing.assert_allclose(coarse.corners(), oblique_grid.corners(), rtol=0, atol=1e-9)
        expected = np.maximum(np.round((np.asarray(oblique_grid.size) - 1) / factor).astype(int) + 1, 2)
        assert coarse.size == tuple(expected)
        # spacing about factor times coarser
        np.testing.assert_allclose(np.asarray(coarse.spacing) / np.asarray(oblique_grid.spacing), factor, rtol=0.2)
    assert oblique_grid.scaled(1000.0).size == (2, 2, 2)


def test_slab_is_the_parent_sub_volume(oblique_grid):
    slab = oblique_grid.slab(5, 17)
    assert slab.size == (40, 34, 12)
    assert slab.spacing == oblique_grid.spacing and slab.direction == oblique_grid.direction
    torch.testing.assert_close(slab.world_points(dtype=torch.float64),
                               oblique_grid.world_points(dtype=torch.float64)[:, 5:17], rtol=0, atol=1e-9)
    # the same as SimpleITK's region of interest
    roi = sitk.RegionOfInterest(oblique_grid.reference_image(), [40, 34, 12], [0, 0, 5])
    assert Grid.from_image(roi).size == slab.size
    np.testing.assert_allclose(Grid.from_image(roi).origin, slab.origin, atol=1e-9)


def test_physical_bounding_box_of_a_box_mask_on_a_rotated_grid():
    direction = rotation("z", 30) @ rotation("x", 20)
    grid = Grid((12, 10, 8), (2.0, 3.0, 4.0), (5.0, -7.0, 11.0), tuple(direction.ravel()))
    mask = np.zeros(grid.shape, bool)
    mask[2:6, 3:8, 4:11] = True  # k 2..5, j 3..7, i 4..10
    lower, upper = physical_bounding_box(grid, mask)
    idx = np.argwhere(mask)[:, ::-1]
    world = grid.transform_indices(idx)
    np.testing.assert_allclose(lower, world.min(0), atol=1e-9)
    np.testing.assert_allclose(upper, world.max(0), atol=1e-9)
    # hand-computed: the extreme corners of the index box [4,10] x [3,7] x [2,5]
    m = grid.index_to_world[:3, :3]
    box_corners = np.array(np.meshgrid([4, 10], [3, 7], [2, 5], indexing="ij")).reshape(3, -1).T
    expected = box_corners @ m.T + np.asarray(grid.origin)
    np.testing.assert_allclose(lower, expected.min(0), atol=1e-9)
    np.testing.assert_allclose(upper, expected.max(0), atol=1e-9)
    # not the index box: rotated, the box is wider than the spacing-scaled index extent along x
    assert upper[0] - lower[0] > 6 * 2.0 + 1.0


def test_physical_bounding_box_contains_every_masked_centre_and_rejects_empty():
    grid = Grid((12, 10, 8), (2.0, 3.0, 4.0), (5.0, -7.0, 11.0), tuple(rotation("y", 40).ravel()))
    rng = np.random.default_rng(6)
    mask = rng.random(grid.shape) > 0.97
    lower, upper = physical_bounding_box(grid, mask)
    world = grid.transform_indices(np.argwhere(mask)[:, ::-1])
    assert np.all(world >= lower - 1e-9) and np.all(world <= upper + 1e-9)
    with pytest.raises(ValueError, match="empty"):
        physical_bounding_box(grid, np.zeros(grid.shape, bool))


def test_inside_uses_half_voxel_margin(oblique_grid):
    idx = np.array([[-0.4, 0, 0], [-0.6, 0, 0], [39.4, 33, 27], [39.6, 33, 27], [20, 17, 14]])
    pts = torch.as_tensor(oblique_grid.transform_indices(idx))
    assert fields.inside(pts, oblique_grid).tolist() == [True, False, True, False, True]
    assert fields.inside(pts, oblique_grid, margin=0.0).tolist() == [False, False, False, False, True]


def test_grid_round_trips_through_its_matrix_and_compares_with_a_tolerance():
    grid = Grid((7, 5, 9), (1.5, 2.0, 3.5), (10.0, -4.0, 2.5), tuple((rotation("z", 30) @ rotation("x", 12)).ravel()))
    back = Grid.from_index_to_world(grid.index_to_world, grid.size)
    np.testing.assert_allclose(back.index_to_world, grid.index_to_world, atol=1e-12)
    assert grid.same_as(back)
    nudged = Grid(grid.size, grid.spacing, tuple(np.add(grid.origin, (0.0, 0.0, 0.01))), grid.direction)
    assert not grid.same_as(nudged) and grid.same_as(nudged, atol=0.02)
    assert not grid.same_as(Grid((7, 5, 8), grid.spacing, grid.origin, grid.direction))


def test_spacing_for_a_voxel_budget():
    assert Grid.spacing_for(np.zeros(3), np.array([100.0, 100.0, 100.0]), 2.0, 10**9) == 2.0  # fits: the finest
    spacing = Grid.spacing_for(np.zeros(3), np.array([400.0, 300.0, 500.0]), 2.0, 1_000_000)
    assert spacing == pytest.approx((400 * 300 * 500 / 1e6) ** (1 / 3))
    assert Grid.covering(np.zeros(3), np.array([400.0, 300.0, 500.0]), spacing=spacing).num_voxels < 1.1e6
