"""The registration runs as ``python -m TotalRegistratorLib register ...`` in a child process.

:class:`ProcessRunner` starts it, collects its output without blocking (reader
threads) and kills it on cancel; the logic only calls ``start``, ``poll`` and
``cancel``, so tests and headless scripts can swap in another runner.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

ERROR_PREFIX = "totalregistrator: error: "


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


class ProcessRunner:
    """Runs one command in a child process; stdout and stderr lines are read by two threads.

    The child leads a process group of its own (a new session; a new process group on Windows), and
    cancel kills the whole group: Slicer's ``PythonSlicer`` is a launcher whose interpreter is a child
    of its own, holding the same pipes.
    """

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._readers: list[threading.Thread] = []

    def start(self, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``command`` (a list of arguments, no shell)."""
        windows = sys.platform == "win32"
        flags = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP if windows else 0
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        encoding="utf-8", errors="replace", env=env, creationflags=flags,
                                        start_new_session=not windows)
        self._readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                         for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream) -> None:
        for line in stream:
            self._lines.put((name, line.rstrip("\n")))
        stream.close()

    def poll(self) -> tuple[int | None, list[tuple[str, str]]]:
        """(exit code or None while running, new ``(stream, line)`` pairs since the last call).

        The exit code is reported only once both streams are read to the end.
        """
        code = self.process.poll()
        if code is not None:
            self._join_readers()
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                break
        return code, lines

    def cancel(self) -> None:
        """Kill the process and its descendants (if still running) and wait for it to end."""
        if self.process is None or self.process.poll() is not None:
            return
        if sys.platform == "win32":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True,
                           creationflags=subprocess.CREATE_NO_WINDOW)
        else:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.kill()
        self.process.wait()
        self._join_readers()

    def _join_readers(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` s each, never forever: the GUI thread calls this) for the readers."""
        for reader in self._readers:
            reader.join(timeout)


def child_environment(library_parent: str) -> dict[str, str]:
    """This process's environment with ``library_parent`` first on PYTHONPATH (so the child finds the library)."""
    env = dict(os.environ)
    paths = [library_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env
