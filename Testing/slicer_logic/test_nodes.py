"""Node I/O against real MRML: exact volume geometry, transforms that map as SimpleITK, also after a scene
is saved and reloaded."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="needs slicer-core: run `.venv-slicer/bin/python -m pytest "
                                               "Testing/slicer_logic` (make test builds .venv-slicer)")
from doubles import LPS, matrix, ras_point  # noqa: E402
from TotalRegistratorSlicer import nodes  # noqa: E402


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
    nodes.write_volume(node, tmp_path / "v.nrrd")

    image = sitk.ReadImage(str(tmp_path / "v.nrrd"))  # what the library reads: LPS
    direction = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    np.testing.assert_allclose(direction, LPS @ ijk_to_ras[:3, :3], atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), LPS @ ijk_to_ras[:3, 3], atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels)

    sitk.WriteImage(image, str(tmp_path / "back.nii.gz"))  # and back, as the library writes its outputs
    back = nodes.read_volume(tmp_path / "back.nii.gz")
    np.testing.assert_allclose(matrix(back), ijk_to_ras, atol=1e-5)  # NIfTI stores float32
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), voxels)
    assert matrix(node).tolist() == ijk_to_ras.tolist(), "writing must not change the node"


def random_field(seed: int = 1) -> tuple[sitk.DisplacementFieldTransform, np.ndarray]:
    """A rough oblique displacement field (4 mm noise) and 50 LPS points inside it."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    field = sitk.GetImageFromArray(rng.normal(scale=4.0, size=(9, 8, 7, 3)), isVector=True)
    field.SetSpacing((6.0, 7.0, 8.0))
    field.SetOrigin((-20.0, -25.0, -30.0))
    field.SetDirection(rotation.ravel())
    centre = np.array(field.TransformContinuousIndexToPhysicalPoint((3.0, 3.5, 4.0)))
    return sitk.DisplacementFieldTransform(field), centre + rng.uniform(-15, 15, size=(50, 3))


def test_transform_node_maps_points_as_simpleitk(tmp_path):
    dense, points = random_field()
    rng = np.random.default_rng(2)
    affine = sitk.AffineTransform(np.eye(3).ravel() + rng.normal(scale=0.05, size=9), (3.0, -4.0, 5.0), (1, 2, 3))
    for transform, linear in ((dense, False), (affine, True)):
        sitk.WriteTransform(transform, str(tmp_path / "t.h5"))
        node = nodes.read_transform(tmp_path / "t.h5")
        assert bool(node.IsLinear()) == linear
        for p in points:
            np.testing.assert_allclose(ras_point(node, p), transform.TransformPoint(p), atol=1e-3)


@pytest.mark.parametrize("observed", [True, False])
def test_a_saved_and_reloaded_scene_maps_points_as_simpleitk(scene, tmp_path, observed):
    dense, points = random_field(3)
    sitk.WriteTransform(dense, str(tmp_path / "result.h5"))
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "result")
    nodes.copy_transform(nodes.read_transform(tmp_path / "result.h5"), node)
    node.AddDefaultStorageNode()
    node.GetStorageNode().SetFileName(str(tmp_path / "saved.h5"))
    assert node.GetStorageNode().WriteData(node)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    reopened = slicer.vtkMRMLScene()
    if observed:  # as the module does in Slicer for every scene load
        nodes.observe_scene_loads(reopened)
    reopened.SetURL(str(tmp_path / "scene.mrml"))
    assert reopened.Import()
    loaded = slicer.util.getFirstNodeByClassByName("vtkMRMLTransformNode", "result", reopened)
    errors = [np.linalg.norm(ras_point(loaded, p) - dense.TransformPoint(p)) for p in points]
    if observed:
        assert max(errors) < 0.1
    else:  # Slicer's reader alone makes the grid cubic: what the observer undoes
        assert max(errors) > 0.5
    reopened.Clear(1)


def test_fixed_volume_is_written_where_it_is_shown(scene, tmp_path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fixed")
    slicer.util.updateVolumeFromArray(node, np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = np.eye(4)
    to_parent[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    to_parent[:3, 3] = (5, 6, 7)
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    node.SetAndObserveTransformNodeID(parent.GetID())
    nodes.write_volume(node, tmp_path / "world.nrrd", world=True)
    nodes.write_volume(node, tmp_path / "local.nrrd")
    np.testing.assert_allclose(matrix(nodes.read_volume(tmp_path / "world.nrrd")), to_parent @ matrix(node),
                               atol=1e-9)
    np.testing.assert_allclose(matrix(nodes.read_volume(tmp_path / "local.nrrd")), matrix(node), atol=1e-9)

    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    parent.SetAndObserveTransformNodeID(grid.GetID())
    sitk.WriteTransform(random_field()[0], str(tmp_path / "field.h5"))
    grid.SetAndObserveTransformFromParent(nodes.read_transform(tmp_path / "field.h5").GetTransformFromParent())
    with pytest.raises(nodes.NodeError, match="non-linear"):
        nodes.write_volume(node, tmp_path / "world.nrrd", world=True)
