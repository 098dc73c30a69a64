"""argparse types for numbers with a lower bound, shared by the ``totalregistrator`` and ``train.py`` commands.

A value out of range makes argparse print one line naming the option and exit with code 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

LARGEST_INT = 2**63 - 1  # torch seeds and counts are 64-bit


def _bounded(kind: type, allow_zero: bool) -> Callable[[str], int | float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or value > LARGEST_INT:
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not (value >= 0 if allow_zero else value > 0):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if allow_zero else 'greater than 0'}, got {text}")
        return value
    return parse


def positive(kind: type) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` (int or float) greater than zero."""
    return _bounded(kind, allow_zero=False)


def non_negative(kind: type) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` (int or float), zero or more."""
    return _bounded(kind, allow_zero=True)
