"""Issue 13: seeded fuzzing of image headers (spacing, direction incl. sheared and degenerate, origin, size,
pixel type, format, truncation). Every draw either ends with exit 2 and one stderr line naming the file and
no outputs, or succeeds with outputs that agree with the transform: warped.nii.gz lies on the fixed image's
grid as any reader sees it and equals ``sitk.Resample`` of the moving image through transform.h5."""

from __future__ import annotations

import json
import time

import numpy as np
import SimpleITK as sitk
from cli_helpers import FAST, PREFIX, leftovers, small_pair
from conftest import rotation, torso

from TotalRegistratorLib.app.cli import main
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.registry import WARNING_PREFIX

DRAWS = 24
SEED = 13


def draw_header(rng: np.random.Generator) -> dict:
    """One random header; most draws are plausible CT geometry, the rest extreme."""
    size = tuple(int(n) for n in rng.integers(10, 25, 3))
    spacing = rng.choice([rng.uniform(3, 8, 3), rng.uniform(0.3, 1, 3), rng.uniform(20, 1000, 3)], p=[.7, .15, .15])
    direction = rotation("z", rng.uniform(-40, 40)) @ rotation("x", rng.uniform(-20, 20))
    shape = rng.choice(["rotated", "flipped", "sheared", "degenerate"], p=[.55, .2, .15, .1])
    if shape == "flipped":
        direction = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], 3)
    elif shape == "sheared":
        direction = direction + np.triu(rng.uniform(0.2, 0.6, (3, 3)), 1)
    elif shape == "degenerate":
        direction[:, 1] = direction[:, 0]
    extent = (np.asarray(size) - 1) * spacing
    origin = -(direction @ (extent / 2)) + rng.normal(0, 10, 3)
    place = rng.choice(["centred", "far", "huge"], p=[.8, .1, .1])
    origin = origin + {"centred": 0.0, "far": 5000.0, "huge": 1e9}[place]
    return {"size": size, "spacing": spacing, "direction": direction, "origin": origin,
            "pixel": rng.choice(["int16", "uint8", "float32", "int32"], p=[.6, .1, .2, .1]),
            "suffix": rng.choice([".nii.gz", ".nrrd", ".mha"], p=[.5, .25, .25]),
            "truncate": bool(rng.random() < 0.15)}


def write_drawn(header: dict, path) -> None:
    """A torso on the drawn header, written with the header as given (ITK writes what it can)."""
    direction = header["direction"]
    grid = Grid(header["size"], tuple(header["spacing"]), tuple(header["origin"]),
                tuple(np.linalg.qr(direction)[0].ravel()) if abs(np.linalg.det(direction)) > 1e-6 else
                tuple(np.eye(3).ravel()))
    values = sitk.GetArrayFromImage(torso(grid))
    if header["pixel"] == "uint8":
        values = np.clip(values + 1000, 0, 255)
    image = sitk.GetImageFromArray(values.astype(header["pixel"]))
    image.SetSpacing(tuple(float(s) for s in header["spacing"]))
    image.SetOrigin(tuple(float(o) for o in header["origin"]))
    normalised = direction / np.linalg.norm(direction, axis=0)
    try:
        image.SetDirection(tuple(normalised.ravel()))
    except RuntimeError:  # ITK refuses a singular direction: write it into the NRRD text instead
        image.SetDirection(tuple(np.eye(3).ravel()))
        if path.suffix == ".nrrd":
            sitk.WriteImage(image, str(path), False)
            text = path.read_bytes()
            start = text.index(b"space directions: ")
            columns = " ".join("(" + ",".join(f"{v:.6f}" for v in c) + ")" for c in (normalised * header["spacing"]).T)
            path.write_bytes(text[:start] + f"space directions: {columns}".encode() + text[text.index(b"\n", start):])
            return
    sitk.WriteImage(image, str(path), path.suffix != ".nrrd")


def check_outputs_agree(out, fixed_path, moving_path) -> None:
    fixed = sitk.ReadImage(str(fixed_path))
    warped = sitk.ReadImage(str(out / "warped.nii.gz"))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(warped, get)(), getattr(fixed, get)(), atol=1e-3, err_msg=get)
    moving = sitk.Cast(sitk.ReadImage(str(moving_path)), sitk.sitkFloat32)
    expected = sitk.Resample(moving, fixed, sitk.ReadTransform(str(out / "transform.h5")), sitk.sitkLinear, -1000.0,
                             sitk.sitkFloat32)
    difference = np.abs(sitk.GetArrayFromImage(expected) - sitk.GetArrayFromImage(sitk.Cast(warped, sitk.sitkFloat32)))
    assert difference.max() < 0.05, difference.max()


def test_random_headers_are_refused_clearly_or_registered_consistently(tmp_path, capfd):
    rng = np.random.default_rng(SEED)
    pair = small_pair(tmp_path / "pair")
    outcomes = []
    started = time.perf_counter()
    for draw in range(DRAWS):
        header = draw_header(rng)
        fixed = tmp_path / f"fixed{draw}{header['suffix']}"
        write_drawn(header, fixed)
        if header["truncate"]:
            fixed.write_bytes(fixed.read_bytes()[: fixed.stat().st_size * 2 // 3])
        out = tmp_path / f"out{draw}"
        capfd.readouterr()  # what writing the drawn file printed
        code = main(["register", str(fixed), str(pair["moving"]), "-o", str(out), *FAST])
        err = capfd.readouterr().err.strip().splitlines()
        context = f"draw {draw}: {header}\n{err}"
        if code == 2:
            assert len(err) == 1 and err[0].startswith(PREFIX) and str(fixed) in err[0], context
            assert not out.exists(), context
        else:
            assert code == 0, context
            assert all(line.startswith(WARNING_PREFIX) for line in err), context
            check_outputs_agree(out, fixed, pair["moving"])
            assert len(json.loads((out / "report.json").read_text())["warnings"]) == len(err), context
        outcomes.append(code)
    assert leftovers(tmp_path) == []
    assert 0 in outcomes and 2 in outcomes, outcomes  # the draws exercise both paths
    print(f"{DRAWS} draws in {time.perf_counter() - started:.0f} s: {outcomes}")
