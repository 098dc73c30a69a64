"""Cascade speed and training memory on the CPU at the paper's 128 x 96 x 160 grid (untrained weights).

* Inference: one deformable block and all five blocks, from the two network
  tensors to the composed field in mm (warps and compositions included,
  preprocessing excluded); median of ``--runs`` runs.
* Training memory: one training step per block (frozen preceding blocks,
  warp, loss, backward, Adam) with per-organ and with joint backward, each in a
  fresh process; peak resident memory of the process during the second step and
  its rise above the memory held before that step.

    .venv/bin/python benchmarks/cascade_speed.py --runs 5 --threads 2
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

FIXED = Grid(NETWORK_SIZE, (3.5, 2.8, 4.2), (-220.0, -130.0, -600.0))
MOVING = Grid(NETWORK_SIZE, (3.4, 2.9, 4.0), (-215.0, -135.0, -590.0))


def synthetic_item(seed: int = 0) -> dict[str, torch.Tensor]:
    """A smooth random pair with 11 blob masks on the network grid (speed and memory only)."""
    g = torch.Generator().manual_seed(seed)
    shape = FIXED.shape

    def smooth(channels: int) -> torch.Tensor:
        coarse = torch.rand(channels, 1, 6, 5, 5, generator=g)
        return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[:, 0]

    return {"fixed": smooth(1), "moving": smooth(1),
            "fixed_masks": (smooth(len(TRAINING_STRUCTURES)) > 0.6).to(torch.uint8),
            "moving_masks": (smooth(len(TRAINING_STRUCTURES)) > 0.6).to(torch.uint8),
            "fixed_index_to_world": torch.as_tensor(FIXED.index_to_world),
            "moving_index_to_world": torch.as_tensor(MOVING.index_to_world)}


def untrained(blocks) -> Cascade:
    torch.manual_seed(0)
    return Cascade({b: build_network(block_config(b)) for b in blocks})


def inference(runs: int) -> dict[str, list[float]]:
    item = synthetic_item()
    fixed, moving = item["fixed"][None], item["moving"][None]
    times = {}
    for label, blocks in (("1 block (bone)", ["bone"]), ("5 blocks", list(BLOCKS))):
        cascade = untrained(blocks).eval()
        samples = []
        with torch.no_grad():
            for _ in range(runs + 1):  # the first run warms up
                start = time.perf_counter()
                cascade(fixed, moving, Mapping.box(FIXED, MOVING)).transform().field_on(FIXED)
                samples.append(time.perf_counter() - start)
        times[label] = samples[1:]
    return times


def rss_mb() -> float:
    """Current resident memory of this process (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def training_memory(block: str, per_organ: bool) -> dict[str, float]:
    """Resident memory during the second training step of ``block`` (sampled every 2 ms), in this process.

    Run it in a fresh process without :func:`runtime.configure`: glibc then returns freed blocks to the
    system, so the resident size follows the memory in use.
    """
    item = synthetic_item()
    preceding = BLOCK[block].preceding
    frozen = untrained(preceding) if preceding else None
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(TrainSettings(block, device="cpu", per_organ=per_organ, progress=False), tmp, frozen)
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
    p.add_argument("--memory-only", nargs=2, metavar=("BLOCK", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_only:
        print(json.dumps(training_memory(args.memory_only[0], args.memory_only[1] == "per-organ")))
        return
    runtime.configure()
    print(f"torch {torch.__version__}, {args.threads} threads, grid {NETWORK_SIZE} (x, y, z)")
    print("| cascade | median | range |\n|---|---|---|")
    for label, samples in inference(args.runs).items():
        print(f"| {label} | {statistics.median(samples):.2f} s | {min(samples):.2f}-{max(samples):.2f} s |")
    print("\n| block | backward | peak RSS in step | rise during step |\n|---|---|---|---|")
    for block in BLOCKS:
        for mode in ("per-organ", "joint"):
            out = subprocess.run([sys.executable, __file__, "--memory-only", block, mode, "--threads",
                                  str(args.threads)], capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {block} | {mode} | {m['peak_mb']:.0f} MB | {m['rise_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
