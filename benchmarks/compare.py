"""TotalRegistrator side by side with Elastix and ANTs SyN on the same pairs, evaluated the same way.

    .venv/bin/python benchmarks/compare.py --suite quick|validation|full [--out DIR] [--methods KEY ...] [--resume]

Pairs (fixed seeds from :data:`SEED_BASE` = 10,000 up; training draws its pair seeds from
``simulation.pairs.pair_seed`` hashes and never calls ``make_pair`` with these directly):

* phantom ``intra``, ``multiphase``, ``inter``, ``intra-partial`` and ``inter-partial`` pairs
  (:func:`pairs.make_pair`, ``--spacing`` mm; the partial ones overlap 30-60 % along z);
* the real 3 mm torso crop (example_ct_sm with its TotalSegmentator labels) and the 4 mm chest CT
  (ct-64 with its lung mask) from ../shared/data, each deformed by :func:`pairs.deform_scan`.

Suites (:data:`SUITES`): ``quick``, one intra-patient and one inter-patient partial-overlap phantom pair
(6 mm) and one of each real scan, with the main methods (:data:`CORE_METHODS`), about 20 minutes on
2 cores; ``validation``, 4 of each phantom kind at 4 mm with the cascade's single-block ablation (the
model card's numbers, Resources/MODEL_CARD.md);
``full``, 10 of each phantom kind at 4 mm and 5 of each real scan with every method (hours on a
laptop CPU, Elastix most of it: ``--resume`` continues an interrupted run).

Every method (:data:`METHODS`) is a script in benchmarks/baselines run as a subprocess in its own
virtual environment (protocol in baselines/protocol.py): it writes the pullback displacement field on
the fixed grid plus its wall time and peak memory. Evaluation happens here, identically for all:
moving labels through the field (nearest neighbour, SimpleITK) -> Dice per structure found in both
scans; where a ground truth exists, displacement error inside the fixed body and TRE at structure
centroids, both only where the true map lands inside the moving scan (partial-overlap pairs: no method
has data elsewhere); folding and SDlogJ of the field inside the fixed body. Methods run one at a time
with ``--threads`` threads each (default: all cores; OpenMP waits passively, see baselines/protocol.py).
Writes ``results.csv``, ``results.md`` and ``dice_boxplot.png`` into ``--out`` (default
benchmarks/results/<suite>).
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
# this checkout's library, here and in the method subprocesses, even where the virtual environment's editable
# install points at another checkout (a git worktree measuring a fixed commit)
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
from TotalRegistratorLib.app.report import field_summary  # noqa: E402
from TotalRegistratorLib.core import fields, metrics, preprocess  # noqa: E402
from TotalRegistratorLib.core.grid import Grid  # noqa: E402
from TotalRegistratorLib.core.itk_bridge import field_to_image, image_to_field, transform_to_field  # noqa: E402
from TotalRegistratorLib.io import images  # noqa: E402
from TotalRegistratorLib.io.labels import read_structures  # noqa: E402
from TotalRegistratorLib.learned.cascade import BLOCKS  # noqa: E402
from TotalRegistratorLib.optimization.instance import resample_moving  # noqa: E402
from TotalRegistratorLib.registry import LABELS, STRUCTURES, TRAINING_STRUCTURES  # noqa: E402
from TotalRegistratorLib.simulation.pairs import KINDS, Pair, deform_scan, make_pair  # noqa: E402
from TotalRegistratorLib.weights import shipped_blocks  # noqa: E402

BASELINES = REPO / "benchmarks" / "baselines"
SHARED = REPO.parent / "shared" / "data"
SEED_BASE = 10_000
ROW = "row.json"  # a finished (pair, method) row, beside the method's outputs
sys.path.insert(0, str(BASELINES))
import protocol  # noqa: E402  (baselines/protocol.py: the method scripts' contract)


# --- methods ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One column of the tables: a script run in a virtual environment (``venv`` None: the identity)."""

    key: str
    title: str
    venv: str | None = ".venv"
    script: str = "totalregistrator_run.py"
    args: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()  # cascade blocks whose weights must be in TotalRegistratorLib/weights
    gpu: bool = False

    @property
    def python(self) -> Path:
        return REPO / self.venv / "bin" / "python"

    def unavailable(self) -> str | None:
        """Why this method cannot run here (None: it can)."""
        if self.venv is not None and not self.python.exists():
            return f"skipped: {self.venv} not found (create it with the Makefile's baseline target)"
        missing = [b for b in self.blocks if b not in shipped_blocks()]
        if missing:
            return f"pending: no {', '.join(b + '.pt' for b in missing)} in the weights folder (not trained yet)"
        if self.gpu and not torch.cuda.is_available():
            return "skipped: no CUDA GPU on this machine"
        return None


