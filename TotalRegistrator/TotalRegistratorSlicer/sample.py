"""The sample data: a phantom CT pair made by the library's ``phantom`` subcommand, loaded as nodes.

The recipe (kind, seed, spacing) is a small JSON file (``Resources/SampleData``)
that the Sample Data module "downloads" from the extension's own folder; the
module's file reader then calls :func:`load_phantom_pair`. Its files live in a
temporary folder that is removed once the nodes hold the voxels.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import slicer

from .library import registry
from .logic import RegistrationLogic
from .nodes import copy_volume, read_volume

ROLES = ("fixed", "moving", "fixed_labels", "moving_labels")


@dataclass(frozen=True)
class Recipe:
    """How to simulate the pair: ``phantom --kind KIND --seed SEED --spacing SPACING``."""

    kind: str = "intra"
    seed: int = 0
    spacing: float = 4.0

    @classmethod
    def read(cls, path: str | Path) -> Recipe:
        data = json.loads(Path(path).read_text())
        return cls(str(data["kind"]), int(data["seed"]), float(data["spacing"]))

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    def arguments(self, folder: Path) -> list[str]:
        return ["phantom", "-o", str(folder), "--pairs", "1", "--kind", self.kind, "--seed", str(self.seed),
                "--spacing", f"{self.spacing:g}"]


def make_phantom_pair(logic: RegistrationLogic, recipe: Recipe, folder: Path) -> dict[str, Path]:
    """Simulate the pair into ``folder``; returns the paths of :data:`ROLES`."""
    logic.run(recipe.arguments(folder))
    return {role: folder / f"pair000_{role}.nii.gz" for role in ROLES}


def load_phantom_pair(logic: RegistrationLogic, scene, recipe: Recipe = Recipe()) -> dict[str, object]:
    """Simulate the pair and add it to ``scene``: two CT volumes and the moving image's named structures
    as a segmentation. Returns the nodes (``fixed``, ``moving``, ``segmentation``)."""
    folder = logic.folder("TotalRegistratorPhantom-")
    try:
        paths = make_phantom_pair(logic, recipe, folder)
        volumes = {role: read_volume(paths[role]) for role in ("fixed", "moving")}  # all read before any node
        labels = read_volume(paths["moving_labels"], labels=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    nodes = {}
    for role, volume in volumes.items():
        nodes[role] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"Phantom {role}")
        copy_volume(volume, nodes[role])
        nodes[role].CreateDefaultDisplayNodes()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Phantom moving structures")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(nodes["moving"])
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation):
        scene.RemoveNode(segmentation)
        raise RuntimeError("cannot import the phantom's structures")
    names = {value: name for name, value in registry.LABELS.items()}
    for index in range(segmentation.GetSegmentation().GetNumberOfSegments()):
        segment = segmentation.GetSegmentation().GetNthSegment(index)
        segment.SetName(names.get(segment.GetLabelValue(), segment.GetName()))
    nodes["segmentation"] = segmentation
    return nodes
