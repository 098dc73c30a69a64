"""Reading and writing images and transforms through SimpleITK, with full geometry.

Readers accept NIfTI, NRRD, MHA/MHD and any other format SimpleITK reads, and
DICOM series folders. Every problem is raised as :class:`InputError` with a
one-line message naming the file. Writers never leave a half-written file: they
write to a temporary name beside the target and rename it when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.grid import Grid
from ..errors import InputError
from .outputs import atomic_path


def _read(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path}: folder holds no DICOM series")
        if len(series) > 1:
            raise InputError(f"{path}: folder holds {len(series)} DICOM series; point to a folder with one")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D scalar image (file or DICOM folder) as stored, values unchecked (e.g. a reference grid).

    Raises :class:`InputError` for missing or unreadable files and images that are not 3D or have
    several components.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        image = _read(path)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise InputError(f"{path}: cannot read image ({reason[:160]})") from None
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputError(f"{path}: expected a 3D volume, got size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()}")
    return image


def read_image(path: str | os.PathLike, labels: bool = False) -> sitk.Image:
    """Read a 3D scalar image (file or DICOM folder) and check it is usable.

    CT images come back as float32 Hounsfield units, label maps (``labels=True``)
    as integers. Raises :class:`InputError` for missing or unreadable files,
    images that are not 3D, have several components, hold NaN, or (for CT) are
    constant, and label maps whose values are not whole numbers in 0..65535.
    """
    path = Path(path)
    image = read_volume(path)
    if labels:
        return image if image.GetPixelID() in _INTEGER_TYPES else _as_label_map(image, path)
    image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all() or _nifti_has_non_finite(path):
        raise InputError(f"{path}: image contains NaN or infinite voxels")
    if values.min() == values.max():
        raise InputError(f"{path}: image is constant ({values.min():g} everywhere)")
    return image


def _as_label_map(image: sitk.Image, path: Path) -> sitk.Image:
    """A label map stored as floats or 64-bit integers, as UInt16; refused unless every value is a
    whole number in 0..65535 (a linearly resampled label map has fractions: truncating them moves borders)."""
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
        raise InputError(f"{path}: label map holds values that are not whole numbers")
    if values.min() < 0 or values.max() > 65535:
        raise InputError(f"{path}: label values must lie in 0..65535, got {values.min():g}..{values.max():g}")
    return sitk.Cast(image, sitk.sitkUInt16)


def _nifti_has_non_finite(path: Path) -> bool:
    """Whether a floating-point NIfTI file stores NaN or inf (SimpleITK's reader turns them into 0)."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return False
    import nibabel

    nifti = nibabel.load(str(path))
    if not np.issubdtype(nifti.get_data_dtype(), np.floating):
        return False
    return not np.isfinite(np.asanyarray(nifti.dataobj)).all()


_INTEGER_TYPES = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32}


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write an image atomically; the format follows the extension (.nii.gz, .nrrd, .mha, ...)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)


def write_transform(transform: sitk.Transform, path: str | os.PathLike) -> None:
    """Write an ITK transform (.h5, .tfm) atomically."""
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read an ITK transform file, flattening a one-element composite."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such transform file")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise InputError(f"{path}: cannot read as an ITK transform") from None
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0)
    if transform.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D transform")
    return transform


def check_same_grid(image: sitk.Image, reference: sitk.Image, path: str | os.PathLike, reference_name: str) -> None:
    """Raise :class:`InputError` unless ``image`` (a label map read from ``path``) lies on ``reference``'s
    voxel grid: same size, and the corner voxels' centres agree to within 0.001 mm."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in reference.GetSize()], indexing="ij")).reshape(3, -1)
    points = np.vstack([corners, np.ones(corners.shape[1])])
    if image.GetSize() != reference.GetSize() or not np.allclose(
            Grid.from_image(image).index_to_world @ points, Grid.from_image(reference).index_to_world @ points,
            rtol=0, atol=1e-3):
        raise InputError(f"{path}: label map does not share the grid of {reference_name}")


