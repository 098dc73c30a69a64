"""Fixtures for the Slicer module's logic on real MRML (the ``slicer-core`` wheel, no Qt).

These tests need their own virtual environment (slicer-core pins its own vtk):
``make test`` creates ``.venv-slicer`` and runs ``.venv-slicer/bin/python -m pytest Testing/slicer_logic``.
Under the main ``.venv`` every test here is skipped, saying so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "TotalRegistrator"
sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture
def scene():
    """A fresh MRML scene, also set as ``slicer.mrmlScene``."""
    slicer = pytest.importorskip("slicer", reason="needs slicer-core (run under .venv-slicer)")
    slicer.mrmlScene = slicer.vtkMRMLScene()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(1)


@pytest.fixture(scope="session")
def phantom_pair():
    """A small intra-patient phantom pair (48 x 48 x 80 voxels, about 10 mm) with its ground truth."""
    import torch

    from TotalRegistratorLib.pairs import make_pair

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_pair("intra", 3, size=(48, 48, 80))
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread_children(monkeypatch):
    """Child registration processes use one thread (fast and steady on a shared 2-core machine)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
