"""Clinical-size CT end to end: seconds per stage, peak memory and output size of ``register``, beside ANTs and Elastix.

    .venv/bin/python benchmarks/clinical_scale.py [--methods totalregistrator ants elastix] [--pairs identity deformed]

The pairs are made from ../shared/data/totalsegmentator/example_ct.nii.gz (a 3 mm torso CT):

* ``identity``: the scan resampled to 0.72 x 0.72 x 0.6 mm (508 x 420 x 560 voxels, int16) as the fixed
  image, and onto a 0.8 x 0.8 x 1.25 mm grid rotated 5 degrees about z as the moving image. Same
  anatomy, so the true map is the identity: the mean displacement inside the body should stay near 0
  and the similarity must not fall.
* ``deformed``: the fixed image above deformed by :func:`pairs.deform_scan`'s simulated breathing and
  pose change (a known field) as the fixed image, the original fine scan as the moving one.

Each run is a fresh process (``register`` as a user runs it, default outputs; ANTs SyN and Elastix
through benchmarks/baselines in their own environments, their usual multi-resolution presets).
Pairs are cached in benchmarks/results/clinical/pairs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from TotalRegistratorLib.core import preprocess  # noqa: E402
from TotalRegistratorLib.core.grid import Grid  # noqa: E402
from TotalRegistratorLib.core.itk_bridge import export_grid, image_to_field  # noqa: E402
from TotalRegistratorLib.core.transform import Transform  # noqa: E402
from TotalRegistratorLib.simulation.pairs import deform_scan  # noqa: E402

SOURCE = REPO.parent / "shared" / "data" / "totalsegmentator" / "example_ct.nii.gz"
OUT = REPO / "benchmarks" / "results" / "clinical"
BASELINES = {"ants": (".venv-ants", "ants_syn.py"), "elastix": (".venv-elastix", "elastix_bspline.py"),
             "convexadam": (".venv-convexadam", "convexadam_run.py")}


def _onto(image: sitk.Image, spacing, degrees: float = 0.0) -> sitk.Image:
    """``image`` resampled (linear, int16) onto a grid of ``spacing`` over its own box, turned ``degrees`` about z."""
    source = Grid.from_image(image)
    extent = (np.asarray(source.size) - 1) * np.asarray(source.spacing)
    size = np.floor(extent / np.asarray(spacing)).astype(int) + 1
    a = np.radians(degrees)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    centre = source.corners().mean(axis=0)
    origin = centre - direction @ ((size - 1) * np.asarray(spacing) / 2)
    grid = Grid(tuple(size), tuple(spacing), tuple(origin), tuple(direction.ravel()))
    return sitk.Resample(image, grid.reference_image(sitk.sitkInt16), sitk.Transform(), sitk.sitkLinear, -1024,
                         sitk.sitkInt16)


def make_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """The benchmark pairs as files (made once, then reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"identity": (folder / "fixed_fine.nii.gz", folder / "moving_rotated.nii.gz"),
             "deformed": (folder / "fixed_deformed.nii.gz", folder / "fixed_fine.nii.gz")}
    if not all(p.is_file() for pair in paths.values() for p in pair):
        scan = sitk.ReadImage(str(SOURCE))
        fine = _onto(scan, (0.72, 0.72, 0.6))
        sitk.WriteImage(fine, str(paths["identity"][0]))
        sitk.WriteImage(_onto(scan, (0.8, 0.8, 1.25), 5.0), str(paths["identity"][1]))
        pair = deform_scan(fine, None, seed=1)
        sitk.WriteImage(sitk.Cast(pair.fixed, sitk.sitkInt16), str(paths["deformed"][0]))
        pair.truth.save(folder / "deformed_truth.h5")
    return paths


def result_map(out: Path) -> Transform | None:
    """The fixed->moving map a run left in ``out``: register's transform.h5 or a baseline's displacement.mha."""
    if (out / "transform.h5").is_file():
        return Transform.load(out / "transform.h5")
    if (out / "displacement.mha").is_file():  # a dense field on the fixed grid: sampled at 4 mm first
        field = sitk.ReadImage(str(out / "displacement.mha"))
        coarse = export_grid(Grid.from_image(field), 4.0)
        return Transform.from_field(*image_to_field(sitk.Resample(field, coarse.reference_image(field.GetPixelID()))))
    return None


