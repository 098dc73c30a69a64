"""Writing outputs safely: atomic files, staging folders, output-path checks, strict JSON."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError


def to_json(report: dict) -> str:
    """Strict JSON of a report: NaN and infinity (undefined values, e.g. the Dice of a label in neither
    map) become null; numpy numbers and arrays, and paths, become plain JSON values."""
    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, np.ndarray)):
            return [plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
        if isinstance(value, (float, np.floating)):
            return float(value) if np.isfinite(value) else None
        if isinstance(value, np.integer):
            return int(value)
        return str(value) if isinstance(value, Path) else value

    return json.dumps(plain(report), indent=2, allow_nan=False)


def _temporary_sibling(path: Path) -> Path:
    suffix = "".join(path.suffixes) or ".tmp"
    fd, name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.partial-", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # single-file formats: written atomically by one rename


def _check_creatable(path: Path, what: str) -> None:
    existing = next((p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise InputError(f"{path}: {what} cannot be created in {existing}")


def check_not_an_input(outputs: Iterable[str | os.PathLike],
                       inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise :class:`InputError` if any output path is one of the inputs (``None`` inputs are ignored)."""
    taken = {Path(p).resolve() for p in inputs if p is not None}
    for output in outputs:
        if Path(output).resolve() in taken:
            raise InputError(f"{output}: output would overwrite an input")


def check_output_dir(path: str | os.PathLike) -> Path:
    """Raise :class:`InputError` unless ``path`` is an existing folder or can be created as one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: output folder is a file")
    if not path.is_dir():
        _check_creatable(path, "output folder")
    elif not os.access(path, os.W_OK):
        raise InputError(f"{path}: output folder is not writable")
    return path


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """Raise :class:`InputError` unless ``path`` can be written as a file ending in one of ``suffixes``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: output is a folder, not a file")
    if suffixes and not path.name.lower().endswith(suffixes):
        raise InputError(f"{path}: cannot write this format; use {', '.join(suffixes)}")
    _check_creatable(path, "output file")
    return path


class OutputFolder:
    """Collects outputs in a hidden staging folder, moving them into place only on :meth:`commit`.

    Use as a context manager: if the block raises, the staging folder (and any parent folder
    made for it) is removed and the output folder is left as it was. On success, files matching
    the glob patterns in ``replaces`` (plain names are patterns too) that this run did not write
    are removed, so no output of an earlier run into the same folder survives beside the new ones.
    """

    def __init__(self, path: str | os.PathLike, replaces: tuple[str, ...] = ()):
        self.path = check_output_dir(path)
        self.replaces = replaces
        self.made = [p for p in self.path.parents if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # inside an existing output folder (its parent may be read-only), else beside it; same file system
        where = self.path if self.path.is_dir() else self.path.parent
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=where))

    def __truediv__(self, name: str) -> Path:
        return self.staging / name

    def commit(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        staged = sorted(self.staging.iterdir())
        written = {item.name for item in staged}
        for pattern in self.replaces:
            for old in self.path.glob(pattern):
                if old.name not in written and old.is_file():
                    old.unlink()
        for item in staged:
            os.replace(item, self.path / item.name)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        shutil.rmtree(self.staging, ignore_errors=True)
        if exc_type is not None:
            for folder in self.made:  # deepest first; only folders still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
