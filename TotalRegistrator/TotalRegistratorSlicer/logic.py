"""The module's logic without Qt: volume nodes to files, the command line in a child process, results to nodes.

Conventions (the library's, see ``TotalRegistratorLib/geometry.py``):

* Volume nodes are written to NRRD by MRML storage nodes and results read back
  the same way, so geometry survives exactly: Slicer holds RAS, the files and
  the library hold LPS, and the storage nodes convert.
* The result transform is the library's pullback (fixed point -> moving point),
  which is Slicer's "transform from parent": put the moving volume (and its
  segmentations) under it and they line up with the fixed volume. Grid
  transforms are set to trilinear interpolation, as ITK applies them.
* The fixed volume is registered where it is shown (a linear parent transform
  is baked into the file's geometry); the moving volume as stored (its parent
  transform is what the result replaces).

Nothing is added to or changed in the scene until a run has finished and all
of its outputs have been read; a failed or cancelled run leaves the scene as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import slicer
import vtk

from .process import ERROR_PREFIX, ProcessRunner, Progress, child_environment, parse_progress

BLOCKS = ("affine", "bone", "thorax", "abdomen", "wholebody")
PRESETS = {  # name -> (cascade blocks, instance-optimisation refinement)
    "Cascade + refinement": (BLOCKS, True),
    "Full cascade": (BLOCKS, False),
    "Affine only": (("affine",), False),
    "Lungs/thorax": (("affine", "thorax"), False),
    "Abdomen": (("affine", "abdomen"), False),
    "Instance optimisation only": ((), True),
}
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_ITERATIONS = (100, 30)  # the library's OptimizationSettings().deformable_iterations (coarse, fine)
# Python packages the library needs besides torch (PyTorch Utils) and SimpleITK (bundled with Slicer):
# import name -> version pinned in constraints.txt
REQUIREMENTS = {"nibabel": "5.4.2", "scipy": "1.17.1", "matplotlib": "3.11.2", "tqdm": "4.70.1"}
MINIMUM_TORCH = "2.4"
MINIMUM_PYTHON = (3, 10)  # the library's requires-python (pyproject.toml); Slicer 5.8 and earlier bundle 3.9
FIXED_REFERENCE = "TotalRegistratorFixed"
MOVING_REFERENCE = "TotalRegistratorMoving"


class RegistrationError(RuntimeError):
    """The command line failed (its one-line message) or an input cannot be registered."""


def library_root() -> Path:
    """The folder holding ``TotalRegistratorLib/`` and ``Resources/weights`` (module folder or source tree)."""
    here = Path(__file__).resolve()
    for root in (here.parents[1], here.parents[2]):
        if (root / "TotalRegistratorLib" / "__init__.py").is_file():
            return root
    raise RegistrationError(f"TotalRegistratorLib not found beside {here.parents[1]}")


def available_blocks() -> tuple[str, ...]:
    """Cascade blocks whose weights ship with the module (``Resources/weights/<block>.pt``)."""
    weights = library_root() / "Resources" / "weights"
    return tuple(b for b in BLOCKS if (weights / f"{b}.pt").is_file())


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` launcher when there is one, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


# --- nodes <-> files --------------------------------------------------------------------------------------------
def ijk_to_ras(node, world: bool = False) -> vtk.vtkMatrix4x4:
    """The volume's IJK-to-RAS matrix; ``world`` includes its (linear) parent transforms."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    parent = node.GetParentTransformNode()
    if world and parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise RegistrationError(f"{node.GetName()}: is under a non-linear transform; harden or remove it first")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        vtk.vtkMatrix4x4.Multiply4x4(to_world, matrix, matrix)
    return matrix


def write_volume(node, path: str | Path, world: bool = False) -> None:
    """Write a scalar volume node to ``path`` (.nrrd, .nii.gz, ...) with its geometry; the node is not changed."""
    copy = slicer.vtkMRMLLabelMapVolumeNode() if node.IsA("vtkMRMLLabelMapVolumeNode") \
        else slicer.vtkMRMLScalarVolumeNode()
    copy.SetAndObserveImageData(node.GetImageData())
    copy.SetIJKToRASMatrix(ijk_to_ras(node, world))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(copy):
        raise RegistrationError(f"{node.GetName()}: cannot write to {path}")


