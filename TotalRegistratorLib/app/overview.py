"""The overview figure: mid-slices in three planes of fixed, moving, warped and both subtractions.

Everything is first resampled onto an LPS-aligned grid over the fixed image, so
the axial view is in radiological convention (patient's right on the left,
anterior up) and coronal/sagittal views have superior up, whatever the
orientation the files were stored in.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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


def save_overview(path: str | os.PathLike, fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                  title: str = "") -> None:
    """Write a PNG of fixed, moving (before), warped and both subtractions, one column each (CT window
    -1000..1000 HU; subtractions 0..500 HU), from :func:`overview_views`."""
    grid = display_grid(fixed)
    arrays = overview_views(fixed, moving, transform, grid)
    names = list(arrays)
    spacing = grid.spacing[0]
    fig = Figure(figsize=(2.6 * len(names), 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(names), squeeze=False)
    for column, name in enumerate(names):
        subtraction = name.startswith("|")
        for row, view in enumerate(arrays[name]):
            ax = axes[row, column]
            ax.imshow(view, cmap="magma" if subtraction else "gray", vmin=0 if subtraction else -1000,
                      vmax=500 if subtraction else 1000, aspect=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
        axes[0, 0].set_ylabel("axial (R | L)", fontsize=8)
        axes[1, 0].set_ylabel("coronal", fontsize=8)
        axes[2, 0].set_ylabel("sagittal (A | P)", fontsize=8)
    fig.suptitle(f"{title}  ({spacing:.1f} mm display grid)" if title else "", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
