"""The :class:`~.runner.Runner` Slicer uses: a ``qt.QProcess``, read by Qt's event loop (no threads).

Needs Qt, so only the Slicer application imports it; its behaviour is covered by
the module's self-test (``TotalRegistratorSlicer.selftest``), since the tests in
``Testing/slicer_logic`` run on MRML without Qt.
"""

from __future__ import annotations

from collections.abc import Sequence

import qt
import slicer

from .runner import Line, kill_tree


class QProcessRunner:
    """:class:`~.runner.Runner` on ``qt.QProcess``; partial lines wait in a buffer until their line end."""

    def __init__(self) -> None:
        self.process = qt.QProcess()
        self._partial = {"stdout": "", "stderr": ""}

    def start(self, command: Sequence[str], env: dict[str, str]) -> None:
        environment = qt.QProcessEnvironment()
        for key, value in env.items():
            environment.insert(key, value)
        self.process.setProcessEnvironment(environment)
        self.process.start(command[0], list(command[1:]))
        if not self.process.waitForStarted(30000):
            raise RuntimeError(f"cannot start {command[0]}: {self.process.errorString()}")

    def _read(self, stream: str, data, final: bool) -> list[Line]:
        text = self._partial[stream] + bytes(data.data()).decode("utf-8", "replace")
        *lines, self._partial[stream] = text.replace("\r\n", "\n").split("\n")
        if final and self._partial[stream]:
            lines.append(self._partial[stream])
            self._partial[stream] = ""
        return [(stream, line) for line in lines]

    def poll(self) -> tuple[int | None, list[Line]]:
        ended = self.process.state() == qt.QProcess.NotRunning
        lines = self._read("stdout", self.process.readAllStandardOutput(), ended)
        lines += self._read("stderr", self.process.readAllStandardError(), ended)
        if not ended:
            return None, lines
        crashed = self.process.exitStatus() != qt.QProcess.NormalExit
        return (-1 if crashed else int(self.process.exitCode())), lines

    def wait(self, seconds: float) -> None:
        self.process.waitForFinished(max(1, int(seconds * 1000)))
        slicer.app.processEvents()

    def cancel(self) -> None:
        if self.process.state() != qt.QProcess.NotRunning:
            kill_tree(int(self.process.processId()))
            self.process.waitForFinished(10000)
