"""Runs of the real command line in a child process: results, the untrained affine block, errors, cancel,
and the sample pair."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="needs slicer-core: run `.venv-slicer/bin/python -m pytest "
                                               "Testing/slicer_logic` (make test builds .venv-slicer)")
import vtk  # noqa: E402
from doubles import LPS, add_volume, matrix, node_census  # noqa: E402
from TotalRegistratorSlicer import sample  # noqa: E402
from TotalRegistratorSlicer.job import RegistrationError  # noqa: E402
from TotalRegistratorSlicer.library import registry  # noqa: E402
from TotalRegistratorSlicer.logic import RegistrationLogic  # noqa: E402
from TotalRegistratorSlicer.parameters import RegistrationParameters  # noqa: E402
from TotalRegistratorSlicer.runner import SubprocessRunner  # noqa: E402

FAST = ("--spacing", "8", "--affine-iterations", "4,2")
QUICK = RegistrationParameters(blocks=(), iterations=(4, 2), device="cpu", extraArguments=FAST)


@pytest.fixture
def pair(scene, phantom):
    return add_volume(scene, phantom["fixed"], "fixed"), add_volume(scene, phantom["moving"], "moving")


def test_register_fills_the_requested_nodes_on_the_fixed_grid(scene, pair, one_thread_children, tmp_path):
    fixed, moving = pair
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "follow-up")
    hierarchy.CreateItem(study, moving)
    stages = []
    outputs = RegistrationLogic(temporary=tmp_path).register(fixed, moving, QUICK, warpedVolume=True,
                                                             subtractionVolumes=True, progress=stages.append)
    assert {p.stage for p in stages} >= {"affine", "deformable"}
    assert not outputs.transform.IsLinear() and moving.GetParentTransformNode() is None
    for node in outputs.nodes():
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    for node in (outputs.warped, outputs.subtractionBefore, outputs.subtractionAfter):
        np.testing.assert_allclose(matrix(node), matrix(fixed), atol=1e-4)
    after = slicer.util.arrayFromVolume(outputs.subtractionAfter).mean()
    assert after < slicer.util.arrayFromVolume(outputs.subtractionBefore).mean()
    assert not list(tmp_path.iterdir()), "the job folder was left behind"


def test_the_untrained_affine_block_maps_a_shifted_copy_back(scene, phantom, one_thread_children, tmp_path):
    """An untrained affine block is the identity between the two body boxes; the moving volume is the fixed one
    moved by whole voxels, so the result is exactly that shift (fixed point -> moving point, LPS)."""
    from TotalRegistratorLib.learned.cascade import block_config, build_network, save_block

    config = block_config("affine", size=(32, 24, 40))
    save_block(tmp_path / "affine.pt", build_network(config), config)
    image = sitk.ReadImage(str(phantom["fixed"]))
    offset = np.array([2.0, -3.0, 1.0]) * np.array(image.GetSpacing())  # LPS mm, whole voxels
    shifted = sitk.Image(image)
    shifted.SetOrigin(tuple(np.array(image.GetOrigin()) + offset))
    fixed, moving = add_volume(scene, image, "fixed"), add_volume(scene, shifted, "moving")
    parameters = RegistrationParameters(blocks=("affine",), refine=False, device="cpu",
                                        extraArguments=("--weights", str(tmp_path)))
    transform = RegistrationLogic(temporary=tmp_path / "jobs").register(fixed, moving, parameters).transform
    assert transform.IsLinear() and moving.GetParentTransformNode() is transform
    from_parent = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformFromParent(from_parent)
    expected = np.eye(4)
    expected[:3, 3] = LPS @ offset
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(from_parent), expected, atol=1e-3)


def test_an_error_of_the_command_line_is_its_one_line_message(scene, pair, one_thread_children, phantom):
    fixed, _ = pair
    flat = sitk.Image(sitk.ReadImage(str(phantom["moving"])).GetSize(), sitk.sitkFloat32)
    flat.CopyInformation(sitk.ReadImage(str(phantom["moving"])))
    moving = add_volume(scene, flat, "flat")
    before = node_census(scene)
    with pytest.raises(RegistrationError, match="constant") as error:
        RegistrationLogic().register(fixed, moving, QUICK)
    assert registry.ERROR_PREFIX not in str(error.value) and "\n" not in str(error.value)
    assert node_census(scene) == before


def test_cancel_kills_the_running_process(scene, pair, one_thread_children, tmp_path):
    fixed, moving = pair
    before, runners = node_census(scene), []

    def factory():
        runners.append(SubprocessRunner())
        return runners[-1]

    started = []
    job = RegistrationLogic(runner_factory=factory, temporary=tmp_path).start(
        fixed, moving, QUICK, warpedVolume=True, progress=started.append)
    deadline = time.monotonic() + 60
    while not started and time.monotonic() < deadline:
        assert job.poll() is None
        job.wait(0.5)
    assert started, "the process reported no progress"
    job.cancel()
    assert runners[0].process.poll() is not None
    assert not job.folder.exists() and node_census(scene) == before


def test_the_sample_pair_comes_from_the_phantom_subcommand(scene, one_thread_children, tmp_path):
    logic = RegistrationLogic(temporary=tmp_path)
    census = node_census(scene)
    nodes = sample.load_phantom_pair(logic, scene, sample.Recipe(seed=2, spacing=12.0))
    assert not list(tmp_path.iterdir()), "the phantom's folder was left behind"
    reference = tmp_path / "check"
    paths = sample.make_phantom_pair(logic, sample.Recipe(seed=2, spacing=12.0), reference)
    fixed = sitk.ReadImage(str(paths["fixed"]))
    assert nodes["fixed"].GetImageData().GetDimensions() == fixed.GetSize()
    np.testing.assert_allclose(matrix(nodes["fixed"])[:3, 3], LPS @ np.array(fixed.GetOrigin()), atol=1e-4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["moving"]),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(paths["moving"]))))
    segmentation = nodes["segmentation"].GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegment(i).GetLabelValue()
             for i in range(segmentation.GetNumberOfSegments())}
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["moving_labels"])))
    assert names == {name: value for name, value in registry.LABELS.items() if (labels == value).any()}
    added = sorted(set(node_census(scene)) - set(census))
    assert [cls for cls, _ in added if "Display" not in cls and "Storage" not in cls] == \
        ["vtkMRMLScalarVolumeNode", "vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"], added
