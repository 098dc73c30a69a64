"""Training: loss goes down, resume is exact, block files, train.py end to end (also under torchrun)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.app.train_command import main
from TotalRegistratorLib.core.preprocess import body_grid, body_mask, mask_to_image
from TotalRegistratorLib.errors import InputError
from TotalRegistratorLib.io.images import read_image
from TotalRegistratorLib.learned.cascade import Cascade, build_network, load_block
from TotalRegistratorLib.learned.dataset import PairDataset, network_grids
from TotalRegistratorLib.learned.training import Trainer, TrainSettings, epoch_order, phantom_pairs

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
    expected = body_grid(mask_to_image(body_mask(image), image), size=SIZE)
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
    log_path = tmp_path / "resumed" / "affine.log.csv"
    with open(log_path, "a") as handle:  # epoch 2 logged, then a stop before last.pt was written
        handle.write("2,9,9,9,9,0.5,1\n")
    resumed = Trainer(settings(epochs=2), tmp_path / "resumed")
    assert resumed.resume() and resumed.epoch == 1
    assert resumed.best == load_block(tmp_path / "resumed" / "affine.pt")[1]["metrics"]["val_dice"]
    resumed.fit(data, data)
    for a, b in zip(straight.network.state_dict().values(), resumed.network.state_dict().values()):
        assert torch.equal(a, b)
    log = list(csv.DictReader(open(log_path)))
    assert [row["epoch"] for row in log] == ["1", "2"] and log[1]["train_loss"] != "9"
    network, config = load_block(tmp_path / "resumed" / "affine.pt", "affine", SIZE)
    assert config["grid_size"] == list(SIZE) and config["loss_weights"]["bending"] == 0.0
    best_row = max(log, key=lambda row: float(row["val_dice"]))  # the block file holds the best epoch
    assert config["epochs"] == int(best_row["epoch"]) and config["metrics"]["selected_by"] == "val_dice"
    assert f"{config['metrics']['val_dice']:.6g}" == best_row["val_dice"]
    assert config["structures"] and config["library_version"] and "lr" in config
    other = Trainer(settings("affine", epochs=2, per_organ=False), tmp_path / "resumed")
    with pytest.raises(InputError, match="per_organ"):
        other.resume()


def test_without_a_usable_validation_dice_the_training_loss_selects(data, tmp_path, monkeypatch):
    """nan validation Dice (no validation scan holds the block's structures) must still write the block file."""
    trainer = Trainer(settings(epochs=1), tmp_path)
    monkeypatch.setattr(trainer, "validate", lambda validation: float("nan"))
    assert trainer.fit(data, data).is_file()
    metrics = load_block(tmp_path / "affine.pt")[1]["metrics"]
    assert metrics["selected_by"] == "train_loss" and metrics["selection"] == -metrics["train_loss"]
    resumed = Trainer(settings(epochs=2), tmp_path)  # now with a usable validation: a new best, on Dice
    assert resumed.resume() and resumed.selected_by == "train_loss"
    resumed.fit(data, data)
    metrics = load_block(tmp_path / "affine.pt")[1]["metrics"]
    assert metrics["selected_by"] == "val_dice" and metrics["selection"] == metrics["val_dice"] > 0


def _run(args, cwd, launcher=(sys.executable,), script=ROOT / "train.py"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


# runs train.py with Trainer.fit wrapped to save each rank's trained parameters as rank<N>.pt in DUMP
RANK_DUMPS = """
import runpy, sys, torch
sys.path.insert(0, ROOT)
from TotalRegistratorLib.learned.training import Trainer
fit = Trainer.fit
def fit_and_dump(self, *args):
    best = fit(self, *args)
    torch.save(self.network.state_dict(), f"{DUMP}/rank{self.ctx.rank}.pt")
    return best
Trainer.fit = fit_and_dump
runpy.run_path(TRAIN, run_name="__main__")
"""


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
    """Each rank trains on other pairs; DDP's averaged gradients leave the same parameters on both."""
    csv = str(pairs[0] / "pairs.csv")
    torchrun = Path(sys.executable).with_name("torchrun")
    script = tmp_path / "rank_dumps.py"
    script.write_text(f"ROOT, DUMP, TRAIN = {str(ROOT)!r}, {str(tmp_path)!r}, {str(ROOT / 'train.py')!r}\n{RANK_DUMPS}")
    done = _run(["--block", "affine", "--data", csv, "--val-data", csv, "-o", str(tmp_path / "w"), "--grid-size",
                 "32,24,40", "--epochs", "1", "--pairs-per-epoch", "3", "--threads", "1", "--quiet"], tmp_path,
                (str(torchrun), "--standalone", "--nproc_per_node=2"), script)
    # 3 pairs on 2 processes: rounded up to 2 steps each, so DDP's gradient and the epoch sums pair up
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "w" / "affine.log.csv").read_text().splitlines()
    assert len(log) == 2
    network, config = load_block(tmp_path / "w" / "affine.pt", "affine", SIZE)
    torch.manual_seed(config["seed"])  # as the trainer does before building its network
    untrained = build_network(config).state_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, saved in network.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the ranks"
        assert torch.equal(ranks[0][name], saved), f"{name} differs from the block file"
    assert any(not torch.equal(ranks[0][name], untrained[name]) for name in untrained), "no step was taken"


@pytest.mark.parametrize(("args", "words"), [
    (["--lr", "-1"], "argument --lr: must be greater than 0, got -1"),
    (["--threads", "0"], "argument --threads: must be greater than 0, got 0"),
    (["--phantom-spacing", "0"], "argument --phantom-spacing: must be greater than 0"),
    (["--val-pairs", "-1"], "argument --val-pairs: must be 0 or more"),
    (["--dice-weight", "nan"], "argument --dice-weight: must be a finite number"),
    (["--dice-weight", "-1"], "argument --dice-weight: must be 0 or more"),
    (["-o", "{file}"], "{file}: output folder is a file"),
    (["--cache", "{file}"], "{file}: output folder is a file"),
    (["--block", "all", "--weights", "{tmp}"], "--weights: --block all trains every block into --output"),
])
def test_train_bad_arguments_are_one_line_errors(args, words, tmp_path, capsys):
    file = tmp_path / "a_file"
    file.write_text("x")
    fill = {"file": str(file), "tmp": str(tmp_path)}
    argv = ["--block", "affine", "--phantom", "2", "-o", str(tmp_path / "w"), "--quiet"]
    argv += [a.format(**fill) for a in args]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and words.format(**fill) in err[-1]
    assert not (tmp_path / "w").exists(), "nothing written before the arguments are checked"
