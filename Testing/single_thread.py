"""Autouse fixture for the phantom suites: torch on one thread while they run.

Rendering issues many medium-sized tensor operations; with two intra-op threads on a
shared 2-core machine, a busy neighbour process can slow each one down many times over.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
