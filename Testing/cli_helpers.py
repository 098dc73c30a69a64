"""Helpers of the bad-input, killed-run and fuzz tests: small CT pairs and the command line as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from conftest import torso

from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.registry import ERROR_PREFIX

GRID = Grid((40, 30, 32), (5.0, 5.0, 5.0), (-100.0, -75.0, -80.0))
FAST = ["--iterations", "5,2", "--affine-iterations", "5,2", "--spacing", "8", "--blocks", "none", "--quiet",
        "--threads", "1"]
PREFIX = ERROR_PREFIX


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def small_pair(folder: Path) -> dict[str, Path]:
    """A fixed (.nii.gz) and a shifted moving (.mha) torso on a 40 x 30 x 32 grid of 5 mm voxels."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"fixed": write(torso(GRID), folder / "fixed.nii.gz"),
            "moving": write(torso(GRID, shift=(6.0, -4.0, 5.0), noise_seed=1), folder / "moving.mha")}


def labels_of(image: sitk.Image) -> sitk.Image:
    """A crude label map of a torso image (1 lung, 2 soft tissue, 3 bone) as uint8."""
    hu = sitk.GetArrayFromImage(image)
    labels = np.select([hu > 300, hu > -200, hu < -600], [3, 2, 1], 0).astype(np.uint8)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


def run_cli(args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m TotalRegistratorLib ARGS`` in a fresh process (stdout and stderr as text)."""
    return subprocess.run([sys.executable, "-m", "TotalRegistratorLib", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def run_train(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parents[1] / "train.py"
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def error_line(result: subprocess.CompletedProcess, prefix: str = PREFIX) -> str:
    """The one stderr line of a refused command (exit code 2); fails the test otherwise."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr[-2000:]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden staging files, staging folders and lock files anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".partial-" in p.name or
                  p.name.endswith(".lock"))