def body_error(found: Transform, truth_file: Path, fixed: Path, spacing: float = 4.0) -> dict:
    """Mean and 95th-percentile distance (mm) between a found and the true fixed->moving map at the points
    of a ``spacing`` mm grid inside the fixed image's body."""
    scan = preprocess.Scan(sitk.ReadImage(str(fixed)))
    grid = export_grid(Grid.from_image(scan.image), spacing)
    body = sitk.GetArrayFromImage(preprocess.resample(scan.mask, grid, labels=True, default=0)) > 0
    points = grid.world_points(dtype=torch.float64)[0].numpy()[body]
    distance = np.linalg.norm(found.apply(points) - Transform.load(truth_file).apply(points),
                              axis=-1)
    return {"error_mean_mm": float(distance.mean()), "error_p95_mm": float(np.percentile(distance, 95))}


def run_register(fixed: Path, moving: Path, out: Path, extra: list[str]) -> dict:
    """``totalregistrator register`` in a fresh process; its report plus wall time and output size."""
    command = [sys.executable, "-m", "TotalRegistratorLib", "register", str(fixed), str(moving), "-o", str(out),
               "--progress", "none", *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    timings = report["timings_s"]
    registration = sum(v for k, v in timings.items() if k.endswith(("pyramid", "affine", "deformable", "cascade")))
    return {"wall_s": wall, "registration_s": registration, "timings_s": timings,
            "peak_memory_mb": report["peak_memory_mb"],
            "outputs_mb": sum(p.stat().st_size for p in out.iterdir()) / 2**20,
            "displacement_mean_mm": report["field_in_body"]["displacement_mean_mm"],
            "ncc": report["similarity_local_ncc"]}


def run_baseline(name: str, fixed: Path, moving: Path, out: Path) -> dict:
    venv, script = BASELINES[name]
    python = REPO / venv / "bin" / "python"
    if not python.exists():
        return {"status": f"skipped: {venv} not built (make baselines)"}
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    subprocess.run([str(python), str(REPO / "benchmarks" / "baselines" / script), str(fixed), str(moving), str(out),
                    "--threads", "2"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    run = json.loads((out / "run.json").read_text())
    return {"wall_s": wall, "registration_s": run["seconds"], "peak_memory_mb": run["peak_memory_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["totalregistrator", "ants", "elastix"])
    parser.add_argument("--pairs", nargs="+", default=["identity", "deformed"])
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="extra arguments for register")
    args = parser.parse_args()
    if not SOURCE.is_file():
        sys.exit(f"needs {SOURCE} (the shared data folder beside the repository)")
    pairs = make_pairs(OUT / "pairs")
    rows = []
    for pair in args.pairs:
        fixed, moving = pairs[pair]
        for method in args.methods:
            out = OUT / "runs" / f"{pair}-{method}"
            row = run_register(fixed, moving, out, args.extra) if method == "totalregistrator" \
                else run_baseline(method, fixed, moving, out)
            found = result_map(out) if pair == "deformed" and "status" not in row else None
            if found is not None:
                row.update(body_error(found, OUT / "pairs" / "deformed_truth.h5", fixed))
            rows.append({"pair": pair, "method": method, **row})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| pair | method | wall s | registration s | peak memory MB | outputs MB | mean displacement mm "
          "| error mean / p95 mm |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "status" in r:
            print(f"| {r['pair']} | {r['method']} | {r['status']} |  |  |  |  |  |")
            continue
        print(f"| {r['pair']} | {r['method']} | {r['wall_s']:.1f} | {r['registration_s']:.1f} | "
              f"{r['peak_memory_mb']:.0f} | {r.get('outputs_mb', float('nan')):.0f} | "
              f"{r.get('displacement_mean_mm', float('nan')):.2f} | "
              f"{r.get('error_mean_mm', float('nan')):.2f} / {r.get('error_p95_mm', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
