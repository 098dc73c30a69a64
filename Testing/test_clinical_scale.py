"""Clinical-size inputs: memory bounded by the working resolution, a real DICOM series end to end, and the
compact transform applied by SimpleITK equal to the library's own warp on an oblique, anisotropic grid.
benchmarks/clinical_scale.py measures the full 508 x 420 x 560 case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import rotation, shared_file, torso

from TotalRegistratorLib.core import fields
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.preprocess import Scan
from TotalRegistratorLib.io import images
from TotalRegistratorLib.optimization.instance import optimize_pair
from TotalRegistratorLib.optimization.optimizer import OptimizationSettings

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--iterations", "10,5", "--affine-iterations", "10,5", "--progress", "none"]
CLINICAL_VOXELS = 508 * 420 * 560  # the clinical pair of benchmarks/clinical_scale.py: at most 3 GB peak there
# What does not grow with the image: the interpreter with torch (~450 MB) and the optimisation on its working grid,
# which is capped at 2.5 M voxels whatever the scan's size (~900 MB measured here). The rest scales with the voxels.
WORKING_GRID_MB = 1500


def onto(image: sitk.Image, size, spacing, degrees: float = 0.0) -> sitk.Image:
    """``image`` resampled (int16) onto a grid of ``size`` and ``spacing`` centred on it, turned about z."""
    a = np.radians(degrees)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    centre = Grid.from_image(image).corners().mean(axis=0)
    origin = centre - direction @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    grid = Grid(tuple(size), tuple(spacing), tuple(origin), tuple(direction.ravel()))
    return sitk.Resample(image, grid.reference_image(sitk.sitkInt16), sitk.Transform(), sitk.sitkLinear, -1024,
                         sitk.sitkInt16)


def register(fixed, moving, out, *extra) -> dict:
    """``register`` in a fresh process (peak memory is the process's own); its report."""
    subprocess.run([sys.executable, "-m", "TotalRegistratorLib", "register", str(fixed), str(moving), "-o", str(out),
                    *FAST, *extra], check=True, cwd=ROOT, capture_output=True)
    return json.loads((out / "report.json").read_text())


def test_peak_memory_scales_with_the_working_grid_not_the_voxels(tmp_path):
    """256 x 256 x 300 voxels (a sixth of the clinical pair): the clinical 3 GB bound, its image-size part scaled
    to this size."""
    scan = images.read_image(shared_file("totalsegmentator/example_ct.nii.gz"))
    fixed, moving = onto(scan, (256, 256, 300), (1.4, 1.15, 1.1)), onto(scan, (240, 200, 260), (1.5, 1.5, 1.27), 5.0)
    images.write_image(fixed, tmp_path / "fixed.nii.gz")
    images.write_image(moving, tmp_path / "moving.nii.gz")
    report = register(tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", tmp_path / "out")
    voxels = 256 * 256 * 300
    bound = WORKING_GRID_MB + (3072 - WORKING_GRID_MB) * voxels / CLINICAL_VOXELS
    assert report["peak_memory_mb"] < bound, (report["peak_memory_mb"], bound)
    # default outputs: the warped image keeps the moving image's int16 pixels (the budget of 150 MB at clinical
    # size holds under 10 MB of transform on the parameter grid, which does not grow with the voxels)
    files = {p.name: p.stat().st_size / 2**20 for p in (tmp_path / "out").iterdir()}
    assert sitk.ReadImage(str(tmp_path / "out" / "warped.nii.gz")).GetPixelID() == sitk.sitkInt16
    assert files["warped.nii.gz"] < 2 * 256 * 256 * 300 / 2**20 * 0.6, files  # compressed below 60 % of raw int16
    assert sum(files.values()) < 10 + 140 * voxels / CLINICAL_VOXELS, files
    # the same anatomy on both sides: the map stays near the identity (the bound: 0.5 mm on average)
    assert report["field_in_body"]["displacement_mean_mm"] < 0.5


def test_a_real_dicom_series_registers_end_to_end(tmp_path):
    """The DICOM folder (20 slices of 512 x 512) as the moving image, its copy moved by a known shift as the fixed."""
    folder = shared_file("totalsegmentator/example_ct_dicom")
    moving = images.read_image(folder)
    shift = (6.0, -4.0, 3.0)
    fixed = sitk.Resample(moving, moving, sitk.TranslationTransform(3, shift), sitk.sitkLinear, -1024)
    images.write_image(fixed, tmp_path / "fixed.nrrd")
    report = register(tmp_path / "fixed.nrrd", folder, tmp_path / "out", "--spacing", "3")
    transform = sitk.ReadTransform(str(tmp_path / "out" / "transform.h5"))
    centre = Grid.from_image(moving).corners().mean(axis=0)
    recovered = np.subtract(transform.TransformPoint(tuple(centre)), centre)
    assert np.abs(recovered - shift).max() < 1.0, recovered
    assert report["similarity_local_ncc"]["after"] > report["similarity_local_ncc"]["before"]


@pytest.fixture(scope="module")
def oblique_result():
    """A registration whose fixed image is oblique and anisotropic (the exported field lives on the LPS
    working grid's lattice, not on the fixed grid)."""
    direction = rotation("z", 17) @ rotation("y", -8)
    size, spacing = np.array([70, 60, 30]), np.array([1.9, 2.3, 4.5])
    origin = -direction @ ((size - 1) * spacing / 2)
    grid = Grid(tuple(int(n) for n in size), tuple(spacing), tuple(origin), tuple(direction.ravel()))
    fixed, moving = torso(grid), torso(Grid((64, 48, 40), (2.5, 2.5, 3.0), (-80.0, -60.0, -60.0)),
                                       shift=(4.0, -3.0, 5.0), noise_seed=2)
    settings = OptimizationSettings(affine_iterations=(20, 10), deformable_iterations=(20, 10), spacing=3.0)
    return optimize_pair(Scan(fixed, "fixed"), Scan(moving, "moving"), settings), fixed, moving


def test_the_compact_transform_reproduces_the_library_warp(oblique_result):
    result, fixed, moving = oblique_result
    exported = result.to_sitk()
    assert isinstance(exported, sitk.DisplacementFieldTransform)
    field_grid = Grid.from_image(exported.GetDisplacementField())
    # on the residual's own lattice (the optimiser's parameter grid, twice the working spacing), 8x fewer voxels
    residual_grid = result.transform.grid
    assert field_grid.spacing == residual_grid.spacing and field_grid.num_voxels < 2 * residual_grid.num_voxels
    assert np.all(np.asarray(residual_grid.spacing) > 1.9 * np.asarray(result.grid.spacing))
    # SimpleITK's warp through the file equals the library's own on the full-resolution fixed grid
    itk = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, exported, sitk.sitkLinear, -1000.0, sitk.sitkFloat32))
    fixed_grid = Grid.from_image(fixed)
    tensor = torch.as_tensor(sitk.GetArrayFromImage(moving), dtype=torch.float32)[None, None]
    field = result.transform.field_on(fixed_grid)
    library = fields.warp(tensor, Grid.from_image(moving), field, fixed_grid)[0, 0].numpy()
    # where the mapped points lie between the moving grid's edge voxel centres (ITK and torch extrapolate
    # differently in the outer half voxel)
    interior = fields.inside(fields.mapped_points(field, fixed_grid), Grid.from_image(moving), margin=0.0)[0].numpy()
    assert interior.mean() > 0.5
    value_range = float(sitk.GetArrayViewFromImage(moving).max() - sitk.GetArrayViewFromImage(moving).min())
    assert np.abs(itk - library)[interior].max() <= 1e-3 * value_range
    # TransformPoint agrees with the library's map to 0.01 mm, also between voxel centres
    points = fixed_grid.transform_indices(np.random.default_rng(0).uniform(0, np.array(fixed_grid.size) - 1,
                                                                             (200, 3)))
    itk_points = np.array([exported.TransformPoint(tuple(p)) for p in points])
    assert np.abs(itk_points - result.transform.apply(points)).max() < 0.01
