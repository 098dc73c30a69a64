"""Issue 13, item 5: a run stopped by SIGTERM or Ctrl-C says so in one line (exit 143 or 130, no traceback)
and leaves no staging folder; what a SIGKILLed run leaves is removed by the next run into the same place,
while a live run's staging is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import FAST, leftovers, run_cli, small_pair

from TotalRegistratorLib.errors import Terminated
from TotalRegistratorLib.io import outputs

SLOW = ["--iterations", "3000,1000", "--affine-iterations", "5,2", "--spacing", "8", "--blocks", "none",
        "--threads", "1", "--progress", "json"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return small_pair(tmp_path_factory.mktemp("pair"))


def start_working(pair, out: Path) -> subprocess.Popen:
    """A registration that is busy optimising (its first progress line has arrived) when this returns."""
    # a shell's background job ignores SIGINT, and so would its children (Python keeps an inherited SIG_IGN)
    process = subprocess.Popen([sys.executable, "-m", "TotalRegistratorLib", "register", str(pair["fixed"]),
                                str(pair["moving"]), "-o", str(out), *SLOW], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stderr:
        if '"stage"' in line:
            return process
    pytest.fail(f"no progress before the end: {process.wait()}")


@pytest.mark.parametrize("signum, code, words", [(signal.SIGTERM, 143, "stopped (SIGTERM)"),
                                                 (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_stopped_run_says_so_in_one_line_and_leaves_nothing(signum, code, words, pair, tmp_path):
    process = start_working(pair, tmp_path / "out")
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    lines = [line for line in err.strip().splitlines() if '"stage"' not in line]  # progress lines aside
    assert process.returncode == code, err[-2000:]
    assert lines == [f"totalregistrator: {words}; unfinished outputs removed"], err[-2000:]
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_sigterm_while_writing_removes_the_staging_folder(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(Terminated), outputs.stop_on_sigterm(), outputs.OutputFolder(target) as out:
        (out / "big.bin").write_bytes(bytes(1 << 20))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert list(tmp_path.iterdir()) == []


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_next_run_removes_what_a_killed_run_left_and_spares_a_live_one(pair, tmp_path):
    out = tmp_path / "out"
    process = start_working(pair, out)
    process.kill()
    process.wait()
    # what a run killed while writing leaves: its staging folder (beside a new output folder, inside an
    # existing one) and a half-written file of a single-file write
    stale = [tmp_path / f".out.partial-{process.pid}-abc123", tmp_path / f".out.partial-{dead_pid()}-def456"]
    for folder in stale:
        folder.mkdir()
        (folder / "warped.nii.gz").write_bytes(bytes(1 << 20))
    live = tmp_path / f".out.partial-{os.getpid()}-live00"  # this test process is alive: a concurrent run
    live.mkdir()
    result = run_cli(["register", pair["fixed"], pair["moving"], "-o", out, *FAST])
    assert result.returncode == 0, result.stderr[-2000:]
    assert leftovers(tmp_path) == [live.name] and (out / "transform.h5").is_file()

    half = out / f".warped.partial-{dead_pid()}-x1y2z3.nii.gz"  # a killed `warp -o out/warped.nii.gz`
    half.write_bytes(b"half")
    warped = run_cli(["warp", pair["moving"], out / "transform.h5", "--reference", pair["fixed"], "-o",
                      out / "warped.nii.gz"])
    assert warped.returncode == 0, warped.stderr[-2000:]
    assert not half.exists() and leftovers(tmp_path) == [live.name]
