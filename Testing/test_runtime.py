"""Process settings: glibc's allocator accepts both settings, with values that fit its C int arguments."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from TotalRegistratorLib.core import runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator settings are glibc's")
def test_allocator_settings_take_effect():
    # a fresh process: configure() runs once per process and the test session has already run it
    code = "from TotalRegistratorLib.core import runtime; print(runtime.configure())"
    done = subprocess.run([sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "True", "mallopt refused a setting"
    for value in (runtime.MMAP_THRESHOLD, runtime.TRIM_THRESHOLD):  # ctypes would wrap a larger int silently
        assert ctypes.c_int(value).value == value
