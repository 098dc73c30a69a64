"""Writing outputs safely: atomic files, staging folders, one run per output folder, output-path checks, JSON.

* :func:`atomic_path` and :class:`OutputFolder` write under hidden names holding the writer's
  process id (``.<name>.partial-<pid>-...``) and rename into place only when complete. A run
  killed outright (SIGKILL, power loss) leaves them behind; the next write to the same place
  removes those of processes that no longer run, never those of a live run.
* :class:`OutputFolder` holds the folder's lock (:func:`output_lock`) so a second run into the
  same folder fails at once instead of both reporting success, and replaces only the files that
  an earlier run provably wrote (listed in that run's own index, e.g. ``report.json``).
* The commands turn SIGTERM into :class:`~TotalRegistratorLib.errors.Terminated` (see
  :func:`stop_on_sigterm`), so every staging folder is removed on the way out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError, Terminated

PARTIAL = ".partial-"  # infix of every staging name: .<name>.partial-<pid>-<random>
PATH_ROOM = 100  # characters kept free for the names written under an output path (staging, file names)
NAME_ROOM = 40  # characters kept free in a name for its staging prefix and suffix


def to_json(report: dict, indent: int | None = 2) -> str:
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

    return json.dumps(plain(report), indent=indent, allow_nan=False)


# --- staging names and the leftovers of killed runs ---------------------------------------------------
def _staging_prefix(name: str) -> str:
    return f".{name}{PARTIAL}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(folder: Path, name: str) -> None:
    """Remove staging files and folders for ``name`` in ``folder`` whose writing process no longer runs."""
    prefix = _staging_prefix(name)
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            owner = entry.name[len(prefix):].split("-", 1)[0] if entry.name.startswith(prefix) else ""
            if owner.isdigit() and not _alive(int(owner)):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


def _temporary_sibling(path: Path) -> Path:
    stem = path.name.split(".")[0]
    remove_stale(path.parent, stem)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, name = tempfile.mkstemp(prefix=f"{_staging_prefix(stem)}{os.getpid()}-", suffix=suffix, dir=path.parent)
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


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block has ended (e.g. while outputs are moved into place)."""
    stops = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Inside the block (main thread only), SIGTERM raises :class:`Terminated` like Ctrl-C raises
    KeyboardInterrupt, so ``with`` blocks clean up; the previous handler comes back afterwards."""
    def stop(signum, frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- one run per output folder ----------------------------------------------------------------------
_held: dict[str, int] = {}  # lock file -> how many nested holders in this process


def _lock_file(path: Path) -> Path:
    """Beside the folder when its parent is writable (works before the folder exists), else inside it."""
    parent = path.absolute().parent
    name = path.absolute().name
    if name and (not parent.exists() or os.access(parent, os.W_OK)):
        return parent / f".{name}.lock"
    return path / ".lock"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of output folder ``path`` (reentrant in one process); another process holding it
    raises :class:`InputError` at once. Parent folders made for the lock go again when left empty."""
    lock = _lock_file(Path(path))
    key = os.path.realpath(lock.parent) + os.sep + lock.name
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    made = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = _acquire(lock, Path(path))
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            lock.unlink()
        handle.close()
        for folder in made:  # deepest first; only folders still empty
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(lock: Path, path: Path):
    while True:
        handle = open(lock, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise InputError(f"{path}: another run (process {owner}) is writing to this output folder; "
                             "wait for it or choose another folder") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:  # not a file its last holder unlinked
                handle.truncate(0)
                handle.write(str(os.getpid()))
                handle.flush()
                return handle
        handle.close()


# --- output-path checks ------------------------------------------------------------------------------
def _check_length(path: Path, what: str) -> None:
    """Refuse paths the file system cannot hold with room for the names written under them (checked on the
    text alone: stat() of such a path fails)."""
    anchor = os.path.abspath(path.anchor or ".")
    full, limit = len(os.fsencode(os.path.abspath(path))), os.pathconf(anchor, "PC_PATH_MAX") - PATH_ROOM
    if full > limit:
        raise InputError(f"{str(path)[:40]}...: {what} path is too long ({full} bytes; at most {limit})")
    name_limit = os.pathconf(anchor, "PC_NAME_MAX") - NAME_ROOM
    long = next((part for part in path.parts if len(os.fsencode(part)) > name_limit), None)
    if long is not None:
        raise InputError(f"{str(path)[:40]}...: a name in the {what} path has {len(os.fsencode(long))} bytes; "
                         f"at most {name_limit} fit")


def _check_creatable(path: Path, what: str) -> None:
    """Refuse paths under a folder where nothing can be created (read-only, /proc, /sys): a probe folder is
    made and removed in the deepest existing folder."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise InputError(f"{path}: {what} cannot be created in {existing} (a file)")
    folder = existing if existing.is_dir() else existing.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=folder))
    except OSError as err:
        where = "cannot be written into" if folder == path else f"cannot be created in {folder}"
        raise InputError(f"{path}: {what} {where} ({err.strerror})") from None


def check_not_an_input(outputs: Iterable[str | os.PathLike],
                       inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise :class:`InputError` if any output path is one of the inputs (``None`` inputs are ignored)."""
    taken = {os.path.realpath(p) for p in inputs if p is not None}
    for output in outputs:
        if os.path.realpath(output) in taken:
            raise InputError(f"{output}: output would overwrite an input")


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # single-file formats: written atomically by one rename


def check_output_dir(path: str | os.PathLike) -> Path:
    """Raise :class:`InputError` unless ``path`` is an existing folder or can be created as one."""
    path = Path(path)
    _check_length(path, "output folder")
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: output folder is a file")
    _check_creatable(path, "output folder")
    return path


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """Raise :class:`InputError` unless ``path`` can be written as a file ending in one of ``suffixes``."""
    path = Path(path)
    _check_length(path, "output file")
    if path.is_dir():
        raise InputError(f"{path}: output is a folder, not a file")
    if suffixes and not path.name.lower().endswith(suffixes):
        raise InputError(f"{path}: cannot write this format; use {', '.join(suffixes)}")
    _check_creatable(path, "output file")
    return path


class OutputFolder:
    """Collects outputs in a hidden staging folder, moving them into place only on :meth:`commit`.

    Use as a context manager; it holds the folder's :func:`output_lock`. If the block raises
    (or the process is stopped by SIGINT/SIGTERM), the staging folder is removed and the output
    folder is left as it was. On success, the files that ``earlier(folder)`` names (what an earlier
    run of the same command provably wrote there, read from its own index such as ``report.json``
    or ``pairs.csv``) are removed unless this run wrote them again: no output of an earlier run
    survives beside the new ones, and no file the program did not write is removed.
    """

    def __init__(self, path: str | os.PathLike, earlier: Callable[[Path], Iterable[str]] | None = None):
        self.path = check_output_dir(path)
        self.earlier = earlier
        self._lock = output_lock(self.path)
        self._lock.__enter__()
        # inside an existing output folder (its parent may be read-only), else beside it; same file system
        where = self.path if self.path.is_dir() else self.path.parent
        remove_stale(where, self.path.name)
        self.staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(self.path.name)}{os.getpid()}-", dir=where))

    def __truediv__(self, name: str) -> Path:
        return self.staging / name

    def commit(self) -> None:
        with signals_deferred():
            earlier = set(self.earlier(self.path)) if self.earlier and self.path.is_dir() else set()
            self.path.mkdir(parents=True, exist_ok=True)
            staged = sorted(self.staging.iterdir())
            for name in earlier - {item.name for item in staged}:
                old = self.path / name
                if name == old.name and old.is_file() and not old.is_symlink():  # plain names only
                    old.unlink()
            for item in staged:
                os.replace(item, self.path / item.name)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._lock.__exit__(exc_type, exc, tb)
