"""The overview figure: its three planes are the display grid's central slices, resampled alone."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest import rotation, torso
from PIL import Image

from TotalRegistratorLib.app.overview import display_grid, overview_views, save_overview
from TotalRegistratorLib.core.grid import Grid


def test_planes_are_the_central_slices_of_the_whole_display_volume_and_the_warp_is_applied(tmp_path):
    direction = rotation("z", 15) @ rotation("x", -10)
    size, spacing = np.array([60, 46, 40]), np.array([3.8, 3.6, 4.2])
    fixed = torso(Grid(tuple(int(n) for n in size), tuple(spacing), tuple(-direction @ ((size - 1) * spacing / 2)),
                       tuple(direction.ravel())))
    shift = (6.0, -4.0, 5.0)
    moving = torso(Grid((64, 48, 44), (3.5, 3.5, 4.0), (-110.0, -82.0, -86.0)), shift=shift, noise_seed=1)
    transform = sitk.TranslationTransform(3, shift)  # fixed point x -> moving point x + shift: the same anatomy
    views = overview_views(fixed, moving, transform)

    grid = display_grid(fixed)
    whole = {name: sitk.GetArrayFromImage(sitk.Resample(image, grid.reference_image(), through, sitk.sitkLinear,
                                                        -1000.0, sitk.sitkFloat32))
             for name, image, through in (("fixed", fixed, sitk.Transform()), ("warped", moving, transform))}
    k, j, i = (n // 2 for n in grid.shape)
    for name, volume in whole.items():
        expected = [volume[k], volume[::-1, j, :], volume[::-1, :, i]]  # axial, coronal, sagittal (superior up)
        for got, want in zip(views[name], expected):
            np.testing.assert_allclose(got, want, atol=1e-3)
    body = views["fixed"][0] > -500
    assert np.median(views["|fixed - warped|"][0][body]) < 0.3 * np.median(views["|fixed - moving|"][0][body])

    save_overview(tmp_path / "overview.png", fixed, moving, transform, title="moving -> fixed")
    picture = np.asarray(Image.open(tmp_path / "overview.png"))
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.shape[1] > 800
