"""Training pairs as network-grid tensors, preprocessed once and cached on disk.

Each scan is preprocessed exactly as at inference (:func:`TotalRegistratorLib.core.preprocess.prepare`
on :func:`~TotalRegistratorLib.core.preprocess.network_grid`: body crop, 64 x 48 x 80
voxels by default (``size``), HU clipped and scaled to [0, 1]); its label map is resampled (nearest)
onto the same grid. The cache holds one ``.pt`` file per scan, keyed by a hash
of the image and label paths, their sizes and modification times (each mask of a label folder), the label
format and the preprocessing settings; label maps are stored as uint8 and
expanded to masks on access. Items are dicts of tensors:
``fixed``/``moving`` [1, K, J, I] float32, ``fixed_masks``/``moving_masks``
[S, K, J, I] uint8 in the order of ``structures``, ``fixed_index_to_world``/
``moving_index_to_world`` [4, 4] float64 (each scan's network grid: voxel index
(i, j, k) -> LPS mm; :func:`network_grids` turns them back into grids), and
``swapped`` (a random fixed <-> moving swap, an augmentation of ours, reproducible from ``seed``
and the epoch).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from ..core.grid import Grid
from ..core.preprocess import HU_RANGE, NETWORK_SIZE, Scan, network_grid, prepare, resample
from ..errors import InputError
from ..io.images import check_same_grid, read_image
from ..io.labels import PairRecord, read_structures
from ..io.outputs import atomic_path
from ..registry import LABELS, TRAINING_STRUCTURES

CACHE_VERSION = 3  # 3: preprocessing on the binned preview


def cache_key(image: Path, labels: Path, label_format: str, size: tuple[int, int, int] = NETWORK_SIZE) -> str:
    """Hash of what a cached scan depends on: files (path, size, mtime; for a folder of masks, each
    file in it) and preprocessing settings."""
    def stamp(path: Path) -> list:
        if path.is_dir():
            return [str(path.resolve()), [stamp(item) for item in sorted(path.iterdir())]]
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]

    settings = [CACHE_VERSION, list(size), HU_RANGE, label_format, stamp(image), stamp(labels)]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:24]


def preprocess_scan(image: Path, labels: Path, label_format: str = "structures",
                    size: tuple[int, int, int] = NETWORK_SIZE) -> dict[str, torch.Tensor]:
    """One scan on its network grid (``size`` voxels x, y, z over the body box): ``image`` [1, K, J, I]
    float32 in [0, 1], ``labels`` [K, J, I] uint8, ``index_to_world`` [4, 4] float64 (index -> LPS mm)."""
    ct = read_image(image)
    structures = read_structures(labels, label_format)
    check_same_grid(structures, ct, labels, str(image))
    prepared = prepare(Scan(ct, str(image)), partial(network_grid, size=size))
    on_grid = sitk.GetArrayFromImage(resample(structures, prepared.grid, labels=True, default=0))
    return {"image": prepared.tensor[0].contiguous(), "labels": torch.as_tensor(on_grid.astype(np.uint8)),
            "index_to_world": torch.as_tensor(prepared.grid.index_to_world)}


def network_grids(item: dict[str, torch.Tensor]) -> tuple[Grid, Grid]:
    """The (fixed, moving) network grids of an item, or of a batch of one item."""
    def grid(side: str) -> Grid:
        return Grid.from_index_to_world(item[f"{side}_index_to_world"].double().numpy(), item[side].shape[-1:-4:-1])

    return grid("fixed"), grid("moving")


class PairDataset(Dataset):
    """Pairs from a pairs CSV (:func:`TotalRegistratorLib.io.labels.read_pairs_csv`) as cached network tensors."""

    def __init__(self, records: Sequence[PairRecord], cache_dir: str | os.PathLike,
                 structures: tuple[str, ...] = TRAINING_STRUCTURES, swap: bool = True, seed: int = 0,
                 size: tuple[int, int, int] = NETWORK_SIZE):
        for r in records:
            if r.fixed_labels is None or r.moving_labels is None:
                raise InputError(f"{r.fixed}: pair has no label maps (training needs fixed_labels and moving_labels)")
        self.records = list(records)
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.ids = torch.tensor([LABELS[s] for s in structures], dtype=torch.uint8).reshape(-1, 1, 1, 1)
        self.swap = swap
        self.seed = seed
        self.size = tuple(size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of direction swaps (call once per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def scan(self, image: Path, labels: Path, label_format: str) -> dict[str, torch.Tensor]:
        """A preprocessed scan from the cache, preprocessing and storing it on a miss."""
        path = self.cache_dir / f"{cache_key(image, labels, label_format, self.size)}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        scan = preprocess_scan(image, labels, label_format, self.size)
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
            "fixed_index_to_world": fixed["index_to_world"], "moving_index_to_world": moving["index_to_world"],
            "swapped": torch.tensor(swapped),
        }
