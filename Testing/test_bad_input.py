"""Issue 13: every bad input refused with one line naming the file (exit 2, no outputs), questionable
inputs warned about in one line and recorded in the report. Item numbers refer to the issue."""

from __future__ import annotations

import gzip
import json
import os
import struct

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_helpers import FAST, GRID, PREFIX, error_line, labels_of, leftovers, run_cli, run_train, small_pair, write
from conftest import shared_file, torso

from TotalRegistratorLib.app.cli import main
from TotalRegistratorLib.errors import InputError, InputWarning
from TotalRegistratorLib.io import images
from TotalRegistratorLib.io.landmarks import read_landmarks
from TotalRegistratorLib.learned.cascade import block_config, build_network
from TotalRegistratorLib.registry import WARNING_PREFIX


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return small_pair(tmp_path_factory.mktemp("pair"))


def refused(args: list, capfd) -> str:
    """Run the command in this process; it must exit 2 with exactly one stderr line (library output included),
    or, for argparse's own errors, the usage and one error line."""
    try:
        code, usage = main([str(a) for a in args]), False
    except SystemExit as stop:
        code, usage = stop.code, True
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and (usage or len(err) == 1) and err[-1].startswith("totalregistrator"), (code, err)
    assert "error: " in err[-1], err
    return err[-1]


