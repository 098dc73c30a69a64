"""The optimiser's sampler equals grid_sample's trilinear sampling (fields.sample): values and point gradients;
its planar indices give the same field-of-view test as LPS points."""

from __future__ import annotations

import pytest
import torch

from TotalRegistratorLib.core import fields, sampling
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.sampling import Sampler
from TotalRegistratorLib.optimization.levels import FOV_TOLERANCE, Level, Similarity, erode, sees_moving


def _points(grid: Grid, generator: torch.Generator) -> torch.Tensor:
    """LPS points over ``grid``'s box and 3 voxels beyond it on every side (outside, edges and corners)."""
    index = torch.rand(1, 7, 9, 11, 3, generator=generator, dtype=torch.float64)
    index = index * (torch.tensor(grid.size, dtype=torch.float64) + 5) - 3
    return torch.as_tensor(grid.transform_indices(index.reshape(-1, 3).numpy())).reshape(index.shape)


@pytest.mark.parametrize("channels, float32_rows", [(1, sampling.FLOAT32_ROWS), (1, 0), (3, sampling.FLOAT32_ROWS)])
def test_sampler_equals_grid_sample_in_values_and_gradients(oblique_grid, channels, float32_rows, monkeypatch):
    monkeypatch.setattr(sampling, "FLOAT32_ROWS", float32_rows)  # 0: row numbers in float64, as for huge images
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, channels, *oblique_grid.shape, generator=generator)
    points = _points(oblique_grid, generator).float()
    # voxel centres too: values agree there; the gradient is one of two one-sided ones, either is right
    on_voxels = torch.as_tensor(oblique_grid.transform_indices([[2.0, 3.0, 4.0], [0.0, 0.0, 0.0]])).float()
    points = torch.cat([points.reshape(-1, 3), on_voxels])[None, :, None, None]
    outputs = []
    for sample in (Sampler(image, oblique_grid), lambda p: fields.sample(image, oblique_grid, p)):
        moved = points.clone().requires_grad_(True)
        values = sample(moved)
        weights = torch.randn(values.shape, generator=torch.Generator().manual_seed(1))
        (values * weights).sum().backward()
        outputs.append((values.detach(), moved.grad))
    (ours, our_grad), (theirs, their_grad) = outputs
    assert ours.shape == theirs.shape == (1, channels, points.shape[1], 1, 1)
    assert (theirs != 0).float().mean() > 0.5, "most points should fall inside the image"
    assert torch.allclose(ours, theirs, atol=2e-5)  # several channels: LPS -> index -> normalised, two roundings
    smooth = slice(0, -len(on_voxels))
    assert torch.allclose(our_grad[:, smooth], their_grad[:, smooth], atol=1e-4)
    beyond = ~fields.inside(points, oblique_grid, margin=1.0)
    assert beyond.sum() > 10 and (ours[0, 0].reshape(beyond.shape)[beyond] == 0).all()


def test_sampler_refuses_a_batch(oblique_grid):
    with pytest.raises(ValueError, match="one image"):
        Sampler(torch.zeros(2, 1, *oblique_grid.shape), oblique_grid)


def test_which_windows_see_moving_data_from_planar_indices_equals_the_test_on_lps_points(oblique_grid):
    """``levels.sees_moving`` takes the sampler's planar indices: the same voxels as testing the LPS points
    against the moving field of view (``fields.inside``) and eroding by the similarity's reach."""
    generator = torch.Generator().manual_seed(2)
    fixed_grid = oblique_grid.scaled(2.5)
    points = fixed_grid.world_points() + torch.tensor([30.0, -10.0, 5.0])  # the same box, shifted: partly outside
    sim = Similarity("ncc", 2, generator)
    level = Level(fixed_grid, torch.zeros(1, 1, *fixed_grid.shape), Sampler(torch.rand(1, 1, *oblique_grid.shape),
                  oblique_grid), None, torch.ones(1, *fixed_grid.shape, dtype=torch.bool))
    ours = sees_moving(level, level.moving.index(points), oblique_grid, sim)
    theirs = erode(fields.inside(points, oblique_grid, margin=FOV_TOLERANCE), sim.reach)
    assert 0 < int(theirs.sum()) < theirs.numel(), "some windows in view, some not"
    assert torch.equal(ours, theirs)
