"""Fixtures for the Slicer module's logic on real MRML (the ``slicer-core`` wheel, no Qt).

These tests need their own virtual environment (slicer-core pins its own vtk):
``make test`` creates ``.venv-slicer`` and runs ``.venv-slicer/bin/python -m pytest Testing/slicer_logic``.
Under the main ``.venv`` every test here is skipped, saying so. The library is used only through
its command line and its ``registry`` (the module's contract with it), and files are checked with
SimpleITK.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "TotalRegistrator"
sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture
def scene():
    """A fresh MRML scene, also set as ``slicer.mrmlScene``, with its subject hierarchy (as in Slicer)."""
    slicer = pytest.importorskip("slicer", reason="needs slicer-core (run under .venv-slicer)")
    slicer.mrmlScene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(slicer.mrmlScene)
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(1)


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> dict[str, Path]:
    """A small intra-patient phantom pair (10 mm voxels) with labels and its ground-truth transform,
    made by the library's ``phantom`` subcommand."""
    folder = tmp_path_factory.mktemp("phantom")
    subprocess.run([sys.executable, "-m", "TotalRegistratorLib", "phantom", "-o", str(folder), "--pairs", "1",
                    "--kind", "intra", "--seed", "3", "--spacing", "10"], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    roles = ("fixed", "moving", "fixed_labels", "moving_labels")
    return {**{role: folder / f"pair000_{role}.nii.gz" for role in roles}, "transform": folder / "pair000_transform.h5"}


@pytest.fixture
def one_thread_children(monkeypatch):
    """Child registration processes use one thread (fast and steady on a shared 2-core machine)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
