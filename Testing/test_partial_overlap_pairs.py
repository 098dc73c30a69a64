"""Partial-overlap phantom pairs (``intra-partial``, ``inter-partial``): two scans whose z ranges overlap over
30-60 % of the shorter one, cut from the ``intra`` and ``inter`` pairs of the same seed.

The overlap is measured here independently of ``partial.partial_slabs``: each scan's slices are placed in the
phantom's anatomy frame (the phantoms rebuilt from the seed as ``make_pair`` draws them first; the fixed scan
of an ``intra-partial`` pair through the ground truth the pair carries), at each slice's in-plane centre.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.app.cli import main
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.simulation import pairs
from TotalRegistratorLib.simulation.phantom import make_phantom

SEEDS = range(6)
SPACING = 8.0


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def phantoms(kind: str, seed: int):
    """The (fixed, moving) phantoms of a pair: make_pair draws the phantom seeds first."""
    rng = np.random.default_rng(seed)
    ph = make_phantom(int(rng.integers(2**31)))
    return (ph, make_phantom(int(rng.integers(2**31)))) if kind.startswith("inter") else (ph, ph)


def heights(ph, image: sitk.Image, truth=None) -> np.ndarray:
    """Anatomy-frame z of each slice's in-plane centre (through ``truth`` if given)."""
    grid = Grid.from_image(image)
    centres = [[(grid.size[0] - 1) / 2, (grid.size[1] - 1) / 2, k] for k in range(grid.size[2])]
    world = grid.transform_indices(np.array(centres, float))
    if truth is not None:
        world = truth.apply(world)
    a = (world - ph.translation) @ ph.rotation
    return a[:, 2] / ph.scale[2]


def z_ranges(kind: str, seed: int, pair: pairs.Pair) -> tuple[tuple[float, float], tuple[float, float]]:
    fixed_ph, moving_ph = phantoms(kind, seed)
    f, m = heights(fixed_ph, pair.fixed, pair.truth), heights(moving_ph, pair.moving)
    assert np.all(np.diff(f) > 0) and np.all(np.diff(m) > 0), "slices rise with k"
    return (f[0], f[-1]), (m[0], m[-1])


def overlap(a, b) -> float:
    return max(min(a[1], b[1]) - max(a[0], b[0]), 0.0) / min(a[1] - a[0], b[1] - b[0])


@pytest.fixture(scope="module")
def made() -> dict[tuple[str, int], pairs.Pair]:
    return {(kind, seed): pairs.make_pair(kind, seed, spacing=SPACING)
            for kind in ("intra-partial", "inter-partial") for seed in SEEDS}


def test_kinds_are_listed():
    assert pairs.KINDS[:3] == ("intra", "multiphase", "inter")
    assert {"intra-partial", "inter-partial"} <= set(pairs.KINDS)


@pytest.mark.parametrize("kind", ["intra-partial", "inter-partial"])
def test_z_overlap_is_a_third_to_three_fifths_of_the_shorter_scan(made, kind):
    on_top = set()
    for seed in SEEDS:
        pair = made[kind, seed]
        fixed, moving = z_ranges(kind, seed, pair)
        fraction = overlap(fixed, moving)
        assert 0.3 <= fraction <= 0.6, (seed, fixed, moving, fraction)
        # neither scan holds the other: one reaches higher, the other lower, in anatomy and in scanner z
        assert (fixed[1] > moving[1]) == (fixed[0] > moving[0]), (seed, fixed, moving)
        fz, mz = Grid.from_image(pair.fixed).corners()[:, 2], Grid.from_image(pair.moving).corners()[:, 2]
        assert (fz.max() > mz.max()) == (fz.min() > mz.min()) and abs(fz.max() - mz.max()) > 2 * SPACING
        on_top.add(bool(fixed[1] > moving[1]))
        # each scan is a real slab of the chest-abdomen-pelvis range (about 780 mm), not the whole
        assert all(150 < r[1] - r[0] < 420 for r in (fixed, moving)), (seed, fixed, moving)
    assert on_top == {True, False}, "which scan lies higher varies with the seed"


