"""The command line end to end: register, warp, evaluate, and every bad input of the foundation issue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import torso
from PIL import Image

from TotalRegistratorLib.app.cli import main
from TotalRegistratorLib.core import metrics
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.preprocess import Scan, network_grid
from TotalRegistratorLib.optimization.optimizer import resolve_device
from TotalRegistratorLib.registry import DEFAULT_OUTPUTS, OUTPUT_TABLE, OUTPUTS

GRID = Grid((40, 30, 32), (5.0, 5.0, 5.0), (-100.0, -75.0, -80.0))
QUICK = ["--iterations", "20,10", "--affine-iterations", "20,10", "--quiet"]
IO_QUICK = ["--blocks", "none", *QUICK]  # instance optimisation alone, whatever weights ship


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def labels_of(image: sitk.Image) -> sitk.Image:
    """Crude label map of a torso image: 1 lung, 2 soft tissue, 3 bone."""
    hu = sitk.GetArrayFromImage(image)
    labels = np.select([hu < -500, hu > 300, hu > -200], [0, 3, 2], 0).astype(np.uint8)
    labels[(hu < -600) & (hu > -950)] = 1
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pair")
    fixed = torso(GRID)
    moving = torso(GRID, shift=(6.0, -4.0, 5.0), noise_seed=1)
    return {"fixed": write(fixed, folder / "fixed.nii.gz"), "moving": write(moving, folder / "moving.mha"),
            "fixed_labels": write(labels_of(fixed), folder / "fixed_labels.nii.gz"),
            "moving_labels": write(labels_of(moving), folder / "moving_labels.nrrd")}


@pytest.fixture(scope="module")
def registered(pair, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "result"
    code = main(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(out),
                 "--fixed-labels", str(pair["fixed_labels"]), "--moving-labels", str(pair["moving_labels"]),
                 "--outputs", ",".join(OUTPUTS), *IO_QUICK])
    assert code == 0
    return out


def test_register_writes_the_default_outputs_only(pair, tmp_path):
    out = tmp_path / "out"
    assert main(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(out), *IO_QUICK]) == 0
    expected = {f for o in OUTPUT_TABLE if o.name in DEFAULT_OUTPUTS for f in o.files} | {"report.json"}
    assert {p.name for p in out.iterdir()} == expected
    assert json.loads((out / "report.json").read_text())["outputs"] == list(DEFAULT_OUTPUTS)


def test_register_writes_every_output(registered, pair):
    for name in (*(f for o in OUTPUT_TABLE for f in o.files), "report.json"):
        assert (registered / name).is_file(), name
    assert not list(registered.parent.glob(".*partial*")), "staging folder left behind"
    fixed = sitk.ReadImage(str(pair["fixed"]))
    for name in ("warped.nii.gz", "subtraction_before.nii.gz", "subtraction_after.nii.gz"):
        image = sitk.ReadImage(str(registered / name))
        assert image.GetSize() == fixed.GetSize(), name
        assert np.allclose(Grid.from_image(image).index_to_world, Grid.from_image(fixed).index_to_world, atol=1e-4)
    # the field is written on the compact export grid: the working grid's lattice over the fixed image's box
    displacement = Grid.from_image(sitk.ReadImage(str(registered / "displacement.nii.gz")))
    export = json.loads((registered / "report.json").read_text())["export_grid"]
    assert list(displacement.size) == export["size"] and np.allclose(displacement.spacing, export["spacing_mm"])
    inside = displacement.transform_points(Grid.from_image(fixed).corners())
    assert (inside > -1e-6).all() and (inside < np.asarray(displacement.size) - 1 + 1e-6).all()
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(registered / "subtraction_before.nii.gz")))
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(registered / "subtraction_after.nii.gz")))
    assert after.mean() < 0.7 * before.mean()

    report = json.loads((registered / "report.json").read_text())
    assert report["similarity_local_ncc"]["after"] > report["similarity_local_ncc"]["before"]
    assert report["dice"]["mean_after"] > report["dice"]["mean_before"]
    assert report["field_in_body"]["folding_percent"] < 1.0
    timings = report["timings_s"]
    stages = ("read", "preprocess", "pyramid", "affine", "deformable", "export", "write")
    assert set(timings) == {*stages, "total"}
    assert all(timings[stage] > 0 for stage in stages)
    assert timings["total"] == pytest.approx(sum(timings[stage] for stage in stages))
    assert report["peak_memory_mb"] > 0 and report["versions"]["torch"].startswith("2.13")
    assert report["device"] == str(resolve_device("auto")) and report["weights"] is None  # no cascade ran


def test_exported_transform_matches_displacement_image(registered):
    transform = sitk.ReadTransform(str(registered / "transform.h5"))
    displacement = sitk.ReadImage(str(registered / "displacement.nii.gz"))
    index = [s // 2 for s in displacement.GetSize()]
    point = np.array(displacement.TransformIndexToPhysicalPoint(index))
    moved = np.array(transform.TransformPoint(tuple(point)))
    assert np.allclose(moved - point, displacement[index], atol=1e-3)


def test_warp_command_equals_simpleitk(registered, pair, tmp_path):
    out = tmp_path / "warped_labels.nii.gz"
    code = main(["warp", str(pair["moving_labels"]), str(registered / "transform.h5"), "--reference",
                 str(pair["fixed"]), "--labels", "-o", str(out)])
    assert code == 0
    expected = sitk.Resample(sitk.ReadImage(str(pair["moving_labels"])), sitk.ReadImage(str(pair["fixed"])),
                             sitk.ReadTransform(str(registered / "transform.h5")), sitk.sitkNearestNeighbor, 0)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(expected))


def test_evaluate_command(registered, pair, tmp_path, capsys):
    fixed_points = np.array([[10.0, 5.0, 0.0], [-20.0, 10.0, 15.0], [30.0, -10.0, -20.0]])
    moving_points = fixed_points + [6.0, -4.0, 5.0]  # the torso pair's shift
    np.savetxt(tmp_path / "fixed.csv", fixed_points, delimiter=",", header="x,y,z", comments="")
    ras = {"markups": [{"coordinateSystem": "RAS", "controlPoints": [
        {"position": [-p[0], -p[1], p[2]]} for p in moving_points]}]}
    (tmp_path / "moving.mrk.json").write_text(json.dumps(ras))
    out = tmp_path / "evaluation.json"
    code = main(["evaluate", "--labels", str(pair["fixed_labels"]), str(registered / "warped_labels.nii.gz"),
                 "--transform", str(registered / "transform.h5"), "--mask", str(pair["fixed_labels"]),
                 "--landmarks", str(tmp_path / "fixed.csv"), str(tmp_path / "moving.mrk.json"), "-o", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["tre_mm"]["before_mean"] == pytest.approx(np.linalg.norm([6.0, -4.0, 5.0]), abs=1e-6)
    # 1.55 mm after 20,10 iterations (1.48 with session 11's smaller steps): the larger coarse steps also move
    # flat regions, where these points partly lie, a little
    assert report["tre_mm"]["after_mean"] < 2.0
    assert report["dice_mean"] > 0.8
    assert report["field"]["folding_percent"] < 1.0


# --- bad input: one line naming the file, exit code 2, no outputs -----------------------------------


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "TotalRegistratorLib", *args], capture_output=True, text=True,
                          timeout=300)


def bad_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected words in the message)."""
    ct = torso(GRID)
    cases = {}
    (folder / "garbage.nii.gz").write_bytes(b"not an image at all")
    cases["unreadable"] = (folder / "garbage.nii.gz", "cannot read")
    cases["missing"] = (folder / "missing.nii.gz", "no such file")
    flat = sitk.Image([30, 30], sitk.sitkFloat32)
    cases["2d"] = (write(flat + 1.0, folder / "flat.nii.gz"), "3D")
    vector = sitk.Compose([ct, ct, ct])
    cases["multi-component"] = (write(vector, folder / "vector.mha"), "one value per voxel")
    cases["constant"] = (write(ct * 0.0, folder / "constant.nii.gz"), "constant")
    nan = sitk.GetArrayFromImage(ct)
    nan[5, 5, 5] = np.nan
    nan_image = sitk.GetImageFromArray(nan)
    nan_image.CopyInformation(ct)
    cases["nan"] = (write(nan_image, folder / "nan.mha"), "NaN")  # the NIfTI writer would drop the NaN
    air = np.random.default_rng(0).uniform(-1010, -990, GRID.shape).astype(np.float32)
    cases["no body"] = (write(GRID.apply_to(sitk.GetImageFromArray(air)), folder / "air.nii.gz"), "no body")
    far = Grid(GRID.size, GRID.spacing, (5000.0, 0.0, 0.0))  # the same voxels, 5 m away
    far_image = far.apply_to(sitk.GetImageFromArray(sitk.GetArrayFromImage(ct)))
    cases["no overlap"] = (write(far_image, folder / "far.nii.gz"), "does not overlap")
    return cases


