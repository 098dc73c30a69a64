"""Harden a registration result into segmentations and label maps, exactly, without side effects.

Each segment of a labelmap-based segmentation is resampled on its own (no
merged label map: overlapping segments keep all their voxels, label values
stay), nearest neighbour, through the transform onto the fixed volume's grid,
as the library warps label maps. Label map volumes are resampled the same way.
Everything is computed before the node is touched, so a failure leaves it as
it was; no temporary node enters the scene. Segmentations whose source is not
a label map (closed surfaces) use Slicer's own hardening, which is exact for
surfaces.
"""

from __future__ import annotations

import slicer
import vtk

from .nodes import NodeError, ijk_to_ras


def oriented_image(volume, world: bool = True):
    """The volume's voxels as a ``vtkOrientedImageData`` (shared voxels, the node's geometry)."""
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(volume.GetImageData())
    image.SetImageToWorldMatrix(ijk_to_ras(volume, world))
    return image


def _reference(volume):
    """An empty oriented image with the grid of ``volume`` as it is shown."""
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(volume.GetImageData().GetExtent())
    reference.SetImageToWorldMatrix(ijk_to_ras(volume, world=True))
    return reference


def _resample(image, reference, transform, name: str):
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, reference, resampled, False, False, transform, 0):
        raise NodeError(f"{name}: cannot resample onto the fixed grid")
    return resampled


def _output_like(algorithm, like):
    """The output of a VTK image ``algorithm`` as an oriented image with the geometry of ``like``."""
    algorithm.Update()
    output = slicer.vtkOrientedImageData()
    output.DeepCopy(algorithm.GetOutput())
    matrix = vtk.vtkMatrix4x4()
    like.GetImageToWorldMatrix(matrix)
    output.SetImageToWorldMatrix(matrix)
    return output


def _segment_mask(layer, value: int, name: str):
    """The voxels of one segment (``value`` in its labelmap layer) as a 0/value image with the layer's geometry."""
    threshold = vtk.vtkImageThreshold()
    threshold.SetInputData(layer)
    threshold.ThresholdBetween(value, value)
    threshold.SetInValue(value)
    threshold.SetOutValue(0)
    if 0 < value < 256:
        threshold.SetOutputScalarTypeToUnsignedChar()
    mask = _output_like(threshold, layer)
    if mask.GetPointData().GetScalars() is None:
        raise NodeError(f"{name}: cannot read its voxels")
    return mask


def _cropped(image):
    """``image`` cut to the extent of its non-zero voxels (a small image per segment)."""
    extent = [0, -1, 0, -1, 0, -1]
    slicer.vtkOrientedImageDataResample.CalculateEffectiveExtent(image, extent)
    if extent[1] < extent[0]:
        extent = [0, 0, 0, 0, 0, 0]  # an empty segment: one background voxel
    clip = vtk.vtkImageConstantPad()
    clip.SetInputData(image)
    clip.SetOutputWholeExtent(extent)
    return _output_like(clip, image)


def harden_segmentation(node, transform, fixed) -> None:
    """Resample each segment of ``node`` through ``transform`` (to parent) onto ``fixed``'s grid."""
    segmentation = node.GetSegmentation()
    labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    reference = _reference(fixed)
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentIDs(ids)
    resampled = {}
    for i in range(ids.GetNumberOfValues()):
        segment = segmentation.GetSegment(ids.GetValue(i))
        layer = segment.GetRepresentation(labelmap)
        name = f"{node.GetName()}: segment {segment.GetName()}"
        if layer is None:
            raise NodeError(f"{name}: has no label map")
        mask = _segment_mask(layer, segment.GetLabelValue(), name)
        resampled[ids.GetValue(i)] = _cropped(_resample(mask, reference, transform, name))
    was = node.StartModify()
    try:
        for segment_id, image in resampled.items():
            segmentation.GetSegment(segment_id).AddRepresentation(labelmap, image)  # its own layer now
        segmentation.InvalidateNonSourceRepresentations()
        node.SetReferenceImageGeometryParameterFromVolumeNode(fixed)
        node.SetAndObserveTransformNodeID(None)
        segmentation.Modified()
    finally:
        node.EndModify(was)


def harden_labelmap(node, transform, fixed) -> None:
    """Resample the label map volume ``node`` (nearest) through ``transform`` (to parent) onto ``fixed``'s grid."""
    image = _resample(oriented_image(node, world=False), _reference(fixed), transform, node.GetName())
    voxels = vtk.vtkImageData()
    voxels.ShallowCopy(image)
    voxels.SetOrigin(0, 0, 0)
    voxels.SetSpacing(1, 1, 1)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    was = node.StartModify()
    try:
        node.SetAndObserveImageData(voxels)
        node.SetIJKToRASMatrix(matrix)
        node.SetAndObserveTransformNodeID(None)
    finally:
        node.EndModify(was)


def harden(node, transform_node, fixed) -> None:
    """Bake ``transform_node`` into a segmentation or label map ``node`` that is not under it yet.

    ``fixed``: the volume whose grid label maps take (the registration's fixed volume); None uses
    Slicer's hardening (as for any other transform). On failure ``node`` is unchanged.
    """
    labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if node.IsA("vtkMRMLSegmentationNode") and node.GetSegmentation().GetSourceRepresentationName() != labelmap:
        fixed = None  # closed surfaces and other sources: transformed exactly, not resampled
    if fixed is None:
        node.SetAndObserveTransformNodeID(transform_node.GetID())
        slicer.vtkSlicerTransformLogic.hardenTransform(node)
        return
    to_parent = transform_node.GetTransformToParent()
    if node.IsA("vtkMRMLSegmentationNode"):
        harden_segmentation(node, to_parent, fixed)
    elif node.IsA("vtkMRMLLabelMapVolumeNode"):
        harden_labelmap(node, to_parent, fixed)
    else:
        raise NodeError(f"{node.GetName()}: only segmentations and label maps can be hardened here")