@pytest.mark.parametrize("kind", ["intra-partial", "inter-partial"])
def test_partial_pair_is_the_whole_pair_cut_along_z(made, kind):
    """Same patient(s), grids and motion as the whole pair of the same seed; labels cut with their images."""
    for seed in SEEDS[:3]:
        part, whole = made[kind, seed], pairs.make_pair(kind.removesuffix("-partial"), seed, spacing=SPACING)
        assert part.kind == kind
        for side in ("fixed", "moving"):
            image, labels = getattr(part, side), getattr(part, f"{side}_labels")
            grid, full = Grid.from_image(image), Grid.from_image(getattr(whole, side))
            assert Grid.from_image(labels) == grid and labels.GetPixelID() == sitk.sitkUInt8
            assert grid.size[:2] == full.size[:2] and grid.size[2] < full.size[2]
            assert grid.spacing == full.spacing and grid.direction == full.direction
            start = full.transform_points(np.array(grid.origin))
            assert np.allclose(start[:2], 0, atol=1e-6) and abs(start[2] - round(start[2])) < 1e-6
            k = int(round(start[2]))
            assert grid.same_as(full.slab(k, k + grid.size[2]))
            cut = array(getattr(whole, f"{side}_labels"))[k:k + grid.size[2]]
            assert np.mean(array(labels) == cut) > 0.999 and (array(labels) > 0).sum() > 1000
            # the image is the same anatomy (its own noise)
            hu = array(image).astype(float), array(getattr(whole, side))[k:k + grid.size[2]].astype(float)
            assert np.corrcoef(hu[0].ravel(), hu[1].ravel())[0, 1] > 0.95
        if kind == "intra-partial":
            k = int(round(Grid.from_image(whole.fixed).transform_points(np.array(part.fixed.GetOrigin()))[2]))
            assert part.truth.grid == Grid.from_image(part.fixed)
            assert torch.allclose(part.truth.residual, whole.truth.residual[:, :, k:k + part.truth.grid.size[2]],
                                  atol=1e-3)
        else:
            assert part.truth is None and part.transform() is None


def interior_agreement(pair: pairs.Pair, mapping) -> tuple[float, int, int]:
    """Labelled fixed voxels inside their structure (all six neighbours alike) that ``mapping`` takes inside
    the moving scan: the fraction whose nearest moving voxel has the same label, how many, and how many in all."""
    fixed, moving = array(pair.fixed_labels), array(pair.moving_labels)
    centre = fixed[1:-1, 1:-1, 1:-1]
    alike = centre > 0
    for axis in range(3):
        for step in (-1, 1):
            alike &= np.roll(fixed, step, axis)[1:-1, 1:-1, 1:-1] == centre
    interior = np.zeros(fixed.shape, bool)
    interior[1:-1, 1:-1, 1:-1] = alike
    kji = np.argwhere(interior)
    world = Grid.from_image(pair.fixed).transform_indices(kji[:, ::-1].astype(float))
    grid = Grid.from_image(pair.moving)
    index = np.rint(grid.transform_points(mapping(world))).astype(int)
    inside = np.all((index >= 0) & (index < np.array(grid.size)), axis=1)
    found = moving[index[inside, 2], index[inside, 1], index[inside, 0]]
    return float(np.mean(found == fixed[tuple(kji[inside].T)])), int(inside.sum()), len(kji)


def test_intra_partial_truth_takes_fixed_structures_to_the_same_moving_ones(made):
    """Wherever the truth lands inside the moving slab, it lands in the fixed voxel's structure (at 8 mm,
    the voxels inside their structure: nearest-neighbour lookups at edges miss by resolution alone)."""
    agreeing, landed, truth_scores, identity_scores, outside = 0.0, 0, [], [], []
    for seed in SEEDS:
        pair = made["intra-partial", seed]
        agreement, inside, total = interior_agreement(pair, pair.truth.apply)
        assert inside >= 20 and agreement > 0.9, (seed, agreement, inside, total)
        agreeing, landed = agreeing + agreement * inside, landed + inside
        outside.append(1 - inside / total)
        truth_scores.append(agreement)
        identity_scores.append(interior_agreement(pair, lambda x: x)[0])
    assert agreeing / landed > 0.98, truth_scores
    assert max(outside) > 0.5, "part of the fixed anatomy lies outside the moving scan"
    assert np.mean(identity_scores) < np.mean(truth_scores) - 0.2, (identity_scores, truth_scores)


