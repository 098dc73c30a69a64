"""The optimiser's starting translation (partial overlaps cannot trap it) and its guard (never worse than its start)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest import torso

from TotalRegistratorLib.core import metrics
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.preprocess import Scan
from TotalRegistratorLib.optimization import alignment
from TotalRegistratorLib.optimization.instance import optimize_pair, resample_moving
from TotalRegistratorLib.optimization.optimizer import OptimizationSettings
from TotalRegistratorLib.simulation.pairs import make_pair

FIXED_BOX = Grid((20, 20, 41), (5.0, 5.0, 5.0), (0.0, 0.0, 0.0))  # z 0..200 mm
MOVING_BOX = Grid((20, 20, 61), (5.0, 5.0, 5.0), (0.0, 0.0, 150.0))  # z 150..450 mm


def z_overlap(t: float) -> float:
    (f0, f1), (m0, m1) = alignment.z_range(FIXED_BOX), alignment.z_range(MOVING_BOX)
    return (min(f1 + t, m1) - max(f0 + t, m0)) / min(f1 - f0, m1 - m0)


def test_z_shifts_keep_the_minimum_overlap_and_span_both_ends():
    shifts = alignment.z_shifts(FIXED_BOX, MOVING_BOX, 10.0)
    overlaps = np.array([z_overlap(t) for t in shifts])
    assert overlaps.min() >= alignment.MIN_OVERLAP - 1e-9
    # the fixed scan slides from below the moving one's bottom to above its top
    assert shifts.min() < 150.0 - 200.0 + 0.3 * 200 and shifts.max() > 450.0 - 0.3 * 200
    assert np.allclose(np.diff(shifts), 10.0)
    assert alignment.z_shifts(FIXED_BOX, MOVING_BOX, 10.0, min_overlap=1.5).size == 0


def test_initial_translation_takes_the_best_scoring_candidate():
    fixed_centroid, moving_centroid = np.array([50.0, 50.0, 100.0]), np.array([40.0, 45.0, 300.0])
    true_z = 230.0  # the loss is lowest there: far from the centroid translation (200 mm)

    def loss(matrix):
        return abs(matrix[2, 3] - true_z) / 100.0 - 1.0

    chosen = alignment.initial_translation(FIXED_BOX, MOVING_BOX, fixed_centroid, moving_centroid, 10.0, loss)
    assert abs(chosen[2, 3] - true_z) <= 5.0
    assert np.allclose(chosen[:2, 3], (moving_centroid - fixed_centroid)[:2])  # x and y from the centroids
    # a flat loss keeps the centroid translation (noise must not move a good start)
    kept = alignment.initial_translation(FIXED_BOX, MOVING_BOX, fixed_centroid, moving_centroid, 10.0,
                                         lambda matrix: -0.5)
    assert np.allclose(kept[:3, 3], moving_centroid - fixed_centroid)


def mean_dice(pair, transform) -> float:
    fixed = sitk.GetArrayFromImage(pair.fixed_labels)
    warped = sitk.GetArrayFromImage(resample_moving(pair.moving_labels, pair.fixed, transform, labels=True))
    labels = sorted(set(np.unique(fixed).tolist()) - {0})
    return float(np.nanmean(list(metrics.dice(fixed, warped, labels).values())))


def test_a_partial_overlap_pair_is_not_trapped_by_its_body_centroids():
    """Scan ranges overlapping by a fraction in z: the body centroids' translation starts about 60 mm off and
    the optimisation from it ends below doing nothing; the searched start does not."""
    pair = make_pair("inter-partial", 10001, spacing=5.0)
    result = optimize_pair(Scan(pair.fixed, "fixed"), Scan(pair.moving, "moving"),
                           OptimizationSettings(deformable_iterations=(40, 10), spacing=5.0))
    before, after = mean_dice(pair, None), mean_dice(pair, result.to_sitk())
    assert after > before + 0.15, (before, after)


def test_the_guard_keeps_the_affine_map_when_the_deformable_stage_makes_things_worse():
    grid = Grid((56, 44, 44), (4.0, 4.0, 4.0), (-110.0, -86.0, -86.0))
    fixed, moving = torso(grid), torso(grid, shift=(5.0, -4.0, 3.0), noise_seed=1)
    scans = Scan(fixed, "fixed"), Scan(moving, "moving")
    fast = dict(affine_iterations=(30, 15), deformable_iterations=(10, 5), spacing=4.0)
    sane = optimize_pair(*scans, OptimizationSettings(**fast))
    assert sane.kept == "deformable" and not sane.transform.is_linear
    # steps of 40 mm per iteration and no smoothness: the field scrambles the image
    wild = optimize_pair(*scans, OptimizationSettings(**fast, learning_rates=(40.0, 40.0), smoothness=0.0,
                                                      field_factor=1))
    assert wild.kept in ("affine", "start") and wild.transform.is_linear


def test_a_start_worse_than_the_searched_translation_is_set_aside():
    """A given start (as the cascade's would be) 80 mm off along z: refinement would stay trapped near it; the
    optimiser scores it against the searched translation and starts from the better one."""
    from TotalRegistratorLib.core.transform import Transform

    grid = Grid((56, 44, 60), (4.0, 4.0, 4.0), (-110.0, -86.0, -118.0))
    fixed, moving = torso(grid), torso(grid, shift=(5.0, -4.0, 3.0), noise_seed=1)
    settings = OptimizationSettings(affine_iterations=(30, 15), deformable_iterations=(10, 5), spacing=4.0)
    bad_start = Transform(alignment.translation([0.0, 0.0, 80.0]))
    result = optimize_pair(Scan(fixed, "fixed"), Scan(moving, "moving"), settings, start=bad_start)
    assert result.start_replaced
    centre = Grid.from_image(fixed).corners().mean(axis=0)
    assert np.abs(result.transform.apply(centre) - centre - (5.0, -4.0, 3.0)).max() < 2.0
    good = optimize_pair(Scan(fixed, "fixed"), Scan(moving, "moving"), settings,
                         start=Transform(alignment.translation([5.0, -4.0, 3.0])))
    assert not good.start_replaced
