"""The shipped cascade (TotalRegistratorLib/weights): all five blocks load at the default network grid and,
on a phantom pair it never saw (the benchmark seeds from 10,000 up; training used ``pairs.pair_seed`` hashes), the full
cascade aligns the 11 training structures far better than no registration and at least as well as its
affine block alone, without folding. Resources/MODEL_CARD.md has the numbers over the 20 validation pairs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.app.cli import main
from TotalRegistratorLib.app.pipeline import load_cascade
from TotalRegistratorLib.app.report import field_summary
from TotalRegistratorLib.core import metrics
from TotalRegistratorLib.core.preprocess import NETWORK_SIZE, Scan
from TotalRegistratorLib.learned.cascade import BLOCKS, run_cascade
from TotalRegistratorLib.optimization.instance import resample_moving
from TotalRegistratorLib.registry import LABELS, TRAINING_STRUCTURES
from TotalRegistratorLib.simulation.pairs import make_pair
from TotalRegistratorLib.weights import shipped_blocks

pytestmark = pytest.mark.skipif(not shipped_blocks(), reason="no cascade weights in TotalRegistratorLib/weights")
VALIDATION_SEED = 10_000  # benchmarks/compare.py SEED_BASE


def mean_dice(pair, transform: sitk.Transform | None) -> float:
    fixed = sitk.GetArrayFromImage(pair.fixed_labels)
    warped = sitk.GetArrayFromImage(resample_moving(pair.moving_labels, pair.fixed, transform, labels=True))
    present = [LABELS[s] for s in TRAINING_STRUCTURES if (fixed == LABELS[s]).any()]
    return float(np.mean(list(metrics.dice(fixed, warped, present).values())))


def test_every_block_ships_for_the_default_network_grid():
    assert shipped_blocks() == BLOCKS
    assert load_cascade(None, BLOCKS).size == NETWORK_SIZE


# the deformable blocks add most between different patients; on intra-patient pairs the affine block does
# nearly all of the cascade's work (Resources/MODEL_CARD.md: intra 38.3 -> 75.9 -> 76.0 % on this pair)
@pytest.mark.parametrize("kind, over_affine", [("intra", -0.005), ("inter", 0.01)])
def test_cascade_beats_affine_and_no_registration_on_an_unseen_pair(kind, over_affine):
    pair = make_pair(kind, VALIDATION_SEED, spacing=4.0)
    fixed, moving = Scan(pair.fixed), Scan(pair.moving)
    affine = run_cascade(fixed, moving, load_cascade(None, ("affine",)))
    full = run_cascade(fixed, moving, load_cascade(None, BLOCKS))
    assert affine.transform.is_linear and not full.transform.is_linear
    before, after_affine, after = mean_dice(pair, None), mean_dice(pair, affine.to_sitk()), \
        mean_dice(pair, full.to_sitk())
    assert after > after_affine + over_affine and after > before + 0.2, (before, after_affine, after)
    assert field_summary(full.transform.field_on(full.grid), full.grid)["folding_percent"] < 1.0


def test_register_runs_the_shipped_cascade_then_refines(tmp_path):
    record = make_pair("multiphase", VALIDATION_SEED, spacing=6.0).write(tmp_path, "pair", ground_truth=False)
    reports = {}
    for name, extra in (("cascade", ["--no-refine"]), ("refined", ["--iterations", "20,10"])):
        assert main(["register", str(record.fixed), str(record.moving), "-o", str(tmp_path / name), "--fixed-labels",
                     str(record.fixed_labels), "--moving-labels", str(record.moving_labels), "--blocks", "all",
                     "--quiet", *extra]) == 0
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    cascade, refined = reports["cascade"], reports["refined"]
    assert refined["blocks"] == list(BLOCKS) and refined["refine"] is True and cascade["refine"] is False
    assert {"cascade", "refine_affine", "refine_deformable"} <= set(refined["timings_s"])
    assert "refine_deformable" not in cascade["timings_s"]
    # the refinement starts from the cascade's map and improves on it (the shipped cascade alone is no better
    # than no registration on multiphase pairs: Resources/MODEL_CARD.md)
    assert refined["dice"]["mean_after"] > cascade["dice"]["mean_after"] + 0.02
    assert refined["dice"]["mean_after"] > refined["dice"]["mean_before"] + 0.05
