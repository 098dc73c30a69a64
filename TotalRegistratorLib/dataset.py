"""Training pairs as network-grid tensors, preprocessed once and cached on disk.

Each scan is preprocessed exactly as at inference (:func:`TotalRegistratorLib.preprocess.prepare`
on :func:`~TotalRegistratorLib.preprocess.network_grid`: body crop, 128 x 96 x 160
voxels, HU clipped and scaled to [0, 1]); its label map is resampled (nearest)
onto the same grid. The cache holds one ``.pt`` file per scan, keyed by a hash
of the image and label paths, their sizes and modification times, the label
format and the preprocessing settings; label maps are stored as uint8 and
expanded to masks on access. Items are dicts of tensors:
``fixed``/``moving`` [1, K, J, I] float32, ``fixed_masks``/``moving_masks``
[S, K, J, I] uint8 in the order of ``structures``, and ``swapped`` (the paper's
random fixed <-> moving swap, reproducible from ``seed`` and the epoch).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from .errors import InputError
from .io import atomic_path, read_image
from .labels import LABELS, TRAINING_STRUCTURES, PairRecord, read_structures
from .preprocess import HU_RANGE, NETWORK_SIZE, network_grid, prepare, resample

CACHE_VERSION = 1


def cache_key(image: Path, labels: Path, label_format: str) -> str:
    """Hash of what a cached scan depends on: files (path, size, mtime) and preprocessing settings."""
    def stamp(path: Path) -> list:
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]

    settings = [CACHE_VERSION, NETWORK_SIZE, HU_RANGE, label_format, stamp(image), stamp(labels)]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:24]


def preprocess_scan(image: Path, labels: Path, label_format: str = "structures") -> dict[str, torch.Tensor]:
    """One scan on its network grid: ``image`` [1, K, J, I] float32 in [0, 1], ``labels`` [K, J, I] uint8."""
    ct = read_image(image)
    structures = read_structures(labels, label_format)
    if structures.GetSize() != ct.GetSize():
        raise InputError(f"{labels}: label map size {structures.GetSize()} differs from {image.name}'s {ct.GetSize()}")
    prepared = prepare(ct, network_grid, name=str(image))
    on_grid = sitk.GetArrayFromImage(resample(structures, prepared.grid, labels=True, default=0))
    return {"image": prepared.tensor[0].contiguous(), "labels": torch.as_tensor(on_grid.astype(np.uint8))}


class PairDataset(Dataset):
    """Pairs from a pairs CSV (:func:`TotalRegistratorLib.labels.read_pairs_csv`) as cached network tensors."""

    def __init__(self, records: Sequence[PairRecord], cache_dir: str | os.PathLike,
                 structures: tuple[str, ...] = TRAINING_STRUCTURES, swap: bool = True, seed: int = 0):
        for r in records:
            if r.fixed_labels is None or r.moving_labels is None:
                raise InputError(f"{r.fixed}: pair has no label maps (training needs fixed_labels and moving_labels)")
        self.records = list(records)
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.ids = torch.tensor([LABELS[s] for s in structures], dtype=torch.uint8).reshape(-1, 1, 1, 1)
        self.swap = swap
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of direction swaps (call once per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def scan(self, image: Path, labels: Path, label_format: str) -> dict[str, torch.Tensor]:
        """A preprocessed scan from the cache, preprocessing and storing it on a miss."""
        path = self.cache_dir / f"{cache_key(image, labels, label_format)}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        scan = preprocess_scan(image, labels, label_format)
        with atomic_path(path) as tmp:
            torch.save(scan, tmp)
        return scan

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        r = self.records[index]
        fixed = self.scan(r.fixed, r.fixed_labels, r.label_format)
        moving = self.scan(r.moving, r.moving_labels, r.label_format)
        swapped = self.swap and bool(np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5)
        if swapped:
            fixed, moving = moving, fixed
        return {
            "fixed": fixed["image"], "moving": moving["image"],
            "fixed_masks": (fixed["labels"][None] == self.ids).to(torch.uint8),
            "moving_masks": (moving["labels"][None] == self.ids).to(torch.uint8),
            "swapped": torch.tensor(swapped),
        }