def _cascade(key: str, title: str, blocks: tuple[str, ...], refine: bool = False,
             schedule: tuple[str, ...] = ()) -> Method:
    return Method(key, title, args=("--blocks", ",".join(blocks), *(("--refine",) if refine else ()), *schedule),
                  blocks=blocks)


# a short optimisation (a third of the steps of session 11's default, about 70 % of today's, at today's learning
# rates): with a learned start, and without one for comparison
SHORT = ("--iterations", "30,15", "--affine-iterations", "40,20")


METHODS: dict[str, Method] = {m.key: m for m in (
    Method("unregistered", "Unregistered", venv=None),
    Method("io", "Instance optimisation"),
    Method("io-gpu", "Instance optimisation (GPU)", args=("--device", "cuda"), gpu=True),
    _cascade("cascade", "Cascade", BLOCKS),
    _cascade("cascade+io", "Cascade + instance optimisation", BLOCKS, refine=True),
    _cascade("cascade+io-short", "Cascade + short instance optimisation", BLOCKS, refine=True, schedule=SHORT),
    Method("io-short", "Short instance optimisation", args=SHORT),
    _cascade("affine", "Affine block", ("affine",)),
    *(_cascade(f"affine+{b}", f"Affine + {b} block", ("affine", b)) for b in BLOCKS[1:]),
    Method("elastix", "Elastix", ".venv-elastix", "elastix_bspline.py"),
    Method("ants", "ANTs SyN", ".venv-ants", "ants_syn.py"),
    Method("convexadam", "ConvexAdam", ".venv-convexadam", "convexadam_run.py"),
)}


CORE_METHODS = ("unregistered", "io", "cascade", "cascade+io", "elastix", "ants", "convexadam")
ABLATION = ("unregistered", "affine", *(f"affine+{b}" for b in BLOCKS[1:]), "cascade", "cascade+io", "io")


@dataclass(frozen=True)
class Suite:
    """Pairs per phantom kind (of ``kinds``) and per real scan, phantom voxel spacing (mm), default methods."""

    phantom: int
    real: int
    spacing: float
    methods: tuple[str, ...]
    kinds: tuple[str, ...] = KINDS


SUITES = {
    # Elastix's default maps take 3-5 minutes per phantom pair here whatever the spacing (fixed iterations)
    "quick": Suite(1, 1, 6.0, CORE_METHODS, kinds=("intra", "inter-partial")),
    "validation": Suite(4, 0, 4.0, ABLATION),
    "full": Suite(10, 5, 4.0, tuple(METHODS)),
}


# --- pairs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairSpec:
    """A benchmark pair: ``name`` (unique, a folder name), ``group`` (one table) and how to make it."""

    name: str
    group: str
    make: Callable[[], Pair]


def read_real(source: str) -> tuple[sitk.Image, sitk.Image]:
    """A real scan from ../shared/data and its label map in our structure ids."""
    if source == "torso":
        folder = SHARED / "totalsegmentator"
        return images.read_image(folder / "example_ct_sm.nii.gz"), read_structures(folder / "example_seg.nii.gz",
                                                                                "totalsegmentator")
    folder = SHARED / "chestimagingplatform"
    lungs = images.read_image(folder / "wholeLung-64.nrrd", labels=True) > 0
    return images.read_image(folder / "ct-64.nrrd"), sitk.Cast(lungs, sitk.sitkUInt8) * LABELS["lung"]


REAL_SOURCES = {"torso": "totalsegmentator/example_ct_sm.nii.gz", "chest": "chestimagingplatform/ct-64.nrrd"}


def suite_pairs(suite: str, spacing: float | None = None) -> list[PairSpec]:
    """The pairs of a suite (phantom ``spacing`` mm, default the suite's); real scans are left out (with a
    message) when ../shared/data is absent."""
    counts = SUITES[suite]
    spacing = spacing or counts.spacing
    specs = [PairSpec(f"{kind}-{seed}", f"phantom {kind}", lambda k=kind, s=seed: make_pair(k, s, spacing=spacing))
             for kind in counts.kinds for seed in range(SEED_BASE, SEED_BASE + counts.phantom)]
    for source, relative in REAL_SOURCES.items() if counts.real else ():
        if not (SHARED / relative).exists():
            print(f"real CT pairs from {relative} left out: ../shared/data not found", file=sys.stderr)
            continue
        specs += [PairSpec(f"{source}-{seed}", "real CT (deformed)",
                           lambda src=source, s=seed: deform_scan(*read_real(src), s))
                  for seed in range(SEED_BASE, SEED_BASE + counts.real)]
    return specs


