"""Harden against real MRML: each segment exactly, label maps nearest, no node left behind, no change on
failure, and the same voxels as ITK's nearest-neighbour warp of the library's transform."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="needs slicer-core: run `.venv-slicer/bin/python -m pytest "
                                               "Testing/slicer_logic` (make test builds .venv-slicer)")
import vtk  # noqa: E402
from doubles import add_volume, node_census  # noqa: E402
from TotalRegistratorSlicer import harden, nodes  # noqa: E402
from TotalRegistratorSlicer.job import FIXED_REFERENCE  # noqa: E402
from TotalRegistratorSlicer.logic import RegistrationLogic  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

SHIFT_RAS = np.array([4.0, 2.0, 6.0])  # the test transform: to parent, mm (whole voxels of 2 mm)


def volume(scene, name: str, voxels: np.ndarray, labels: bool = False):
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labels else "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, voxels)
    node.SetSpacing(2, 2, 2)
    node.SetOrigin(-10, 20, 5)
    return node


def segment_voxels(segmentation, name: str) -> tuple[int, np.ndarray]:
    """(voxel count, RAS centroid) of one segment, read from its own label value in its layer."""
    segment = segmentation.GetSegmentation().GetSegment(segmentation.GetSegmentation().GetSegmentIdBySegmentName(name))
    image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    extent = image.GetExtent()
    shape = [extent[2 * i + 1] - extent[2 * i] + 1 for i in range(3)]
    voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape[::-1])
    ijk = np.argwhere(voxels == segment.GetLabelValue())[:, ::-1] + np.array(extent[::2])
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    world = slicer.util.arrayFromVTKMatrix(m)
    return len(ijk), (world[:3, :3] @ ijk.T).T.mean(axis=0) + world[:3, 3]


@pytest.fixture
def setup(scene):
    """A fixed volume, a shift transform from it, and a segmentation of two overlapping cubes."""
    fixed = volume(scene, "fixed", np.zeros((20, 22, 24), np.float32))
    transform = scene.AddNewNodeByClass("vtkMRMLTransformNode", "result")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(
        np.block([[np.eye(3), SHIFT_RAS[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])))
    transform.SetNodeReferenceID(FIXED_REFERENCE, fixed.GetID())
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "structures")
    segmentation.CreateDefaultDisplayNodes()
    for name, corner, size in (("a", 4, 5), ("b", 6, 6)):  # b overlaps a in 3 x 3 x 3 voxels
        cube = np.zeros((20, 22, 24), np.uint8)
        cube[corner:corner + size, corner:corner + size, corner:corner + size] = 1
        labels = slicer.vtkMRMLLabelMapVolumeNode()  # never in the scene
        slicer.util.updateVolumeFromArray(labels, cube)
        labels.SetSpacing(2, 2, 2)
        labels.SetOrigin(-10, 20, 5)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
        segmentation.GetSegmentation().GetNthSegment(segmentation.GetSegmentation().GetNumberOfSegments() - 1
                                                     ).SetName(name)
    return fixed, transform, segmentation


def test_harden_keeps_each_overlapping_segment_exactly(scene, setup):
    fixed, transform, segmentation = setup
    before = {name: segment_voxels(segmentation, name) for name in "ab"}
    labels_before = [segmentation.GetSegmentation().GetNthSegment(i).GetLabelValue() for i in range(2)]
    census = node_census(scene)
    RegistrationLogic.applyTransform(transform, [segmentation], hardenNodes=True)
    assert segmentation.GetParentTransformNode() is None
    assert node_census(scene) == census, "harden left nodes behind (color tables, label maps)"
    for name in "ab":
        count, centroid = segment_voxels(segmentation, name)
        assert count == before[name][0] == {"a": 125, "b": 216}[name]
        np.testing.assert_allclose(centroid, before[name][1] + SHIFT_RAS, atol=1e-9)
    assert [segmentation.GetSegmentation().GetNthSegment(i).GetLabelValue() for i in range(2)] == labels_before


def test_a_failing_harden_leaves_the_segmentation_untouched(scene, setup, monkeypatch):
    fixed, transform, segmentation = setup
    before = {name: segment_voxels(segmentation, name) for name in "ab"}
    calls = []

    def fail_second(image, reference, to_parent, name):
        calls.append(name)
        if len(calls) == 2:
            raise nodes.NodeError(f"{name}: cannot resample onto the fixed grid")
        return original(image, reference, to_parent, name)

    original = harden._resample
    monkeypatch.setattr(harden, "_resample", fail_second)
    with pytest.raises(nodes.NodeError, match="segment b"):
        RegistrationLogic.applyTransform(transform, [segmentation], hardenNodes=True)
    assert segmentation.GetParentTransformNode() is None  # never put under the transform
    for name in "ab":
        count, centroid = segment_voxels(segmentation, name)
        assert count == before[name][0] and centroid.tolist() == before[name][1].tolist()


def test_a_label_map_is_resampled_nearest_onto_the_fixed_grid(scene, setup):
    fixed, transform, _ = setup
    rng = np.random.default_rng(0)
    values = rng.choice([0, 3, 7, 300], size=(20, 22, 24)).astype(np.int16)
    labels = volume(scene, "labels", values, labels=True)
    census = node_census(scene)
    RegistrationLogic.applyTransform(transform, [labels], hardenNodes=True)
    assert node_census(scene) == census and labels.GetParentTransformNode() is None
    hardened = slicer.util.arrayFromVolume(labels)
    assert hardened.shape == slicer.util.arrayFromVolume(fixed).shape
    assert set(np.unique(hardened)) <= {0, 3, 7, 300}  # nearest neighbour: no blended values
    # the volumes' axes are R, A, S with 2 mm voxels: the shift is (2, 1, 3) voxels along I, J, K
    np.testing.assert_array_equal(hardened[3:, 1:, 2:], values[:-3, :-1, :-2])
    assert not hardened[:3].any() and not hardened[:, :1].any() and not hardened[:, :, :2].any()


def test_hardened_phantom_structures_match_itk_nearest_warp(scene, phantom):
    fixed = add_volume(scene, phantom["fixed"], "fixed")
    truth = sitk.ReadTransform(str(phantom["transform"]))
    transform = scene.AddNewNodeByClass("vtkMRMLTransformNode", "truth")
    nodes.copy_transform(nodes.read_transform(phantom["transform"]), transform)
    transform.SetNodeReferenceID(FIXED_REFERENCE, fixed.GetID())
    labels = add_volume(scene, phantom["moving_labels"], "moving labels", labels=True)
    RegistrationLogic.applyTransform(transform, [labels], hardenNodes=True)
    ours = slicer.util.arrayFromVolume(labels)
    itk = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(phantom["moving_labels"])),
                                               sitk.ReadImage(str(phantom["fixed"])), truth, sitk.sitkNearestNeighbor))
    assert ours.shape == itk.shape
    assert np.mean(ours == itk) > 0.995  # ties at voxel borders may round either way
    for value in set(np.unique(itk).tolist()) - {0}:
        assert abs(int((ours == value).sum()) - int((itk == value).sum())) <= 0.02 * (itk == value).sum() + 2