@pytest.mark.parametrize("kind", ["intra-partial", "inter-partial"])
def test_same_seed_same_pair(made, kind):
    again = pairs.make_pair(kind, 2, spacing=SPACING)
    first = made[kind, 2]
    for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
        assert Grid.from_image(getattr(again, key)) == Grid.from_image(getattr(first, key))
        assert np.array_equal(array(getattr(again, key)), array(getattr(first, key)))
    if kind == "intra-partial":
        assert torch.equal(again.truth.residual, first.truth.residual)
    assert Grid.from_image(made[kind, 3].fixed) != Grid.from_image(first.fixed)


def test_size_is_the_whole_scans():
    size = (40, 36, 90)
    for kind in ("intra-partial", "inter-partial"):
        pair = pairs.make_pair(kind, 4, size=size)
        for image in (pair.fixed, pair.moving, pair.fixed_labels, pair.moving_labels):
            assert image.GetSize()[:2] == size[:2] and 12 < image.GetSize()[2] < 60, (kind, image.GetSize())
        fixed, moving = z_ranges(kind, 4, pair)
        assert 0.3 <= overlap(fixed, moving) <= 0.6


# statistics of the existing kinds, computed before the partial kinds were added (seed, spacing 8 mm):
# (size, origin) per image, label voxels (fixed, moving), HU means (fixed, moving), mean |truth residual|
EXISTING = {
    ("intra", 3): (((59, 59, 106), (-207.896, -181.18, -454.252)), ((58, 58, 107), (237.453, 269.831, -480.698)),
                   (23032, 24970), (-586.445, -554.700), 18.2272),
    ("multiphase", 1): (((50, 50, 99), (184.853, 204.138, -412.933)), ((53, 53, 101), (197.366, 215.955, -420.633)),
                        (27129, 27019), (-505.031, -564.896), 2.7697),
    ("inter", 1): (((55, 55, 96), (-226.644, -208.069, -395.28)), ((46, 46, 100), (190.024, 218.031, -409.822)),
                   (26915, 23402), (-588.119, -541.449), None),
}


@pytest.mark.parametrize("kind, seed", list(EXISTING))
def test_existing_kinds_unchanged(kind, seed):
    fixed_geometry, moving_geometry, label_voxels, hu, truth = EXISTING[kind, seed]
    pair = pairs.make_pair(kind, seed, spacing=SPACING)
    for image, labels, geometry, voxels, mean in zip((pair.fixed, pair.moving), (pair.fixed_labels, pair.moving_labels),
                                                      (fixed_geometry, moving_geometry), label_voxels, hu, strict=True):
        assert image.GetSize() == geometry[0] and labels.GetSize() == geometry[0]
        assert np.allclose(image.GetOrigin(), geometry[1], atol=2e-3)
        assert abs(int((array(labels) > 0).sum()) - voxels) <= 0.002 * voxels
        assert array(image).astype(float).mean() == pytest.approx(mean, abs=0.05)
    if truth is None:
        assert pair.truth is None
    else:
        assert float(pair.truth.residual.double().abs().mean()) == pytest.approx(truth, abs=2e-4)


@pytest.mark.parametrize("kind", ["intra-partial", "inter-partial"])
def test_phantom_command_and_benchmark_suites_take_the_kinds(kind, tmp_path):
    out = tmp_path / kind  # a hyphenated folder name
    assert main(["phantom", "-o", str(out), "--kind", kind, "--spacing", "12", "--seed", "1"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"pairs.csv", "gallery.png", "pair000_fixed.nii.gz", "pair000_moving_labels.nii.gz"} <= names
    assert ("pair000_transform.h5" in names) == (kind == "intra-partial")
    fixed, moving = (sitk.ReadImage(str(out / f"pair000_{side}.nii.gz")) for side in ("fixed", "moving"))
    assert fixed.GetSize()[2] != moving.GetSize()[2] or fixed.GetOrigin()[2] != moving.GetOrigin()[2]

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import compare

    for suite in ("validation", "full"):
        specs = [s for s in compare.suite_pairs(suite) if s.group == f"phantom {kind}"]
        assert [s.name for s in specs] == [f"{kind}-{seed}" for seed in range(compare.SEED_BASE, compare.SEED_BASE
                                                                              + compare.SUITES[suite].phantom)]
