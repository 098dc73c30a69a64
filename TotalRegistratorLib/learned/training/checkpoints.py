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
from ...learned.cascade import load_block, read_checkpoint

LOG_COLUMNS = ("epoch", "train_loss", "similarity", "dice_loss", "bending", "val_dice", "seconds")
RESUME_KEYS = ("block", "architecture", "grid_size", "loss_weights", "per_organ", "preceding", "training_data")


def block_paths(folder: Path, block: str) -> dict[str, Path]:
    """The block file (``best``), the resume file (``last``) and the log of ``block`` in ``folder``."""
    return {"best": folder / f"{block}.pt", "last": folder / f"{block}.last.pt", "log": folder / f"{block}.log.csv"}


def restore(path: Path, config: dict, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device) -> int:
    """Load the resume file into ``network`` and ``optimizer`` and return its epoch. It is read through the
    checked reader (:func:`~TotalRegistratorLib.learned.cascade.read_checkpoint`); a corrupt, empty or
    foreign file, or one trained with other settings than ``config``, raises one-line InputError."""
    state = read_checkpoint(path, device)
    saved, epoch = state.get("config"), state.get("epoch")
    if not (isinstance(saved, dict) and isinstance(state.get("state_dict"), dict)
            and isinstance(state.get("optimizer"), dict) and isinstance(epoch, int) and epoch >= 0):
        raise InputError(f"{path}: not a resume file (needs config, state_dict, optimizer and epoch; delete it or "
                         "pass --restart)")
    for key in RESUME_KEYS:
        if saved.get(key) != config.get(key):
            raise InputError(f"{path}: was trained with {key}={saved.get(key)!r}, this run has "
                             f"{config.get(key)!r} (delete it or pass --restart to start over)")
    try:
        network.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise InputError(f"{path}: resume file does not fit this block ({first[:120]}; delete it or pass "
                         "--restart)") from None
    return epoch


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
