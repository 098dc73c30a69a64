"""What reaches stderr: one line per questionable input, nothing from the libraries underneath.

:func:`warn` raises an :class:`~TotalRegistratorLib.errors.InputWarning` (a Python warning) and adds
its text to every list opened by :func:`record_warnings` (a report's ``warnings``). Inside
:func:`held_warnings` the warnings wait until :func:`release_warnings` (or the block's end) and are
dropped when the block raises first, so a refused input is one line, not a warning and an error.
:func:`deferred_warnings` collects one thread's warnings for the caller to issue later, in order.
:func:`route_messages` (the commands call it once) prints those warnings as one line
``<program>: warning: <text>`` and sends every other Python warning (torch, matplotlib,
nibabel) to :mod:`logging`. :func:`library_output` catches what ITK, GDCM, HDF5 and
MetaImage write straight to file descriptor 2 and logs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator

from ..errors import InputWarning

LOG = logging.getLogger("TotalRegistratorLib")
_recording: list[list[str]] = []
_held: list[list[str] | None] = []  # innermost hold: warnings not shown yet (None once released)
_fd_lock = threading.Lock()  # guards the redirection of file descriptor 2 (library_output)


class _Capture:
    depth = 0  # library_output blocks running, in any thread
    sink = None  # the temporary file that descriptor 2 points to meanwhile
    saved = -1  # a duplicate of the original descriptor 2


_capture = _Capture()
_thread = threading.local()  # .deferred: this thread's list while inside deferred_warnings()


def warn(message: str) -> None:
    """Warn about a questionable input (one line naming the file) and record it where asked."""
    deferred = getattr(_thread, "deferred", None)
    if deferred is not None:
        deferred.append(message)
        return
    for recorded in _recording:
        recorded.append(message)
    if _held and _held[-1] is not None:
        _held[-1].append(message)
    else:
        warnings.warn(message, InputWarning, stacklevel=2)


@contextlib.contextmanager
def held_warnings() -> Iterator[None]:
    """Hold :func:`warn`'s warnings until :func:`release_warnings` or the end of the block; drop them if
    the block raises before."""
    _held.append([])
    try:
        yield
    except BaseException:
        _held.pop()
        raise
    release_warnings()
    _held.pop()


def release_warnings() -> None:
    """Show the held warnings now (e.g. once every input has passed its checks); later ones show at once."""
    if _held and _held[-1] is not None:
        pending, _held[-1] = _held[-1], None
        for message in pending:
            warnings.warn(message, InputWarning, stacklevel=2)


@contextlib.contextmanager
def deferred_warnings() -> Iterator[list[str]]:
    """A list that takes the text of this thread's :func:`warn` calls inside the block instead of issuing
    them: work run in another thread hands its warnings back to be issued (:func:`warn`) in a fixed order."""
    _thread.deferred = []
    try:
        yield _thread.deferred
    finally:
        _thread.deferred = None


@contextlib.contextmanager
def record_warnings() -> Iterator[list[str]]:
    """A list that collects the text of every :func:`warn` inside the block (e.g. for a report)."""
    recorded: list[str] = []
    _recording.append(recorded)
    try:
        yield recorded
    finally:
        _recording.remove(recorded)


def route_messages(prefix: str) -> None:
    """Command-line setup: :class:`InputWarning` as one stderr line ``<prefix>text``, other warnings and
    ITK's own warnings to :data:`LOG` (not stderr)."""
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    nibabel_log = logging.getLogger("nibabel.global")  # nibabel prints header fixes to stderr itself
    nibabel_log.handlers.clear()
    nibabel_log.propagate = False
    nibabel_log.addHandler(_ToDebug())

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, InputWarning):
            print(f"{prefix}{message}", file=sys.stderr, flush=True)
        else:
            LOG.debug("%s: %s (%s:%s)", category.__name__, message, filename, lineno)

    warnings.showwarning = show
    warnings.simplefilter("always", InputWarning)


class _ToDebug(logging.Handler):
    """Passes another library's log records on to :data:`LOG` at debug level."""

    def emit(self, record: logging.LogRecord) -> None:
        LOG.debug("%s: %s", record.name, record.getMessage())


@contextlib.contextmanager
def library_output() -> Iterator[list[str]]:
    """Catch what C++ libraries write to file descriptor 2 inside the block and log it (debug) instead.

    Yields a list that holds the caught text once the block has ended (e.g. for an error message). Blocks
    in several threads at once (two scans read in parallel) share one redirection: each gets the text
    written while it ran."""
    with _fd_lock:
        if _capture.depth == 0:
            sys.stderr.flush()
            _capture.sink = tempfile.TemporaryFile()
            _capture.saved = os.dup(2)
            os.dup2(_capture.sink.fileno(), 2)
        _capture.depth += 1
        sink = _capture.sink.fileno()
        start = os.fstat(sink).st_size
    caught: list[str] = []
    try:
        yield caught
    finally:
        with _fd_lock:
            end = os.fstat(sink).st_size
            text = os.pread(sink, end - start, start).decode(errors="replace").strip()
            _capture.depth -= 1
            if _capture.depth == 0:
                os.dup2(_capture.saved, 2)
                os.close(_capture.saved)
                _capture.sink.close()
        if text:
            caught.append(text)
            LOG.debug("library output: %s", text)
