"""A block's training files besides the block file: the resume file and the log.

``<block>.last.pt``: a ``torch.save`` dict ``{"config", "state_dict", "optimizer", "epoch"}`` of the latest
epoch (``config`` as in the block file, with ``epochs`` and ``metrics``); a rerun resumes from it when the
settings in :data:`RESUME_KEYS` match. ``<block>.log.csv``: one row per epoch, columns :data:`LOG_COLUMNS`
(floats to 6 significant digits).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ...errors import InputError
from ...io.outputs import atomic_path
from ...learned.cascade import load_block

LOG_COLUMNS = ("epoch", "train_loss", "similarity", "dice_loss", "bending", "val_dice", "seconds")
RESUME_KEYS = ("block", "architecture", "grid_size", "loss_weights", "per_organ", "preceding", "training_data")


def block_paths(folder: Path, block: str) -> dict[str, Path]:
    """The block file (``best``), the resume file (``last``) and the log of ``block`` in ``folder``."""
    return {"best": folder / f"{block}.pt", "last": folder / f"{block}.last.pt", "log": folder / f"{block}.log.csv"}


def read_resume(path: Path, config: dict, device: torch.device) -> dict:
    """The resume file's state; InputError when it was trained with other settings than ``config``."""
    state = torch.load(path, map_location=device, weights_only=True)
    saved = state["config"]
    for key in RESUME_KEYS:
        if saved.get(key) != config.get(key):
            raise InputError(f"{path}: was trained with {key}={saved.get(key)!r}, this run has "
                             f"{config.get(key)!r} (delete it or pass --restart to start over)")
    return state


def write_resume(path: Path, config: dict, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 epoch: int) -> None:
    """Write the resume file atomically."""
    with atomic_path(path) as tmp:
        torch.save({"config": config, "state_dict": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "epoch": epoch}, tmp)


def best_metrics(path: Path, block: str, size: tuple[int, int, int]) -> dict:
    """The metrics of the block file at ``path`` (read through the checked reader), {} when there is none."""
    return load_block(path, block, size)[1]["metrics"] if path.is_file() else {}


def trim_log(path: Path, epoch: int) -> None:
    """Drop log rows of epochs after ``epoch`` (logged before a stop, then trained again)."""
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= epoch]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def append_log(path: Path, row: dict) -> None:
    """Append one epoch's row (a header first when the log is new)."""
    new = not path.is_file()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in LOG_COLUMNS})
