"""Simulated pairs: the ground-truth transform, through SimpleITK, reproduces the fixed labels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.core import fields
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.metrics import dice
from TotalRegistratorLib.core.transform import Transform
from TotalRegistratorLib.errors import InputError
from TotalRegistratorLib.io.images import read_transform
from TotalRegistratorLib.io.labels import read_pairs_csv, write_pairs_csv
from TotalRegistratorLib.simulation import pairs, phantom


def warped_dice(fixed_labels: sitk.Image, moving_labels: sitk.Image, transform: sitk.Transform) -> dict[int, float]:
    warped = sitk.Resample(moving_labels, fixed_labels, transform, sitk.sitkNearestNeighbor, 0)
    return dice(sitk.GetArrayFromImage(fixed_labels), sitk.GetArrayFromImage(warped))


def test_ground_truth_reproduces_fixed_labels_through_sitk():
    """Upper abdomen and lower chest at 1.25 mm (label Dice is limited by the moving grid's voxels, not the field)."""
    rng = np.random.default_rng(7)
    ph = phantom.make_phantom(11)
    motion = pairs.sample_motion(rng, pairs.phantom_landmarks(ph, rng), "intra")
    assert abs(motion.breath) >= 5
    box = ph.to_world(np.array([[-115.0, -95, -95], [115, 95, 65]]))
    fixed_grid = Grid.covering(motion.unpose(box[0]), motion.unpose(box[1]), spacing=(1.25, 1.25, 1.5))
    mapped = motion(fixed_grid.scaled(6.0).world_points(dtype=torch.float64).reshape(-1, 3)).numpy()
    moving_grid = Grid.covering(mapped.min(0) - 4, mapped.max(0) + 4, spacing=(1.0, 1.0, 1.25))
    fixed = phantom.render(ph, fixed_grid, mapping=motion)
    moving = phantom.render(ph, moving_grid)
    scores = warped_dice(fixed.labels, moving.labels, motion.transform(fixed_grid).to_sitk())
    assert len(scores) >= 9, f"the region should hold most structures, got {sorted(scores)}"
    assert np.mean(list(scores.values())) >= 0.97, scores
    unregistered = warped_dice(fixed.labels, moving.labels, sitk.Transform())
    assert np.nanmean(list(unregistered.values())) < 0.8


@pytest.fixture(scope="module")
def intra_pair() -> pairs.Pair:
    return pairs.make_pair("intra", 3, spacing=5.0)


def test_make_pair_intra(intra_pair, tmp_path):
    p = intra_pair
    assert p.truth.residual.shape == (1, 3, *p.truth.grid.shape) and p.truth.grid == Grid.from_image(p.fixed)
    magnitude = p.truth.residual.norm(dim=1)
    assert 3.0 < magnitude.mean() < 60.0 and magnitude.max() < 120.0
    det = fields.jacobian_determinant(p.truth.residual.double(), p.truth.grid)
    assert det.min() > 0.3, "the simulated motion does not fold"
    scores = warped_dice(p.fixed_labels, p.moving_labels, p.transform())
    before = warped_dice(p.fixed_labels, p.moving_labels, sitk.Transform())
    assert np.mean(list(scores.values())) > 0.88  # 5 mm voxels: thin bones lose a few percent to nearest neighbour
    assert np.mean(list(scores.values())) > np.nanmean(list(before.values())) + 0.2

    record = p.write(tmp_path, "p")
    write_pairs_csv(tmp_path / "pairs.csv", [record])
    (back,) = read_pairs_csv(tmp_path / "pairs.csv")
    assert back == record
    transform = read_transform(back.transform)
    x = np.array(Grid.from_image(p.fixed).corners().mean(axis=0))
    expected = p.truth.apply(x)
    assert np.allclose(transform.TransformPoint(tuple(x)), expected, atol=1e-3)
    displacement = sitk.ReadImage(str(tmp_path / "p_displacement.nii.gz"))
    assert displacement.GetNumberOfComponentsPerPixel() == 3 and displacement.GetSize() == p.fixed.GetSize()


def test_motion_is_the_documented_pullback():
    """A pure shift: fixed point x maps to x + t in the moving image."""
    lm = pairs.Landmarks(np.zeros(3), (150.0, 100.0), 0.0, 250.0, -400.0, ())
    motion = pairs.Motion(lm, shift=np.array([5.0, -3.0, 2.0]))
    grid = Grid((4, 3, 2), (10.0, 10.0, 10.0), (0.0, 0.0, 0.0))
    expected = torch.tensor([5.0, -3.0, 2.0]).reshape(1, 3, 1, 1, 1).expand(1, 3, 2, 3, 4)
    assert torch.allclose(motion.transform(grid).residual, expected)
    breathing = pairs.Motion(lm, breath=10.0)
    at_dome = breathing(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 250.0]], dtype=torch.float64))
    assert at_dome[0, 2] == pytest.approx(10.0) and at_dome[1, 2] == pytest.approx(250.0)
    assert np.allclose(motion.unpose(motion(torch.zeros(1, 3, dtype=torch.float64)).numpy()), 0.0)


def test_multiphase_and_inter_pairs():
    multi = pairs.make_pair("multiphase", 1, spacing=7.0)
    assert multi.truth.residual.norm(dim=1).max() < 40.0, "multiphase motion is small"
    inter = pairs.make_pair("inter", 1, spacing=7.0)
    assert inter.truth is None and inter.transform() is None
    assert Grid.from_image(inter.fixed) != Grid.from_image(inter.moving)
    with pytest.raises(ValueError, match="kind"):
        pairs.make_pair("sideways", 0)


def test_same_seed_same_pair():
    a, b = pairs.make_pair("multiphase", 5, spacing=9.0), pairs.make_pair("multiphase", 5, spacing=9.0)
    assert torch.equal(a.truth.residual, b.truth.residual)
    assert np.array_equal(sitk.GetArrayFromImage(a.moving), sitk.GetArrayFromImage(b.moving))


def test_deform_real_scan():
    from conftest import shared_file

    from TotalRegistratorLib.io.images import read_image
    from TotalRegistratorLib.io.labels import read_structures

    image = read_image(shared_file("totalsegmentator/example_ct_sm.nii.gz"))
    labels = read_structures(shared_file("totalsegmentator/example_seg.nii.gz"), "totalsegmentator")
    p = pairs.deform_scan(image, labels, seed=2)
    assert p.moving is image and p.fixed.GetSize() == image.GetSize()
    # the ground truth handed out is the transform that made the fixed image; the opposite sense is far off
    air = float(sitk.GetArrayViewFromImage(image).min())
    flipped = Transform.from_field(-p.truth.residual, p.truth.grid).to_sitk()
    for transform, error in ((p.transform(), lambda e: e.max() < 1e-3), (flipped, lambda e: e.mean() > 20.0)):
        remade = sitk.GetArrayFromImage(sitk.Resample(image, image, transform, sitk.sitkLinear, air))
        assert error(np.abs(remade - sitk.GetArrayFromImage(p.fixed)))  # HU
    assert p.truth.residual.norm(dim=1).mean() > 2.0
    shifted = sitk.Image(labels)
    shifted.SetOrigin([o + 6.0 for o in labels.GetOrigin()])
    with pytest.raises(InputError, match="labels: label map does not share the grid of the scan"):
        pairs.deform_scan(image, shifted, seed=2)