@pytest.mark.parametrize("case", ["unreadable", "missing", "2d", "multi-component", "constant", "nan", "no body",
                                  "no overlap"])
def test_bad_moving_image_fails_cleanly(case, pair, tmp_path):
    path, words = bad_images(tmp_path)[case]
    before = path.read_bytes() if path.exists() else None
    out = tmp_path / "out"
    result = run_cli(["register", str(pair["fixed"]), str(path), "-o", str(out), *IO_QUICK])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("totalregistrator: error: "), result.stderr
    assert str(path) in lines[0] and words in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out.partial*")), "partial outputs left behind"
    assert (path.read_bytes() if path.exists() else None) == before, "input was modified"


def test_the_command_ends_with_its_summary_and_outputs_complete(pair, tmp_path):
    """The process skips the interpreter's teardown (``running.exit_now``): its piped stdout still carries the
    summary line, and every output it names is complete."""
    out = tmp_path / "out"
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout a block-buffered pipe
    result = subprocess.run([sys.executable, "-m", "TotalRegistratorLib", "register", str(pair["fixed"]),
                             str(pair["moving"]), "-o", str(out), *IO_QUICK], capture_output=True, text=True,
                            timeout=300, env=buffered)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["output"] == str(out)
    assert json.loads((out / "report.json").read_text())["outputs"] == ["transform", "warped", "overview"]
    assert sitk.ReadImage(str(out / "warped.nii.gz")).GetSize() == sitk.ReadImage(str(pair["fixed"])).GetSize()
    assert sitk.ReadTransform(str(out / "transform.h5")).GetName() == "DisplacementFieldTransform"
    assert Image.open(out / "overview.png").size[0] > 800


