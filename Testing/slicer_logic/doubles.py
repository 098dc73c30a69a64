"""Test doubles and helpers: a command line that writes known results, volumes from SimpleITK images."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from TotalRegistratorSlicer import nodes
from TotalRegistratorSlicer.library import registry

LPS = np.diag([-1.0, -1.0, 1.0])
SHIFT_LPS = np.array([6.0, -4.0, 3.0])  # the double's affine result: fixed point + SHIFT_LPS
FIELD_LPS = np.array([-5.0, 2.0, 7.0])  # the double's deformable result: a constant displacement


class FakeCommandLine:
    """A :class:`~TotalRegistratorSlicer.runner.Runner` that, instead of registering, writes the files of
    the outputs its ``register`` command asks for: an affine shift for ``--blocks affine --no-refine``,
    a constant displacement field otherwise, and copies of the fixed image for the volumes.
    ``error``: the one-line error to end with instead (exit code 2)."""

    def __init__(self, error: str | None = None):
        self.error, self.command, self.cancelled, self.written = error, None, False, []
        self._lines = []

    def start(self, command, env):
        self.command = list(command)
        self._lines = [("stderr", '{"stage": "affine", "done": 1, "total": 2}'), ("stdout", "chatter")]
        if self.error:
            self._lines.append(("stderr", registry.ERROR_PREFIX + self.error))
            return
        out = Path(self.value("-o"))
        out.mkdir(parents=True)
        fixed = sitk.ReadImage(self.command[4])
        for name in self.value("--outputs").split(","):
            for file in registry.OUTPUTS[name].files:
                self._write(name, fixed, out / file)
                self.written.append(file)

    def value(self, option: str) -> str:
        return self.command[self.command.index(option) + 1]

    def _write(self, name: str, fixed: sitk.Image, path: Path) -> None:
        if name != "transform":
            sitk.WriteImage(sitk.Cast(fixed, sitk.sitkFloat32), str(path))
        elif "--no-refine" in self.command and self.value("--blocks") == "affine":
            sitk.WriteTransform(sitk.TranslationTransform(3, SHIFT_LPS.tolist()), str(path))
        else:
            spacing = float(self.value("--export-spacing")) if "--export-spacing" in self.command else 2.5
            sitk.WriteTransform(constant_field(fixed, spacing), str(path))

    def poll(self):
        lines, self._lines = self._lines, []
        return (None if lines else (2 if self.error else 0)), lines

    def wait(self, seconds):
        pass

    def cancel(self):
        self.cancelled = True


def constant_field(reference: sitk.Image, spacing: float) -> sitk.DisplacementFieldTransform:
    """A displacement of :data:`FIELD_LPS` everywhere, on a grid of ``spacing`` mm over ``reference``."""
    extent = np.array(reference.GetSize()) * np.array(reference.GetSpacing())
    size = [int(n) for n in np.ceil(extent / spacing) + 1]
    field = sitk.GetImageFromArray(np.broadcast_to(FIELD_LPS, (*size[::-1], 3)).copy(), isVector=True)
    field.SetOrigin(reference.GetOrigin())
    field.SetDirection(reference.GetDirection())
    field.SetSpacing([spacing] * 3)
    return sitk.DisplacementFieldTransform(field)


def add_volume(scene, image: sitk.Image | Path, name: str, labels: bool = False):
    """A volume node made from a SimpleITK image (or a file) through a file, as a user's loaded volume."""
    with tempfile.TemporaryDirectory() as folder:
        path = image if isinstance(image, Path) else Path(folder) / f"{name}.nrrd"
        if not isinstance(image, Path):
            sitk.WriteImage(image, str(path))
        node = nodes.read_volume(path, labels)
    scene.AddNode(node)
    node.SetName(name)
    node.CreateDefaultDisplayNodes()
    return node


def ras_point(transform_node, lps_point) -> np.ndarray:
    """Where ``transform_node`` (from parent) maps an LPS point, in LPS."""
    return LPS @ np.array(transform_node.GetTransformFromParent().TransformPoint(LPS @ np.asarray(lps_point)))


def matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def node_census(scene) -> list[tuple[str, str]]:
    """(class, name) of every node in ``scene``, color tables included."""
    return sorted((scene.GetNthNode(i).GetClassName(), scene.GetNthNode(i).GetName() or "")
                  for i in range(scene.GetNumberOfNodes()))
