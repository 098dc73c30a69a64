"""Reading and writing with full geometry (DICOM, NIfTI, NRRD, MHA), atomic outputs, input checks, preprocessing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import rotation, shared_file, smooth_volume, torso

from TotalRegistratorLib.core import fields, preprocess
from TotalRegistratorLib.core.grid import Grid, physical_bounding_box
from TotalRegistratorLib.errors import InputError
from TotalRegistratorLib.io import images, outputs

# --- reading real data -------------------------------------------------------------------------------


def centroid(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    return Grid.from_image(image).transform_indices(np.argwhere(mask)[:, ::-1].mean(axis=0))


def test_read_dicom_series_folder():
    folder = shared_file("totalsegmentator/example_ct_dicom")
    image = images.read_image(folder)
    assert image.GetSize() == (512, 512, 20)
    assert image.GetPixelID() == sitk.sitkInt16  # as stored: no full-size float copy
    np.testing.assert_allclose(image.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    values = sitk.GetArrayViewFromImage(image)
    assert values.min() == pytest.approx(-1024.0, abs=1.0)  # rescaled to HU: air outside the scan circle
    assert 1000.0 < values.max() < 4000.0
    # the slices are ordered by position: the origin is the lowest slice, k runs superior (+z)
    z = [image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(20)]
    np.testing.assert_allclose(np.diff(z), 2.0, atol=1e-6)


def test_dicom_geometry_matches_its_label_map():
    """The TotalSegmentator labels (a NIfTI with a flipped y axis) land on the right anatomy in the DICOM."""
    image = images.read_image(shared_file("totalsegmentator/example_ct_dicom"))
    seg = images.read_image(shared_file("totalsegmentator/example_seg_dicom.nii.gz"), labels=True)
    assert seg.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(np.sort(Grid.from_image(image).corners(), 0), np.sort(Grid.from_image(seg).corners(), 0),
                               atol=1e-3)
    labels = sitk.GetArrayFromImage(sitk.Resample(seg, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    hu = sitk.GetArrayViewFromImage(image)
    liver, spleen, t12 = labels == 5, labels == 1, labels == 32
    assert 30.0 < hu[liver].mean() < 150.0
    assert 30.0 < hu[spleen].mean() < 150.0
    assert hu[t12].mean() > 150.0
    # LPS: the liver is on the patient's right (-x) of the spleen, the spine posterior (+y) of the liver
    assert centroid(image, liver)[0] < centroid(image, spleen)[0] - 50.0
    assert centroid(image, t12)[1] > centroid(image, liver)[1] + 30.0


# --- round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_read_round_trip_keeps_geometry(tmp_path, oblique_grid, suffix):
    image = smooth_volume(Grid((12, 10, 8), oblique_grid.spacing, oblique_grid.origin, oblique_grid.direction))
    path = tmp_path / f"scan.v2{suffix}"
    images.write_image(image, path)
    back = images.read_image(path)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_label_round_trip_keeps_integer_type(tmp_path, oblique_grid):
    labels = sitk.GetImageFromArray(np.arange(8 * 6 * 5, dtype=np.uint8).reshape(5, 6, 8) % 7)
    Grid((8, 6, 5), oblique_grid.spacing, oblique_grid.origin, oblique_grid.direction).apply_to(labels)
    images.write_image(labels, tmp_path / "labels.nii.gz")
    back = images.read_image(tmp_path / "labels.nii.gz", labels=True)
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labels))
    # floating label maps are cast to integers
    images.write_image(sitk.Cast(labels, sitk.sitkFloat32), tmp_path / "float_labels.nrrd")
    back = images.read_image(tmp_path / "float_labels.nrrd", labels=True)
    assert back.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labels))


def test_transform_round_trip(tmp_path):
    transform = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, -5.0, 6.0))
    images.write_transform(transform, tmp_path / "t.tfm")
    back = images.read_transform(tmp_path / "t.tfm")
    for p in [(0.0, 0.0, 0.0), (10.0, -20.0, 30.0)]:
        np.testing.assert_allclose(back.TransformPoint(p), transform.TransformPoint(p), atol=1e-9)
    with pytest.raises(InputError, match="no such transform"):
        images.read_transform(tmp_path / "missing.tfm")


# --- atomic writes and permissions --------------------------------------------------------------------


def test_write_image_is_atomic_when_writing_fails(tmp_path, monkeypatch, oblique_grid):
    image = smooth_volume(Grid((6, 5, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    written = []

    def failing_write(img, filename, *args, **kwargs):
        written.append(filename)
        with open(filename, "wb") as handle:
            handle.write(b"partial data")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    target = tmp_path / "out" / "moved.nii.gz"
    with pytest.raises(RuntimeError, match="disk full"):
        images.write_image(image, target)
    assert written and os.path.dirname(written[0]) == str(target.parent)  # wrote beside the target
    assert written[0] != str(target)
    assert list(target.parent.iterdir()) == []  # neither the target nor the temporary file

    # an existing target keeps its old content
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        images.write_image(image, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["moved.nii.gz"]


def test_written_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        image = smooth_volume(Grid((6, 5, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
        images.write_image(image, tmp_path / "a.nii.gz")
        images.write_transform(sitk.TranslationTransform(3, (1.0, 2.0, 3.0)), tmp_path / "t.tfm")
        for name in ("a.nii.gz", "t.tfm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
        os.umask(0o002)
        images.write_image(image, tmp_path / "b.mha")
        assert stat.S_IMODE((tmp_path / "b.mha").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_output_folder_leaves_the_target_untouched_when_the_block_raises(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ValueError, match="boom"), outputs.OutputFolder(target) as out:
        (out / "old.txt").write_text("new")
        (out / "extra.txt").write_text("extra")
        assert not (target / "extra.txt").exists()  # staged, not yet in place
        raise ValueError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # staging folder removed


def test_output_folder_moves_outputs_into_place_on_success(tmp_path):
    target = tmp_path / "new" / "results"
    with outputs.OutputFolder(target) as out:
        (out / "a.txt").write_text("a")
        images.write_image(smooth_volume(Grid((5, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))), out / "b.nii.gz")
        assert not target.exists()
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.nii.gz"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["results"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        outputs.OutputFolder(tmp_path / "file")


def test_output_folder_replaces_the_outputs_of_an_earlier_run(tmp_path):
    def earlier(folder: Path) -> list[str]:  # what the earlier run's index (here index.txt) says it wrote
        return (folder / "index.txt").read_text().split() if (folder / "index.txt").exists() else []

    target = tmp_path / "results"
    with outputs.OutputFolder(target, earlier=earlier) as out:
        (out / "a.txt").write_text("first")
        (out / "labels.txt").write_text("first")
        (out / "index.txt").write_text("index.txt a.txt labels.txt ../outside.txt")  # only plain names count
    (target / "notes.txt").write_text("the user's")
    (tmp_path / "outside.txt").write_text("the user's")
    with outputs.OutputFolder(target, earlier=earlier) as out:
        (out / "a.txt").write_text("second")  # this run has no labels
        (out / "index.txt").write_text("index.txt a.txt")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "index.txt", "notes.txt"]
    assert (target / "a.txt").read_text() == "second" and (tmp_path / "outside.txt").exists()


def test_output_folder_removes_the_parents_it_made_when_the_block_raises(tmp_path):
    with pytest.raises(ValueError), outputs.OutputFolder(tmp_path / "new" / "deeper" / "results") as out:
        (out / "a.txt").write_text("a")
        raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_output_file_checks_name_the_file_and_the_problem(tmp_path):
    target = tmp_path / "new" / "out.nrrd"
    assert outputs.check_output_file(target, outputs.IMAGE_SUFFIXES) == target
    with pytest.raises(InputError, match=r"out\.png: cannot write this format; use \.nii\.gz"):
        outputs.check_output_file(tmp_path / "out.png", outputs.IMAGE_SUFFIXES)
    with pytest.raises(InputError, match="is a folder"):
        outputs.check_output_file(tmp_path, outputs.IMAGE_SUFFIXES)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot be created in"):
        outputs.check_output_file(tmp_path / "file" / "out.nii.gz")
    assert not list((tmp_path).glob("new"))


# --- input errors ----------------------------------------------------------------------------------------


def write_raw(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def input_error(path) -> str:
    with pytest.raises(InputError) as info:
        images.read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    return message


def test_read_image_errors_name_the_file(tmp_path):
    assert "no such file" in input_error(tmp_path / "missing.nii.gz")

    assert "3D" in input_error(write_raw(sitk.Image([8, 9], sitk.sitkFloat32) + 1, tmp_path / "flat.nii.gz"))
    one_slice = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(1, 8, 9)).astype(np.float32))
    assert "3D" in input_error(write_raw(one_slice, tmp_path / "one_slice.nrrd"))

    vector = sitk.GetImageFromArray(np.random.default_rng(1).normal(size=(4, 5, 6, 3)), isVector=True)
    assert "one value per voxel" in input_error(write_raw(vector, tmp_path / "vector.mha"))

    values = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    values[1, 2, 3] = np.nan
    assert "NaN" in input_error(write_raw(sitk.GetImageFromArray(values), tmp_path / "nan.mha"))
    values[1, 2, 3] = np.inf
    assert "infinite" in input_error(write_raw(sitk.GetImageFromArray(values), tmp_path / "inf.nrrd"))

    constant = sitk.GetImageFromArray(np.full((4, 5, 6), -1000, np.int16))
    assert "constant" in input_error(write_raw(constant, tmp_path / "constant.nii.gz"))
    # a constant label map is fine (for example all background)
    background = write_raw(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), tmp_path / "background.nii.gz")
    assert images.read_image(background, labels=True).GetSize() == (6, 5, 4)

    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all")
    assert "cannot read" in input_error(garbage)

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    assert "no DICOM series" in input_error(empty)


def test_read_image_rejects_nan_in_nifti(tmp_path):
    values = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    values[1, 2, 3] = np.nan
    path = write_raw(sitk.GetImageFromArray(values), tmp_path / "nan.nii.gz")
    assert "NaN" in input_error(path)


# --- preprocessing --------------------------------------------------------------------------------------------

TORSO_GRID = Grid((88, 72, 20), (3.0, 3.0, 6.0), (-130.5, -100.5, -57.0))


def torso_on_table(grid: Grid = TORSO_GRID) -> tuple[sitk.Image, np.ndarray]:
    """conftest.torso (body ellipse |x| < 110, |y| < 75 mm) on a 12 mm patient table 6 mm behind the back."""
    image = torso(grid)
    hu = sitk.GetArrayFromImage(image)
    y = grid.world_points(dtype=torch.float64)[0, ..., 1].numpy()
    table = (y >= 81.0) & (y <= 93.0)
    hu[table] = 300.0
    out = sitk.GetImageFromArray(hu)
    out.CopyInformation(image)
    return out, table


def test_body_mask_excludes_the_table_and_includes_the_lungs():
    image, table = torso_on_table()
    hu = sitk.GetArrayViewFromImage(image)
    mask = preprocess.body_mask(image)
    assert mask.shape == TORSO_GRID.shape and mask.dtype == bool
    assert table.sum() > 1000 and not (mask & table).any()
    pts = TORSO_GRID.world_points(dtype=torch.float64)[0].numpy()
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    r = np.sqrt((x / (110 + 8 * np.sin(z / 40.0))) ** 2 + (y / 75.0) ** 2)
    assert mask[r < 0.95].all()  # the whole body ...
    assert not mask[r > 1.05].any()  # ... and nothing outside it
    # lungs (about -850 HU, below the threshold) are filled in
    right_lung = ((x + 45) / 35) ** 2 + ((y + 5) / 40) ** 2 + ((z - 45) / 60) ** 2 < 0.8
    lungs = right_lung & (hu < -500)
    assert lungs.sum() > 0.9 * right_lung.sum() > 2000
    assert mask[lungs].all()
    # the body's bounding box is the body's, not the table's
    lower, upper = physical_bounding_box(TORSO_GRID, mask)
    assert upper[1] < 80.0 and lower[1] > -80.0
    assert -120.0 < lower[0] < -105.0 and 105.0 < upper[0] < 120.0  # half-width 110 +- 8 mm along z


def test_body_mask_fills_axial_slices_whatever_the_storage_order():
    image, _ = torso_on_table()  # lungs reach the top of the field of view: open in coronal and sagittal slices
    stored = sitk.PermuteAxes(image, [2, 0, 1])  # the same scan, voxels stored z, x, y
    assert np.array_equal(sitk.GetArrayViewFromImage(stored), np.transpose(sitk.GetArrayViewFromImage(image),
                                                                            (1, 2, 0)))
    expected = np.transpose(preprocess.body_mask(image), (1, 2, 0))
    assert np.array_equal(preprocess.body_mask(stored), expected)


@pytest.mark.parametrize("radius", [(1, 2, 3), (2, 2, 2), (0, 1, 4)])
def test_body_mask_opening_is_scipys_binary_opening_by_the_box(radius):
    from scipy import ndimage

    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.random((23, 31, 37)), 2.5) > 0.5  # blobs, some touching the edges
    radius = np.asarray(radius)
    expected = ndimage.binary_opening(mask, structure=np.ones(2 * radius + 1, bool))
    opened = preprocess._box_opening(mask, radius)
    assert opened.dtype == bool and 0 < expected.sum() < mask.sum()
    assert np.array_equal(opened, expected)


def test_body_mask_rejects_images_without_a_body():
    air = TORSO_GRID.apply_to(sitk.GetImageFromArray(np.full(TORSO_GRID.shape, -1000.0, np.float32)))
    with pytest.raises(InputError, match="^scan.nii: no body found"):
        preprocess.body_mask(air, name="scan.nii")
    speck = sitk.GetArrayFromImage(air)
    speck[5:7, 30:32, 40:42] = 50.0  # 8 voxels of 54 mm^3: a bit of noise, not a body
    with pytest.raises(InputError, match="no body found"):
        preprocess.body_mask(TORSO_GRID.apply_to(sitk.GetImageFromArray(speck)))


def test_network_grid_covers_the_body_box():
    direction = rotation("z", 12) @ rotation("x", -8)
    grid = Grid(TORSO_GRID.size, TORSO_GRID.spacing, (-140.0, -90.0, -70.0), tuple(direction.ravel()))
    image, _ = torso_on_table(grid)
    mask = preprocess.body_mask(image)
    net = preprocess.network_grid(preprocess.Scan(image))
    assert net.size == preprocess.NETWORK_SIZE == (64, 48, 80)
    assert net.shape == (80, 48, 64)
    np.testing.assert_allclose(net.direction_matrix, np.eye(3))  # LPS-aligned whatever the scan's direction
    lower, upper = physical_bounding_box(grid, mask)
    np.testing.assert_allclose(net.corners().min(0), lower, atol=1e-6)
    np.testing.assert_allclose(net.corners().max(0), upper, atol=1e-6)
    body_points = grid.transform_indices(np.argwhere(mask)[:, ::-1])
    assert fields.inside(torch.as_tensor(body_points), net, margin=1e-6).all()
    np.testing.assert_allclose(net.spacing, (upper - lower) / (np.asarray(net.size) - 1), rtol=1e-9)


def test_normalize_intensity():
    hu = np.array([-3000.0, -1000.0, -500.0, 0.0, 500.0, 1000.0, 3071.0])
    expected = np.array([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(preprocess.normalize_intensity(hu), expected, atol=1e-12)
    got = preprocess.normalize_intensity(torch.as_tensor(hu, dtype=torch.float32))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-7)
    assert hu[0] == -3000.0  # the input is not modified in place


def test_float_label_maps_must_hold_whole_numbers(tmp_path):
    values = np.zeros((4, 5, 6), np.float32)
    values[1:3, 1:4, 1:5] = 7.0
    images.write_image(sitk.GetImageFromArray(values), tmp_path / "whole.nrrd")
    labels = images.read_image(tmp_path / "whole.nrrd", labels=True)
    assert labels.GetPixelID() == sitk.sitkUInt16 and int(sitk.GetArrayFromImage(labels).max()) == 7
    values[2, 2, 2] = 0.9999  # linearly resampled: truncation would silently make it background
    images.write_image(sitk.GetImageFromArray(values), tmp_path / "fraction.nrrd")
    with pytest.raises(InputError, match=r"fraction\.nrrd: label map holds values that are not whole numbers"):
        images.read_image(tmp_path / "fraction.nrrd", labels=True)
    values[2, 2, 2] = -1.0
    images.write_image(sitk.GetImageFromArray(values), tmp_path / "negative.nrrd")
    with pytest.raises(InputError, match=r"negative\.nrrd: label values must lie in 0\.\.65535, got -1\.\.7"):
        images.read_image(tmp_path / "negative.nrrd", labels=True)


def test_reports_are_strict_json():
    report = {"dice": {"1": np.float32(0.5), "2": float("nan")}, "n": np.int64(3), "path": Path("a/b"),
              "values": np.array([1.0, np.inf])}
    text = outputs.to_json(report)
    assert json.loads(text) == {"dice": {"1": 0.5, "2": None}, "n": 3, "path": "a/b", "values": [1.0, None]}
    assert "NaN" not in text and "Infinity" not in text


def test_detail_is_the_working_content_on_the_scans_own_finer_lattice_in_lps_order():
    """A fine oblique scan's detail: its smoothed, body-masked preview, voxel axes turned to LPS, around the
    working box; sampled at the working grid's points it gives the working tensor (the same content)."""
    direction = rotation("z", 90)  # the scan stores x along -j: its detail must come out in LPS order
    grid = Grid((130, 170, 90), (1.5, 1.5, 1.5), (126.75, -96.75, -60.0), tuple(direction.ravel()))
    scan = preprocess.Scan(torso(grid))
    working = preprocess.body_grid(scan.mask, spacing=4.0, margin=8.0)
    prepared = preprocess.prepare(scan, lambda _: working, keep_detail=True)
    tensor, detail_grid = prepared.detail
    np.testing.assert_allclose(detail_grid.direction_matrix, np.eye(3), atol=1e-12)
    assert tensor.shape[2:] == detail_grid.shape and max(detail_grid.spacing) < 0.8 * 4.0
    # it covers the working box where the scan has data (the body runs out of the scan along z)
    lower = np.maximum(working.corners().min(axis=0), grid.corners().min(axis=0))
    upper = np.minimum(working.corners().max(axis=0), grid.corners().max(axis=0))
    assert np.all(detail_grid.corners().min(axis=0) <= lower + 1e-6)
    assert np.all(detail_grid.corners().max(axis=0) >= upper - 1e-6)
    sampled = fields.sample(tensor, detail_grid, working.world_points())
    body = torch.as_tensor(sitk.GetArrayFromImage(preprocess.resample(scan.mask, working, labels=True)) > 0)
    difference = (sampled - prepared.tensor)[0, 0][body].abs()
    assert difference.mean() < 0.005 and difference.max() < 0.1  # [0, 1] = 2000 HU: 10 HU mean
    # no detail without asking, or when the scan is not finer than the working grid
    assert preprocess.prepare(scan, lambda _: working).detail is None
    close = preprocess.body_grid(scan.mask, spacing=1.8)  # the 1.5 mm preview is not 0.8 x finer
    assert preprocess.prepare(scan, lambda _: close, keep_detail=True).detail is None


def test_library_output_of_two_threads_at_once_is_caught_and_descriptor_2_restored(capfd):
    """Two scans are read in parallel: both threads' C++ chatter (written to descriptor 2) is caught, each
    block gets the text written while it ran, and stderr works again afterwards."""
    import os
    import threading

    from TotalRegistratorLib.io import messages

    inside, release, texts = threading.Barrier(2, timeout=10), threading.Event(), {}

    def chatter(name: str) -> None:
        with messages.library_output() as caught:
            inside.wait()  # both blocks are open now
            os.write(2, f"ITK says {name}\n".encode())
            if name == "first":
                release.set()
            else:
                release.wait(10)
        texts[name] = caught

    threads = [threading.Thread(target=chatter, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    assert "ITK says second" in texts["second"][0] and "ITK says first" in texts["first"][0]
