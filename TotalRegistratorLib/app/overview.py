"""The overview figure: mid-slices in three planes of fixed, moving, warped and both subtractions.

Everything is first resampled onto an LPS-aligned grid over the fixed image, so
the axial view is in radiological convention (patient's right on the left,
anterior up) and coronal/sagittal views have superior up, whatever the
orientation the files were stored in.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from ..core.grid import Grid  # noqa: E402
from ..io.outputs import atomic_path  # noqa: E402


def display_grid(image: sitk.Image, max_voxels: int = 4_000_000) -> Grid:
    """An isotropic LPS-aligned grid over ``image``'s box at its finest spacing (coarsened to fit)."""
    corners = Grid.from_image(image).corners()
    lower, upper = corners.min(0), corners.max(0)
    return Grid.covering(lower, upper, spacing=Grid.spacing_for(lower, upper, min(image.GetSpacing()), max_voxels))


def _views(array: np.ndarray) -> list[np.ndarray]:
    k, j, i = (n // 2 for n in array.shape)
    return [array[k], array[::-1, j, :], array[::-1, :, i]]  # axial, coronal, sagittal (superior up)


def save_overview(path: str | os.PathLike, fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                  title: str = "") -> None:
    """Write a PNG of fixed, moving (before), warped and both subtractions, one column each (CT window
    -1000..1000 HU; subtractions 0..500 HU). Everything is resampled straight onto the display grid, so a
    full-resolution CT costs no full-size temporaries."""
    grid = display_grid(fixed)
    reference = grid.reference_image()

    def on_display(image: sitk.Image, through: sitk.Transform | None = None) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference,
                                                    through or sitk.Transform(), sitk.sitkLinear, -1000.0))

    arrays = {"fixed": on_display(fixed), "moving": on_display(moving), "warped": on_display(moving, transform)}
    arrays["|fixed - moving|"] = np.abs(arrays["fixed"] - arrays["moving"])
    arrays["|fixed - warped|"] = np.abs(arrays["fixed"] - arrays["warped"])
    names = list(arrays)
    spacing = grid.spacing[0]
    fig, axes = plt.subplots(3, len(names), figsize=(2.6 * len(names), 7.5), squeeze=False)
    for column, name in enumerate(names):
        subtraction = name.startswith("|")
        for row, view in enumerate(_views(arrays[name])):
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
    plt.close(fig)
