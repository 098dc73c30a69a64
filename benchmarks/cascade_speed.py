"""Cascade speed, training steps per second and training memory on the CPU (untrained weights).

* Inference: one deformable block and all five blocks, from the two network
  tensors to the composed field in mm (warps and compositions included,
  preprocessing excluded); median of ``--runs`` runs.
* Training speed: seconds per training step of each block (frozen preceding
  blocks, warp, loss, backward, Adam; the step ``train.py`` takes), joint and
  per-organ backward, median of ``--runs`` steps after one warm-up step.
* Training memory: one training step per block (frozen preceding blocks,
  warp, loss, backward, Adam) with per-organ and with joint backward, each in a
  fresh process; peak resident memory of the process during the second step and
  its rise above the memory held before that step.

    .venv/bin/python benchmarks/cascade_speed.py --runs 5 --threads 2 [--size 128,96,160] [--no-memory]

``--size`` is the network grid (x, y, z voxels; default the library's); the synthetic scans span the same
physical box (about 45 x 27 x 67 cm) at every size.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

from TotalRegistratorLib.core import runtime
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.preprocess import NETWORK_SIZE
from TotalRegistratorLib.learned.cascade import BLOCKS, Cascade, Mapping, block_config, build_network
from TotalRegistratorLib.learned.training import Trainer, TrainSettings
from TotalRegistratorLib.registry import BLOCK, TRAINING_STRUCTURES

REFERENCE_SIZE = (128, 96, 160)  # the synthetic grids' spacings are set for this size and scaled for others


def grids(size: tuple[int, int, int]) -> tuple[Grid, Grid]:
    """Fixed and moving network grids of ``size`` voxels over the same box at every size."""
    scale = [r / s for r, s in zip(REFERENCE_SIZE, size)]
    return (Grid(size, [a * b for a, b in zip((3.5, 2.8, 4.2), scale)], (-220.0, -130.0, -600.0)),
            Grid(size, [a * b for a, b in zip((3.4, 2.9, 4.0), scale)], (-215.0, -135.0, -590.0)))


def synthetic_item(size: tuple[int, int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A smooth random pair with 11 blob masks on the network grid (speed and memory only)."""
    g = torch.Generator().manual_seed(seed)
    fixed_grid, moving_grid = grids(size)
    shape = fixed_grid.shape

    def smooth(channels: int) -> torch.Tensor:
        coarse = torch.rand(channels, 1, 6, 5, 5, generator=g)
        return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[:, 0]

    return {"fixed": smooth(1), "moving": smooth(1),
            "fixed_masks": (smooth(len(TRAINING_STRUCTURES)) > 0.6).to(torch.uint8),
            "moving_masks": (smooth(len(TRAINING_STRUCTURES)) > 0.6).to(torch.uint8),
            "fixed_index_to_world": torch.as_tensor(fixed_grid.index_to_world),
            "moving_index_to_world": torch.as_tensor(moving_grid.index_to_world)}


def untrained(blocks, size: tuple[int, int, int]) -> Cascade:
    torch.manual_seed(0)
    return Cascade({b: build_network(block_config(b, size)) for b in blocks}, size=size)


def inference(runs: int, size: tuple[int, int, int]) -> dict[str, list[float]]:
    item = synthetic_item(size)
    fixed, moving = item["fixed"][None], item["moving"][None]
    fixed_grid, moving_grid = grids(size)
    times = {}
    for label, blocks in (("1 block (bone)", ["bone"]), ("5 blocks", list(BLOCKS))):
        cascade = untrained(blocks, size).eval()
        samples = []
        with torch.no_grad():
            for _ in range(runs + 1):  # the first run warms up
                start = time.perf_counter()
                cascade(fixed, moving, Mapping.box(fixed_grid, moving_grid)).transform().field_on(fixed_grid)
                samples.append(time.perf_counter() - start)
        times[label] = samples[1:]
    return times


def _trainer(block: str, per_organ: bool, size: tuple[int, int, int], folder: str) -> Trainer:
    preceding = BLOCK[block].preceding
    frozen = untrained(preceding, size) if preceding else None
    return Trainer(TrainSettings(block, device="cpu", per_organ=per_organ, size=size, progress=False), folder,
                   frozen)


def training_speed(block: str, per_organ: bool, size: tuple[int, int, int], runs: int) -> list[float]:
    """Seconds per training step of ``block`` (``runs`` steps after one warm-up step)."""
    item = synthetic_item(size)
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(block, per_organ, size, tmp)
        for n in range(runs + 1):
            start = time.perf_counter()
            trainer.step(item, torch.Generator().manual_seed(n))
            samples.append(time.perf_counter() - start)
    return samples[1:]


def rss_mb() -> float:
    """Current resident memory of this process (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def training_memory(block: str, per_organ: bool, size: tuple[int, int, int]) -> dict[str, float]:
    """Resident memory during the second training step of ``block`` (sampled every 2 ms), in this process.

    Run it in a fresh process without :func:`runtime.configure`: glibc then returns freed blocks to the
    system, so the resident size follows the memory in use.
    """
    item = synthetic_item(size)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(block, per_organ, size, tmp)
        trainer.step(item, torch.Generator().manual_seed(0))  # Adam state exists from here on
        gc.collect()
        before, peak, running = rss_mb(), [0.0], True

        def sample() -> None:
            while running:
                peak[0] = max(peak[0], rss_mb())
                time.sleep(0.002)

        watcher = threading.Thread(target=sample)
        watcher.start()
        trainer.step(item, torch.Generator().manual_seed(0))
        running = False
        watcher.join()
    return {"peak_mb": peak[0], "rise_mb": peak[0] - before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=lambda t: tuple(int(v) for v in t.split(",")), default=NETWORK_SIZE,
                   help="network grid x,y,z (default %(default)s)")
    p.add_argument("--no-memory", action="store_true", help="leave out the training-memory table")
    p.add_argument("--memory-only", nargs=2, metavar=("BLOCK", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_only:
        print(json.dumps(training_memory(args.memory_only[0], args.memory_only[1] == "per-organ", args.size)))
        return
    runtime.configure()
    print(f"torch {torch.__version__}, {args.threads} threads, grid {args.size} (x, y, z)")
    print("| cascade | median | range |\n|---|---|---|")
    for label, samples in inference(args.runs, args.size).items():
        print(f"| {label} | {statistics.median(samples):.2f} s | {min(samples):.2f}-{max(samples):.2f} s |")
    print("\n| block | backward | seconds per step (median) | steps per second |\n|---|---|---|---|")
    for block in BLOCKS:
        for mode in ("per-organ", "joint"):
            median = statistics.median(training_speed(block, mode == "per-organ", args.size, args.runs))
            print(f"| {block} | {mode} | {median:.2f} s | {1 / median:.2f} |", flush=True)
    if args.no_memory:
        return
    print("\n| block | backward | peak RSS in step | rise during step |\n|---|---|---|---|")
    for block in BLOCKS:
        for mode in ("per-organ", "joint"):
            out = subprocess.run([sys.executable, __file__, "--memory-only", block, mode, "--threads",
                                  str(args.threads), "--size", ",".join(map(str, args.size))],
                                 capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {block} | {mode} | {m['peak_mb']:.0f} MB | {m['rise_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