@dataclass
class Prepared:
    """A pair written for the method scripts, with what evaluation needs precomputed."""

    pair: Pair
    fixed_path: Path
    moving_path: Path
    body: np.ndarray  # fixed body mask on the fixed grid
    structures: list[int]  # labels found in both scans (a partial-overlap pair's moving scan may miss some)
    # where the error counts, on the ground truth's grid: the fixed body where the true map lands inside the
    # moving scan (elsewhere no method has data to go by); None without a ground truth
    truth_body: np.ndarray | None
    landmarks: tuple[np.ndarray, np.ndarray] | None  # fixed structure centroids and their true moving points


def prepare(spec: PairSpec, folder: Path) -> Prepared:
    """Make the pair (torch on one thread: see Testing/single_thread.py) and write the scripts' inputs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pair = spec.make()
    finally:
        torch.set_num_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "fixed.mha", folder / "moving.mha"
    for image, path in zip((pair.fixed, pair.moving), paths):
        images.write_image(image, path, compress=False)
    body = preprocess.body_mask(pair.fixed)
    structures = sorted(set(np.unique(sitk.GetArrayViewFromImage(pair.fixed_labels)).tolist()) & set(np.unique(
        sitk.GetArrayViewFromImage(pair.moving_labels)).tolist()) - {0})
    truth_body = landmarks = None
    if pair.truth is not None:
        mask = preprocess.mask_to_image(body, pair.fixed)
        truth_body = sitk.GetArrayFromImage(preprocess.resample(mask, pair.truth.grid, labels=True, default=0)) > 0
        truth_body &= fields.inside(pair.truth.points(pair.truth.grid), Grid.from_image(pair.moving))[0].numpy()
        centroids = structure_centroids(pair.fixed_labels)
        targets = pair.truth.apply(centroids)
        seen = fields.inside(torch.as_tensor(targets), Grid.from_image(pair.moving)).numpy()
        landmarks = centroids[seen], targets[seen]
    return Prepared(pair, *paths, body, structures, truth_body, landmarks)


def structure_centroids(labels: sitk.Image) -> np.ndarray:
    """LPS centroids (n, 3) of the structures present in a label map."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    return np.array([stats.GetCentroid(label) for label in stats.GetLabels()]).reshape(-1, 3)


