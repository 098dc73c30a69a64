"""From a torch displacement field to ITK: displacement images and DisplacementFieldTransforms.

The exported transform is dense, on the fixed image's grid (or a coarser grid
over the same box), in LPS millimetres, with the pullback sense of
:mod:`TotalRegistratorLib.core.fields`: ``TransformPoint(x) = x + u(x)`` maps a fixed
point into the moving image. SimpleITK's ``Resample(moving, fixed, transform)``
therefore aligns the moving image to the fixed one, and Slicer uses the file
the same way when the moving volume is placed under it.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from .grid import Grid


def export_grid(fixed: Grid, spacing: float | None = None) -> Grid:
    """The grid of the exported field: the fixed image's grid, or the same box at ``spacing`` mm."""
    if spacing is None:
        return fixed
    extent = (np.asarray(fixed.size) - 1) * np.asarray(fixed.spacing)
    size = np.maximum(np.ceil(extent / spacing).astype(int) + 1, 2)
    step = extent / np.maximum(size - 1, 1)
    return Grid(tuple(size), tuple(np.where(step > 0, step, spacing)), fixed.origin, fixed.direction)


def field_to_image(field: torch.Tensor, grid: Grid) -> sitk.Image:
    """A [1, 3, K, J, I] field as a float64 vector image with ``grid``'s geometry."""
    array = field[0].movedim(0, -1).detach().to("cpu", torch.float64).numpy()
    image = sitk.GetImageFromArray(array, isVector=True)
    return grid.apply_to(image)


def image_to_field(image: sitk.Image, dtype=torch.float32) -> tuple[torch.Tensor, Grid]:
    """A 3-component displacement image back to a [1, 3, K, J, I] tensor and its grid."""
    array = sitk.GetArrayFromImage(image)
    return torch.as_tensor(array, dtype=dtype).movedim(-1, 0)[None], Grid.from_image(image)


def field_to_transform(field: torch.Tensor, grid: Grid) -> sitk.Transform:
    """A DisplacementFieldTransform of the pullback ``field`` [1, 3, K, J, I] (LPS mm) on ``grid``."""
    return sitk.DisplacementFieldTransform(field_to_image(field, grid))


def transform_to_field(transform: sitk.Transform, grid: Grid) -> torch.Tensor:
    """Any ITK transform evaluated as a pullback field on ``grid`` (exact at the voxel centres)."""
    converter = sitk.TransformToDisplacementFieldFilter()
    converter.SetReferenceImage(grid.reference_image())
    converter.SetOutputPixelType(sitk.sitkVectorFloat64)
    return image_to_field(converter.Execute(transform))[0]


def displacement_image(transform: sitk.Transform) -> sitk.Image:
    """The displacement image of a DisplacementFieldTransform (float32 components x, y, z, LPS mm)."""
    return sitk.Cast(sitk.DisplacementFieldTransform(transform).GetDisplacementField(), sitk.sitkVectorFloat32)
