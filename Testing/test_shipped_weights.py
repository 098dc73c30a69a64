"""The shipped cascade (Resources/weights): all five blocks load at the paper's grid and, on a phantom pair it
never saw (the benchmark seeds from 10,000 up; training used ``phantom_cli.pair_seed`` hashes), the full
cascade aligns the 11 training structures better than its affine block alone and than no registration,
without folding. Resources/MODEL_CARD.md has the numbers over 12 such pairs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.app.cli import main
from TotalRegistratorLib.app.pipeline import field_summary, load_cascade, shipped_blocks
from TotalRegistratorLib.core import metrics
from TotalRegistratorLib.core.preprocess import NETWORK_SIZE
from TotalRegistratorLib.io.labels import LABELS, TRAINING_STRUCTURES
from TotalRegistratorLib.learned.cascade import BLOCKS, run_cascade
from TotalRegistratorLib.optimization.instance import resample_moving
from TotalRegistratorLib.simulation.pairs import make_pair

pytestmark = pytest.mark.skipif(not shipped_blocks(), reason="no cascade weights in Resources/weights")
VALIDATION_SEED = 10_000  # benchmarks/compare.py SEED_BASE


def mean_dice(pair, transform: sitk.Transform | None) -> float:
    fixed = sitk.GetArrayFromImage(pair.fixed_labels)
    warped = sitk.GetArrayFromImage(resample_moving(pair.moving_labels, pair.fixed, transform, labels=True))
    present = [LABELS[s] for s in TRAINING_STRUCTURES if (fixed == LABELS[s]).any()]
    return float(np.mean(list(metrics.dice(fixed, warped, present).values())))


def test_every_block_ships_for_the_paper_grid():
    assert shipped_blocks() == BLOCKS
    assert load_cascade(None, BLOCKS).size == NETWORK_SIZE


@pytest.mark.parametrize("kind", ["intra", "inter"])
def test_cascade_beats_affine_and_no_registration_on_an_unseen_pair(kind):
    pair = make_pair(kind, VALIDATION_SEED, spacing=4.0)
    affine = run_cascade(pair.fixed, pair.moving, load_cascade(None, ("affine",)))
    full = run_cascade(pair.fixed, pair.moving, load_cascade(None, BLOCKS))
    before, after_affine, after = mean_dice(pair, None), mean_dice(pair, affine.transform()), \
        mean_dice(pair, full.transform())
    assert after > after_affine + 0.01 and after > before + 0.05, (before, after_affine, after)
    assert field_summary(full.field, full.grid)["folding_percent"] < 1.0


def test_register_runs_the_shipped_cascade_then_refines(tmp_path):
    record = make_pair("multiphase", VALIDATION_SEED, spacing=6.0).write(tmp_path, "pair", ground_truth=False)
    out = tmp_path / "out"
    assert main(["register", str(record.fixed), str(record.moving), "-o", str(out), "--fixed-labels",
                 str(record.fixed_labels), "--moving-labels", str(record.moving_labels), "--blocks", "all",
                 "--iterations", "20,10", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["blocks"] == list(BLOCKS) and report["refine"] is True
    assert report["timings_s"]["cascade"] > 0 and report["timings_s"]["refine_deformable"] > 0
    assert report["dice"]["mean_after"] > report["dice"]["mean_before"] + 0.05
