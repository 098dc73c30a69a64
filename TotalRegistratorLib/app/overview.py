"""The overview figure: mid-slices in three planes of fixed, moving, warped and both subtractions.

Everything is first resampled onto an LPS-aligned grid over the fixed image, so
the axial view is in radiological convention (patient's right on the left,
anterior up) and coronal/sagittal views have superior up, whatever the
orientation the files were stored in. The picture is composed with Pillow: a
mosaic of grey and colour-mapped panels with their labels (a plotting library's
import and layout took longer than the rest of writing a clinical CT's outputs).
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from ..core.grid import Grid
from ..io.outputs import atomic_path


def display_grid(image: sitk.Image, max_voxels: int = 4_000_000) -> Grid:
    """An isotropic LPS-aligned grid over ``image``'s box at its finest spacing (coarsened to fit)."""
    corners = Grid.from_image(image).corners()
    lower, upper = corners.min(0), corners.max(0)
    return Grid.covering(lower, upper, spacing=Grid.spacing_for(lower, upper, min(image.GetSpacing()), max_voxels))


def _view_grids(grid: Grid) -> list[Grid]:
    """The central axial, coronal and sagittal planes of ``grid``, each a grid one voxel thick."""
    size, centre = np.asarray(grid.size), np.asarray(grid.size) // 2
    planes = []
    for axis in (2, 1, 0):  # k (axial), j (coronal), i (sagittal)
        index = np.zeros(3)
        index[axis] = centre[axis]
        plane = size.copy()
        plane[axis] = 1
        planes.append(Grid(tuple(plane), grid.spacing, tuple(grid.transform_indices(index)), grid.direction))
    return planes


def _as_view(array: np.ndarray, axis: int) -> np.ndarray:
    """A plane's [K, J, I] array as the 2-D picture: axial as stored, the others with superior up."""
    return array[0] if axis == 0 else np.squeeze(array, axis)[::-1]


def overview_views(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                   grid: Grid | None = None) -> dict[str, list[np.ndarray]]:
    """The overview's pictures in HU: for fixed, moving, warped and both subtractions, the central axial,
    coronal and sagittal planes of ``grid`` (default :func:`display_grid` of ``fixed``). Only those planes
    are resampled, so a full-resolution CT costs no full-size temporaries."""
    grid = grid or display_grid(fixed)
    planes = [plane.reference_image() for plane in _view_grids(grid)]

    def on_display(image: sitk.Image, through: sitk.Transform | None = None) -> list[np.ndarray]:
        return [_as_view(sitk.GetArrayFromImage(sitk.Resample(image, plane, through or sitk.Transform(),
                                                              sitk.sitkLinear, -1000.0, sitk.sitkFloat32)), axis)
                for axis, plane in enumerate(planes)]

    arrays = {"fixed": on_display(fixed), "moving": on_display(moving), "warped": on_display(moving, transform)}
    arrays["|fixed - moving|"] = [np.abs(f - m) for f, m in zip(arrays["fixed"], arrays["moving"])]
    arrays["|fixed - warped|"] = [np.abs(f - w) for f, w in zip(arrays["fixed"], arrays["warped"])]
    return arrays


# matplotlib's "magma" at 0, 1/4, 1/2, 3/4 and 1 (RGB in 0..1), for the subtractions
_MAGMA = np.array([[0.001, 0.000, 0.014], [0.316, 0.071, 0.485], [0.716, 0.215, 0.475], [0.987, 0.536, 0.382],
                   [0.987, 0.991, 0.749]])
PANEL = 220  # pixels along the longest side of the largest view
GAP, LEFT, TOP = 6, 110, 50  # pixels between panels, for the row labels and for the titles


def _rgb(view: np.ndarray, subtraction: bool) -> np.ndarray:
    """A view in HU as 8-bit RGB: CT window -1000..1000 HU in grey; subtractions 0..500 HU in magma."""
    if not subtraction:
        grey = np.clip((view + 1000.0) / 2000.0, 0, 1)
        return np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    level = np.clip(view / 500.0, 0, 1)
    anchors = np.linspace(0, 1, len(_MAGMA))
    return np.stack([np.interp(level, anchors, _MAGMA[:, c]) * 255 for c in range(3)], -1).round().astype(np.uint8)


def save_overview(path: str | os.PathLike, fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                  title: str = "") -> None:
    """Write a PNG of fixed, moving (before), warped and both subtractions, one column each, one row per plane
    (CT window -1000..1000 HU; subtractions 0..500 HU), from :func:`overview_views`, all views at one scale."""
    grid = display_grid(fixed)
    arrays = overview_views(fixed, moving, transform, grid)
    scale = PANEL / max(max(view.shape) for view in arrays["fixed"])
    rows = ["axial (R | L)", "coronal", "sagittal (A | P)"]
    heights = [max(1, round(view.shape[0] * scale)) for view in arrays["fixed"]]
    widths = [max(1, round(view.shape[1] * scale)) for view in arrays["fixed"]]
    font = ImageFont.load_default(size=13)
    width = max(*widths, *(round(font.getlength(name)) for name in arrays))  # a column holds its title
    picture = Image.new("RGB", (LEFT + len(arrays) * (width + GAP), TOP + sum(h + GAP for h in heights)), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((GAP, GAP), f"{title}  ({grid.spacing[0]:.1f} mm display grid)" if title else "", fill="black",
              font=font)
    for column, (name, views) in enumerate(arrays.items()):
        x = LEFT + column * (width + GAP)
        draw.text((x + (width - font.getlength(name)) // 2, TOP - 3 * GAP), name, fill="black", font=font)
        y = TOP
        for row, view in enumerate(views):
            panel = Image.fromarray(_rgb(view, name.startswith("|"))).resize((widths[row], heights[row]),
                                                                              Image.Resampling.BILINEAR)
            picture.paste(panel, (x + (width - widths[row]) // 2, y))
            if column == 0:
                draw.text((GAP, y + heights[row] // 2 - GAP), rows[row], fill="black", font=font)
            y += heights[row] + GAP
    with atomic_path(path) as tmp:
        picture.save(tmp, format="png")
