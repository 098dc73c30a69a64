"""The Slicer module's logic against real MRML nodes: geometry, transforms, segmentations, runs, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="needs slicer-core: run `.venv-slicer/bin/python -m pytest "
                                               "Testing/slicer_logic` (make test builds .venv-slicer)")
import vtk  # noqa: E402
from TotalRegistratorSlicer import logic as L  # noqa: E402
from TotalRegistratorSlicer.process import Progress  # noqa: E402

from TotalRegistratorLib import io, metrics  # noqa: E402
from TotalRegistratorLib.registration import resample_moving  # noqa: E402

LPS = np.diag([-1.0, -1.0, 1.0])
FAST = ["--spacing", "8", "--affine-iterations", "4,2"]


def matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def add_volume(scene, image: sitk.Image, name: str, labels: bool = False):
    """A volume node made from a SimpleITK image through a file (as a user's loaded volume)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/{name}.nrrd"
        sitk.WriteImage(image, path)
        node = L.read_volume(path, labels)
    scene.AddNode(node)
    node.SetName(name)
    node.CreateDefaultDisplayNodes()
    return node


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_oblique_volume_round_trips_with_identical_geometry(scene, tmp_path):
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ np.diag([0.8, 1.3, 2.5])
    ijk_to_ras[:3, 3] = (12.5, -40.0, 7.25)
    voxels = rng.normal(size=(7, 6, 5)).astype(np.float32)  # K, J, I
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique")
    slicer.util.updateVolumeFromArray(node, voxels)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    L.write_volume(node, tmp_path / "v.nrrd")

    image = io.read_image(tmp_path / "v.nrrd")  # the library's image: LPS
    direction = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    np.testing.assert_allclose(direction, LPS @ ijk_to_ras[:3, :3], atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), LPS @ ijk_to_ras[:3, 3], atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels)

    io.write_image(image, tmp_path / "back.nii.gz")  # and back through the library's writer
    back = L.read_volume(tmp_path / "back.nii.gz")
    np.testing.assert_allclose(matrix(back), ijk_to_ras, atol=1e-5)  # NIfTI stores float32
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), voxels)
    assert matrix(node).tolist() == ijk_to_ras.tolist(), "writing must not change the node"


def test_transform_node_maps_points_as_simpleitk(tmp_path):
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    field = sitk.GetImageFromArray(rng.normal(scale=4.0, size=(9, 8, 7, 3)), isVector=True)
    field.SetSpacing((6.0, 7.0, 8.0))
    field.SetOrigin((-20.0, -25.0, -30.0))
    field.SetDirection(rotation.ravel())
    centre = np.array(field.TransformContinuousIndexToPhysicalPoint((3.0, 3.5, 4.0)))
    dense = sitk.DisplacementFieldTransform(field)
    affine = sitk.AffineTransform(np.eye(3).ravel() + rng.normal(scale=0.05, size=9), (3.0, -4.0, 5.0), (1, 2, 3))
    points = centre + rng.uniform(-15, 15, size=(50, 3))  # LPS, inside the field
    for transform, linear in ((dense, False), (affine, True)):
        io.write_transform(transform, tmp_path / "t.h5")
        node = L.read_transform(tmp_path / "t.h5")
        assert bool(node.IsLinear()) == linear
        from_parent = node.GetTransformFromParent()
        for p in points:
            ras = from_parent.TransformPoint(LPS @ p)
            np.testing.assert_allclose(LPS @ np.array(ras), transform.TransformPoint(p), atol=1e-4)


def dice_mean(fixed_labels: np.ndarray, warped: np.ndarray) -> float:
    labels = sorted(set(np.unique(fixed_labels).tolist()) - {0})
    return float(np.nanmean(list(metrics.dice(fixed_labels, warped, labels).values())))