def read_volume(path: str | Path, labels: bool = False):
    """A volume node (not in any scene) read from ``path``."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if labels else slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise RegistrationError(f"{path}: cannot read as a volume")
    return node


def read_transform(path: str | Path):
    """A transform node (not in any scene) read from an ITK transform file; grids interpolate trilinearly."""
    node = slicer.vtkMRMLTransformNode()
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise RegistrationError(f"{path}: cannot read as an ITK transform")
    transform = node.GetTransformFromParent()
    if transform is not None and transform.IsA("vtkOrientedGridTransform"):
        transform.SetInterpolationModeToLinear()  # ITK's DisplacementFieldTransform is trilinear
    return node


def copy_volume(source, target) -> None:
    """Give ``target`` the voxels and geometry of ``source`` (both volume nodes); ``target`` leaves any transform."""
    target.SetAndObserveImageData(source.GetImageData())
    matrix = vtk.vtkMatrix4x4()
    source.GetIJKToRASMatrix(matrix)
    target.SetIJKToRASMatrix(matrix)
    target.SetAndObserveTransformNodeID(None)


def copy_transform(source, target) -> None:
    """Give ``target`` the transform of ``source`` (linear targets take only linear transforms)."""
    if source.IsLinear():
        matrix = vtk.vtkMatrix4x4()
        source.GetMatrixTransformFromParent(matrix)
        target.SetMatrixTransformFromParent(matrix)
    elif target.IsA("vtkMRMLLinearTransformNode"):
        raise RegistrationError(f"{target.GetName()}: a linear transform node cannot hold a deformable result")
    else:
        target.SetAndObserveTransformFromParent(source.GetTransformFromParent())


# --- one run ---------------------------------------------------------------------------------------------------
@dataclass
class RegistrationOutputs:
    """The nodes a finished run filled (None for outputs not asked for)."""

    transform: object
    warped: object = None
    subtractionBefore: object = None
    subtractionAfter: object = None

    def nodes(self) -> list:
        return [n for n in (self.transform, self.warped, self.subtractionBefore, self.subtractionAfter) if n]


@dataclass
class _Request:
    scene: object
    fixed: object
    moving: object
    outputs: dict  # key -> node, True (create) or None; keys: transform, warped, subtractionBefore, subtractionAfter
    folder: Path
    runner: object
    progress: Callable[[Progress], None] | None
    messages: list[str] = field(default_factory=list)


OUTPUT_FILES = {"warped": "warped.nii.gz", "subtractionBefore": "subtraction_before.nii.gz",
                "subtractionAfter": "subtraction_after.nii.gz"}


class Job:
    """A started registration: :meth:`poll` until it returns the outputs, or :meth:`cancel` it."""

    def __init__(self, request: _Request):
        self.request = request
        self.finished = False

    def poll(self) -> RegistrationOutputs | None:
        """None while running; the filled output nodes once finished. Raises :class:`RegistrationError` on failure."""
        if self.finished:
            raise RegistrationError("this registration has already finished")
        r = self.request
        code, lines = r.runner.poll()
        for stream, line in lines:
            progress = parse_progress(line) if stream == "stderr" else None
            if progress is not None:
                if r.progress:
                    r.progress(progress)
            elif line.strip():
                logging.info("TotalRegistrator: %s", line)
                if stream == "stderr":
                    r.messages.append(line)
        if code is None:
            return None
        self.finished = True
        try:
            if code != 0:
                raise RegistrationError(self._error_message(code))
            return self._load()
        finally:
            shutil.rmtree(r.folder, ignore_errors=True)

    def _error_message(self, code: int) -> str:
        errors = [m[len(ERROR_PREFIX):] for m in self.request.messages if m.startswith(ERROR_PREFIX)]
        if errors:
            return errors[-1]
        tail = "\n".join(self.request.messages[-5:])
        return f"registration process failed (exit code {code})" + (f":\n{tail}" if tail else "")

    def cancel(self) -> None:
        """Stop the process and remove its files; the scene is not touched."""
        if not self.finished:
            self.finished = True
            self.request.runner.cancel()
            shutil.rmtree(self.request.folder, ignore_errors=True)

    def _load(self) -> RegistrationOutputs:
        r = self.request
        out = r.folder / "output"
        transform = read_transform(out / "transform.h5")  # read everything before touching the scene
        volumes = {key: read_volume(out / name) for key, name in OUTPUT_FILES.items() if r.outputs[key]}
        target = r.outputs["transform"]
        if target is True:
            node_class = "vtkMRMLLinearTransformNode" if transform.IsLinear() else "vtkMRMLGridTransformNode"
            target = r.scene.AddNewNodeByClass(node_class, f"{r.moving.GetName()} to {r.fixed.GetName()}")
        copy_transform(transform, target)
        filled = {"transform": target}
        names = {"warped": f"{r.moving.GetName()} registered",
                 "subtractionBefore": f"|{r.fixed.GetName()} - {r.moving.GetName()}| before",
                 "subtractionAfter": f"|{r.fixed.GetName()} - {r.moving.GetName()}| after"}
        for key, volume in volumes.items():
            node = r.outputs[key]
            if node is True:
                node = r.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", names[key])
            copy_volume(volume, node)
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            filled[key] = node
        outputs = RegistrationOutputs(**filled)
        for node in outputs.nodes():
            node.SetNodeReferenceID(FIXED_REFERENCE, r.fixed.GetID())
            node.SetNodeReferenceID(MOVING_REFERENCE, r.moving.GetID())
        place_beside(r.scene, r.moving, outputs.nodes())
        return outputs


def resample_labels(node, transform_node, reference) -> None:
    """Replace a segmentation's or label map's voxels by their nearest-neighbour resampling through
    ``transform_node`` onto ``reference``'s grid (in one step), and take the node out of the transform.
    """
    segments = slicer.vtkSlicerSegmentationsModuleLogic
    to_parent = transform_node.GetTransformToParent()
    node.SetAndObserveTransformNodeID(None)
    if not node.IsA("vtkMRMLSegmentationNode"):
        _resample_oriented(node, node, reference, to_parent)
        return
    scene = node.GetScene()
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")  # exporting needs a node in the scene
    try:
        ids = vtk.vtkStringArray()
        node.GetSegmentation().GetSegmentIDs(ids)
        if not segments.ExportSegmentsToLabelmapNode(node, ids, labels):  # on its own grid: no resampling
            raise RegistrationError(f"{node.GetName()}: cannot export its segments")
        _resample_oriented(labels, labels, reference, to_parent)
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        if not segments.ImportLabelmapToSegmentationNode(labels, node, ids):
            raise RegistrationError(f"{node.GetName()}: cannot update its segments")
    finally:
        scene.RemoveNode(labels)


def _resample_oriented(source, target, reference, transform) -> None:
    """``target`` (a label map node) := ``source`` through ``transform`` on ``reference``'s grid, nearest."""
    segments = slicer.vtkSlicerSegmentationsModuleLogic
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            segments.CreateOrientedImageDataFromVolumeNode(source),
            segments.CreateOrientedImageDataFromVolumeNode(reference), resampled, False, False, transform, 0):
        raise RegistrationError(f"{source.GetName()}: cannot resample onto {reference.GetName()}")
    segments.CreateLabelmapVolumeFromOrientedImageData(resampled, target)