# --- running and evaluating ------------------------------------------------------------------------
def run_method(method: Method, prepared: Prepared, out: Path, threads: int, timeout: float) -> dict:
    """Run one method on one pair; returns its run.json plus ``process_s`` (or raises RuntimeError)."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if method.venv is None:
        grid = Grid.from_image(prepared.pair.fixed)
        images.write_image(field_to_image(torch.zeros(1, 3, *grid.shape), grid), out / protocol.FIELD, compress=False)
        report = {"seconds": 0.0, "peak_memory_mb": math.nan, "threads": 0, "versions": {}}
    else:
        command = [str(method.python), str(BASELINES / method.script), str(prepared.fixed_path),
                   str(prepared.moving_path), str(out), "--threads", str(threads), *method.args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=out)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {timeout:.0f} s") from None
        (out / "log.txt").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"exit {done.returncode}: {tail[0][:200]}")
        report = json.loads((out / protocol.RUN).read_text())
    report["process_s"] = time.perf_counter() - start
    return report


def evaluate(prepared: Prepared, field_path: Path) -> dict[str, float]:
    """Dice per structure, error against the ground truth, centroid TRE, folding and SDlogJ of one field."""
    pair = prepared.pair
    image = sitk.ReadImage(str(field_path), sitk.sitkVectorFloat64)
    grid = Grid.from_image(pair.fixed)
    field_grid = Grid.from_image(image)
    if field_grid.size != grid.size or not np.allclose(field_grid.index_to_world, grid.index_to_world, atol=1e-3):
        raise RuntimeError(f"{field_path}: field is not on the fixed image's grid")
    field = image_to_field(image)[0]
    transform = sitk.DisplacementFieldTransform(image)  # takes the image's buffer: ``image`` is empty after
    fixed_labels = sitk.GetArrayFromImage(pair.fixed_labels)
    warped = sitk.GetArrayFromImage(resample_moving(pair.moving_labels, pair.fixed, transform, labels=True))
    dice = metrics.dice(fixed_labels, warped, prepared.structures)
    row = {f"dice_{name}": dice.get(LABELS[name], math.nan) for name in STRUCTURES}
    row["dice_mean"] = _nanmean([row[f"dice_{name}"] for name in TRAINING_STRUCTURES])
    stats = field_summary(field, grid, prepared.body)
    row.update({key: stats[key] for key in ("folding_percent", "sdlogj", "jacobian_min")})
    if pair.truth is not None:
        truth = pair.truth.field_on(pair.truth.grid)
        error = fields.magnitude(transform_to_field(transform, pair.truth.grid) - truth)[0].numpy()
        error = error[prepared.truth_body]
        row.update(error_mean_mm=float(error.mean()), error_p95_mm=float(np.percentile(error, 95)),
                   tre_mm=float(metrics.target_registration_error(*prepared.landmarks, transform).mean()))
    return row


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


COLUMNS = ("pair", "group", "kind", "method", "title", "status", "seconds", "process_s", "peak_memory_mb",
           "threads", "dice_mean", *(f"dice_{s}" for s in STRUCTURES), "error_mean_mm", "error_p95_mm", "tre_mm",
           "folding_percent", "sdlogj", "jacobian_min", "commit", "date")


def finished_row(folder: Path) -> dict | None:
    """The row a method left in ``folder`` (``row.json``) if it finished successfully, else None."""
    path = folder / ROW
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    return row if row.get("status") == "ok" else None


def run(specs: list[PairSpec], methods: list[Method], out: Path, threads: int, timeout: float = 3600.0,
        keep_fields: bool = False, resume: bool = False) -> list[dict]:
    """Every available method on every pair; one row per (pair, method), failures recorded, never fatal.

    Each row is also written to ``out/pairs/<pair>/<method>/row.json``; with ``resume`` the successful
    ones found there are reused (a long suite can run in several sittings; failures run again). Rows
    record the commit and date they were measured at.
    """
    rows, out = [], Path(out).resolve()  # the scripts run inside their output folders
    for n, spec in enumerate(specs, 1):
        done = {m.key: finished_row(out / "pairs" / spec.name / m.key) if resume else None for m in methods}
        if all(done.values()):
            rows += [done[m.key] for m in methods]
            print(f"[{n}/{len(specs)}] {spec.name}: all methods done earlier", flush=True)
            continue
        start = time.perf_counter()
        prepared = prepare(spec, out / "pairs" / spec.name)
        print(f"[{n}/{len(specs)}] {spec.name}: pair made in {time.perf_counter() - start:.1f} s", flush=True)
        for method in methods:
            if done[method.key]:
                rows.append(done[method.key])
                continue
            row = {"pair": spec.name, "group": spec.group, "kind": prepared.pair.kind, "method": method.key,
                   "title": method.title, "commit": head_commit(), "date": datetime.date.today().isoformat()}
            folder = out / "pairs" / spec.name / method.key
            try:
                report = run_method(method, prepared, folder, threads, timeout)
                row.update(status="ok", seconds=report["seconds"], process_s=report["process_s"],
                           peak_memory_mb=report["peak_memory_mb"], threads=report["threads"])
                row.update(evaluate(prepared, folder / protocol.FIELD))
            except RuntimeError as err:
                row["status"] = f"failed: {err}"
            if not keep_fields:
                (folder / protocol.FIELD).unlink(missing_ok=True)
            (folder / ROW).write_text(json.dumps(row))
            rows.append(row)
            print(f"    {method.key:>14}: {row['status']}, {row.get('seconds', math.nan):.1f} s, "
                  f"Dice {row.get('dice_mean', math.nan):.3f}, error {row.get('error_mean_mm', math.nan):.2f} mm, "
                  f"folding {row.get('folding_percent', math.nan):.3f} %", flush=True)
        if not keep_fields:
            prepared.fixed_path.unlink()
            prepared.moving_path.unlink()
    return rows


# --- reporting -------------------------------------------------------------------------------------
def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _values(rows: list[dict], key: str) -> np.ndarray:
    values = np.array([r.get(key, math.nan) for r in rows if r["status"] == "ok"], float)
    return values[~np.isnan(values)]


def _cell(values: np.ndarray, scale: float = 1.0, digits: int = 1) -> str:
    if values.size == 0:
        return "–"
    mean = f"{scale * values.mean():.{digits}f}"
    return mean if values.size == 1 else f"{mean} ± {scale * values.std(ddof=1):.{digits}f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(line) + " |" for line in body)]


def markdown(rows: list[dict], methods: list[Method], status: dict[str, str], context: dict) -> str:
    """Tables: methods, Dice per structure per pair group (the paper's Table 2 layout), summary, runtime."""
    ran = [m for m in methods if status[m.key] == "ran"]
    by = {(r["group"], r["method"]): [] for r in rows}
    for r in rows:
        by[(r["group"], r["method"])].append(r)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    lines = [f"Command: `{context['command']}`  ", f"Commit {context['commit']}, {context['date']}; "
             f"{context['machine']}; methods ran with {context['threads']} threads each, one at a time.", "",
             "### Methods", ""]
    lines += _table(["key", "method", "environment", "status"],
                    [[m.key, m.title, m.venv or "–", status[m.key]] for m in methods])
    for group in groups:
        count = len({r["pair"] for r in rows if r["group"] == group})
        lines += ["", f"### Dice (%) per structure: {group}, {count} pair(s), mean ± std over pairs", ""]
        body = [[name.replace("_", " ") + (" (out of distribution)" if name == "prostate" else "")]
                + [_cell(_values(by.get((group, m.key), []), f"dice_{name}"), 100) for m in ran]
                for name in (*TRAINING_STRUCTURES, "prostate")]
        body.append(["**mean of the 11 (those present)**"]
                    + [_cell(_values(by.get((group, m.key), []), "dice_mean"), 100) for m in ran])
        lines += _table(["structure", *(m.title for m in ran)], body)
    lines += ["", "### Accuracy and regularity per pair group (mean ± std over pairs)", "",
              "Dice: mean over the 11 structures present in the pair's fixed labels (the chest CT has only the "
              "lungs); error: displacement error (mm) against the ground truth inside the fixed body; TRE: at the "
              "fixed structures' centroids (mm); folding: % of body voxels with det J <= 0; SDlogJ: standard "
              "deviation of log det J in the body, det clipped at 1e-9 as in Learn2Reg, so folded voxels enter at "
              "-20.7 and dominate it; registration: seconds of the method's call (pair groups differ in image "
              "size). Inter-patient pairs have no ground truth.", ""]
    body = [[group, m.title, _cell(_values(by.get((group, m.key), []), "dice_mean"), 100),
             *(_cell(_values(by.get((group, m.key), []), key), 1, d) for key, d in
               (("error_mean_mm", 2), ("error_p95_mm", 2), ("tre_mm", 2), ("folding_percent", 3), ("sdlogj", 3),
                ("seconds", 1)))]
            for group in groups for m in ran]
    lines += _table(["pairs", "method", "Dice %", "error mm", "error p95 mm", "TRE mm", "folding %", "SDlogJ",
                     "registration s"], body)
    lines += ["", "### Runtime (all pairs, mean ± std)", "",
              "Registration: the method's call with images in memory; process: the whole subprocess (start-up, "
              "reading, field export). Speed-up: the median over the group's pairs of Elastix's registration time "
              "/ the method's on the same pair (pairs both finished; above 1: faster than Elastix).", ""]
    body = []
    for m in ran:
        if m.venv is None:
            continue
        mine = [r for r in rows if r["method"] == m.key]
        speedups = [f"{np.median(r):.1f}" if (r := elastix_speedups(rows, m.key, group)).size else "–"
                    for group in groups]
        body.append([m.title, _cell(_values(mine, "seconds")), *speedups, _cell(_values(mine, "process_s")),
                     _cell(_values(mine, "peak_memory_mb"), 1, 0), str(int(_values(mine, "threads").max(initial=0)))])
    lines += _table(["method", "registration s", *(f"speed-up vs Elastix: {g}" for g in groups), "process s",
                     "peak memory MB", "threads"], body)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed runs:", "", *(f"- {r['pair']} / {r['method']}: {r['status']}" for r in failed)]
    return "\n".join(lines) + "\n"


def elastix_speedups(rows: list[dict], method: str, group: str) -> np.ndarray:
    """Per pair of ``group``: Elastix's registration seconds / ``method``'s (pairs where both finished)."""
    seconds = {(r["pair"], r["method"]): r["seconds"] for r in rows if r["status"] == "ok" and r["group"] == group}
    return np.array([seconds[(pair, "elastix")] / seconds[(pair, method)] for pair, key in seconds
                     if key == method and (pair, "elastix") in seconds and seconds[(pair, method)] > 0])


def boxplot(rows: list[dict], methods: list[Method], path: Path) -> None:
    """Dice per structure as grouped box plots, one panel per pair group (the paper's Fig. 7 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["group"] for r in rows))
    names = (*TRAINING_STRUCTURES, "prostate")
    height = 3.2 * len(groups) + 0.8  # inches; the top 0.8 hold the legend
    figure, axes = plt.subplots(len(groups), 1, figsize=(max(14.0, 4 + 0.13 * len(names) * len(methods)), height),
                                squeeze=False)
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    width = 0.8 / max(len(methods), 1)
    for axis, group in zip(axes[:, 0], groups):
        for i, m in enumerate(methods):
            mine = [r for r in rows if r["group"] == group and r["method"] == m.key]
            data = [_values(mine, f"dice_{name}") for name in names]
            positions = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(names))]
            keep = [(d, p) for d, p in zip(data, positions) if d.size]
            if not keep:
                continue
            parts = axis.boxplot([d for d, _ in keep], positions=[p for _, p in keep], widths=width * 0.9,
                                 patch_artist=True, showfliers=True, flierprops={"markersize": 2})
            for box in parts["boxes"]:
                box.set_facecolor(colours(i))
            for values, position in keep:  # the pairs themselves: with few pairs a box is only a line
                axis.plot(np.full(values.size, position), values, ".", color=colours(i), markersize=4)
            axis.plot([], [], "s", color=colours(i), label=m.title)
        axis.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
        axis.set_xlim(-0.6, len(names) - 0.4)  # every structure in place, even where no pair has it
        axis.set_ylim(0, 1.02)
        axis.set_ylabel("Dice")
        axis.set_title(group)
        axis.grid(axis="y", alpha=0.3)
    figure.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=min(len(methods), 6), fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.8 / height))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({model}), {gpu}, {platform.system()}"


def provenance(rows: list[dict], key: str) -> str:
    """The commits (or dates) the rows were measured at, with counts when there are several."""
    counts = collections.Counter(r.get(key, "not recorded") for r in rows)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{value} ({n} row{'s' * (n != 1)})" for value, n in sorted(counts.items()))


def head_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=list(SUITES), default="quick")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/results/<suite>)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        help="methods to run (default: the suite's; quick: " + ", ".join(CORE_METHODS)
                        + "; validation: the single-block ablation and the cascade; full: all)")
    parser.add_argument("--spacing", type=float, help="phantom voxel spacing, mm (default: quick 6, others 4)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the (pair, method) results an earlier run of the same --out finished")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads per method (default: all cores)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per method and pair")
    parser.add_argument("--keep-fields", action="store_true", help="keep the pairs' images and every field")
    args = parser.parse_args(argv)
    out = (args.out or REPO / "benchmarks" / "results" / args.suite).resolve()
    if out.exists() and not args.resume:
        shutil.rmtree(out / "pairs", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    methods = [METHODS[key] for key in args.methods or SUITES[args.suite].methods]
    status = {m.key: m.unavailable() or "ran" for m in methods}
    for m in methods:
        if status[m.key] != "ran":
            print(f"{m.title}: {status[m.key]}", file=sys.stderr)
    runnable = [m for m in methods if status[m.key] == "ran"]
    torch.set_num_threads(1)  # the harness only makes pairs and evaluates; methods get --threads
    started = time.perf_counter()
    rows = run(suite_pairs(args.suite, args.spacing), runnable, out, args.threads, args.timeout, args.keep_fields,
               args.resume)
    minutes = (time.perf_counter() - started) / 60
    context = {"command": " ".join(["python", "benchmarks/compare.py", *(argv or sys.argv[1:])]),
               "commit": provenance(rows, "commit"),
               "date": f"{provenance(rows, 'date')}; this sitting took {minutes:.0f} min",
               "machine": machine(), "threads": args.threads}
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(markdown(rows, methods, status, context))
    boxplot(rows, runnable, out / "dice_boxplot.png")
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'} and {out / 'dice_boxplot.png'}")


if __name__ == "__main__":
    main()
