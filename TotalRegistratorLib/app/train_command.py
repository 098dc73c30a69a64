"""The ``train.py`` command line: arguments, training data, and the blocks trained in order.

Exit code 0, or 2 with one ``train.py: error: ...`` line on stderr for bad input.
The library side is :mod:`TotalRegistratorLib.learned.training`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from ..core import runtime
from ..core.preprocess import NETWORK_SIZE
from ..errors import InputError
from ..io.labels import read_pairs_csv
from ..io.outputs import check_output_dir
from ..learned.cascade import Cascade, read_checkpoint
from ..learned.dataset import PairDataset
from ..learned.losses import LossWeights
from ..learned.training import Context, Trainer, TrainSettings, barrier, phantom_pairs, split_validation, start
from ..registry import BLOCK, BLOCKS, PHANTOM_SPACING_RANGE_MM
from .arguments import non_negative, path, positive, threads, within
from .running import run_guarded


def _size(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid size must be x,y,z voxels, not {text!r}") from None
    if len(values) != 3 or min(values) < 2:
        raise argparse.ArgumentTypeError(f"grid size must be three integers >= 2, not {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    """The ``train.py`` argument parser."""
    p = argparse.ArgumentParser(
        prog="train.py", description="Train TotalRegistrator cascade blocks. Under torchrun every process trains "
        "on its share of the pairs (data parallel).",
        epilog="examples: python train.py --block all --phantom 400 -o weights;  "
               "torchrun --nproc_per_node=4 train.py --block affine --data pairs.csv -o weights;  "
               "Slicer --no-main-window --python-script train.py -- --block bone --data pairs.csv -o weights")
    p.add_argument("--block", required=True, choices=(*BLOCKS, "all"),
                   help="block to train; 'all' trains affine, bone, thorax, abdomen, then wholebody")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=path, help="pairs CSV with fixed, moving, fixed_labels, moving_labels")
    source.add_argument("--phantom", type=positive(int), metavar="N",
                        help="simulate N phantom pairs (cached) and train on them")
    p.add_argument("--val-data", type=path, help="validation pairs CSV (default: the last 10%% of --data)")
    p.add_argument("--val-pairs", type=non_negative(int), default=None,
                   help="phantom validation pairs (default: N/10, at least 1)")
    p.add_argument("-o", "--output", type=path, required=True, help="folder for block files, resume files and logs")
    p.add_argument("--weights", type=path,
                   help="folder with the preceding blocks (default: --output; not with --block all, which "
                        "trains them into --output)")
    p.add_argument("--cache", type=path, help="cache folder for phantom pairs and tensors (default: OUTPUT/cache)")
    p.add_argument("--epochs", type=positive(int), default=400)
    p.add_argument("--pairs-per-epoch", type=positive(int), default=400,
                   help="pairs per epoch (default 400; under torchrun rounded up to a multiple of the processes)")
    p.add_argument("--lr", type=positive(float), default=1e-4)
    p.add_argument("--seed", type=non_negative(int), default=0)
    defaults = LossWeights()
    p.add_argument("--similarity-weight", type=non_negative(float), default=defaults.similarity, help="alpha (MI)")
    p.add_argument("--dice-weight", type=non_negative(float), default=defaults.dice, help="lambda (Dice)")
    p.add_argument("--bending-weight", type=non_negative(float), default=defaults.bending,
                   help="beta (bending energy, mm^-2; ignored for the affine block)")
    p.add_argument("--joint-backward", action="store_true", help="one backward pass for all organs (more memory)")
    p.add_argument("--no-augment", action="store_true",
                   help="train on the pairs as they are (default: random appearance and smooth deformation per step)")
    p.add_argument("--grid-size", type=_size, default=NETWORK_SIZE,
                   help="network grid x,y,z (default 64,48,80; the paper's is 128,96,160)")
    p.add_argument("--phantom-spacing", type=within(float, *PHANTOM_SPACING_RANGE_MM), default=3.0,
                   help="voxel spacing of phantom scans, mm ({:g}..{:g})".format(*PHANTOM_SPACING_RANGE_MM))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=threads, default=None, help="torch CPU threads per process (at most the CPUs)")
    p.add_argument("--restart", action="store_true", help="ignore resume files and start from scratch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _datasets(args, ctx: Context) -> tuple[PairDataset, PairDataset | None, str]:
    cache = args.cache or args.output / "cache"
    if args.phantom is not None:
        n_val = max(1, args.phantom // 10) if args.val_pairs is None else args.val_pairs
        if ctx.main:  # rank 0 simulates; the others wait, then read the same files
            phantom_pairs(cache / "phantom_train", args.phantom, args.seed, args.phantom_spacing, not args.quiet)
            if n_val:
                phantom_pairs(cache / "phantom_val", n_val, args.seed + 1, args.phantom_spacing, not args.quiet)
        barrier(ctx)
        train = read_pairs_csv(cache / "phantom_train" / "pairs.csv")
        val = read_pairs_csv(cache / "phantom_val" / "pairs.csv") if n_val else []
        description = (f"{args.phantom} phantom pairs (seed {args.seed}, {args.phantom_spacing:g} mm), "
                       f"{n_val} validation pairs")
    else:
        records = read_pairs_csv(args.data)
        train, val = (records, read_pairs_csv(args.val_data)) if args.val_data else split_validation(records)
        description = f"{args.data} ({len(train)} training, {len(val)} validation pairs)"
    tensors = cache / "tensors"
    make = lambda records, swap: PairDataset(records, tensors, swap=swap, seed=args.seed,  # noqa: E731
                                             size=args.grid_size)
    return make(train, True), (make(val, False) if val else None), description


def main(argv: Sequence[str] | None = None) -> int:
    """``train.py`` entry point; returns the exit code (2 with a one-line message for bad input, 130/143 when
    interrupted: :mod:`TotalRegistratorLib.app.running`)."""
    args = parser().parse_args(argv)
    try:
        return run_guarded("train.py", lambda: _train(args))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _frozen(block: str, weights: Path, size: tuple[int, int, int]) -> Cascade | None:
    """The trained blocks that precede ``block``, from ``weights`` (None for the affine block)."""
    preceding = BLOCK[block].preceding
    missing = [b for b in preceding if not (weights / f"{b}.pt").is_file()]
    if missing:
        raise InputError(f"{weights}: training the {block} block needs the trained "
                         f"{', '.join(missing)} block(s) there; train them first")
    return Cascade.load(weights, preceding, size) if preceding else None


def _train(args: argparse.Namespace) -> int:
    if args.block == "all" and args.weights:
        raise InputError("--weights: --block all trains every block into --output and uses no other weights")
    check_output_dir(args.output)
    if args.cache:
        check_output_dir(args.cache)
    runtime.configure()
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = start(args.device)
    blocks = BLOCKS if args.block == "all" else (args.block,)
    weights = args.weights or args.output
    # weights and resume files are checked before the (slow) data preparation
    early = {} if args.block == "all" else {args.block: _frozen(args.block, weights, args.grid_size)}
    for block in blocks:
        resume = args.output / f"{block}.last.pt"
        if resume.exists() and not args.restart:
            read_checkpoint(resume)
    train, val, description = _datasets(args, ctx)
    for block in blocks:
        settings = TrainSettings(block, epochs=args.epochs, pairs_per_epoch=args.pairs_per_epoch, lr=args.lr,
                                 seed=args.seed, weights=LossWeights(args.similarity_weight, args.dice_weight,
                                                                     args.bending_weight),
                                 per_organ=not args.joint_backward, size=args.grid_size, device=args.device,
                                 progress=not args.quiet, augment=not args.no_augment)
        frozen = early[block] if block in early else _frozen(block, weights, args.grid_size)
        trainer = Trainer(settings, args.output, frozen, description, ctx)
        if args.restart and ctx.main:
            for key in ("last", "log"):
                trainer.paths[key].unlink(missing_ok=True)
        barrier(ctx)
        if trainer.resume() and ctx.main and not args.quiet:
            print(f"{block}: resuming after epoch {trainer.epoch}", file=sys.stderr)
        best = trainer.fit(train, val)
        if ctx.main:
            print(f"{block}: best weights {best}")
    return 0
