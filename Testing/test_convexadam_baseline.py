"""benchmarks/baselines/convexadam_run.py: ConvexAdam's voxel displacement becomes the LPS pullback on the fixed grid.

A smooth phantom is sampled analytically on two different grids: the fixed one anisotropic (1.5, 3, 2.5 mm,
so the first axis is worked at 2 mm and the field resampled back) with an oblique direction that also swaps
and flips axes, the moving one axis-aligned at 2.5 mm, its content shifted by a known ``t`` (LPS mm,
different on each axis): moving(x + t) = fixed(x). The field must be +t inside the body; a flipped sign,
swapped axes or a forgotten direction or spacing would put it far off. Skipped without .venv-convexadam
(``make .venv-convexadam/.installed``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import rotation

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv-convexadam" / "bin" / "python"
SCRIPT = REPO / "benchmarks" / "baselines" / "convexadam_run.py"
SHIFT = np.array([7.0, -4.0, 2.5])  # LPS mm
CENTRE = np.array([10.0, -20.0, 30.0])
RNG = np.random.default_rng(3)
BLOBS = [(CENTRE + RNG.uniform(-30, 30, 3), RNG.uniform(5, 9), RNG.uniform(-400, 400)) for _ in range(40)]
sys.path.insert(0, str(REPO / "benchmarks" / "baselines"))
import convexadam_run  # noqa: E402  (its grid helper needs SimpleITK only)


def phantom(points: np.ndarray) -> np.ndarray:
    """HU at LPS ``points`` (..., 3): an ellipsoidal body of soft tissue with Gaussian blobs, air outside."""
    radius = np.linalg.norm((points - CENTRE) / np.array([45.0, 38.0, 42.0]), axis=-1)
    value = -1024.0 + 1064.0 / (1.0 + np.exp((radius - 1.0) * 25.0))
    for centre, sigma, height in BLOBS:
        value = value + height * np.exp(-np.sum((points - centre) ** 2, axis=-1) / (2 * sigma**2))
    return value


def sampled(size, spacing, direction, shift=(0.0, 0.0, 0.0)) -> sitk.Image:
    """``phantom`` moved by ``shift`` on a grid of ``size`` and ``spacing`` centred on the body."""
    direction = np.asarray(direction)
    origin = CENTRE - direction @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1)  # (x, y, z, 3)
    points = origin + (index * np.asarray(spacing)) @ direction.T
    image = sitk.GetImageFromArray(phantom(points - np.asarray(shift)).transpose(2, 1, 0).astype(np.float32))
    image.SetOrigin(tuple(origin))
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple(direction.ravel()))
    return image


def test_working_grid_covers_the_fixed_box_at_2mm_or_coarser():
    fixed = sitk.Image([101, 40, 37], sitk.sitkFloat32)
    fixed.SetSpacing((0.7, 3.0, 2.5))
    fixed.SetOrigin((5.0, -3.0, 12.0))
    fixed.SetDirection(tuple(rotation("x", 30).ravel()))
    grid = convexadam_run.working_grid(fixed)
    assert grid.GetSpacing() == (2.0, 3.0, 2.5)
    assert grid.GetOrigin() == fixed.GetOrigin() and grid.GetDirection() == fixed.GetDirection()
    assert all(n % 6 == 0 for n in grid.GetSize())
    extent = (np.asarray(fixed.GetSize()) - 1) * np.asarray(fixed.GetSpacing())
    covered = (np.asarray(grid.GetSize()) - 1) * np.asarray(grid.GetSpacing())
    assert np.all(covered >= extent - 1e-9) and np.all(covered - extent < 6 * np.asarray(grid.GetSpacing()))


@pytest.mark.skipif(not PYTHON.exists(), reason="needs .venv-convexadam (make .venv-convexadam/.installed)")
def test_translation_is_recovered_in_lps_with_the_fixed_grid(tmp_path):
    # columns are the index axes in LPS: x runs mostly along -z, y along +x, z along -y, and oblique
    direction = rotation("z", 20) @ np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    fixed = sampled((64, 32, 38), (1.5, 3.0, 2.5), direction)
    moving = sampled((44, 40, 42), (2.5, 2.5, 2.5), np.eye(3), SHIFT)
    sitk.WriteImage(fixed, str(tmp_path / "fixed.mha"))
    sitk.WriteImage(moving, str(tmp_path / "moving.mha"))
    subprocess.run([str(PYTHON), str(SCRIPT), str(tmp_path / "fixed.mha"), str(tmp_path / "moving.mha"),
                    str(tmp_path / "out"), "--threads", "1"], check=True, cwd=REPO, timeout=600)

    field = sitk.ReadImage(str(tmp_path / "out" / "displacement.mha"))
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(field.GetOrigin(), fixed.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(field.GetSpacing(), fixed.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(field.GetDirection(), fixed.GetDirection(), atol=1e-9)
    u = sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3)  # (x, y, z, 3) LPS mm
    index = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.GetSize()], indexing="ij"), axis=-1)
    points = np.asarray(fixed.GetOrigin()) + (index * np.asarray(fixed.GetSpacing())) @ direction.T
    inner = np.linalg.norm((points - CENTRE) / np.array([45.0, 38.0, 42.0]), axis=-1) < 0.6
    recovered = u[inner].mean(axis=0)
    # the sign, the axis order and the size of each component (1 mm: the package's own grids are coarse)
    np.testing.assert_allclose(recovered, SHIFT, atol=1.0)
    assert np.linalg.norm(u[inner] - SHIFT, axis=-1).mean() < 1.5

    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["seconds"] > 0 and run["peak_memory_mb"] > 0 and run["threads"] == 1
    assert run["versions"]["convexadam"] == "0.2.0"
    assert run["working_grid"]["spacing"] == [2.0, 3.0, 2.5]
