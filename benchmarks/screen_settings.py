"""Instance optimisation with settings overrides on phantom pairs, in-process: Dice, error and folding per pair.

    .venv/bin/python benchmarks/screen_settings.py --pairs inter:10000:10 [--pairs intra:10000:4 ...] \
        [--settings '{"deformable_iterations": [40, 25], "learning_rates": [2.0, 0.75]}'] [--threads 1]

For screening schedules before a full benchmark (BENCHMARKS.md, issue 15, session 12): each
``kind:first_seed:count`` makes ``count`` pairs of ``simulation.pairs.make_pair`` at 4 mm (the validation
suite's; its seeds are 10,000-10,003), registers them with ``OptimizationSettings`` updated by the JSON
(lists become tuples) and evaluates the field as ``compare.py`` does. Prints one line per pair and the
group means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import compare
import SimpleITK as sitk
import torch

from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.itk_bridge import field_to_image
from TotalRegistratorLib.core.preprocess import Scan
from TotalRegistratorLib.io import images
from TotalRegistratorLib.optimization.instance import optimize_pair
from TotalRegistratorLib.optimization.optimizer import OptimizationSettings
from TotalRegistratorLib.simulation.pairs import make_pair


def specs(groups: list[str], spacing: float) -> list[compare.PairSpec]:
    """The pairs named by ``kind:first_seed:count`` entries."""
    out = []
    for group in groups:
        kind, first, count = group.split(":")
        out += [compare.PairSpec(f"{kind}-{seed}", kind, lambda k=kind, s=seed: make_pair(k, s, spacing=spacing))
                for seed in range(int(first), int(first) + int(count))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", action="append", required=True, help="kind:first_seed:count (repeatable)")
    parser.add_argument("--settings", default="{}", help="JSON of OptimizationSettings fields to override")
    parser.add_argument("--spacing", type=float, default=4.0, help="phantom voxel spacing, mm")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    overrides = {key: tuple(value) if isinstance(value, list) else value
                 for key, value in json.loads(args.settings).items()}
    settings = OptimizationSettings(**overrides)
    dice: dict[str, list[float]] = {}
    torch.set_num_threads(args.threads)  # compare.prepare makes pairs on one thread and restores this
    with tempfile.TemporaryDirectory() as folder:
        for spec in specs(args.pairs, args.spacing):
            prepared = compare.prepare(spec, Path(folder) / spec.name)
            start = time.perf_counter()
            result = optimize_pair(Scan(prepared.pair.fixed, "fixed"), Scan(prepared.pair.moving, "moving"), settings)
            seconds = time.perf_counter() - start
            grid = Grid.from_image(prepared.pair.fixed)
            field = sitk.Cast(field_to_image(result.transform.field_on(grid), grid), sitk.sitkVectorFloat32)
            path = Path(folder) / spec.name / "field.mha"
            images.write_image(field, path, compress=False)
            row = compare.evaluate(prepared, path)
            dice.setdefault(spec.group, []).append(100 * row["dice_mean"])
            error = row.get("error_mean_mm", float("nan"))
            print(f"{spec.name}: Dice {100 * row['dice_mean']:.2f} %, error {error:.3f} mm, folding "
                  f"{row['folding_percent']:.3f} %, {seconds:.1f} s, kept {result.kept}", flush=True)
    print("mean Dice %:", ", ".join(f"{group} {statistics.mean(values):.2f}" for group, values in dice.items()))


if __name__ == "__main__":
    main()
