"""MRML nodes to files and back, with exact geometry.

* Volume nodes are written to NRRD and read back by MRML storage nodes: Slicer
  holds RAS, the files and the library hold LPS, and the storage nodes convert.
* The result transform is the library's pullback (fixed point -> moving
  point), Slicer's "transform from parent". Its grid interpolates trilinearly,
  as ITK applies it; Slicer's reader makes every loaded grid cubic, so the
  nodes we fill carry :data:`LINEAR_ATTRIBUTE` and :func:`observe_scene_loads`
  puts them back to trilinear whenever a scene is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import slicer
import vtk

LINEAR_ATTRIBUTE = "TotalRegistrator.LinearGrid"  # "1" on transform nodes whose grids must stay trilinear


class NodeError(RuntimeError):
    """A node cannot be written, read or filled (the message names it)."""


def ijk_to_ras(node, world: bool = False) -> vtk.vtkMatrix4x4:
    """The volume's IJK-to-RAS matrix; ``world`` includes its (linear) parent transforms."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    parent = node.GetParentTransformNode()
    if world and parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise NodeError(f"{node.GetName()}: is under a non-linear transform; harden or remove it first")
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
        raise NodeError(f"{node.GetName()}: cannot write to {path}")


def read_volume(path: str | Path, labels: bool = False):
    """A volume node (not in any scene) read from ``path``."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if labels else slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise NodeError(f"{path}: cannot read as a volume")
    return node


def read_transform(path: str | Path):
    """A transform node (not in any scene) read from an ITK transform file; grids interpolate trilinearly."""
    node = slicer.vtkMRMLTransformNode()
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise NodeError(f"{path}: cannot read as an ITK transform")
    linear_grids(node)
    return node


def linear_grids(node) -> int:
    """Set every grid transform of ``node`` (also inside a composite) to trilinear; returns how many changed."""
    changed, todo = 0, [node.GetTransformFromParent()]
    while todo:
        current = todo.pop()
        if current is None:
            continue
        if current.IsA("vtkGeneralTransform"):
            todo += [current.GetConcatenatedTransform(i) for i in range(current.GetNumberOfConcatenatedTransforms())]
        elif current.IsA("vtkOrientedGridTransform") and current.GetInterpolationMode() != vtk.VTK_LINEAR_INTERPOLATION:
            current.SetInterpolationModeToLinear()
            changed += 1
    if changed:
        node.Modified()
    return changed


def observe_scene_loads(scene) -> int:
    """After every scene load, put the grids of :data:`LINEAR_ATTRIBUTE` nodes back to trilinear.

    Returns the observer's tag (``scene.RemoveObserver(tag)`` stops it).
    """
    def relinearize(caller, _event) -> None:
        for node in (caller.GetNthNode(i) for i in range(caller.GetNumberOfNodes())):  # not slicer.util's
            if node.IsA("vtkMRMLTransformNode") and node.GetAttribute(LINEAR_ATTRIBUTE) == "1":  # slicer.mrmlScene
                linear_grids(node)

    return scene.AddObserver(slicer.vtkMRMLScene.EndImportEvent, relinearize)


def copy_volume(source, target) -> None:
    """Give ``target`` the voxels and geometry of ``source`` (both volume nodes); ``target`` leaves any transform."""
    target.SetAndObserveImageData(source.GetImageData())
    matrix = vtk.vtkMatrix4x4()
    source.GetIJKToRASMatrix(matrix)
    target.SetIJKToRASMatrix(matrix)
    target.SetAndObserveTransformNodeID(None)


def copy_transform(source, target) -> None:
    """Give ``target`` the transform of ``source``: any transform node holds a linear or a grid transform."""
    if source.IsLinear():
        matrix = vtk.vtkMatrix4x4()
        source.GetMatrixTransformFromParent(matrix)
        target.SetAndObserveTransformFromParent(None)  # a grid held before would refuse the matrix
        target.SetMatrixTransformFromParent(matrix)
    else:
        target.SetAndObserveTransformFromParent(source.GetTransformFromParent())
        linear_grids(target)
    target.SetAttribute(LINEAR_ATTRIBUTE, "1")


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
