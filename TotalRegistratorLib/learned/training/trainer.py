"""One block's training: steps on single pairs, validation Dice, the epoch loop, resume and best-epoch files."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...core import runtime
from ...core.metrics import mask_dice
from ...learned.cascade import Cascade, Mapping, apply_block, block_config, build_network, save_block, voxels_to_mm
from ...learned.dataset import PairDataset, network_grids
from ...learned.losses import backward
from ...registry import BLOCK, TRAINING_STRUCTURES
from .augment import augment
from .checkpoints import LOG_COLUMNS, append_log, best_metrics, block_paths, restore, trim_log, write_resume
from .data import epoch_order
from .distributed import Context, barrier, start, sum_across
from .settings import TrainSettings


def _to(item: dict, device: torch.device, channels: list[int]) -> dict[str, torch.Tensor]:
    return {"fixed": item["fixed"][None].to(device), "moving": item["moving"][None].to(device),
            "fixed_masks": item["fixed_masks"][None, channels].to(device),
            "moving_masks": item["moving_masks"][None, channels].to(device)}


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
        block = BLOCK[settings.block]
        self.config = block_config(settings.block, settings.size, loss_weights=settings.weights.as_dict(),
                                   training_data=data_description, lr=settings.lr,
                                   pairs_per_epoch=settings.pairs_per_epoch, per_organ=settings.per_organ,
                                   seed=settings.seed, preceding=list(block.preceding), augment=settings.augment)
        torch.manual_seed(settings.seed)
        self.network = build_network(self.config).to(self.ctx.device)
        self.model = self.network
        if self.ctx.world > 1:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=settings.lr)
        self.channels = [TRAINING_STRUCTURES.index(s) for s in block.structures]
        self.epoch = 0
        self.best = -float("inf")
        self.selected_by: str | None = None  # "val_dice" or "train_loss"; what self.best measures

    @property
    def paths(self) -> dict[str, Path]:
        """This block's files: ``best`` (block file), ``last`` (resume file), ``log``."""
        return block_paths(self.out, self.s.block)

    def _start_mapping(self, batch: dict, item: dict) -> Mapping:
        fixed_grid, moving_grid = network_grids(item)
        mapping = Mapping.box(fixed_grid, moving_grid, self.ctx.device)
        if self.frozen is not None:
            with torch.no_grad():
                mapping = self.frozen(batch["fixed"], batch["moving"], mapping)
        return mapping

    def step(self, item: dict, generator: torch.Generator | None = None) -> dict[str, float]:
        """One optimisation step on one pair (a dataset item, augmented when the settings say so; ``generator``
        draws the augmentation and the MI sample); returns the loss terms."""
        self.model.train()
        batch = _to(item, self.ctx.device, self.channels)
        if self.s.augment:
            batch = augment(batch, generator)
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
        return [mask_dice(fixed[:, c], warped[:, c]) for c in range(fixed.shape[1]) if fixed[:, c].any()]

    def resume(self) -> bool:
        """Continue from ``<block>.last.pt`` if present; False when starting fresh."""
        path = self.paths["last"]
        if not path.is_file():
            return False
        self.epoch = restore(path, self.config, self.network, self.optimizer, self.ctx.device)
        # the best block file on disk is the truth (a stop between writing it and last.pt leaves last.pt behind)
        saved = best_metrics(self.paths["best"], self.s.block, self.s.size)
        self.best, self.selected_by = float(saved.get("selection", -float("inf"))), saved.get("selected_by")
        trim_log(self.paths["log"], self.epoch)
        return True

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
        write_resume(self.paths["last"], config, self.network, self.optimizer, self.epoch)

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
            total = sum_across(self.ctx, [*sums, len(order)])
            means = [v / max(total[4], 1) for v in total[:4]]
            val = self.validate(validation)
            self.epoch += 1
            row = dict(zip(LOG_COLUMNS, [self.epoch, *means, val, time.perf_counter() - started]))
            if self.ctx.main:
                by_dice = not np.isnan(val)  # nan: no validation data, or none of the block's structures in it
                append_log(self.paths["log"], row)
                self._save({"train_loss": means[0], "val_dice": val, "selection": val if by_dice else -means[0],
                            "selected_by": "val_dice" if by_dice else "train_loss"})
                if self.s.progress:
                    tqdm.write(f"{self.s.block} epoch {self.epoch}: loss {means[0]:.4f}, validation Dice {val:.4f}",
                               file=sys.stderr)
            barrier(self.ctx)
        return self.paths["best"]

    def validate(self, data: PairDataset | None) -> float:
        """Mean Dice over the validation pairs and the block's structures (nan without validation data)."""
        if data is None or len(data) == 0:
            return float("nan")
        scores = [s for i in range(self.ctx.rank, len(data), self.ctx.world) for s in self.dice(data[i])]
        total, count = sum_across(self.ctx, [float(sum(scores)), float(len(scores))])
        return total / count if count else float("nan")