def test_output_folder_that_is_a_file(pair, tmp_path):
    out = tmp_path / "taken"
    out.write_text("keep me")
    result = run_cli(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(out), *IO_QUICK])
    assert result.returncode == 2
    assert result.stderr.strip() == f"totalregistrator: error: {out}: output folder is a file"
    assert out.read_text() == "keep me"


def test_failure_during_writing_leaves_no_outputs(pair, tmp_path, monkeypatch):
    from TotalRegistratorLib.app import register_job

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(register_job, "save_overview", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        main(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(out), *IO_QUICK])
    assert not out.exists() and not list(tmp_path.iterdir())


def test_warp_refuses_to_overwrite_its_input(registered, pair):
    result = run_cli(["warp", str(pair["moving_labels"]), str(registered / "transform.h5"), "--reference",
                      str(pair["fixed"]), "--labels", "-o", str(pair["moving_labels"])])
    assert result.returncode == 2 and "overwrite an input" in result.stderr


def test_dice_of_warped_labels_is_what_report_says(registered, pair):
    report = json.loads((registered / "report.json").read_text())
    fixed = sitk.GetArrayFromImage(sitk.ReadImage(str(pair["fixed_labels"])))
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(registered / "warped_labels.nii.gz")))
    scores = metrics.dice(fixed, warped)
    assert np.nanmean(list(scores.values())) == pytest.approx(report["dice"]["mean_after"], abs=1e-9)