def test_hardened_segmentation_overlaps_as_the_library_warp(scene, tmp_path, phantom_pair):
    pair = phantom_pair
    io.write_transform(pair.transform(), tmp_path / "truth.h5")
    transform_node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "truth")
    L.copy_transform(L.read_transform(tmp_path / "truth.h5"), transform_node)
    fixed = add_volume(scene, pair.fixed, "fixed")
    transform_node.SetNodeReferenceID(L.FIXED_REFERENCE, fixed.GetID())  # as a registration result
    labels = add_volume(scene, pair.moving_labels, "moving labels", labels=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "moving structures")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    labelmap_copy = add_volume(scene, pair.moving_labels, "moving labels hardened", labels=True)

    L.RegistrationLogic.applyTransform(transform_node, [segmentation, labelmap_copy], harden=True)
    assert segmentation.GetParentTransformNode() is None  # hardened

    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentation().GetSegmentIDs(ids)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, exported, fixed)
    L.write_volume(exported, tmp_path / "exported.nrrd")
    slicer_warped = sitk.ReadImage(str(tmp_path / "exported.nrrd"))
    # segment i was imported from label value i; the export numbers segments 1..n in the same order
    values = sorted(set(np.unique(sitk.GetArrayFromImage(pair.moving_labels)).tolist()) - {0})
    slicer_array = np.take(np.array([0, *values]), sitk.GetArrayFromImage(slicer_warped))

    fixed_array = sitk.GetArrayFromImage(pair.fixed_labels)
    library = sitk.GetArrayFromImage(resample_moving(pair.moving_labels, pair.fixed, pair.transform(), labels=True))
    before = sitk.GetArrayFromImage(resample_moving(pair.moving_labels, pair.fixed, labels=True))
    ours, theirs = dice_mean(fixed_array, slicer_array), dice_mean(fixed_array, library)
    assert theirs > dice_mean(fixed_array, before) + 0.1  # the truth aligns the structures
    assert abs(ours - theirs) < 0.01, (ours, theirs)

    assert labelmap_copy.GetParentTransformNode() is None
    L.write_volume(labelmap_copy, tmp_path / "labelmap.nrrd")
    labelmap = sitk.ReadImage(str(tmp_path / "labelmap.nrrd"))
    assert labelmap.GetSize() == pair.fixed.GetSize()
    assert abs(dice_mean(fixed_array, sitk.GetArrayFromImage(labelmap)) - theirs) < 0.01


class ScriptedRunner:
    """A runner that replays given output lines and exit code, with no process."""

    def __init__(self, lines, code):
        self.lines, self.code, self.command, self.cancelled = lines, code, None, False

    def start(self, command, env=None):
        self.command = command

    def poll(self):
        lines, self.lines = self.lines, []
        return (self.code if not lines else None), lines

    def cancel(self):
        self.cancelled = True


def test_injected_runner_reports_progress_and_errors(scene, phantom_pair):
    fixed = add_volume(scene, phantom_pair.fixed, "fixed")
    moving = add_volume(scene, phantom_pair.moving, "moving")
    before = node_ids(scene)
    runner = ScriptedRunner([("stderr", '{"stage": "affine", "done": 3, "total": 8}'), ("stdout", "noise"),
                             ("stderr", "totalregistrator: error: moving.nrrd: image is constant (0 everywhere)")], 2)
    logic = L.RegistrationLogic(runner_factory=lambda: runner, python="python3")
    seen = []
    with pytest.raises(L.RegistrationError, match="image is constant"):
        logic.register(fixed, moving, blocks=("affine", "thorax"), refine=False, iterations=(7, 3), device="cpu",
                       progress=seen.append, pollInterval=0)
    assert seen == [Progress("affine", 3, 8)]
    command = runner.command
    assert command[1:4] == ["-m", "TotalRegistratorLib", "register"]
    assert command[command.index("--blocks") + 1] == "affine,thorax" and "--no-refine" in command
    assert command[command.index("--iterations") + 1] == "7,3"
    assert command[command.index("--device") + 1] == "cpu"
    assert node_ids(scene) == before
    with pytest.raises(L.RegistrationError, match="nothing to run"):
        logic.start(fixed, moving, blocks=(), refine=False)
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    with pytest.raises(L.RegistrationError, match="linear transform node"):
        logic.start(fixed, moving, blocks=(), outputTransform=linear)


def test_register_produces_requested_nodes_with_fixed_geometry(scene, phantom_pair, one_thread_children):
    fixed = add_volume(scene, phantom_pair.fixed, "fixed")
    moving = add_volume(scene, phantom_pair.moving, "moving")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    study = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "follow-up")
    hierarchy.CreateItem(study, moving)
    stages = []
    outputs = L.RegistrationLogic().register(fixed, moving, blocks=(), iterations=(4, 2), device="cpu",
                                             warpedVolume=True, subtractionBefore=True, subtractionAfter=True,
                                             progress=stages.append, extraArguments=FAST)
    assert {p.stage for p in stages} >= {"affine", "deformable"}
    assert outputs.transform.IsA("vtkMRMLGridTransformNode") and not outputs.transform.IsLinear()
    for node in outputs.nodes():
        assert scene.IsNodePresent(node)
        assert node.GetNodeReferenceID(L.FIXED_REFERENCE) == fixed.GetID()
        assert node.GetNodeReferenceID(L.MOVING_REFERENCE) == moving.GetID()
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    for node in (outputs.warped, outputs.subtractionBefore, outputs.subtractionAfter):
        np.testing.assert_allclose(matrix(node), matrix(fixed), atol=1e-4)
        assert node.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    after = slicer.util.arrayFromVolume(outputs.subtractionAfter).mean()
    assert after < slicer.util.arrayFromVolume(outputs.subtractionBefore).mean()