def place_beside(scene, reference, nodes: Sequence) -> None:
    """Put ``nodes`` into the subject hierarchy folder (or study) of ``reference``, when it has one."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(reference) if hierarchy else 0
    if not item:
        return
    parent = hierarchy.GetItemParent(item)
    for node in nodes:
        node_item = hierarchy.GetItemByDataNode(node)
        if node_item:
            hierarchy.SetItemParent(node_item, parent)
        else:  # Slicer adds items itself; bare MRML scenes do not
            hierarchy.CreateItem(parent, node)


def check_python(version: Sequence[int] = sys.version_info) -> None:
    """Raise :class:`RegistrationError` when Slicer's Python is older than the library needs."""
    if tuple(version[:2]) < MINIMUM_PYTHON:
        raise RegistrationError(
            f"TotalRegistrator needs Python {'.'.join(map(str, MINIMUM_PYTHON))} or later; this Slicer has Python "
            f"{'.'.join(map(str, version[:3]))}. Use a newer Slicer (5.8 and earlier bundle Python 3.9).")


class RegistrationLogic:
    """Register two volume nodes with the TotalRegistrator command line; usable without any GUI.

    ``runner_factory`` makes the object that runs the command (``start``/``poll``/``cancel``,
    see :class:`~TotalRegistratorSlicer.process.ProcessRunner`); ``python`` is the interpreter it runs.
    """

    def __init__(self, runner_factory: Callable[[], object] = ProcessRunner, python: str | None = None):
        self.runner_factory = runner_factory
        self.python = python or python_executable()

    def command(self, fixed_path, moving_path, output, blocks=None, refine=True, iterations=None, device="auto",
                extraArguments: Sequence[str] = ()) -> list[str]:
        """The ``register`` command line for these settings (``blocks`` None: the library's default)."""
        command = [self.python, "-m", "TotalRegistratorLib", "register", str(fixed_path), str(moving_path),
                   "-o", str(output), "--progress", "json", "--device", device]
        if blocks is not None:
            command += ["--blocks", ",".join(blocks) or "none"]
        if not refine:
            command.append("--no-refine")
        if iterations is not None:
            command += ["--iterations", ",".join(str(int(i)) for i in iterations)]
        return command + [str(a) for a in extraArguments]

    def start(self, fixedVolume, movingVolume, blocks: Sequence[str] | None = None, refine: bool = True,
              iterations: Sequence[int] | None = None, device: str = "auto", outputTransform=None,
              warpedVolume=None, subtractionBefore=None, subtractionAfter=None,
              progress: Callable[[Progress], None] | None = None, extraArguments: Sequence[str] = ()) -> Job:
        """Write the inputs and start the registration in the background; returns the :class:`Job`.

        ``blocks``: cascade blocks to run, a subset of :data:`BLOCKS` (() = instance optimisation
        alone, None = the library's default, ``pipeline.DEFAULT_BLOCKS``). ``refine``: instance-optimisation
        refinement after the cascade, with ``iterations`` = (coarse, fine). ``device``: one of :data:`DEVICES`.
        ``outputTransform`` None creates a transform node (grid, or linear when only the affine block
        runs); the volume outputs take a node to fill, True to create one, or None to skip.
        ``extraArguments`` go to ``totalregistrator register`` as they are (e.g. ``["--spacing", "6"]``).
        """
        self._check(fixedVolume, movingVolume, blocks, refine, device, outputTransform,
                    (warpedVolume, subtractionBefore, subtractionAfter))
        folder = Path(tempfile.mkdtemp(prefix="TotalRegistrator-"))
        try:
            write_volume(fixedVolume, folder / "fixed.nrrd", world=True)
            write_volume(movingVolume, folder / "moving.nrrd")
            runner = self.runner_factory()
            runner.start(self.command(folder / "fixed.nrrd", folder / "moving.nrrd", folder / "output", blocks,
                                      refine, iterations, device, extraArguments),
                         child_environment(str(library_root())))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        outputs = {"transform": outputTransform or True, "warped": warpedVolume,
                   "subtractionBefore": subtractionBefore, "subtractionAfter": subtractionAfter}
        return Job(_Request(fixedVolume.GetScene(), fixedVolume, movingVolume, outputs, folder, runner, progress))

    def register(self, fixedVolume, movingVolume, blocks=None, refine=True, iterations=None, device="auto",
                 outputTransform=None, warpedVolume=None, subtractionBefore=None, subtractionAfter=None,
                 progress=None, extraArguments=(), pollInterval: float = 0.1) -> RegistrationOutputs:
        """Register and wait for the result (arguments as :meth:`start`); returns the filled output nodes."""
        job = self.start(fixedVolume, movingVolume, blocks, refine, iterations, device, outputTransform,
                         warpedVolume, subtractionBefore, subtractionAfter, progress, extraArguments)
        try:
            while (outputs := job.poll()) is None:
                time.sleep(pollInterval)
        except BaseException:
            job.cancel()
            raise
        return outputs

    @staticmethod
    def _check(fixed, moving, blocks, refine, device, transform, volumes) -> None:
        check_python()
        for role, node in (("fixed", fixed), ("moving", moving)):
            if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.GetImageData() is None:
                raise RegistrationError(f"choose a {role} volume with voxels")
        if fixed is moving:
            raise RegistrationError("fixed and moving volume are the same node")
        ijk_to_ras(fixed, world=True)  # refuses non-linear parent transforms
        if blocks is not None and set(blocks) - set(BLOCKS):
            raise RegistrationError(f"unknown blocks {sorted(set(blocks) - set(BLOCKS))}; choose from {BLOCKS}")
        if blocks is not None and not blocks and not refine:
            raise RegistrationError("nothing to run: choose cascade blocks or instance optimisation")
        if device not in DEVICES:
            raise RegistrationError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
        linear = blocks is not None and tuple(blocks) == ("affine",) and not refine
        if transform is not None and not linear and transform.IsA("vtkMRMLLinearTransformNode"):
            raise RegistrationError(f"{transform.GetName()}: a linear transform node cannot hold a deformable "
                                    "result; choose a new or a grid transform node")
        for node in volumes:
            if node in (fixed, moving):
                raise RegistrationError(f"{node.GetName()}: an input volume cannot also be an output")

    @staticmethod
    def applyTransform(transformNode, nodes: Sequence, harden: bool = False) -> None:
        """Put segmentations or label maps of the moving image under ``transformNode``; ``harden`` bakes it in.

        Hardening a result of this module resamples each node once, nearest neighbour, onto the fixed
        volume's grid (as the library warps label maps); other transforms use Slicer's own hardening.
        """
        fixed = transformNode.GetNodeReference(FIXED_REFERENCE)
        transform_logic = slicer.vtkSlicerTransformLogic()
        for node in nodes:
            node.SetAndObserveTransformNodeID(transformNode.GetID())
            if not harden:
                continue
            if fixed is None:
                transform_logic.hardenTransform(node)
            else:
                resample_labels(node, transformNode, fixed)

    def runToEnd(self, command: list[str], pollInterval: float = 0.1, wait: Callable[[], None] | None = None) -> None:
        """Run a command with this logic's runner and wait for it; raises :class:`RegistrationError` on failure.

        ``wait`` is called between polls (e.g. to process GUI events); default: sleep.
        """
        runner = self.runner_factory()
        runner.start(command, child_environment(str(library_root())))
        messages: list[str] = []
        while True:
            code, lines = runner.poll()
            messages += [line for stream, line in lines if stream == "stderr"]
            if code is not None:
                break
            (wait or (lambda: time.sleep(pollInterval)))()
        if code != 0:
            errors = [m[len(ERROR_PREFIX):] for m in messages if m.startswith(ERROR_PREFIX)]
            raise RegistrationError(errors[-1] if errors else "\n".join(messages[-5:]) or f"exit code {code}")

    def makeSamplePair(self, folder: str | Path, seed: int = 0, spacing: float = 4.0,
                       wait: Callable[[], None] | None = None) -> dict[str, Path]:
        """Simulate the demo phantom pair (intra-patient, ``spacing`` mm) into ``folder`` in a child process.

        Returns the paths of ``fixed``, ``moving``, ``fixed_labels``, ``moving_labels`` (NIfTI) and
        ``structures`` (JSON: structure name -> label value).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        code = ("import json, pathlib, sys\n"
                "from TotalRegistratorLib.labels import LABELS\n"
                "from TotalRegistratorLib.pairs import make_pair\n"
                "make_pair('intra', int(sys.argv[1]), spacing=float(sys.argv[2])).write(sys.argv[3], 'phantom')\n"
                "pathlib.Path(sys.argv[3], 'phantom_structures.json').write_text(json.dumps(LABELS))\n")
        self.runToEnd([self.python, "-c", code, str(seed), str(spacing), str(folder)], wait=wait)
        paths = {key: folder / f"phantom_{key}.nii.gz" for key in ("fixed", "moving", "fixed_labels", "moving_labels")}
        return {**paths, "structures": folder / "phantom_structures.json"}

    @staticmethod
    def loadSamplePair(scene, paths: dict[str, Path]) -> dict[str, object]:
        """Add the phantom pair to ``scene``: two CT volumes and the moving image's structures as a segmentation."""
        nodes = {}
        for key in ("fixed", "moving"):
            volume = read_volume(paths[key])
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"Phantom {key}")
            copy_volume(volume, node)
            node.CreateDefaultDisplayNodes()
            nodes[key] = node
        labels = read_volume(paths["moving_labels"], labels=True)
        labels_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Phantom moving labels")
        copy_volume(labels, labels_node)
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Phantom moving structures")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(nodes["moving"])
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels_node, segmentation)
        scene.RemoveNode(labels_node)
        names = {value: name for name, value in json.loads(Path(paths["structures"]).read_text()).items()}
        for index in range(segmentation.GetSegmentation().GetNumberOfSegments()):
            segment = segmentation.GetSegmentation().GetNthSegment(index)
            segment.SetName(names.get(segment.GetLabelValue(), segment.GetName()))
        nodes["segmentation"] = segmentation
        return nodes
