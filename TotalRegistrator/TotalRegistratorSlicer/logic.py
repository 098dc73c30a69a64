"""The module's logic without Qt: register two volume nodes with the library's command line.

The fixed volume is written where it is shown (a linear parent transform is
baked into the file's geometry); the moving volume as stored (its parent
transform is what the result replaces). The pieces: :mod:`.parameters` (the
command line), :mod:`.runner` (the process), :mod:`.job` (progress, errors,
outputs to nodes), :mod:`.nodes` (node I/O), :mod:`.harden` and :mod:`.sample`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from . import library
from .harden import harden
from .job import FIXED_REFERENCE, Job, Process, RegistrationError, RegistrationOutputs, Targets
from .nodes import NodeError, ijk_to_ras, write_volume
from .parameters import ParameterError, RegistrationParameters
from .runner import Progress, Runner, SubprocessRunner


def default_inputs(volumes: Sequence) -> tuple[object, object]:
    """The fixed and moving volume a fresh panel offers: the first two plain scalar volumes (or None)."""
    plain = [v for v in volumes if v.GetClassName() == "vtkMRMLScalarVolumeNode"]
    return (plain[0] if plain else None), (plain[1] if len(plain) > 1 else None)


def slice_layers(outputs: RegistrationOutputs, fixed, moving, subtraction: bool = False) -> tuple[object, object]:
    """(background, foreground) that show a result: the fixed volume under the registered one (or under the
    moving volume, which sits under the transform); ``subtraction``: under |fixed - registered| instead."""
    if subtraction and outputs.subtractionAfter is not None:
        return fixed, outputs.subtractionAfter
    return fixed, outputs.warped or moving


class RegistrationLogic:
    """Register two volume nodes with the TotalRegistrator command line; usable without any GUI.

    ``runner_factory`` makes the :class:`~.runner.Runner` of each run (Slicer: a QProcess, tests: a
    subprocess or a double); ``python`` is the interpreter it runs; job folders go into ``temporary``.
    """

    def __init__(self, runner_factory: Callable[[], Runner] = SubprocessRunner, python: str | None = None,
                 temporary: str | Path | None = None):
        self.runner_factory = runner_factory
        self.python = python or library.python_executable()
        self.temporary = Path(temporary or tempfile.gettempdir())

    def folder(self, prefix: str) -> Path:
        """A new folder for one job's files, in this logic's temporary folder."""
        self.temporary.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.temporary))

    def start(self, fixedVolume, movingVolume, parameters: RegistrationParameters | None = None,
              outputTransform=None, warpedVolume=None, subtractionVolumes=None,
              progress: Callable[[Progress], None] | None = None) -> Job:
        """Write the inputs and start the registration in the background; returns the :class:`~.job.Job`.

        ``outputTransform``: a transform node to fill, or None to create one. ``warpedVolume``: a volume
        node, True (create) or None; with None the moving volume goes under the transform when done.
        ``subtractionVolumes``: (before, after) volume nodes, True (create both) or None. The command
        writes exactly these outputs (``parameters.outputs`` is set from them).
        """
        if subtractionVolumes is True:
            subtractionVolumes = (True, True)
        targets = Targets(outputTransform, warpedVolume, *(subtractionVolumes or (None, None)))
        names = [name for name, wanted in (("warped", warpedVolume), ("subtraction", subtractionVolumes)) if wanted]
        parameters = replace(parameters or RegistrationParameters(), outputs=("transform", *names))
        self._check(fixedVolume, movingVolume, parameters, targets)
        folder = self.folder("TotalRegistrator-")
        try:
            write_volume(fixedVolume, folder / "fixed.nrrd", world=True)
            write_volume(movingVolume, folder / "moving.nrrd")
            runner = self.runner_factory()
            runner.start(parameters.command(self.python, folder / "fixed.nrrd", folder / "moving.nrrd",
                                            folder / "output"), library.environment())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Job(Process(runner, progress), folder, fixedVolume, movingVolume, targets)

    def register(self, fixedVolume, movingVolume, parameters: RegistrationParameters | None = None,
                 outputTransform=None, warpedVolume=None, subtractionVolumes=None,
                 progress: Callable[[Progress], None] | None = None, wait: float = 0.1) -> RegistrationOutputs:
        """Register and wait for the result (arguments as :meth:`start`); returns the filled output nodes."""
        job = self.start(fixedVolume, movingVolume, parameters, outputTransform, warpedVolume, subtractionVolumes,
                         progress)
        try:
            while (outputs := job.poll()) is None:
                job.wait(wait)
        except BaseException:
            job.cancel()
            raise
        return outputs

    def run(self, arguments: Sequence[str], wait: float = 0.1) -> None:
        """Run ``python -m TotalRegistratorLib ARGUMENTS`` to its end; raises :class:`RegistrationError`."""
        runner = self.runner_factory()
        runner.start([self.python, "-m", "TotalRegistratorLib", *map(str, arguments)], library.environment())
        Process(runner).finish(wait)

    @staticmethod
    def _check(fixed, moving, parameters: RegistrationParameters, targets: Targets) -> None:
        for role, node in (("fixed", fixed), ("moving", moving)):
            if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.GetImageData() is None:
                raise RegistrationError(f"choose a {role} volume with voxels")
        if fixed is moving:
            raise RegistrationError("fixed and moving volume are the same node")
        try:
            parameters.check()
            ijk_to_ras(fixed, world=True)  # refuses non-linear parent transforms
        except (ParameterError, NodeError) as error:
            raise RegistrationError(str(error)) from None
        for node in (targets.warped, targets.subtractionBefore, targets.subtractionAfter):
            if node in (fixed, moving):
                raise RegistrationError(f"{node.GetName()}: an input volume cannot also be an output")

    @staticmethod
    def applyTransform(transformNode, nodes: Sequence, hardenNodes: bool = False) -> None:
        """Put segmentations or label maps of the moving image under ``transformNode``; ``hardenNodes``
        bakes it in (each segment resampled on its own onto the fixed grid, see :mod:`.harden`)."""
        fixed = transformNode.GetNodeReference(FIXED_REFERENCE)
        for node in nodes:
            if hardenNodes:
                harden(node, transformNode, fixed)
            else:
                node.SetAndObserveTransformNodeID(transformNode.GetID())
