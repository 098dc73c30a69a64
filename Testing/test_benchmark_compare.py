"""benchmarks/compare.py end to end on one small pair: a phantom translated by a known +t.

The pair is fixed(x) = moving(x + t), so every method's pullback field must be +t inside the body:
a method whose field came back in the wrong sense would be off by about 2 |t|. Baselines run in their
own virtual environments; a missing one skips its test, naming the environment. ANTs' [warp, affine]
order is applied by ANTs itself (antsApplyTransforms composes the forward list), so a translation
checks the sense, not the order; the phantom intra pairs of the quick suite (pose plus breathing)
check both (ANTs error well below the unregistered one).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.transform import Transform
from TotalRegistratorLib.simulation.pairs import Pair, make_pair

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare  # noqa: E402

SHIFT = (6.0, -9.0, 12.0)  # mm, not a whole number of voxels
# Transformix writes the field the same way whatever the maps; the rigid map alone takes seconds, the default
# three (rigid, affine, B-spline) minutes.
ELASTIX_RIGID = dataclasses.replace(compare.METHODS["elastix"], key="elastix-rigid", args=("--maps", "rigid"))


def translated_pair() -> Pair:
    """A phantom scan (8 mm voxels) as the moving image and its copy shifted by -t as the fixed one."""
    source = make_pair("intra", compare.SEED_BASE, spacing=8.0)
    moving, moving_labels = source.moving, source.moving_labels
    shift = sitk.TranslationTransform(3, SHIFT)
    fixed = sitk.Resample(moving, moving, shift, sitk.sitkLinear, -1000.0)
    fixed_labels = sitk.Resample(moving_labels, moving_labels, shift, sitk.sitkNearestNeighbor, 0)
    grid = Grid.from_image(moving)
    field = torch.tensor(SHIFT, dtype=torch.float32).reshape(1, 3, 1, 1, 1).expand(1, 3, *grid.shape).clone()
    return Pair("translation", fixed, moving, fixed_labels, moving_labels, Transform.from_field(field, grid))


@pytest.fixture(scope="module")
def spec() -> compare.PairSpec:
    pair = translated_pair()
    return compare.PairSpec("translation", "phantom translation", lambda: pair)


def _run(spec, methods: list[compare.Method], folder: Path) -> dict[str, dict]:
    for method in methods:
        reason = method.unavailable()
        if reason:
            pytest.skip(f"{method.title}: {reason}")
    rows = compare.run([spec], methods, folder, threads=1)
    return {row["method"]: row for row in rows}


def _check_recovers_shift(row: dict, before: dict) -> None:
    assert row["status"] == "ok", row["status"]
    norm = float(np.linalg.norm(SHIFT))
    assert before["error_mean_mm"] == pytest.approx(norm, rel=1e-3)  # the unregistered field is zero
    assert row["error_mean_mm"] < 0.25 * norm, f"{row['method']}: error {row['error_mean_mm']:.2f} mm; sign flipped?"
    assert row["dice_mean"] > before["dice_mean"] + 0.1
    assert row["folding_percent"] < 1.0


def test_harness_with_instance_optimisation(spec, tmp_path):
    rows = _run(spec, [compare.METHODS[key] for key in ("unregistered", "io")], tmp_path)
    _check_recovers_shift(rows["io"], rows["unregistered"])
    assert rows["io"]["seconds"] > 0 and rows["io"]["peak_memory_mb"] > 0 and rows["io"]["threads"] == 1
    again = compare.run([spec], [compare.METHODS[key] for key in rows], tmp_path, threads=1, resume=True)
    # reused from row.json, not run again (a rerun's seconds would differ)
    assert [(r["method"], r["seconds"], r["dice_mean"]) for r in again] == \
        [(r["method"], r["seconds"], r["dice_mean"]) for r in rows.values()]
    assert rows["io"]["commit"] == compare.head_commit() and rows["io"]["date"]  # provenance of each row
    assert compare.provenance([{"commit": "a"}, {"commit": "a"}], "commit") == "a"
    assert compare.provenance([{"commit": "a"}, {"commit": "b"}, {"commit": "b"}, {}], "commit") == \
        "a (1 row), b (2 rows), not recorded (1 row)"
    methods = [compare.METHODS[key] for key in rows]
    compare.write_csv(list(rows.values()), tmp_path / "results.csv")
    with open(tmp_path / "results.csv") as handle:
        assert [r["method"] for r in csv.DictReader(handle)] == ["unregistered", "io"]
    status = {m.key: "ran" for m in methods} | {"cascade": "pending: no weights"}
    text = compare.markdown(list(rows.values()), [*methods, compare.METHODS["cascade"]], status,
                            {"command": "test", "commit": "x", "date": "today", "machine": "m", "threads": 1})
    assert "pending: no weights" in text and "| lung |" in text and "speed-up vs Elastix" in text
    io_line = next(line for line in text.splitlines() if line.startswith("| phantom translation | Instance"))
    assert io_line.endswith(f"| {rows['io']['seconds']:.1f} |")  # each group's registration time
    compare.boxplot(list(rows.values()), methods, tmp_path / "box.png")
    import matplotlib.pyplot as plt

    pixels = plt.imread(tmp_path / "box.png")[..., :3]
    assert pixels.shape[:2] == (round((3.2 + 0.8) * 110), round(14.0 * 110))  # one group panel, 110 dpi
    for i in range(len(methods)):  # every method's boxes are drawn in its colour
        colour = np.array(plt.get_cmap("tab10")(i)[:3])
        assert (np.abs(pixels - colour).max(axis=-1) < 0.02).sum() > 50, methods[i].key


def test_speedup_over_elastix_is_per_pair_on_pairs_both_finished():
    def row(pair, method, seconds, status="ok", group="g"):
        return {"pair": pair, "method": method, "seconds": seconds, "status": status, "group": group}

    rows = [row("a", "elastix", 400.0), row("a", "io", 10.0), row("b", "elastix", 50.0), row("b", "io", 10.0),
            row("c", "elastix", 60.0), row("c", "io", 30.0), row("d", "elastix", 0.0, "failed: x"),
            row("d", "io", 99.0), row("e", "io", 5.0, group="other"), row("e", "elastix", 10.0, group="other")]
    assert sorted(compare.elastix_speedups(rows, "io", "g")) == [2.0, 5.0, 40.0]  # d: Elastix failed
    assert compare.elastix_speedups(rows, "io", "other").tolist() == [2.0]


def test_the_harness_measures_its_own_checkout():
    """Library imports and method subprocesses use the checkout compare.py is in (a worktree, not the
    checkout the virtual environment's editable install points at)."""
    assert Path(compare.images.__file__).resolve().parents[2] == compare.REPO
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(compare.REPO)


@pytest.mark.parametrize("method", [compare.METHODS["ants"], ELASTIX_RIGID], ids=["ants", "elastix"])
def test_baseline_field_sense(spec, method, tmp_path):
    rows = _run(spec, [compare.METHODS["unregistered"], method], tmp_path)
    _check_recovers_shift(rows[method.key], rows["unregistered"])


def test_harness_with_the_cascade_and_refinement(spec, tmp_path):
    """The shipped cascade alone and refined by instance optimisation (skipped without shipped weights)."""
    rows = _run(spec, [compare.METHODS[key] for key in ("unregistered", "cascade", "cascade+io")], tmp_path)
    _check_recovers_shift(rows["cascade+io"], rows["unregistered"])
    cascade, before = rows["cascade"], rows["unregistered"]
    assert cascade["status"] == "ok" and cascade["folding_percent"] < 1.0
    # the shipped cascade alone takes most of the 16 mm shift (4.4 mm left when measured)
    assert cascade["error_mean_mm"] < 0.5 * before["error_mean_mm"] and cascade["dice_mean"] > before["dice_mean"] + 0.1


def test_a_partial_overlap_pair_is_scored_where_the_moving_scan_has_data(tmp_path):
    """The true map scores no error and high Dice: structures the moving scan misses, and fixed points whose
    true image lies outside it, are left out for every method instead of counting as failures."""
    from TotalRegistratorLib.core.itk_bridge import field_to_image
    from TotalRegistratorLib.io import images
    from TotalRegistratorLib.registry import LABELS

    pair = make_pair("intra-partial", compare.SEED_BASE, spacing=8.0)
    prepared = compare.prepare(compare.PairSpec("partial", "phantom partial", lambda: pair), tmp_path)
    grid = Grid.from_image(pair.fixed)
    images.write_image(field_to_image(pair.truth.field_on(grid), grid), tmp_path / "truth.mha", compress=False)
    row = compare.evaluate(prepared, tmp_path / "truth.mha")
    in_fixed = set(np.unique(sitk.GetArrayViewFromImage(pair.fixed_labels)).tolist()) - {0}
    in_moving = set(np.unique(sitk.GetArrayViewFromImage(pair.moving_labels)).tolist()) - {0}
    missing = [name for name, label in LABELS.items() if label in in_fixed - in_moving]
    assert missing, "the pair should cut some fixed structure out of the moving scan"
    assert all(np.isnan(row[f"dice_{name}"]) for name in missing if f"dice_{name}" in row)
    assert row["error_mean_mm"] < 1.0 and row["tre_mm"] < 1.0
    # a whole organ inside both scans matches; the mean holds only structures in both (thin bones at 8 mm are low)
    assert row["dice_heart"] > 0.85 and row["dice_mean"] > 0.5
