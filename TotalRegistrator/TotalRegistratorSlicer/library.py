"""The module's bundled copy of ``TotalRegistratorLib``: where it is and the tables the panel shows.

The blocks, outputs, defaults, devices and the error prefix come from the
library's ``registry`` and ``weights`` (pure Python, no torch), so the module
never restates them. In an installed extension the library sits beside this
package; in a source checkout it is one folder up.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

from .runner import child_environment


def library_root() -> Path:
    """The folder holding ``TotalRegistratorLib/`` (the module folder or the source tree)."""
    here = Path(__file__).resolve()
    for root in (here.parents[1], here.parents[2]):
        if (root / "TotalRegistratorLib" / "registry.py").is_file():
            return root
    raise ModuleNotFoundError(f"TotalRegistratorLib not found beside {here.parents[1]}")


def _import(name: str) -> ModuleType:
    root = str(library_root())
    if root not in sys.path:
        sys.path.append(root)
    return importlib.import_module(name)


registry = _import("TotalRegistratorLib.registry")
weights = _import("TotalRegistratorLib.weights")


def shipped_blocks() -> tuple[str, ...]:
    """The cascade blocks whose weights ship with the bundled library, in the cascade's order."""
    return weights.shipped_blocks()


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` launcher when there is one, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def environment() -> dict[str, str]:
    """The environment of the library's command line: the bundled library first on PYTHONPATH."""
    return child_environment(str(library_root()))
