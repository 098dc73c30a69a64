"""Training data: cached phantom pairs, the validation split of a pairs list, and each epoch's pair order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...io.labels import PairRecord, write_pairs_csv
from ...simulation.pairs import KINDS, make_pair, pair_seed


def phantom_pairs(folder: str | os.PathLike, count: int, seed: int = 0, spacing: float = 3.0,
                  progress: bool = True) -> list[PairRecord]:
    """``count`` simulated pairs (intra-patient, multiphase and inter-patient in turn) in ``folder``.

    Pairs already written (a ``.done`` marker beside them recording kind, seed and spacing) are
    reused when those match, so an interrupted generation continues; pairs made with other settings
    are made again. Writes ``folder/pairs.csv`` too.
    """
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