def test_cancel_leaves_the_scene_unchanged(scene, phantom_pair, one_thread_children):
    fixed = add_volume(scene, phantom_pair.fixed, "fixed")
    moving = add_volume(scene, phantom_pair.moving, "moving")
    before = node_ids(scene)
    runners = []

    def factory():
        runners.append(L.ProcessRunner())
        return runners[-1]

    started = []
    job = L.RegistrationLogic(runner_factory=factory).start(
        fixed, moving, blocks=(), device="cpu", warpedVolume=True, subtractionAfter=True, progress=started.append,
        extraArguments=FAST)
    for _ in range(600):
        if started or job.poll() is not None:
            break
        import time

        time.sleep(0.05)
    assert started, "the process reported no progress"
    job.cancel()
    assert runners[0].process.poll() is not None
    assert not job.request.folder.exists()
    assert node_ids(scene) == before
    assert scene.GetNumberOfNodes() == len(before)


def test_process_error_is_reported(scene, phantom_pair, one_thread_children):
    fixed = add_volume(scene, phantom_pair.fixed, "fixed")
    flat = sitk.Image(phantom_pair.moving.GetSize(), sitk.sitkFloat32)
    flat.CopyInformation(phantom_pair.moving)
    moving = add_volume(scene, flat, "flat")
    before = node_ids(scene)
    with pytest.raises(L.RegistrationError, match="constant"):
        L.RegistrationLogic().register(fixed, moving, blocks=(), device="cpu")
    assert node_ids(scene) == before


def test_affine_only_gives_a_linear_transform_node(scene, phantom_pair, one_thread_children, tmp_path):
    from TotalRegistratorLib.cascade import block_config, build_network, save_block

    config = block_config("affine", size=(32, 24, 40))  # untrained: tests the plumbing, not accuracy
    save_block(tmp_path / "affine.pt", build_network(config), config)
    fixed = add_volume(scene, phantom_pair.fixed, "fixed")
    moving = add_volume(scene, phantom_pair.moving, "moving")
    outputs = L.RegistrationLogic().register(fixed, moving, blocks=("affine",), refine=False, device="cpu",
                                             extraArguments=["--weights", str(tmp_path)])
    assert outputs.transform.IsA("vtkMRMLLinearTransformNode")


def test_sample_pair_loads_with_named_structures(scene, tmp_path, one_thread_children):
    logic = L.RegistrationLogic()
    paths = logic.makeSamplePair(tmp_path, seed=2, spacing=12.0)
    nodes = logic.loadSamplePair(scene, paths)
    fixed = sitk.ReadImage(str(paths["fixed"]))
    assert nodes["fixed"].GetImageData().GetDimensions() == fixed.GetSize()
    np.testing.assert_allclose(matrix(nodes["fixed"])[:3, 3], LPS @ np.array(fixed.GetOrigin()), atol=1e-4)
    segmentation = nodes["segmentation"].GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    assert {"liver", "lung", "vertebrae"} <= names
    assert not list(tmp_path.glob("*.partial-*"))


def test_fixed_volume_is_written_where_it_is_shown(scene, tmp_path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fixed")
    slicer.util.updateVolumeFromArray(node, np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = np.eye(4)
    to_parent[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    to_parent[:3, 3] = (5, 6, 7)
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    node.SetAndObserveTransformNodeID(parent.GetID())
    L.write_volume(node, tmp_path / "world.nrrd", world=True)
    L.write_volume(node, tmp_path / "local.nrrd")
    np.testing.assert_allclose(matrix(L.read_volume(tmp_path / "world.nrrd")), to_parent @ matrix(node), atol=1e-9)
    np.testing.assert_allclose(matrix(L.read_volume(tmp_path / "local.nrrd")), matrix(node), atol=1e-9)

    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    parent.SetAndObserveTransformNodeID(grid.GetID())
    grid.SetAndObserveTransformFromParent(L.read_transform(_field_file(tmp_path)).GetTransformFromParent())
    with pytest.raises(L.RegistrationError, match="non-linear"):
        L.write_volume(node, tmp_path / "world.nrrd", world=True)


def _field_file(folder):
    field = sitk.Image((4, 4, 4), sitk.sitkVectorFloat64, 3)
    io.write_transform(sitk.DisplacementFieldTransform(field), folder / "zero.h5")
    return folder / "zero.h5"


def test_an_old_slicer_python_is_refused_with_the_reason():
    L.check_python((3, 10, 0))
    with pytest.raises(L.RegistrationError, match=r"needs Python 3\.10 or later; this Slicer has Python 3\.9\.10"):
        L.check_python((3, 9, 10))
