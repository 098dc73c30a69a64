"""Training: loss goes down, resume is exact, block files, train.py end to end (also under torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.cascade import Cascade, load_block
from TotalRegistratorLib.dataset import PairDataset, network_grids
from TotalRegistratorLib.errors import InputError
from TotalRegistratorLib.io import read_image
from TotalRegistratorLib.preprocess import body_grid, body_mask
from TotalRegistratorLib.training import Trainer, TrainSettings, epoch_order, phantom_pairs

ROOT = Path(__file__).resolve().parents[1]
SIZE = (32, 24, 40)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    records = phantom_pairs(folder, 2, seed=0, spacing=8.0, progress=False)
    return folder, records


@pytest.fixture(scope="module")
def data(pairs, tmp_path_factory):
    return PairDataset(pairs[1], tmp_path_factory.mktemp("tensors"), size=SIZE, swap=False)


def settings(block="affine", **kw) -> TrainSettings:
    return TrainSettings(block, **{"epochs": 1, "pairs_per_epoch": 2, "size": SIZE, "device": "cpu",
                                   "progress": False, **kw})


def test_items_carry_their_network_grids(pairs, data):
    fixed_grid, moving_grid = network_grids(data[0])
    image = read_image(pairs[1][0].fixed)
    expected = body_grid(image, body_mask(image), size=SIZE)
    assert fixed_grid.size == SIZE and np.allclose(fixed_grid.index_to_world, expected.index_to_world)
    assert not np.allclose(moving_grid.index_to_world, fixed_grid.index_to_world), "each scan has its own box"


def test_phantom_pairs_are_reused(pairs):
    folder, records = pairs
    stamp = records[0].fixed.stat().st_mtime_ns
    assert phantom_pairs(folder, 2, seed=0, spacing=8.0, progress=False) == records
    assert records[0].fixed.stat().st_mtime_ns == stamp and (folder / "pairs.csv").is_file()


def test_phantom_pairs_made_with_other_settings_are_made_again(tmp_path):
    phantom_pairs(tmp_path, 1, seed=0, spacing=8.0, progress=False)
    record = phantom_pairs(tmp_path, 1, seed=0, spacing=10.0, progress=False)[0]
    assert read_image(record.fixed).GetSpacing() == (10.0, 10.0, 10.0)
    assert (tmp_path / "pair0000.done").read_text().endswith("spacing 10 mm")


def test_epoch_order_is_seeded_and_covers_pairs():
    order = epoch_order(5, 12, seed=1, epoch=3)
    assert order == epoch_order(5, 12, seed=1, epoch=3) and len(order) == 12
    assert sorted(order[:5]) == list(range(5)), "each pass visits every pair once"
    assert order != epoch_order(5, 12, seed=1, epoch=4)


@pytest.mark.parametrize("block", ["affine", "bone"])
def test_a_few_steps_lower_the_loss(data, tmp_path, block):
    trainer = Trainer(settings(block, lr=2e-3 if block == "affine" else 1e-3), tmp_path)
    item = data[0]
    losses = [trainer.step(item, torch.Generator().manual_seed(0))["total"] for _ in range(12)]
    assert losses[-1] < losses[0] - 0.01, losses


def test_resume_continues_exactly_and_files_round_trip(data, tmp_path):
    straight = Trainer(settings(epochs=2), tmp_path / "straight")
    straight.fit(data, data)
    interrupted = Trainer(settings(epochs=1), tmp_path / "resumed")
    interrupted.fit(data, data)
    resumed = Trainer(settings(epochs=2), tmp_path / "resumed")
    assert resumed.resume() and resumed.epoch == 1
    resumed.fit(data, data)
    for a, b in zip(straight.network.state_dict().values(), resumed.network.state_dict().values()):
        assert torch.equal(a, b)
    log = (tmp_path / "resumed" / "affine.log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss") and [row.split(",")[0] for row in log[1:]] == ["1", "2"]
    network, config = load_block(tmp_path / "resumed" / "affine.pt", "affine", SIZE)
    assert config["grid_size"] == list(SIZE) and config["loss_weights"]["bending"] == 0.0
    assert {"val_dice", "train_loss"} <= set(config["metrics"]) and config["epochs"] in (1, 2)
    assert config["structures"] and config["library_version"] and "lr" in config
    other = Trainer(settings("affine", epochs=2, per_organ=False), tmp_path / "resumed")
    with pytest.raises(InputError, match="per_organ"):
        other.resume()


def _run(args, cwd, launcher=(sys.executable,)):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240)


def test_train_script_end_to_end(pairs, tmp_path):
    """Slicer-style arguments after '--': affine then bone, then the cascade loads both."""
    csv = str(pairs[0] / "pairs.csv")
    common = ["--data", csv, "--val-data", csv, "-o", str(tmp_path / "w"), "--grid-size", "32,24,40", "--epochs",
              "1", "--pairs-per-epoch", "2", "--threads", "1", "--quiet"]
    missing = _run(["--", "--block", "bone", *common], tmp_path)
    assert missing.returncode == 2 and "needs the trained affine block" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    for block in ("affine", "bone"):
        done = _run(["--", "--block", block, *common], tmp_path)
        assert done.returncode == 0, done.stderr
    cascade = Cascade.load(tmp_path / "w", size=SIZE)
    assert cascade.names == ["affine", "bone"]
    assert cascade.configs["bone"]["preceding"] == ["affine"]


def test_torchrun_two_processes(pairs, tmp_path):
    csv = str(pairs[0] / "pairs.csv")
    torchrun = Path(sys.executable).with_name("torchrun")
    done = _run(["--block", "affine", "--data", csv, "--val-data", csv, "-o", str(tmp_path / "w"), "--grid-size",
                 "32,24,40", "--epochs", "1", "--pairs-per-epoch", "2", "--threads", "1", "--quiet"], tmp_path,
                (str(torchrun), "--standalone", "--nproc_per_node=2"))
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "w" / "affine.log.csv").read_text().splitlines()
    assert len(log) == 2 and (tmp_path / "w" / "affine.pt").is_file()