# --- the cascade through the command line (untrained blocks on a small grid: conventions, not accuracy) ----


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory) -> Path:
    from TotalRegistratorLib.learned.cascade import BLOCKS, block_config, build_network, save_block

    folder = tmp_path_factory.mktemp("weights")
    for block in BLOCKS:
        config = block_config(block, size=(32, 24, 40))
        save_block(folder / f"{block}.pt", build_network(config), config)
    return folder


def test_affine_only_cascade_writes_a_linear_transform(pair, untrained_weights, tmp_path):
    out = tmp_path / "affine"
    assert main(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(out), "--blocks", "affine",
                 "--no-refine", "--weights", str(untrained_weights), "--outputs", "transform,displacement",
                 *QUICK]) == 0
    transform = sitk.ReadTransform(str(out / "transform.h5"))
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(0)
    assert transform.GetName() == "AffineTransform"
    # an untrained affine block is the identity in network space: the map between the two body boxes
    boxes = [network_grid(Scan(sitk.ReadImage(str(pair[side]))), size=(32, 24, 40)) for side in ("fixed", "moving")]
    box_map = boxes[1].index_to_world @ boxes[0].world_to_index
    matrix = np.eye(4)
    matrix[:3, :3] = np.reshape(transform.GetMatrix(), (3, 3))
    matrix[:3, 3] = np.add(transform.GetTranslation(), transform.GetCenter()) - matrix[:3, :3] @ transform.GetCenter()
    np.testing.assert_allclose(matrix, box_map, atol=1e-4)
    report = json.loads((out / "report.json").read_text())
    assert report["blocks"] == ["affine"] and report["refine"] is False and "cascade" in report["timings_s"]
    np.testing.assert_allclose(report["affine_matrix"], box_map, atol=1e-4)
    point = (10.0, -5.0, 20.0)
    displacement = sitk.ReadImage(str(out / "displacement.nii.gz"))
    index = displacement.TransformPhysicalPointToIndex(point)
    centre = displacement.TransformIndexToPhysicalPoint(index)
    assert np.allclose(np.array(transform.TransformPoint(centre)) - centre, displacement[index], atol=1e-3)


def test_cascade_then_refinement_improves_on_the_cascade(pair, untrained_weights, tmp_path):
    results = {}
    for name, extra in (("cascade", ["--no-refine"]), ("refined", [])):
        out = tmp_path / name
        assert main(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(out), "--blocks", "all",
                     "--weights", str(untrained_weights), *extra, *QUICK]) == 0
        results[name] = json.loads((out / "report.json").read_text())
    assert "refine_deformable" in results["refined"]["timings_s"]
    ncc = {name: r["similarity_local_ncc"]["after"] for name, r in results.items()}
    assert ncc["refined"] > ncc["cascade"] + 0.05, ncc


def run_main(args: list[str], capsys) -> tuple[int, list[str]]:
    """The command in this process: (exit code, stderr lines); argparse's own errors raise SystemExit."""
    try:
        code = main(args)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("option, value, words", [
    ("--export-spacing", "0", "must be greater than 0"), ("--spacing", "-2", "must be greater than 0"),
    ("--threads", "0", "must be greater than 0"), ("--spacing", "inf", "must be a finite number"),
    ("--smoothness", "nan", "must be a finite number"), ("--smoothness", "-1", "must be 0 or more"),
    ("--seed", "-1", "must be 0 or more")])
