"""Where instance optimisation spends its time: seconds per stage and pyramid level, then the top operations.

    .venv/bin/python benchmarks/profile_optimizer.py [--kind intra] [--seed 10000] [--spacing 4] [--threads 1]

Registers one phantom pair of the validation suite (``pairs.make_pair``) with the default settings,
timing each level from the progress callback, then profiles a short run of the fine level alone
(torch.profiler, self CPU time per operation). Prints plain text.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from TotalRegistratorLib.core.preprocess import Scan  # noqa: E402
from TotalRegistratorLib.optimization.instance import optimize_pair  # noqa: E402
from TotalRegistratorLib.optimization.optimizer import OptimizationSettings  # noqa: E402
from TotalRegistratorLib.simulation.pairs import make_pair  # noqa: E402


def level_seconds(stamps: list[tuple[str, float]], stage: str, iterations: tuple[int, ...]) -> list[float]:
    """Seconds per level of ``stage`` from the progress callback's time stamps (one per iteration)."""
    times = [t for name, t in stamps if name == stage]
    seconds, start = [], 0
    for count in iterations:
        chunk = times[start:start + count]
        seconds.append(chunk[-1] - chunk[0] if len(chunk) > 1 else 0.0)
        start += count
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="intra")
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--spacing", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair = make_pair(args.kind, args.seed, spacing=args.spacing)
    fixed, moving = Scan(pair.fixed, "fixed"), Scan(pair.moving, "moving")
    settings = OptimizationSettings()
    stamps: list[tuple[str, float]] = []
    result = optimize_pair(fixed, moving, settings,
                           lambda stage, done, total: stamps.append((stage, time.perf_counter())))
    print(f"{args.kind}-{args.seed} at {args.spacing} mm, {args.threads} thread(s); working grid {result.grid.size}")
    print("stages (s):", {key: round(value, 2) for key, value in result.timings.items()})
    for stage, levels, iterations in (("affine", settings.affine_levels, settings.affine_iterations),
                                      ("deformable", settings.deformable_levels, settings.deformable_iterations)):
        for level, count, seconds in zip(levels, iterations, level_seconds(stamps, stage, iterations)):
            print(f"  {stage} level {level}: {count} iterations, {seconds:.2f} s, {1000 * seconds / count:.0f} ms each")
    fine_only = OptimizationSettings(affine_iterations=(1, 1), deformable_iterations=(0, 10))
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        optimize_pair(fixed, moving, fine_only)
    print("\n10 fine-level iterations (plus setup), self CPU time per operation:")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
