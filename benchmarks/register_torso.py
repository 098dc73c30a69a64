"""Wall time by stage, peak memory and accuracy of ``totalregistrator register`` on the 3 mm torso CT.

The pair is ../shared/data/totalsegmentator/example_ct.nii.gz (moving) and the
same scan deformed by a simulated breathing and pose change with a known field
(fixed; TotalRegistratorLib.simulation.pairs.deform_scan). Every run is a fresh process,
exactly as a user runs the command line, so peak memory is that of one run.

    .venv/bin/python benchmarks/register_torso.py --runs 3 [-- REGISTER OPTIONS, e.g. --no-refine]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk
import torch

from TotalRegistratorLib.app.evaluate_job import run_evaluate
from TotalRegistratorLib.core import preprocess
from TotalRegistratorLib.io import images
from TotalRegistratorLib.simulation.pairs import deform_scan

TORSO = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator" / "example_ct.nii.gz"
# table column -> report timing keys summed into it (instance optimisation's keys start with refine_ after a cascade)
STAGES = {"read": ("read",), "preprocess": ("preprocess", "refine_preprocess"), "cascade": ("cascade",),
          "instance optimisation": tuple(p + k for p in ("", "refine_") for k in ("pyramid", "affine", "deformable")),
          "export": ("export",), "write": ("write",), "total": ("total",)}


def make_pair(folder: Path, seed: int) -> dict[str, Path]:
    image = images.read_image(TORSO)
    pair = deform_scan(image, None, seed)
    paths = {name: folder / f"{name}.nii.gz" for name in ("fixed", "moving", "body")}
    sitk.WriteImage(pair.fixed, str(paths["fixed"]))
    sitk.WriteImage(pair.moving, str(paths["moving"]))
    sitk.WriteImage(preprocess.mask_to_image(preprocess.body_mask(pair.fixed), pair.fixed), str(paths["body"]))
    paths["truth"] = folder / "truth.h5"
    sitk.WriteTransform(pair.transform(), str(paths["truth"]))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="extra arguments for register (after --)")
    args = parser.parse_args()
    if not TORSO.exists():
        sys.exit(f"needs {TORSO} (the shared data folder beside the repository)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_pair(folder, args.seed)
        reports, errors = [], []
        for run in range(args.runs):
            out = folder / f"run{run}"
            command = [sys.executable, "-m", "TotalRegistratorLib", "register", str(paths["fixed"]),
                       str(paths["moving"]), "-o", str(out), "--quiet", *args.extra]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            reports.append(json.loads((out / "report.json").read_text()))
            errors.append(run_evaluate(transform_path=out / "transform.h5", truth_path=paths["truth"],
                                       mask_path=paths["body"])["error_vs_truth_mm"])
    median = {column: statistics.median(sum(r["timings_s"].get(key, 0.0) for key in keys) for r in reports)
              for column, keys in STAGES.items()}
    print(f"register on {TORSO.name} (122 x 101 x 112, 3 mm), {args.runs} runs, median seconds by stage; "
          f"torch {torch.__version__}, {reports[0]['threads']} threads, {os.cpu_count()} CPUs, no GPU\n")
    print("| " + " | ".join(STAGES) + " | peak RSS (MB) |")
    print("|" + "---|" * (len(STAGES) + 1))
    peak = statistics.median(r["peak_memory_mb"] for r in reports)
    print("| " + " | ".join(f"{median[s]:.2f}" for s in STAGES) + f" | {peak:.0f} |\n")
    error = errors[0]
    print(f"displacement error inside the body: {error['unregistered_mean']:.2f} mm unregistered -> "
          f"{statistics.median(e['mean'] for e in errors):.2f} mm mean, "
          f"{statistics.median(e['p95'] for e in errors):.2f} mm p95; "
          f"folding {reports[0]['field_in_body']['folding_percent']:.3f} %")


if __name__ == "__main__":
    main()
