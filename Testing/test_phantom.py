"""The phantom: anatomy present with plausible volumes and HU, reproducible by seed, geometry as scanners store it."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.registry import LABELS
from TotalRegistratorLib.simulation import phantom

# plausible adult ranges: volume (ml) and mean HU in portal-venous phase
EXPECTED = {
    "lung": ((3000, 9000), (-880, -700)),
    "heart": ((400, 1500), (100, 220)),
    "liver": ((1200, 3800), (90, 150)),
    "kidney": ((120, 600), (120, 200)),
    "pancreas": ((40, 200), (60, 130)),
    "spleen": ((80, 450), (90, 150)),
    "stomach": ((150, 1200), (-900, 60)),
    "gallbladder": ((10, 150), (-20, 60)),
    "prostate": ((10, 80), (30, 100)),
    "pelvis_bone": ((500, 2500), (250, 800)),
    "vertebrae": ((400, 2000), (250, 800)),
    "ribs": ((300, 1600), (200, 800)),
}


def scan(seed: int, spacing: float = 6.0) -> phantom.Scan:
    ph = phantom.make_phantom(seed)
    return phantom.render(ph, phantom.scan_grid(ph, np.random.default_rng(seed), spacing=spacing))


@pytest.fixture(scope="module", params=[1, 4])
def rendered(request) -> tuple[phantom.Phantom, phantom.Scan]:
    ph = phantom.make_phantom(request.param)
    return ph, phantom.render(ph, phantom.scan_grid(ph, np.random.default_rng(0), spacing=5.0))


def test_structures_present_with_plausible_volume_and_hu(rendered):
    ph, result = rendered
    grid = Grid.from_image(result.image)
    hu = sitk.GetArrayFromImage(result.image).astype(float)
    labels = sitk.GetArrayFromImage(result.labels)
    ml = np.prod(grid.spacing) / 1000.0
    for name, ((vmin, vmax), (hmin, hmax)) in EXPECTED.items():
        mask = labels == LABELS[name]
        if name in ph.removed:
            assert not mask.any(), f"{name} was removed but is labelled"
            continue
        assert vmin <= mask.sum() * ml <= vmax, f"{name}: {mask.sum() * ml:.0f} ml"
        assert hmin <= hu[mask].mean() <= hmax, f"{name}: mean {hu[mask].mean():.0f} HU"
    outside = hu[labels == 0]
    assert (outside < -900).mean() > 0.2, "air around the patient"
    assert ((outside > -150) & (outside < -50)).mean() > 0.02, "subcutaneous and visceral fat"


def test_anatomical_arrangement(rendered):
    ph, result = rendered
    grid = Grid.from_image(result.labels)
    labels = sitk.GetArrayFromImage(result.labels)
    centre = {n: grid.transform_indices(np.argwhere(labels == i)[:, ::-1].mean(axis=0)) for n, i in LABELS.items()
              if (labels == i).any()}
    assert centre["liver"][0] < centre["vertebrae"][0] < centre["spleen"][0], "liver right (-x), spleen left (+x)"
    assert centre["heart"][0] > centre["vertebrae"][0], "heart left of the midline"
    assert centre["kidney"][1] > centre["pancreas"][1] > centre["stomach"][1], "kidneys posterior, stomach anterior"
    assert centre["lung"][2] > centre["liver"][2] > centre["kidney"][2] > centre["pelvis_bone"][2], "S-I order"
    if "prostate" in ph.present:
        assert centre["prostate"][2] < centre["pelvis_bone"][2]


def test_missing_organs_and_presence():
    removed = {s: phantom.make_phantom(s).removed for s in range(40)}
    assert any("gallbladder" in r for r in removed.values()), "cholecystectomy occurs"
    assert any(any(k.startswith("kidney_") for k in r) for r in removed.values()), "nephrectomy occurs"
    assert any("prostate" in r for r in removed.values()) and any("prostate" not in r for r in removed.values())
    for seed, r in removed.items():
        ph = phantom.make_phantom(seed)
        assert set(ph.present) == set(LABELS) - set(r), seed
        assert "kidney" in ph.present, "one kidney always remains"


def test_same_seed_identical_different_seed_differs():
    a, b, c = scan(3), scan(3), scan(4)
    assert np.array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image))
    assert np.array_equal(sitk.GetArrayFromImage(a.labels), sitk.GetArrayFromImage(b.labels))
    assert Grid.from_image(a.image) == Grid.from_image(b.image)
    assert Grid.from_image(a.image) != Grid.from_image(c.image) or not np.array_equal(
        sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(c.image))


def test_scanner_geometry_varies_and_orientation_is_physical():
    spacings, directions = set(), set()
    for seed in range(12):
        ph = phantom.make_phantom(seed)
        grid = phantom.scan_grid(ph, np.random.default_rng(seed))
        assert 0.6 <= grid.spacing[0] == grid.spacing[1] <= 1.0
        assert grid.spacing[2] in phantom.SLICE_THICKNESSES
        spacings.add(grid.spacing[2])
        directions.add(grid.direction)
    assert directions == {phantom.LPS_DIRECTION, phantom.RAS_DIRECTION}
    assert len(spacings) >= 3
    # the same patient rendered LPS and RAS-style occupies the same physical space
    ph = phantom.make_phantom(2)
    lps = phantom.scan_grid(ph, np.random.default_rng(0), spacing=6.0)
    first = lps.transform_indices(np.array([lps.size[0] - 1, lps.size[1] - 1, 0]))
    ras = Grid(lps.size, lps.spacing, tuple(first), phantom.RAS_DIRECTION)
    a = phantom.render(ph, lps).labels
    b = sitk.Resample(phantom.render(ph, ras).labels, a, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_contrast_phases():
    ph = phantom.make_phantom(1)
    grid = phantom.scan_grid(ph, np.random.default_rng(0), spacing=6.0)
    mean = {}
    for phase in phantom.PHASES:
        result = phantom.render(ph, grid, phantom.ScanState(phase=phase))
        hu, labels = sitk.GetArrayFromImage(result.image), sitk.GetArrayFromImage(result.labels)
        mean[phase] = {n: hu[labels == LABELS[n]].mean() for n in ("liver", "kidney", "heart")}
    assert mean["native"]["liver"] < mean["arterial"]["liver"] < mean["portal_venous"]["liver"]
    assert mean["arterial"]["heart"] > mean["portal_venous"]["heart"] > mean["native"]["heart"] + 50
    assert mean["native"]["kidney"] < 60 < mean["portal_venous"]["kidney"]
    with pytest.raises(ValueError, match="phase"):
        phantom.ScanState(phase="delayed")


def test_table_is_separate_from_the_body():
    from TotalRegistratorLib.core.preprocess import body_mask

    result = scan(5)
    hu = sitk.GetArrayFromImage(result.image)
    mask = body_mask(sitk.Cast(result.image, sitk.sitkFloat32))
    labels = sitk.GetArrayFromImage(result.labels)
    assert mask[labels > 0].mean() > 0.99, "every labelled voxel is inside the body mask"
    assert (hu[~mask] > -600).any(), "the table is in the image but not in the body mask"


def test_rendering_does_not_depend_on_how_points_are_chunked():
    """At scanner resolution every slice is its own chunk; per-chunk shortcuts must not drop anatomy there."""
    ph = phantom.make_phantom(3)
    grid = phantom.scan_grid(ph, np.random.default_rng(3), spacing=6.0)
    whole = phantom.render(ph, grid, chunk=grid.num_voxels)
    sliced = phantom.render(ph, grid, chunk=1)  # one slice per chunk
    assert np.array_equal(sitk.GetArrayFromImage(sliced.labels), sitk.GetArrayFromImage(whole.labels))
    assert np.abs(sitk.GetArrayFromImage(sliced.image) - sitk.GetArrayFromImage(whole.image)).max() < 1e-3
