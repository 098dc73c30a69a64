"""argparse types for numbers within bounds and for paths, shared by the ``totalregistrator`` and ``train.py``
commands.

A value out of range makes argparse print one line naming the option and exit with code 2.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

LARGEST_INT = 2**63 - 1  # torch seeds and counts are 64-bit


def _bounded(kind: type, low: float, high: float, allow_low: bool,
             least: float = -math.inf) -> Callable[[str], int | float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or value > LARGEST_INT:
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not (value >= low if allow_low else value > low):
            bound = (f"{low:g} or more" if low == 0 else f"at least {low:g}") if allow_low else f"greater than {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least:g}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}, got {text}")
        return value
    return parse


def positive(kind: type, high: float = LARGEST_INT) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` (int or float) greater than zero, at most ``high``."""
    return _bounded(kind, 0, high, allow_low=False)


def non_negative(kind: type, high: float = LARGEST_INT) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` (int or float), zero or more, at most ``high``."""
    return _bounded(kind, 0, high, allow_low=True)


def within(kind: type, low: float, high: float) -> Callable[[str], int | float]:
    """An argparse type: a positive number of ``kind`` in ``low..high``."""
    return _bounded(kind, 0, high, allow_low=False, least=low)


def threads(text: str) -> int:
    """An argparse type: CPU threads, 1 up to this machine's ``os.cpu_count()``."""
    return positive(int, os.cpu_count() or 1)(text)


def path(text: str) -> Path:
    """An argparse type: a path; an empty one (which would mean the current folder) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty")
    return Path(text)
