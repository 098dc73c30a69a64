"""Reading and writing images and transforms through SimpleITK, with full geometry.

Readers accept NIfTI, NRRD, MHA/MHD and any other format SimpleITK reads, and
DICOM series folders. Every problem is raised as :class:`InputError` with a
one-line message naming the file. Writers never leave a half-written file: they
write to a temporary name beside the target and rename it when complete.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.grid import Grid
from ..errors import InputError
from . import compression, messages, validation
from .outputs import atomic_path


def _read(path: Path) -> sitk.Image:
    """The image at ``path`` (a file, or a folder of one DICOM series), its size checked before its voxels
    are read (:func:`validation.check_volume_size`). A NIfTI file's data is checked
    (:func:`validation.check_nifti_data`) while ITK reads it, in a second thread, and its refusal wins."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path}: folder holds no DICOM series")
        if len(series) > 1:
            raise InputError(f"{path}: folder holds {len(series)} DICOM series; point to a folder with one")
        files = reader.GetGDCMSeriesFileNames(str(path), series[0])
        validation.check_volume_size((*_header(Path(files[0])).GetSize()[:2], len(files)), path)
        reader.SetFileNames(files)
        return reader.Execute()
    expected = validation.check_nifti_header(path) if validation.is_nifti(path) else None
    reader = _header(path)
    validation.check_volume_size(reader.GetSize(), path)
    if expected is None:
        return reader.Execute()
    with ThreadPoolExecutor(1) as pool:
        checked = pool.submit(validation.check_nifti_data, path, expected)
        try:
            image = reader.Execute()
        finally:
            checked.result()  # raises the data's refusal, before any error of ITK's
    return image


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D scalar image (file or DICOM folder) as stored, values unchecked (e.g. a reference grid).

    Raises :class:`InputError` for missing, unreadable, special (pipes, devices) or truncated files,
    unusable headers (:mod:`.validation`) and images that are not 3D or have several components.
    """
    path = validation.check_input_path(path)
    try:
        with messages.library_output() as caught:
            image = _read(path)
    except RuntimeError as err:
        raise InputError(f"{path}: cannot read image ({_reason(err, caught)})") from None
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputError(f"{path}: expected a 3D volume, got size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()}")
    validation.check_geometry(image, path)
    return image


# ITK's words -> what they mean for the user (ITK's own text for a truncated MetaImage is "No such file")
_REASONS = (("Zero-valued spacing", "voxel size 0 in the header"),
            ("determinant is 0", "degenerate voxel axes in the header (singular direction matrix)"),
            ("not read completely", "file is truncated: less data than its header says"),
            ("No such file or directory", "file is truncated or corrupt"))


def _reason(err: RuntimeError, caught: list[str]) -> str:
    """One readable line from an ITK exception and what ITK printed meanwhile."""
    text = "\n".join([str(err), *caught])
    known = next((reason for words, reason in _REASONS if words in text), None)
    if known:
        return known
    match = re.search(r"ITK ERROR: [^:]*: *(.+)", str(err))
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (match.group(1) if match else lines[-1] if lines else "unknown error")[:160]


def read_image(path: str | os.PathLike, labels: bool = False) -> sitk.Image:
    """Read a 3D scalar image (file or DICOM folder) and check it is usable.

    CT images keep their integer pixel type (no full-size float copy of a clinical scan; outputs such as
    the warped image keep it too); floating-point ones come back as float32. Label maps
    (``labels=True``) come back as integers. Raises :class:`InputError` for the problems of :func:`read_volume`,
    images that hold NaN or (for CT) are constant, and label maps whose values are not whole
    numbers in 0..65535. Questionable CT images (8-bit, label-like, huge voxels) are warned about.
    """
    path = Path(path)
    image = read_volume(path)
    if labels:
        validation.check_label_values(sitk.GetArrayViewFromImage(image), path)
        return image if image.GetPixelID() in _INTEGER_TYPES else sitk.Cast(image, sitk.sitkUInt16)
    if image.GetPixelID() not in _INTEGER_TYPES:
        image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all() or _nifti_has_non_finite(path):
        raise InputError(f"{path}: image contains NaN or infinite voxels")
    if values.min() == values.max():
        raise InputError(f"{path}: image is constant ({values.min():g} everywhere)")
    validation.warn_questionable_ct(image, path)
    return image


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
    """Write an image atomically; the format follows the extension (.nii.gz, .nrrd, .mha, ...).

    ``.nii.gz`` is written by ITK uncompressed, then gzipped on several cores (:mod:`.compression`); the disk
    briefly holds both.
    """
    with atomic_path(path) as tmp, messages.library_output():
        if not (compress and tmp.name.lower().endswith(".nii.gz")):
            sitk.WriteImage(image, str(tmp), compress)
            return
        raw = tmp.with_name(tmp.name[:-7] + ".nii")  # a staging name too; lower case, as ITK needs
        try:
            sitk.WriteImage(image, str(raw), False)
            compression.gzip_file(raw, tmp)
        finally:
            raw.unlink(missing_ok=True)


def write_transform(transform: sitk.Transform, path: str | os.PathLike) -> None:
    """Write an ITK transform (.h5, .tfm) atomically."""
    with atomic_path(path) as tmp, messages.library_output():
        sitk.WriteTransform(transform, str(tmp))


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read an ITK transform file, flattening a one-element composite."""
    path = validation.check_input_path(path, "transform file")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, not a transform file")
    try:
        with messages.library_output():
            transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise InputError(f"{path}: cannot read as an ITK transform (not one, or truncated)") from None
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0)
    if transform.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D transform")
    return transform


def check_same_grid(image: sitk.Image, reference: sitk.Image, path: str | os.PathLike, reference_name: str) -> None:
    """Raise :class:`InputError` unless ``image`` (a label map read from ``path``) lies on ``reference``'s
    voxel grid: same size, and the corner voxels' centres agree to within 0.001 mm."""
    if not Grid.from_image(image).same_as(Grid.from_image(reference)):
        raise InputError(f"{path}: label map does not share the grid of {reference_name}")


