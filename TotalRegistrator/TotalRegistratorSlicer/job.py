"""A started command line: its messages, its progress, its end, and the nodes its files fill.

Nothing is added to or changed in the scene until the run has finished and
every output file has been read; a failed or cancelled run leaves the scene as
it was, and the job's folder is removed in every case.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .library import registry
from .nodes import copy_transform, copy_volume, place_beside, read_transform, read_volume
from .runner import Progress, Runner, parse_progress

FIXED_REFERENCE = "TotalRegistratorFixed"  # node references of every output: the volumes it came from
MOVING_REFERENCE = "TotalRegistratorMoving"


class RegistrationError(RuntimeError):
    """The command line failed (its one-line message) or an input cannot be registered."""


@dataclass
class RegistrationOutputs:
    """The nodes a finished run filled (None for outputs not asked for)."""

    transform: object
    warped: object = None
    subtractionBefore: object = None
    subtractionAfter: object = None

    def nodes(self) -> list:
        return [n for n in (self.transform, self.warped, self.subtractionBefore, self.subtractionAfter) if n]


class Process:
    """A command running in a :class:`~.runner.Runner`: collects its stderr, reports its progress."""

    def __init__(self, runner: Runner, progress: Callable[[Progress], None] | None = None):
        self.runner, self.progress, self.messages = runner, progress, []

    def poll(self) -> int | None:
        """The exit code once ended, else None; reports new progress lines on the way."""
        code, lines = self.runner.poll()
        for stream, line in lines:
            progress = parse_progress(line) if stream == "stderr" else None
            if progress is not None:
                if self.progress:
                    self.progress(progress)
            elif line.strip():
                logging.info("TotalRegistrator: %s", line)
                if stream == "stderr":
                    self.messages.append(line)
        return code

    def error(self, code: int) -> RegistrationError:
        """The error of exit code ``code``: the command line's one-line message, or its last lines."""
        errors = [m[len(registry.ERROR_PREFIX):] for m in self.messages if m.startswith(registry.ERROR_PREFIX)]
        if errors:
            return RegistrationError(errors[-1])
        tail = "\n".join(self.messages[-5:])
        return RegistrationError(f"the process failed (exit code {code})" + (f":\n{tail}" if tail else ""))

    def finish(self, wait: float = 0.1) -> None:
        """Wait for the end (``runner.wait``, no busy loop); raise its error unless it succeeded."""
        while (code := self.poll()) is None:
            self.runner.wait(wait)
        if code != 0:
            raise self.error(code)


@dataclass
class Targets:
    """Where a run's results go: a node to fill, True to create one, or None to skip."""

    transform: object = None  # None: create
    warped: object = None
    subtractionBefore: object = None
    subtractionAfter: object = None


class Job:
    """A started registration: :meth:`poll` until it returns the outputs, or :meth:`cancel` it."""

    def __init__(self, process: Process, folder: Path, fixed, moving, targets: Targets):
        self.process, self.folder, self.fixed, self.moving, self.targets = process, folder, fixed, moving, targets
        self.finished = False

    def poll(self) -> RegistrationOutputs | None:
        """None while running; the filled output nodes once finished. Raises :class:`RegistrationError`."""
        if self.finished:
            raise RegistrationError("this registration has already finished")
        code = self.process.poll()
        if code is None:
            return None
        self.finished = True
        try:
            if code != 0:
                raise self.process.error(code)
            return self._load(self.folder / "output")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def wait(self, seconds: float) -> None:
        """Block at most ``seconds`` for progress or the end."""
        self.process.runner.wait(seconds)

    def cancel(self) -> None:
        """Stop the process and remove its files; the scene is not touched."""
        if not self.finished:
            self.finished = True
            self.process.runner.cancel()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _load(self, out: Path) -> RegistrationOutputs:
        t, scene = self.targets, self.fixed.GetScene()
        before, after = registry.OUTPUTS["subtraction"].files
        files = {"warped": out / registry.OUTPUTS["warped"].files[0], "subtractionBefore": out / before,
                 "subtractionAfter": out / after}
        transform = read_transform(out / registry.OUTPUTS["transform"].files[0])  # read all before any change
        volumes = {key: read_volume(path) for key, path in files.items() if getattr(t, key)}
        fixed, moving = self.fixed.GetName(), self.moving.GetName()
        filled = {"transform": t.transform or scene.AddNewNodeByClass("vtkMRMLTransformNode", f"{moving} to {fixed}")}
        copy_transform(transform, filled["transform"])
        names = {"warped": f"{moving} registered", "subtractionBefore": f"|{fixed} - {moving}| before",
                 "subtractionAfter": f"|{fixed} - {moving}| after"}
        for key, volume in volumes.items():
            node = getattr(t, key)
            if node is True:
                node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", names[key])
            copy_volume(volume, node)
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            filled[key] = node
        outputs = RegistrationOutputs(**filled)
        for node in outputs.nodes():
            node.SetNodeReferenceID(FIXED_REFERENCE, self.fixed.GetID())
            node.SetNodeReferenceID(MOVING_REFERENCE, self.moving.GetID())
        if outputs.warped is None:  # nothing else shows the result: the moving volume goes under the transform
            self.moving.SetAndObserveTransformNodeID(outputs.transform.GetID())
        place_beside(scene, self.moving, outputs.nodes())
        return outputs