def test_numbers_out_of_range(option, value, words, pair, tmp_path, capsys):
    code, err = run_main(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(tmp_path / "o"), option,
                          value], capsys)
    assert code == 2 and f"{option}: {words}" in err[-1], err
    assert not (tmp_path / "o").exists()


def test_register_refuses_to_overwrite_an_input_in_its_output_folder(pair, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    inside = write(sitk.ReadImage(str(pair["fixed"])), out / "warped.nii.gz")  # the fixed image, named as an output
    before = inside.read_bytes()
    code, err = run_main(["register", str(inside), str(pair["moving"]), "-o", str(out), *IO_QUICK], capsys)
    assert code == 2 and err == [f"totalregistrator: error: {inside}: output would overwrite an input"]
    assert inside.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["warped.nii.gz"]


def test_output_staging_is_inside_an_existing_output_folder(tmp_path):
    from TotalRegistratorLib.io.outputs import OutputFolder

    (tmp_path / "out").mkdir()
    with OutputFolder(tmp_path / "out") as existing:  # its parent may be read-only
        assert existing.staging.parent == tmp_path / "out"
    with OutputFolder(tmp_path / "new") as fresh:
        assert fresh.staging.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"] and not any((tmp_path / "out").iterdir())


def test_landmark_csv_columns_by_header(tmp_path):
    from TotalRegistratorLib.io.landmarks import read_landmarks

    (tmp_path / "points.csv").write_text("label,x,y,z,selected\nF-1,1,2,3,1\nF-2,4,5,6,0\n")
    assert read_landmarks(tmp_path / "points.csv").tolist() == [[1, 2, 3], [4, 5, 6]]
    (tmp_path / "plain.csv").write_text("1,2,3\n4,5,6\n")
    assert read_landmarks(tmp_path / "plain.csv").tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("case", ["two columns", "json list", "null position", "no points", "empty mask",
                                  "report over a landmark file"])
def test_evaluate_bad_inputs(case, registered, pair, tmp_path, capsys):
    points = tmp_path / "points.csv"
    points.write_text("1,2,3\n4,5,6\n")
    bad = tmp_path / "bad.mrk.json"
    args = ["evaluate", "--transform", str(registered / "transform.h5")]
    if case == "two columns":
        (tmp_path / "bad.csv").write_text("1,2\n3,4\n5,6\n")  # six numbers: reshaped, they would pass as two points
        args += ["--landmarks", str(points), str(tmp_path / "bad.csv")]
        expected = f"{tmp_path / 'bad.csv'}: landmarks must be one or more rows of three finite numbers"
    elif case in ("json list", "null position", "no points"):
        bad.write_text(json.dumps({"json list": [1, 2],
                                   "null position": {"markups": [{"controlPoints": [{"position": None}]}]},
                                   "no points": {"markups": [{"controlPoints": []}]}}[case]))
        args += ["--landmarks", str(points), str(bad)]
        expected = f"{bad}: "
    elif case == "empty mask":
        empty = sitk.ReadImage(str(pair["fixed_labels"])) * 0
        args += ["--mask", str(write(empty, tmp_path / "empty.nii.gz"))]
        expected = f"{tmp_path / 'empty.nii.gz'}: mask has no voxels on the transform's grid"
    else:
        markups = json.dumps({"markups": [{"controlPoints": [{"position": [1, 2, 3]}, {"position": [4, 5, 6]}]}]})
        bad.write_text(markups)
        args += ["--landmarks", str(points), str(bad), "-o", str(bad)]
        expected = f"{bad}: output would overwrite an input"
    code, err = run_main(args, capsys)
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert points.read_text() == "1,2,3\n4,5,6\n" and (case != "report over a landmark file" or
                                                         bad.read_text() == markups)


@pytest.mark.parametrize("command", ["warp", "evaluate"])
@pytest.mark.parametrize("name, words", [("out.png", "cannot write this format"), ("folder", "is a folder"),
                                         ("file/out{suffix}", "cannot be created in")])
def test_bad_output_paths_of_warp_and_evaluate(command, name, words, registered, pair, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    output = tmp_path / name.format(suffix={"warp": ".nii.gz", "evaluate": ".json"}[command])
    args = {"warp": ["warp", str(pair["moving"]), str(registered / "transform.h5"), "--reference",
                     str(pair["fixed"])],
            "evaluate": ["evaluate", "--transform", str(registered / "transform.h5")]}[command]
    result = run_cli([*args, "-o", str(output)])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and f"{output}: " in lines[0] and words in lines[0], \
        result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


def test_evaluate_accepts_the_affine_transform_of_an_affine_only_run(tmp_path, pair):
    affine = sitk.AffineTransform(3)
    affine.SetTranslation((6.0, -4.0, 5.0))
    sitk.WriteTransform(affine, str(tmp_path / "transform.h5"))
    np.savetxt(tmp_path / "fixed.csv", [[0.0, 0.0, 0.0], [10.0, 20.0, 30.0]], delimiter=",")
    np.savetxt(tmp_path / "moving.csv", [[6.0, -4.0, 5.0], [16.0, 16.0, 35.0]], delimiter=",")
    out = tmp_path / "evaluation.json"
    assert main(["evaluate", "--transform", str(tmp_path / "transform.h5"), "--landmarks",
                 str(tmp_path / "fixed.csv"), str(tmp_path / "moving.csv"), "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["linear"]["determinant"] == pytest.approx(1.0)
    assert report["tre_mm"]["after_mean"] == pytest.approx(0.0, abs=1e-9)


def test_evaluate_refuses_label_maps_on_different_grids(pair, tmp_path):
    moved = sitk.ReadImage(str(pair["fixed_labels"]))
    moved.SetOrigin([o + 5.0 for o in moved.GetOrigin()])  # same size, shifted 5 mm
    path = write(moved, tmp_path / "shifted.nii.gz")
    result = run_cli(["evaluate", "--labels", str(pair["fixed_labels"]), str(path)])
    assert result.returncode == 2 and f"{path}: label map does not share the grid of" in result.stderr


def test_unknown_block_and_missing_weights_are_input_errors(pair, tmp_path):
    result = run_cli(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(tmp_path / "o"),
                      "--blocks", "lungs"])
    assert result.returncode == 2 and "unknown block" in result.stderr
    result = run_cli(["register", str(pair["fixed"]), str(pair["moving"]), "-o", str(tmp_path / "o"),
                      "--blocks", "all", "--weights", str(tmp_path)])
    assert result.returncode == 2 and f"{tmp_path}" in result.stderr and "affine.pt" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, value, words", [("--seed", "-1", "must be 0 or more"),
                                                  ("--spacing", "nan", "spacing must be one or three positive"),
                                                  ("--spacing", "inf,1,1", "spacing must be one or three positive")])
def test_phantom_bad_numbers(option, value, words, tmp_path, capsys):
    code, err = run_main(["phantom", "-o", str(tmp_path / "p"), option, value], capsys)
    assert code == 2 and f"{option}: {words}" in err[-1], err
    assert not (tmp_path / "p").exists()


def test_phantom_rerun_leaves_only_the_pairs_it_lists(tmp_path):
    out = tmp_path / "pairs"
    assert main(["phantom", "-o", str(out), "--pairs", "2", "--kind", "intra", "--spacing", "8"]) == 0
    assert (out / "pair001_transform.h5").exists()
    assert main(["phantom", "-o", str(out), "--pairs", "1", "--kind", "inter", "--spacing", "8"]) == 0
    listed = (out / "pairs.csv").read_text()
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gallery.png", "pair000_fixed.nii.gz", "pair000_fixed_labels.nii.gz", "pair000_moving.nii.gz",
                     "pair000_moving_labels.nii.gz", "pairs.csv"]  # no intra transform, no second pair
    assert all(name in listed for name in files if name.startswith("pair0"))
