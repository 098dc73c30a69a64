"""What the library needs in Slicer's Python, found without importing it, and its installation.

Versions are read from package metadata (``importlib.metadata``): torch is
never imported into Slicer's process (the registration runs in a child
process). An older torch than the library needs is upgraded through PyTorch
Utils; since every run starts a fresh child, no restart is needed after it.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MINIMUM_PYTHON = (3, 10)  # the library's requires-python
SUPPORTED_SLICER = "Slicer 5.10 and later"  # the first releases that bundle Python 3.10 or later (3.12)
MINIMUM_TORCH = "2.4"
# Python packages the library needs besides torch (PyTorch Utils) and SimpleITK (bundled with Slicer):
# distribution name -> the version pinned in constraints.txt, installed when the package is missing
REQUIREMENTS = {"nibabel": "5.4.2", "scipy": "1.17.1", "matplotlib": "3.11.2", "pillow": "13.0.0",
                "tqdm": "4.70.1", "isal": "1.9.1"}


class DependencyError(RuntimeError):
    """This Slicer cannot run the library (the message says what to do)."""


def check_python(version: Sequence[int] = sys.version_info) -> None:
    """Raise :class:`DependencyError` when Slicer's Python is older than the library needs."""
    if tuple(version[:2]) < MINIMUM_PYTHON:
        raise DependencyError(
            f"TotalRegistrator needs {SUPPORTED_SLICER} (Python {'.'.join(map(str, MINIMUM_PYTHON))} or later); "
            f"this Slicer has Python {'.'.join(map(str, version[:3]))}.")


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None (read from its metadata, nothing imported)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "2.4.1+cu121" -> (2, 4, 1), "2.5.0rc1" -> (2, 5, 0)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("rc")[0])[:3])


@dataclass(frozen=True)
class Plan:
    """What to install: ``torch`` (a requirement such as ">=2.4", or None) and pinned ``packages``."""

    torch: str | None
    packages: tuple[str, ...]

    def empty(self) -> bool:
        return self.torch is None and not self.packages

    def describe(self) -> str:
        return ", ".join(([f"PyTorch {self.torch}"] if self.torch else []) + list(self.packages))


def plan(version_of: Callable[[str], str | None] = installed_version) -> Plan:
    """What is missing: torch when absent or older than :data:`MINIMUM_TORCH`, packages when absent."""
    torch = version_of("torch")
    old = torch is None or release(torch) < release(MINIMUM_TORCH)
    packages = tuple(f"{name}=={pin}" for name, pin in REQUIREMENTS.items() if version_of(name) is None)
    return Plan(f">={MINIMUM_TORCH}" if old else None, packages)


def install(confirm: Callable[[str], bool] | None = None) -> bool:
    """Install what :func:`plan` lists, in Slicer (PyTorch Utils, ``slicer.util.pip_install``).

    ``confirm(question)`` is asked first when given; returns False when the user declines.
    """
    check_python()
    needed = plan()
    if needed.empty():
        return True
    if confirm is not None and not confirm(f"TotalRegistrator needs these Python packages: {needed.describe()}.\n"
                                           "Install them now? This can take several minutes."):
        return False
    import slicer

    if needed.torch:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise DependencyError("TotalRegistrator needs the PyTorch extension: install it in the Extensions "
                                  "Manager and restart Slicer.") from None
        with slicer.util.WaitCursor():
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=needed.torch) is None:
                raise DependencyError("PyTorch could not be installed; see the PyTorch Utils module.")
    if needed.packages:
        with slicer.util.WaitCursor():
            slicer.util.pip_install(list(needed.packages))
    return True
