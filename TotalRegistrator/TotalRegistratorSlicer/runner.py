"""The background job's process, behind a typed protocol.

The logic only calls :class:`Runner`'s ``start``, ``poll``, ``wait`` and
``cancel``. Slicer uses the ``qt.QProcess`` runner of :mod:`.qprocess`;
tests and headless scripts (no Qt, e.g. the ``slicer-core`` wheel) use
:class:`SubprocessRunner`. Both report the command line's ``--progress json``
lines and its one-line error through :func:`parse_progress` and the library's
``registry.ERROR_PREFIX``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Line = tuple[str, str]  # (stream: "stdout" or "stderr", text without the line end)


@dataclass(frozen=True)
class Progress:
    """One progress line of the command line: ``done`` of ``total`` steps of ``stage``."""

    stage: str
    done: int
    total: int


def parse_progress(line: str) -> Progress | None:
    """The :class:`Progress` of a ``--progress json`` stderr line, or None for any other line."""
    try:
        data = json.loads(line)
        return Progress(str(data["stage"]), int(data["done"]), int(data["total"]))
    except (ValueError, TypeError, KeyError):
        return None


class Runner(Protocol):
    """Runs one command in a child process without blocking the caller."""

    def start(self, command: Sequence[str], env: dict[str, str]) -> None:
        """Start ``command`` (arguments, no shell) with environment ``env``."""

    def poll(self) -> tuple[int | None, list[Line]]:
        """(exit code, or None while running; the lines written since the last call).

        The exit code comes only after both streams were read to their end.
        """

    def wait(self, seconds: float) -> None:
        """Block at most ``seconds`` for new output or the end (no busy loop)."""

    def cancel(self) -> None:
        """Kill the process and everything it started; no-op when it has ended."""


class SubprocessRunner:
    """:class:`Runner` on :mod:`subprocess`: two reader threads feed a queue.

    Cancel kills the process tree (:func:`kill_tree`): Slicer's ``PythonSlicer``
    is a launcher whose interpreter is a child of its own.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self._lines: queue.Queue[Line] = queue.Queue()
        self._pending: list[Line] = []
        self._readers: list[threading.Thread] = []

    def start(self, command: Sequence[str], env: dict[str, str]) -> None:
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
        self.process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        encoding="utf-8", errors="replace", env=env, creationflags=flags)
        self._readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                         for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream) -> None:
        for line in stream:
            self._lines.put((name, line.rstrip("\n")))
        stream.close()

    def poll(self) -> tuple[int | None, list[Line]]:
        code = self.process.poll()
        if code is not None:
            for reader in self._readers:
                reader.join(10.0)  # never forever: a GUI thread may call this
        lines, self._pending = self._pending, []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return code, lines

    def wait(self, seconds: float) -> None:
        try:
            self._pending.append(self._lines.get(timeout=seconds))
        except queue.Empty:
            pass

    def cancel(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        kill_tree(self.process.pid)
        self.process.wait()
        for reader in self._readers:
            reader.join(10.0)


def kill_tree(pid: int) -> None:
    """Kill process ``pid`` and all its descendants (``taskkill /T`` on Windows, ``ps`` elsewhere)."""
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True,
                       creationflags=subprocess.CREATE_NO_WINDOW)
        return
    table = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for row in table.split("\n"):
        if len(fields := row.split()) == 2:
            children.setdefault(int(fields[1]), []).append(int(fields[0]))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for member in tree:  # the parent first: it cannot start new children once stopped
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def child_environment(library_parent: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``library_parent`` first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    paths = [library_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env
