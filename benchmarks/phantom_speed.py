"""Time one intra-patient phantom pair at the network resolution (128 x 96 x 160) on one CPU thread.

Usage: .venv/bin/python benchmarks/phantom_speed.py [--runs 5]
Prints each run and the median (seconds); the target is under 10 s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from TotalRegistratorLib.core.preprocess import NETWORK_SIZE
from TotalRegistratorLib.simulation.pairs import make_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    times = []
    for seed in range(args.runs):
        start = time.perf_counter()
        pair = make_pair("intra", seed, size=NETWORK_SIZE)
        times.append(time.perf_counter() - start)
        print(f"run {seed}: {times[-1]:.2f} s  fixed {pair.fixed.GetSize()} moving {pair.moving.GetSize()}")
    print(f"median {statistics.median(times):.2f} s over {args.runs} runs (1 thread)")


if __name__ == "__main__":
    main()