def input_error(path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        images.read_image(path, **kwargs)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    return str(info.value)


# --- 1: truncated NIfTI -----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused(suffix, pair, tmp_path, capfd):
    whole = write(torso(GRID), tmp_path / f"whole{suffix}").read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole[: len(whole) // 2])
    line = refused(["register", pair["fixed"], cut, "-o", tmp_path / "out", *FAST], capfd)
    assert str(cut) in line and "truncated" in line and not (tmp_path / "out").exists()


def test_truncated_example_ct_is_refused(tmp_path):
    cut = tmp_path / "truncated.nii.gz"
    cut.write_bytes(shared_file("totalsegmentator/example_ct_sm.nii.gz").read_bytes()[:241656])
    assert "truncated" in input_error(cut)


def test_corrupt_compressed_nifti_is_refused_not_read_as_wrong_voxels(tmp_path):
    whole = bytearray(write(torso(GRID), tmp_path / "whole.nii.gz").read_bytes())
    whole[len(whole) // 2] ^= 0xFF  # one flipped byte: ITK would read wrong voxels without a word
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(whole))
    assert "corrupt" in input_error(bad)


def test_concatenated_gzip_members_are_one_nifti(tmp_path):
    plain = write(torso(GRID), tmp_path / "whole.nii").read_bytes()
    joined = tmp_path / "joined.nii.gz"  # as written by some parallel compressors: members end to end
    joined.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(images.read_image(joined)),
                                  sitk.GetArrayFromImage(images.read_image(tmp_path / "whole.nii")))


# --- 3, 15: sheared and degenerate directions, truncated MetaImage: refused in words that say so -----------
def nrrd_with_directions(path, directions: str):
    write(sitk.Cast(torso(GRID), sitk.sitkInt16), path.with_suffix(".tmp.nrrd"))
    text = path.with_suffix(".tmp.nrrd").read_bytes()
    start = text.index(b"space directions: ")
    end = text.index(b"\n", start)
    path.write_bytes(text[:start] + b"space directions: " + directions.encode() + text[end:])
    return path


@pytest.mark.parametrize("directions, words", [("(5,0,0) (2.5,5,0) (0,0,5)", "sheared"),
                                               ("(5,0,0) (10,0,0) (0,0,5)", "degenerate"),
                                               ("(5,0,0) (0,0,0) (0,0,5)", "voxel size 0")])
def test_bad_nrrd_directions_are_refused(directions, words, pair, tmp_path, capfd):
    path = nrrd_with_directions(tmp_path / "bad.nrrd", directions)
    line = refused(["register", pair["fixed"], path, "-o", tmp_path / "out", *FAST], capfd)
    assert str(path) in line and words in line, line


def test_sheared_nifti_sform_is_refused(tmp_path):
    import nibabel

    affine = np.array([[5, 2.0, 0, -100], [0, 5, 0, -75], [0, 0, 5, -80], [0, 0, 0, 1]])
    values = np.random.default_rng(0).integers(-1000, 1000, (10, 10, 10)).astype(np.int16)
    image = nibabel.Nifti1Image(values, affine)
    image.header.set_qform(affine, 1)  # stored as the nearest rotation: ITK reads it and ignores the sheared sform
    nibabel.save(image, tmp_path / "sheared.nii.gz")
    assert "sheared" in input_error(tmp_path / "sheared.nii.gz")


def test_truncated_metaimage_says_truncated_and_nothing_else(pair, tmp_path, capfd):
    whole = write(torso(GRID), tmp_path / "whole.mha").read_bytes()
    cut = tmp_path / "cut.mha"
    cut.write_bytes(whole[: len(whole) // 2])
    line = refused(["register", pair["fixed"], cut, "-o", tmp_path / "out", *FAST], capfd)
    assert "truncated" in line and "No such file" not in line


def test_hdf5_chatter_stays_off_stderr(pair, tmp_path, capfd):
    transform = tmp_path / "t.h5"
    sitk.WriteTransform(sitk.TranslationTransform(3, (1.0, 2.0, 3.0)), str(transform))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(transform.read_bytes()[:1000])
    line = refused(["warp", pair["moving"], cut, "--reference", pair["fixed"], "-o", tmp_path / "w.nii.gz"], capfd)
    assert str(cut) in line and not (tmp_path / "w.nii.gz").exists()


def test_library_warnings_go_to_logging_not_stderr(capfd, caplog):
    import logging
    import warnings

    import nibabel

    from TotalRegistratorLib.io.messages import route_messages

    route_messages(WARNING_PREFIX)
    with caplog.at_level(logging.DEBUG, logger="TotalRegistratorLib"):
        warnings.warn("torch or matplotlib chatter", UserWarning, stacklevel=1)
        nibabel.imageglobals.logger.warning("nibabel header chatter")
    assert capfd.readouterr().err == ""
    assert "torch or matplotlib chatter" in caplog.text and "nibabel header chatter" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_file_is_not_called_missing(tmp_path):
    path = write(torso(GRID), tmp_path / "locked.nii.gz")
    path.chmod(0)
    assert "permission denied" in input_error(path)


# --- 6, 16: inputs that would block or recurse ---------------------------------------------------------
def test_named_pipe_and_symlink_loop_are_refused_without_blocking(pair, tmp_path):
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop)
    for path, words in ((fifo, "pipe"), (loop, "symbolic link loop")):
        line = error_line(run_cli(["register", pair["fixed"], path, "-o", tmp_path / "out", *FAST], timeout=120))
        assert str(path) in line and words in line, line
    assert not (tmp_path / "out").exists()


# --- 6, 7, 8: numbers and output paths checked before any work -----------------------------------------
@pytest.mark.parametrize("option, value, words", [
    ("--iterations", "99999999999999999999,1", "at most 10000"), ("--spacing", "1e6", "at most 50"),
    ("--export-spacing", "0.05", "at least 0.1"), ("--threads", str((os.cpu_count() or 1) + 1), "at most")])
def test_extreme_options_are_refused(option, value, words, pair, tmp_path, capfd):
    line = refused(["register", pair["fixed"], pair["moving"], "-o", tmp_path / "out", option, value], capfd)
    assert option in line and words in line, line


def test_export_grid_too_large_for_memory_is_refused_before_registering(pair, tmp_path, capfd, monkeypatch):
    from TotalRegistratorLib.app import register_job

    monkeypatch.setattr(register_job, "register", lambda *a, **k: pytest.fail("registered before refusing"))
    line = refused(["register", pair["fixed"], pair["moving"], "-o", tmp_path / "out", *FAST,
                    "--export-spacing", "0.1"], capfd)
    assert "--export-spacing 0.1" in line and "GiB" in line


def test_working_grid_of_too_few_voxels_is_refused(tmp_path, capfd):
    grid = type(GRID)((12, 10, 10), (5.0, 5.0, 5.0), (-30.0, -25.0, -25.0))
    fixed = write(torso(grid), tmp_path / "small.nii.gz")
    line = refused(["register", fixed, fixed, "-o", tmp_path / "out", "--spacing", "40"], capfd)
    assert "fewer than 4 voxels" in line


@pytest.mark.parametrize("args, words", [(["phantom", "--spacing", "1e6"], "spacing must lie in"),
                                         (["phantom", "--spacing", "0.05"], "spacing must lie in")])
def test_phantom_spacing_out_of_range(args, words, tmp_path, capfd):
    line = refused([*args, "-o", tmp_path / "p"], capfd)
    assert words in line and not (tmp_path / "p").exists()


@pytest.mark.parametrize("option, value", [("--phantom-spacing", "1e6"), ("--seed", "-1")])
def test_train_numbers_out_of_range(option, value, tmp_path, capfd):
    from TotalRegistratorLib.app.train_command import main as train

    with pytest.raises(SystemExit) as stop:
        train(["--block", "affine", "--phantom", "1", "-o", str(tmp_path / "w"), option, value])
    err = capfd.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and option in err[-1] and not (tmp_path / "w").exists()


def too_long(tmp_path):
    return tmp_path / "/".join(["d" * 200] * 21)


@pytest.mark.parametrize("output, words", [
    (lambda t: "/proc/totalregistrator-test", "cannot be created"),
    (lambda t: "/sys/totalregistrator-test", "cannot be created"),
    (lambda t: too_long(t), "too long"), (lambda t: t / ("n" * 300), "bytes; at most"),
    (lambda t: "", "the path is empty")])
def test_output_paths_refused_before_any_work(output, words, pair, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty -o would otherwise write here
    line = refused(["register", pair["fixed"], pair["moving"], "-o", output(tmp_path), *FAST], capfd)
    assert words in line, line
    assert list(tmp_path.iterdir()) == []


# --- 4, 10: weights ------------------------------------------------------------------------------------
def affine_payload() -> dict:
    config = block_config("affine")
    return {"format": "totalregistrator-block", "format_version": 1, "config": config,
            "state_dict": build_network(config).state_dict()}


def bad_weights(kind: str, folder):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "affine.pt"
    payload = affine_payload()
    if kind == "empty":
        path.write_bytes(b"")
        return path
    if kind == "no config":
        del payload["config"]
    elif kind == "config not a dict":
        payload["config"] = "affine"
    elif kind == "malformed config":
        payload["config"] = {**payload["config"], "encoder": "sixteen"}
    elif kind == "tensor only":
        payload = torch.zeros(3)
    elif kind == "nan weights":
        payload["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                 for k, v in payload["state_dict"].items()}
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("kind, words", [("empty", "not a readable PyTorch file"), ("no config", "no 'config'"),
                                         ("config not a dict", "no 'config'"), ("malformed config", "malformed"),
                                         ("tensor only", "holds a Tensor"), ("nan weights", "NaN")])
def test_bad_weights_are_one_line(kind, words, pair, tmp_path, capfd):
    path = bad_weights(kind, tmp_path / "weights")
    line = refused(["register", pair["fixed"], pair["moving"], "-o", tmp_path / "out", "--blocks", "affine",
                    "--no-refine", "--weights", tmp_path / "weights", "--quiet"], capfd)
    assert str(path) in line and words in line, line
    assert not (tmp_path / "out").exists()


def test_cascade_producing_nan_writes_nothing(pair, tmp_path, capfd, monkeypatch):
    from TotalRegistratorLib.app import pipeline
    from TotalRegistratorLib.core.grid import Grid
    from TotalRegistratorLib.core.transform import Transform
    from TotalRegistratorLib.optimization.instance import Result

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(affine_payload(), weights / "affine.pt")

    def nan_cascade(fixed, moving, *args, **kwargs):  # what finite weights that overflow give
        return Result(fixed.image, moving.image, Transform(np.full((4, 4), np.nan)), Grid.from_image(fixed.image),
                      fixed.mask)

    monkeypatch.setattr(pipeline, "run_cascade", nan_cascade)
    line = refused(["register", pair["fixed"], pair["moving"], "-o", tmp_path / "out", "--blocks", "affine",
                    "--no-refine", "--weights", weights, "--quiet"], capfd)
    assert "cascade" in line and "NaN" in line and not (tmp_path / "out").exists()


def test_train_checks_weights_before_simulating_phantoms(tmp_path):
    out = tmp_path / "w"
    bad_weights("empty", out)
    result = run_train(["--block", "bone", "--phantom", "2", "--phantom-spacing", "16", "-o", out, "--quiet"])
    assert str(out / "affine.pt") in error_line(result, "train.py: error: ")
    assert not (out / "cache").exists(), "phantom pairs were simulated before the weights were checked"


@pytest.mark.parametrize("content", [b"", b"not a torch file", "tensor"])
def test_corrupt_resume_file_is_one_line(content, tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    resume = out / "affine.last.pt"
    if content == "tensor":
        torch.save(torch.zeros(2), resume)
    else:
        resume.write_bytes(content)
    result = run_train(["--block", "affine", "--phantom", "2", "--phantom-spacing", "16", "-o", out, "--quiet"])
    assert str(resume) in error_line(result, "train.py: error: ")


def test_train_refuses_a_pairs_csv_that_is_not_utf8(tmp_path, capfd):
    from TotalRegistratorLib.app.train_command import main as train

    csv = tmp_path / "pairs.csv"
    csv.write_bytes("fixed,moving\nf\xe9.nii.gz,m.nii.gz\n".encode("latin-1"))
    assert train(["--block", "affine", "--data", str(csv), "-o", str(tmp_path / "w")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(csv) in err[0] and "UTF-8" in err[0], err


def test_pairs_csv_entry_that_is_a_link_loop_is_not_called_missing(tmp_path):
    from TotalRegistratorLib.io.labels import read_pairs_csv

    write(torso(GRID), tmp_path / "fixed.nii.gz")
    (tmp_path / "loop.nii.gz").symlink_to(tmp_path / "loop.nii.gz")
    (tmp_path / "pairs.csv").write_text("fixed,moving\nfixed.nii.gz,loop.nii.gz\n")
    with pytest.raises(InputError, match=r"line 2: moving file .*loop\.nii\.gz: symbolic link loop"):
        read_pairs_csv(tmp_path / "pairs.csv")


# --- 12, 13: coordinates and label values ---------------------------------------------------------------
def test_huge_origin_is_refused(tmp_path):
    far = type(GRID)(GRID.size, GRID.spacing, (1e9, 1e9, 1e9))
    path = write(far.apply_to(sitk.GetImageFromArray(sitk.GetArrayFromImage(torso(GRID)))), tmp_path / "far.nii.gz")
    assert "lose precision" in input_error(path)


@pytest.mark.parametrize("values, pixel", [((-3, 5), np.int16), ((0, 70_000), np.int32)])
def test_integer_label_maps_outside_the_label_range_are_refused(values, pixel, tmp_path):
    array = np.zeros((4, 5, 6), pixel)
    array[0, 0, :2] = values
    path = write(sitk.GetImageFromArray(array), tmp_path / "labels.nii.gz")
    assert "0..65535" in input_error(path, labels=True)


def test_ct_passed_as_labels_is_refused(tmp_path):
    ct = write(sitk.Cast(torso(GRID), sitk.sitkInt16), tmp_path / "ct.nii.gz")
    assert "0..65535" in input_error(ct, labels=True)


# --- 14: landmarks ----------------------------------------------------------------------------------------
def test_landmarks_from_spreadsheet_csv(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffx,y,z\n1,2,3\n4,5,6\n".encode())
    semicolons = tmp_path / "semicolons.csv"
    semicolons.write_text("x;y;z\n1,5;2;3\n4;5;6,25\n")
    assert read_landmarks(bom).tolist() == [[1, 2, 3], [4, 5, 6]]
    assert read_landmarks(semicolons).tolist() == [[1.5, 2, 3], [4, 5, 6.25]]


def test_landmark_json_nested_or_in_an_unknown_system_is_refused(tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="nested too deeply"):
        read_landmarks(nested)
    unknown = tmp_path / "unknown.json"
    markup = {"coordinateSystem": "IJK", "controlPoints": [{"position": [1, 2, 3]}]}
    unknown.write_text(json.dumps({"markups": [markup]}))
    with pytest.raises(InputError, match="unknown coordinateSystem 'IJK'"):
        read_landmarks(unknown)


def test_every_markup_of_a_json_file_is_read_in_its_own_system(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"markups": [
        {"coordinateSystem": "RAS", "controlPoints": [{"position": [1, 2, 3]}]},
        {"coordinateSystem": "LPS", "controlPoints": [{"position": [4, 5, 6]}, {"position": [7, 8, 9]}]}]}))
    assert read_landmarks(path).tolist() == [[-1, -2, 3], [4, 5, 6], [7, 8, 9]]


# --- 18: one run per output folder ----------------------------------------------------------------------
def test_second_run_into_a_busy_output_folder_fails_at_once(pair, tmp_path):
    from TotalRegistratorLib.io.outputs import output_lock

    out = tmp_path / "out"
    with output_lock(out):  # another run (this process) is writing there
        line = error_line(run_cli(["register", pair["fixed"], pair["moving"], "-o", out, *FAST]))
    assert str(out) in line and "another run" in line and str(os.getpid()) in line
    assert not out.exists() and leftovers(tmp_path) == []


# --- 19: questionable inputs: one warning line each, recorded in the report; zero voxel size refused -------
def test_questionable_images_are_warned_about(tmp_path):
    ct = torso(GRID)
    eight_bit = write(sitk.Cast(sitk.Clamp(ct + 1000.0, lowerBound=0, upperBound=255), sitk.sitkUInt8),
                      tmp_path / "uint8.nii.gz")
    label_like = write(sitk.Cast(labels_of(ct), sitk.sitkInt16), tmp_path / "labels_as_ct.nii.gz")
    huge = sitk.Image(ct)
    huge.SetSpacing((1000.0, 1000.0, 1000.0))
    huge = write(huge, tmp_path / "huge.nrrd")
    for path, words in ((eight_bit, "8-bit"), (label_like, "looks like a label map"), (huge, "unusually large")):
        with pytest.warns(InputWarning, match=words):
            images.read_image(path)


def test_questionable_input_warning_reaches_stderr_and_report(pair, tmp_path):
    moving = write(sitk.Cast(sitk.Clamp(sitk.ReadImage(str(pair["moving"])) + 1000.0, lowerBound=0, upperBound=255),
                             sitk.sitkUInt8), tmp_path / "moving_uint8.nii.gz")
    result = run_cli(["register", pair["fixed"], moving, "-o", tmp_path / "out", *FAST])
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(WARNING_PREFIX) and "8-bit" in warnings[0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["warnings"] == [warnings[0].removeprefix(WARNING_PREFIX)]


def test_warnings_about_both_scans_come_fixed_first(pair, tmp_path):
    """The moving scan is read in another thread while the fixed one is; its warnings still come second."""
    eight_bit = {}
    for role in ("fixed", "moving"):
        image = sitk.Clamp(sitk.ReadImage(str(pair[role])) + 1000.0, lowerBound=0, upperBound=255)
        eight_bit[role] = write(sitk.Cast(image, sitk.sitkUInt8), tmp_path / f"{role}_uint8.nii.gz")
    result = run_cli(["register", eight_bit["fixed"], eight_bit["moving"], "-o", tmp_path / "out", *FAST])
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2 and all("8-bit" in line for line in warnings), warnings
    assert "fixed_uint8" in warnings[0] and "moving_uint8" in warnings[1], warnings
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["warnings"] == [line.removeprefix(WARNING_PREFIX) for line in warnings]


def test_zero_voxel_size_in_a_nifti_header_is_refused(tmp_path):
    path = write(torso(GRID), tmp_path / "zero.nii")
    data = bytearray(path.read_bytes())
    data[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1..3]
    path.write_bytes(bytes(data))
    assert "voxel size" in input_error(path)


# --- 2: the phantom command never removes what it did not write --------------------------------------------
def test_phantom_keeps_files_it_did_not_write(tmp_path, capfd):
    out = tmp_path / "pairs"
    out.mkdir()
    mine = {name: f"the user's {name}" for name in ("pair2024_notes.txt", "pair1_final_report.docx", "pair000_x")}
    for name, text in mine.items():
        (out / name).write_text(text)
    for pairs in ("2", "1"):
        assert main(["phantom", "-o", str(out), "--pairs", pairs, "--spacing", "16"]) == 0
    assert all((out / name).read_text() == text for name, text in mine.items())
    assert not (out / "pair001_fixed.nii.gz").exists() and leftovers(tmp_path) == []
    assert PREFIX not in capfd.readouterr().err


def test_a_volume_too_large_for_memory_is_refused_from_its_header(pair, tmp_path, capfd):
    """2048 x 2048 x 2000 int16 (16 GB of voxels): refused from the header alone (no data file exists), before
    any work, with the supported size, exit 2 and nothing written."""
    header = tmp_path / "huge.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 2048 2048 2000\nElementType = MET_SHORT\n"
                      "ElementSpacing = 0.3 0.3 0.3\nElementDataFile = huge.raw\n")
    line = refused(["register", pair["fixed"], header, "-o", tmp_path / "out"], capfd)
    assert "huge.mhd" in line and "2048 x 2048 x 2000" in line and "are supported" in line, line
    assert not (tmp_path / "out").exists()
