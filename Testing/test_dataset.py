"""Training dataset: network-grid tensors and masks, disk cache reuse, seeded direction swaps."""

from __future__ import annotations

import os

import pytest
import SimpleITK as sitk
import torch
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.core.preprocess import NETWORK_SIZE
from TotalRegistratorLib.errors import InputError
from TotalRegistratorLib.io.labels import read_pairs_csv, write_pairs_csv
from TotalRegistratorLib.learned import dataset
from TotalRegistratorLib.registry import TRAINING_STRUCTURES
from TotalRegistratorLib.simulation.pairs import make_pair


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    records = [make_pair("multiphase", seed, spacing=8.0).write(folder, f"p{seed}") for seed in range(2)]
    write_pairs_csv(folder / "pairs.csv", records)
    return folder / "pairs.csv"


def test_items_shapes_masks_and_cache(pairs_csv, tmp_path, monkeypatch):
    calls = []
    original = dataset.preprocess_scan
    monkeypatch.setattr(dataset, "preprocess_scan", lambda *a: calls.append(a) or original(*a))
    data = dataset.PairDataset(read_pairs_csv(pairs_csv), tmp_path / "cache", swap=False)
    item = data[0]
    shape = tuple(NETWORK_SIZE[::-1])
    assert item["fixed"].shape == item["moving"].shape == (1, *shape) and item["fixed"].dtype == torch.float32
    assert 0.0 <= float(item["fixed"].min()) and float(item["fixed"].max()) <= 1.0
    assert item["fixed_masks"].shape == (len(TRAINING_STRUCTURES), *shape)
    assert item["fixed_masks"].dtype == torch.uint8
    present = item["fixed_masks"].flatten(1).sum(1)
    assert (present[[TRAINING_STRUCTURES.index(s) for s in ("lung", "liver", "vertebrae")]] > 1000).all()
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("*.pt"))) == 2

    again = dataset.PairDataset(read_pairs_csv(pairs_csv), tmp_path / "cache", swap=False)[0]
    assert len(calls) == 2, "second access reads the cache"
    assert torch.equal(again["fixed"], item["fixed"]) and torch.equal(again["moving_masks"], item["moving_masks"])


def test_swaps_are_seeded(pairs_csv, tmp_path):
    records = read_pairs_csv(pairs_csv) * 8
    a = dataset.PairDataset(records, tmp_path, seed=3)
    b = dataset.PairDataset(records, tmp_path, seed=3)
    swaps = [bool(a[i]["swapped"]) for i in range(len(a))]
    assert swaps == [bool(b[i]["swapped"]) for i in range(len(b))]
    assert 0 < sum(swaps) < len(swaps)
    item, unswapped = a[swaps.index(True)], dataset.PairDataset(records, tmp_path, swap=False)[swaps.index(True)]
    assert torch.equal(item["fixed"], unswapped["moving"]) and torch.equal(item["moving_masks"],
                                                                           unswapped["fixed_masks"])
    a.set_epoch(1)
    assert [bool(a[i]["swapped"]) for i in range(len(a))] != swaps


def test_needs_labels(pairs_csv, tmp_path):
    (record, *_) = read_pairs_csv(pairs_csv)
    with pytest.raises(InputError, match="no label maps"):
        dataset.PairDataset([type(record)(record.fixed, record.moving)], tmp_path)


def test_label_maps_must_share_the_scan_grid(pairs_csv, tmp_path):
    (record, *_) = read_pairs_csv(pairs_csv)
    labels = sitk.ReadImage(str(record.fixed_labels))
    labels.SetOrigin([v + 12.0 for v in labels.GetOrigin()])  # same size, shifted 12 mm: wrong header
    sitk.WriteImage(labels, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(InputError, match="shifted.nii.gz: label map does not share the grid of .*nii.gz"):
        dataset.preprocess_scan(record.fixed, tmp_path / "shifted.nii.gz")


def test_cache_key_follows_the_masks_inside_a_label_folder(pairs_csv, tmp_path):
    (record, *_) = read_pairs_csv(pairs_csv)
    folder = tmp_path / "segmentations"
    folder.mkdir()
    (folder / "liver.nii.gz").write_bytes(b"first")
    before = dataset.cache_key(record.fixed, folder, "totalsegmentator")
    os.utime(folder, ns=(0, 0))
    (folder / "liver.nii.gz").write_bytes(b"second, longer")  # rewritten in place
    os.utime(folder, ns=(0, 0))  # the folder's own time does not change
    assert dataset.cache_key(record.fixed, folder, "totalsegmentator") != before
