"""The shipped cascade weights: one ``<block>.pt`` per block (with its training log ``<block>.log.csv``).

They travel as package data, so a wheel or a Slicer extension carries them;
``folder()`` finds them through :mod:`importlib.resources`. Pure Python (no
torch), so the Slicer module can ask which blocks ship without importing torch.
See Resources/MODEL_CARD.md for what they were trained on and how well they do.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..registry import BLOCKS


def folder() -> Path:
    """The folder holding the shipped ``<block>.pt`` files."""
    return Path(str(resources.files(__name__)))


def shipped_blocks() -> tuple[str, ...]:
    """The blocks whose weights ship with the library, in the cascade's order (empty when there are none)."""
    return tuple(b for b in BLOCKS if (folder() / f"{b}.pt").is_file())
