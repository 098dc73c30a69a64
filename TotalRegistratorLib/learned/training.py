"""Training the cascade's blocks (Pham et al. 2025), headless, on CPU, one GPU or many (torchrun).

Order: ``affine`` first; ``bone``, ``thorax`` and ``abdomen`` each on the frozen
affine block's output (independently, in any order or in parallel);
``wholebody`` on the frozen output of all four. Adam (lr 1e-4), batch 1,
``pairs_per_epoch`` random pairs per epoch, the loss of
:mod:`TotalRegistratorLib.learned.losses` over the block's structures.

Output folder, per block: ``<block>.pt`` (best epoch on the validation Dice,
or on the training loss without validation data or when no validation scan
holds the block's structures; the file the cascade loads), ``<block>.last.pt`` (the latest epoch with the
optimiser state: a rerun resumes from it), ``<block>.log.csv`` (one row per
epoch: losses, validation Dice, seconds).

Data-parallel: under ``torchrun --nproc_per_node=N`` every process takes every
N-th pair of the epoch (``pairs_per_epoch`` rounded up to a multiple of N, so
every process takes the same number of steps), DistributedDataParallel averages the gradients (gloo on
CPU, nccl on GPU), validation is split the same way and summed; rank 0 writes.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..app.arguments import non_negative, positive
from ..core import runtime
from ..core.preprocess import NETWORK_SIZE
from ..errors import InputError
from ..io.labels import TRAINING_STRUCTURES, PairRecord, read_pairs_csv, write_pairs_csv
from ..io.outputs import atomic_path, check_output_dir
from ..learned.cascade import (
    BLOCK_STRUCTURES,
    BLOCKS,
    Cascade,
    Mapping,
    apply_block,
    block_config,
    build_network,
    load_block,
    save_block,
    voxels_to_mm,
)
from ..learned.dataset import PairDataset, network_grids
from ..learned.losses import LossWeights, backward

PRECEDING: dict[str, tuple[str, ...]] = {
    "affine": (), "bone": ("affine",), "thorax": ("affine",), "abdomen": ("affine",),
    "wholebody": ("affine", "bone", "thorax", "abdomen")}
LOG_COLUMNS = ("epoch", "train_loss", "similarity", "dice_loss", "bending", "val_dice", "seconds")


@dataclass
class TrainSettings:
    """What a training run does; see ``train.py --help`` for each option."""

    block: str
    epochs: int = 400
    pairs_per_epoch: int = 400
    lr: float = 1e-4
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    per_organ: bool = True  # one backward pass per organ (memory); False: one joint pass
    size: tuple[int, int, int] = NETWORK_SIZE
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise InputError(f"unknown block {self.block!r}; blocks are {', '.join(BLOCKS)}")
        if self.block == "affine" and self.weights.bending:
            self.weights = replace(self.weights, bending=0.0)  # no bending term for the affine block
        if self.epochs < 1 or self.pairs_per_epoch < 1:
            raise InputError("--epochs and --pairs-per-epoch must be at least 1")


# --- distributed helpers ------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def start(device: str = "auto") -> Context:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Context(rank, world, torch.device(f"cuda:{local}" if cuda else "cpu"))


def _sum_across(ctx: Context, values: list[float]) -> list[float]:
    if ctx.world == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def _barrier(ctx: Context) -> None:
    if ctx.world > 1:
        dist.barrier()


# --- data ---------------------------------------------------------------------------------------------
def phantom_pairs(folder: str | os.PathLike, count: int, seed: int = 0, spacing: float = 3.0,
                  progress: bool = True) -> list[PairRecord]:
    """``count`` simulated pairs (intra-patient, multiphase and inter-patient in turn) in ``folder``.

    Pairs already written (a ``.done`` marker beside them recording kind, seed and spacing) are
    reused when those match, so an interrupted generation continues; pairs made with other settings
    are made again. Writes ``folder/pairs.csv`` too.
    """
    from ..app.phantom_command import pair_seed
    from ..simulation.pairs import KINDS, make_pair

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(count), desc="phantom pairs", unit="pair", disable=not progress):
        stem = f"pair{i:04d}"
        names = [folder / f"{stem}_{key}.nii.gz" for key in ("fixed", "moving", "fixed_labels", "moving_labels")]
        marker = folder / f"{stem}.done"
        kind = KINDS[i % len(KINDS)]
        made_with = f"{kind} seed {pair_seed(seed, i)} spacing {spacing:g} mm"
        if not marker.is_file() or marker.read_text() != made_with:
            marker.unlink(missing_ok=True)
            make_pair(kind, pair_seed(seed, i), spacing=spacing).write(folder, stem, ground_truth=False)
            marker.write_text(made_with)
        records.append(PairRecord(*names))
    write_pairs_csv(folder / "pairs.csv", records)
    return records


def split_validation(records: list[PairRecord], fraction: float = 0.1) -> tuple[list, list]:
    """The last ``fraction`` of the pairs (at least one when there are two or more) for validation."""
    n = int(round(len(records) * fraction)) if len(records) > 1 else 0
    n = max(n, 1) if len(records) > 1 else 0
    return records[:len(records) - n], records[len(records) - n:]


def epoch_order(count: int, pairs: int, seed: int, epoch: int) -> list[int]:
    """``pairs`` dataset indices for an epoch: shuffled passes over all pairs, seeded by (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    passes = -(-pairs // count)
    return np.concatenate([rng.permutation(count) for _ in range(passes)])[:pairs].tolist()


def _to(item: dict, device: torch.device, channels: list[int]) -> dict[str, torch.Tensor]:
    return {"fixed": item["fixed"][None].to(device), "moving": item["moving"][None].to(device),
            "fixed_masks": item["fixed_masks"][None, channels].to(device),
            "moving_masks": item["moving_masks"][None, channels].to(device)}


# --- one block ----------------------------------------------------------------------------------------
class Trainer:
    """Trains one block; ``frozen`` holds the preceding blocks (None for the affine block)."""

    def __init__(self, settings: TrainSettings, out_dir: str | os.PathLike, frozen: Cascade | None = None,
                 data_description: str = "", ctx: Context | None = None):
        self.s = settings
        self.ctx = ctx or start(settings.device)
        self.out = Path(out_dir)
        self.frozen = frozen.to(self.ctx.device).eval() if frozen is not None else None
        for p in (self.frozen.parameters() if self.frozen is not None else []):
            p.requires_grad_(False)
        self.config = block_config(settings.block, settings.size, loss_weights=settings.weights.as_dict(),
                                   training_data=data_description, lr=settings.lr,
                                   pairs_per_epoch=settings.pairs_per_epoch, per_organ=settings.per_organ,
                                   seed=settings.seed, preceding=list(PRECEDING[settings.block]))
        torch.manual_seed(settings.seed)
        self.network = build_network(self.config).to(self.ctx.device)
        self.model = self.network
        if self.ctx.world > 1:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=settings.lr)
        self.channels = [TRAINING_STRUCTURES.index(s) for s in BLOCK_STRUCTURES[settings.block]]
        self.epoch = 0
        self.best = -float("inf")
        self.selected_by: str | None = None  # "val_dice" or "train_loss"; what self.best measures

    @property
    def paths(self) -> dict[str, Path]:
        b = self.s.block
        return {"best": self.out / f"{b}.pt", "last": self.out / f"{b}.last.pt", "log": self.out / f"{b}.log.csv"}

    def _start_mapping(self, batch: dict, item: dict) -> Mapping:
        fixed_grid, moving_grid = network_grids(item)
        mapping = Mapping.box(fixed_grid, moving_grid, self.ctx.device)
        if self.frozen is not None:
            with torch.no_grad():
                mapping = self.frozen(batch["fixed"], batch["moving"], mapping)
        return mapping

    def step(self, item: dict, generator: torch.Generator | None = None) -> dict[str, float]:
        """One optimisation step on one pair (a dataset item); returns the loss terms."""
        self.model.train()
        batch = _to(item, self.ctx.device, self.channels)
        mapping = self._start_mapping(batch, item)
        mapping, out = apply_block(self.s.block, self.model, mapping, batch["fixed"], batch["moving"])
        displacement = None if self.s.block == "affine" else voxels_to_mm(out, mapping.fixed_grid)
        self.optimizer.zero_grad(set_to_none=True)
        terms = backward(mapping.sampling_grid(), displacement, mapping.fixed_grid, batch["fixed"], batch["moving"],
                         batch["fixed_masks"], batch["moving_masks"], self.s.weights, self.s.per_organ, generator)
        self.optimizer.step()
        return terms

    @torch.no_grad()
    def dice(self, item: dict) -> list[float]:
        """Dice per block structure present in the fixed scan (moving masks warped linearly, cut at 0.5)."""
        self.network.eval()
        batch = _to(item, self.ctx.device, self.channels)
        mapping = self._start_mapping(batch, item)
        mapping, _ = apply_block(self.s.block, self.network, mapping, batch["fixed"], batch["moving"])
        warped = mapping.warp(batch["moving_masks"].float()) > 0.5
        fixed = batch["fixed_masks"] > 0
        scores = []
        for c in range(fixed.shape[1]):
            total = int(fixed[:, c].sum() + warped[:, c].sum())
            if fixed[:, c].any():
                scores.append(2.0 * float((fixed[:, c] & warped[:, c]).sum()) / total)
        return scores

    # --- checkpoints ---------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from ``<block>.last.pt`` if present; False when starting fresh."""
        path = self.paths["last"]
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.ctx.device, weights_only=True)
        config = state["config"]
        for key in ("block", "architecture", "grid_size", "loss_weights", "per_organ", "preceding", "training_data"):
            if config.get(key) != self.config.get(key):
                raise InputError(f"{path}: was trained with {key}={config.get(key)!r}, this run has "
                                 f"{self.config.get(key)!r} (delete it or pass --restart to start over)")
        self.network.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        # the best block file on disk is the truth (a stop between writing it and last.pt leaves last.pt behind)
        best = self.paths["best"]
        saved = load_block(best, self.s.block, self.s.size)[1]["metrics"] if best.is_file() else {}
        self.best, self.selected_by = float(saved.get("selection", -float("inf"))), saved.get("selected_by")
        self._trim_log()
        return True

    def _trim_log(self) -> None:
        """Drop log rows of epochs after the resumed one (logged before a stop, then trained again)."""
        path = self.paths["log"]
        if not path.is_file():
            return
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= self.epoch]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def _save(self, metrics: dict) -> None:
        """Write ``last.pt`` and, when ``metrics["selection"]`` beats the best so far, the block file.

        A selection by another measure than the best's (validation data added or removed on resume)
        starts the best anew: the two are not comparable.
        """
        config = {**self.config, "epochs": self.epoch, "metrics": metrics}
        if metrics["selected_by"] != self.selected_by:
            self.best, self.selected_by = -float("inf"), metrics["selected_by"]
        if metrics["selection"] > self.best:
            self.best = metrics["selection"]
            save_block(self.paths["best"], self.network, config)
        with atomic_path(self.paths["last"]) as tmp:
            torch.save({"config": config, "state_dict": self.network.state_dict(),
                        "optimizer": self.optimizer.state_dict(), "epoch": self.epoch}, tmp)

    def _log(self, row: dict) -> None:
        new = not self.paths["log"].is_file()
        with open(self.paths["log"], "a", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in LOG_COLUMNS})

    # --- the loop ------------------------------------------------------------------------------------
    def fit(self, train: PairDataset, validation: PairDataset | None = None) -> Path:
        """Train for the remaining epochs; returns the path of the best block file."""
        self.out.mkdir(parents=True, exist_ok=True)
        runtime.configure()
        while self.epoch < self.s.epochs:
            started = time.perf_counter()
            train.set_epoch(self.epoch)
            steps = -(-self.s.pairs_per_epoch // self.ctx.world)  # the same on every rank: DDP's collectives pair up
            order = epoch_order(len(train), steps * self.ctx.world, self.s.seed, self.epoch)
            order = order[self.ctx.rank::self.ctx.world]
            sums = np.zeros(4)
            bar = tqdm(order, desc=f"{self.s.block} epoch {self.epoch + 1}/{self.s.epochs}", unit="pair",
                       disable=not (self.s.progress and self.ctx.main), leave=False)
            for n, index in enumerate(bar):
                generator = torch.Generator(self.ctx.device).manual_seed(
                    int(np.random.SeedSequence([self.s.seed, self.epoch, n, self.ctx.rank]).generate_state(1)[0]))
                terms = self.step(train[index], generator)
                sums += [terms["total"], terms["similarity"], terms["dice"], terms["bending"]]
                bar.set_postfix(loss=f"{terms['total']:.4f}")
            total = _sum_across(self.ctx, [*sums, len(order)])
            means = [v / max(total[4], 1) for v in total[:4]]
            val = self.validate(validation)
            self.epoch += 1
            row = dict(zip(LOG_COLUMNS, [self.epoch, *means, val, time.perf_counter() - started]))
            if self.ctx.main:
                by_dice = not np.isnan(val)  # nan: no validation data, or none of the block's structures in it
                self._log(row)
                self._save({"train_loss": means[0], "val_dice": val, "selection": val if by_dice else -means[0],
                            "selected_by": "val_dice" if by_dice else "train_loss"})
                if self.s.progress:
                    tqdm.write(f"{self.s.block} epoch {self.epoch}: loss {means[0]:.4f}, validation Dice {val:.4f}",
                               file=sys.stderr)
            _barrier(self.ctx)
        return self.paths["best"]

    def validate(self, data: PairDataset | None) -> float:
        """Mean Dice over the validation pairs and the block's structures (nan without validation data)."""
        if data is None or len(data) == 0:
            return float("nan")
        scores = [s for i in range(self.ctx.rank, len(data), self.ctx.world) for s in self.dice(data[i])]
        total, count = _sum_across(self.ctx, [float(sum(scores)), float(len(scores))])
        return total / count if count else float("nan")


# --- command line -------------------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid size must be x,y,z voxels, not {text!r}") from None
    if len(values) != 3 or min(values) < 2:
        raise argparse.ArgumentTypeError(f"grid size must be three integers >= 2, not {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description="Train TotalRegistrator cascade blocks. Under torchrun every process trains "
        "on its share of the pairs (data parallel).",
        epilog="examples: python train.py --block all --phantom 400 -o weights;  "
               "torchrun --nproc_per_node=4 train.py --block affine --data pairs.csv -o weights;  "
               "Slicer --no-main-window --python-script train.py -- --block bone --data pairs.csv -o weights")
    p.add_argument("--block", required=True, choices=(*BLOCKS, "all"),
                   help="block to train; 'all' trains affine, bone, thorax, abdomen, then wholebody")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="pairs CSV with fixed, moving, fixed_labels, moving_labels")
    source.add_argument("--phantom", type=positive(int), metavar="N",
                        help="simulate N phantom pairs (cached) and train on them")
    p.add_argument("--val-data", type=Path, help="validation pairs CSV (default: the last 10%% of --data)")
    p.add_argument("--val-pairs", type=non_negative(int), default=None,
                   help="phantom validation pairs (default: N/10, at least 1)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for block files, resume files and logs")
    p.add_argument("--weights", type=Path,
                   help="folder with the preceding blocks (default: --output; not with --block all, which "
                        "trains them into --output)")
    p.add_argument("--cache", type=Path, help="cache folder for phantom pairs and tensors (default: OUTPUT/cache)")
    p.add_argument("--epochs", type=positive(int), default=400)
    p.add_argument("--pairs-per-epoch", type=positive(int), default=400,
                   help="pairs per epoch (default 400; under torchrun rounded up to a multiple of the processes)")
    p.add_argument("--lr", type=positive(float), default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    defaults = LossWeights()
    p.add_argument("--similarity-weight", type=non_negative(float), default=defaults.similarity, help="alpha (MI)")
    p.add_argument("--dice-weight", type=non_negative(float), default=defaults.dice, help="lambda (Dice)")
    p.add_argument("--bending-weight", type=non_negative(float), default=defaults.bending,
                   help="beta (bending energy, mm^-2; ignored for the affine block)")
    p.add_argument("--joint-backward", action="store_true", help="one backward pass for all organs (more memory)")
    p.add_argument("--grid-size", type=_size, default=NETWORK_SIZE, help="network grid x,y,z (default 128,96,160)")
    p.add_argument("--phantom-spacing", type=positive(float), default=3.0, help="voxel spacing of phantom scans, mm")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=positive(int), default=None, help="torch CPU threads per process")
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
        _barrier(ctx)
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
    """``train.py`` entry point; returns the exit code (2 with a one-line message for bad input)."""
    args = parser().parse_args(argv)
    try:
        if args.block == "all" and args.weights:
            raise InputError("--weights: --block all trains every block into --output and uses no other weights")
        check_output_dir(args.output)
        if args.cache:
            check_output_dir(args.cache)
        runtime.configure()
        if args.threads:
            torch.set_num_threads(args.threads)
        ctx = start(args.device)
        train, val, description = _datasets(args, ctx)
        blocks = BLOCKS if args.block == "all" else (args.block,)
        weights = args.weights or args.output
        for block in blocks:
            settings = TrainSettings(block, args.epochs, args.pairs_per_epoch, args.lr, args.seed,
                                     LossWeights(args.similarity_weight, args.dice_weight, args.bending_weight),
                                     not args.joint_backward, args.grid_size, args.device, not args.quiet)
            preceding = PRECEDING[block]
            missing = [b for b in preceding if not (weights / f"{b}.pt").is_file()]
            if missing:
                raise InputError(f"{weights}: training the {block} block needs the trained "
                                 f"{', '.join(missing)} block(s) there; train them first")
            frozen = Cascade.load(weights, preceding, args.grid_size) if preceding else None
            trainer = Trainer(settings, args.output, frozen, description, ctx)
            if args.restart and ctx.main:
                for key in ("last", "log"):
                    trainer.paths[key].unlink(missing_ok=True)
            _barrier(ctx)
            if trainer.resume() and ctx.main and not args.quiet:
                print(f"{block}: resuming after epoch {trainer.epoch}", file=sys.stderr)
            best = trainer.fit(train, val)
            if ctx.main:
                print(f"{block}: best weights {best}")
    except InputError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
