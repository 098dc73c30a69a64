"""Checks every input file passes, shared by all commands and ``train.py`` (through :mod:`.images`).

Before reading: the path is a readable regular file or folder (not a pipe, device, socket or
symbolic-link loop, which would block or recurse), and a NIfTI file holds as many data bytes
as its header promises (ITK reads a cut file as zeros), compressed ones intact to their
checksum (ITK reads corrupt data as wrong voxels), with a usable header (no zero voxel
size, no sheared axes). After reading: voxel axes orthonormal, coordinates where float32 is
exact to 0.01 mm, label values whole numbers in 0..65535. Each refusal is one
:class:`InputError` naming the file; questionable inputs that can still be registered
(8-bit "CT", a label map as the image, huge voxels) give one warning (:func:`.messages.warn`).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from . import zlib_codec
from .messages import warn

MAX_COORDINATE_MM = 1e5  # float32 resolves 0.008 mm here; farther coordinates lose precision
ORTHOGONALITY_TOLERANCE = 1e-4
LARGE_VOXEL_MM = 20.0  # coarser CT voxels are warned about
LABEL_LIKE_VALUES = 64  # an integer "CT" with at most this many distinct values looks like a label map
MIN_GRID_VOXELS = 4  # voxels the working grid needs across the fixed image
EXPORT_BYTES_PER_VOXEL = 96  # the exported field: float32 slabs, float64 image, ITK's copy
_CHUNK = 1 << 22


def check_input_path(path: str | os.PathLike, what: str = "file or folder") -> Path:
    """Raise :class:`InputError` unless ``path`` is a readable regular file or folder (without blocking);
    ``what`` names the missing thing ("no such <what>")."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        broken = os.path.islink(path)
        raise InputError(f"{path}: {'broken symbolic link' if broken else 'no such ' + what}") from None
    except OSError as err:
        reason = "symbolic link loop" if err.errno == errno.ELOOP else f"cannot be read ({err.strerror})"
        raise InputError(f"{path}: {reason}") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise InputError(f"{path}: not a regular file or folder (a pipe, device or socket)")
    if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(info.st_mode) else 0)):
        raise InputError(f"{path}: exists but cannot be read (permission denied)")
    return path


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def check_nifti_header(path: Path) -> int:
    """Refuse a NIfTI file whose header has a zero voxel size or sheared axes (ITK would read 1 mm or an
    orthogonalised qform without a word); return the bytes of header and data the header promises."""
    with _reading(path), (gzip.open if _compressed(path) else open)(path, "rb") as handle:
        header = _nifti_header(handle.read(540), path)
    shape = header.get_data_shape()
    pixdim = np.asarray(header["pixdim"][1:4], float)
    if len(shape) >= 3 and not (np.isfinite(pixdim).all() and (pixdim != 0).all()):
        raise InputError(f"{path}: header gives voxel size {pixdim.tolist()} mm (pixdim); the spacing is unknown")
    for kind in ("sform", "qform"):
        matrix, code = getattr(header, f"get_{kind}")(coded=True)
        if code and matrix is not None and not _orthogonal(matrix[:3, :3]):
            raise InputError(f"{path}: voxel axes in the header ({kind}) are sheared (not orthogonal); "
                             "resample the image onto an orthogonal grid first")
    return int(header["vox_offset"]) + int(np.prod(shape, dtype=np.int64)) * int(header["bitpix"]) // 8


def check_nifti_data(path: Path, expected: int) -> None:
    """Refuse a NIfTI file holding fewer than ``expected`` bytes (ITK would read the rest as zeros), or a
    compressed one that fails its checksum (ITK would read wrong voxels)."""
    with _reading(path):
        available = _gzip_size(path) if _compressed(path) else path.stat().st_size
    if available < expected:
        raise InputError(f"{path}: file is truncated ({available} of {expected} bytes of header and data)")


def _compressed(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a gzip stream cut short, corrupt data or an OS error while reading ``path`` into one-line refusals."""
    try:
        yield
    except EOFError:
        raise InputError(f"{path}: file is truncated (the compressed data ends early)") from None
    except (OSError, zlib.error, zlib_codec.codec.error) as err:
        raise InputError(f"{path}: cannot read image (corrupt: {str(err)[:120]})") from None


def _nifti_header(raw: bytes, path: Path):
    """The NIfTI-1 or NIfTI-2 header of a file's first bytes, values as stored (no nibabel fixes)."""
    import nibabel

    for kind, size in ((nibabel.Nifti1Header, 348), (nibabel.Nifti2Header, 540)):
        if len(raw) >= size and size in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")):
            return kind.from_fileobj(io.BytesIO(raw[:size]), check=False)
    raise InputError(f"{path}: cannot read image (not a NIfTI file: header size is not 348 or 540 bytes)")


def _gzip_size(path: Path) -> int:
    """Bytes a gzip file decompresses to (not kept), every member's CRC-32 and length checked by
    :mod:`.zlib_codec`, zero padding after the last member allowed; a stream cut short raises EOFError,
    corrupt data the codec's ``error``."""
    size, inflater, fed = 0, zlib_codec.codec.decompressobj(16 + zlib.MAX_WBITS), False
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            while chunk:
                if inflater.eof:  # another member follows (concatenated gzip streams), or padding
                    chunk = chunk.lstrip(b"\0")
                    if not chunk:
                        break
                    inflater, fed = zlib_codec.codec.decompressobj(16 + zlib.MAX_WBITS), False
                size += len(inflater.decompress(chunk, _CHUNK))
                fed = True
                chunk = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
    while fed and not inflater.eof:  # output held back by the length limit
        out = inflater.decompress(b"", _CHUNK)
        if not out:
            raise EOFError(f"{path}: compressed data ends early")
        size += len(out)
    return size


def _orthogonal(linear: np.ndarray) -> bool:
    lengths = np.linalg.norm(linear, axis=0)
    if not (np.isfinite(linear).all() and (lengths > 0).all()):
        return False
    unit = linear / lengths
    return float(np.abs(unit.T @ unit - np.eye(3)).max()) <= ORTHOGONALITY_TOLERANCE


def check_geometry(image: sitk.Image, path: str | os.PathLike) -> None:
    """Refuse zero or non-finite voxel sizes, sheared or degenerate axes, and coordinates beyond
    :data:`MAX_COORDINATE_MM` (where float32 computation is no longer exact to 0.01 mm)."""
    spacing = np.asarray(image.GetSpacing(), float)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"{path}: voxel size {spacing.tolist()} mm must be positive and finite")
    direction = np.reshape(image.GetDirection(), (3, 3))
    if not _orthogonal(direction):
        raise InputError(f"{path}: voxel axes are sheared or degenerate (direction "
                         f"{np.round(direction, 4).ravel().tolist()} is not orthonormal); resample the image onto "
                         "an orthogonal grid first")
    size = np.asarray(image.GetSize()) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])], float)
    points = np.asarray(image.GetOrigin()) + (corners * spacing) @ direction.T
    farthest = float(np.abs(points).max()) if np.isfinite(points).all() else float("inf")
    if farthest > MAX_COORDINATE_MM:
        raise InputError(f"{path}: the image lies {farthest:.4g} mm from the scanner origin; beyond "
                         f"{MAX_COORDINATE_MM:g} mm coordinates lose precision (set the origin near the body)")


def check_label_values(values: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse label values that are not whole numbers in 0..65535 (of any pixel type)."""
    if values.dtype.kind == "f" and (not np.isfinite(values).all() or not np.array_equal(values, np.round(values))):
        raise InputError(f"{path}: label map holds values that are not whole numbers")
    low, high = values.min(), values.max()
    if low < 0 or high > 65535:
        raise InputError(f"{path}: label values must lie in 0..65535, got {low:g}..{high:g} (is it a CT image?)")


def warn_questionable_ct(image: sitk.Image, path: str | os.PathLike) -> None:
    """Warn (one line each) about a "CT" that is 8-bit, looks like a label map, or has huge voxels."""
    if image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8):
        warn(f"{path}: 8-bit voxels ({image.GetPixelIDTypeAsString()}) are not Hounsfield units; the body mask "
             "may cover the whole field of view")
    values = sitk.GetArrayViewFromImage(image)
    sample = values.ravel()[:: max(1, values.size // 1_000_000)]
    if sample.min() >= 0 and np.array_equal(sample, np.round(sample)):
        distinct = np.unique(sample)
        if len(distinct) <= LABEL_LIKE_VALUES:
            warn(f"{path}: looks like a label map ({len(distinct)} distinct values, {distinct[0]:g}..{distinct[-1]:g}),"
                 " not a CT in Hounsfield units")
    coarsest = max(image.GetSpacing())
    if coarsest > LARGE_VOXEL_MM:
        warn(f"{path}: voxels of {coarsest:g} mm are unusually large for CT (check the header's spacing)")


def check_grid_options(fixed: sitk.Image, path: str | os.PathLike, spacing: float,
                       export_spacing: float | None) -> None:
    """Before any work: refuse a working ``spacing`` that leaves under :data:`MIN_GRID_VOXELS` voxels across
    the fixed image, and an ``export_spacing`` whose field would not fit in this machine's memory."""
    extent = (np.asarray(fixed.GetSize()) - 1) * np.asarray(fixed.GetSpacing())
    working = max(spacing, float(np.prod(fixed.GetSpacing())) ** (1 / 3))
    if extent.min() / working < MIN_GRID_VOXELS:
        raise InputError(f"{path}: a working spacing of {working:g} mm leaves fewer than {MIN_GRID_VOXELS} voxels "
                         f"across the image ({extent.min():g} mm); use a smaller --spacing")
    if export_spacing is None:
        return
    voxels = float(np.prod(np.ceil(extent / export_spacing) + 1))
    needed, available = voxels * EXPORT_BYTES_PER_VOXEL, _physical_memory()
    if needed > available:
        raise InputError(f"--export-spacing {export_spacing:g}: the field on {path}'s box would have {voxels:.3g} "
                         f"voxels and need about {needed / 2**30:.3g} GiB ({available / 2**30:.3g} GiB here)")


BYTES_PER_IMAGE_VOXEL = 16  # peak bytes per input voxel: stored int16, the float warp of the output, buffers
BASE_MEMORY_BYTES = 1.5 * 2**30  # the registration itself on its working grids (at most 2.5 M voxels each)


def check_volume_size(size: tuple[int, ...], path: str | os.PathLike) -> None:
    """Before reading the voxels: refuse an image of more voxels than this machine's memory can register
    (about :data:`BYTES_PER_IMAGE_VOXEL` bytes each beyond :data:`BASE_MEMORY_BYTES`)."""
    voxels, memory = float(np.prod(size)), _physical_memory()
    supported = max(memory - BASE_MEMORY_BYTES, 0.0) / BYTES_PER_IMAGE_VOXEL
    if voxels > supported:
        side = int(supported ** (1 / 3))
        raise InputError(f"{path}: {' x '.join(map(str, size))} voxels ({voxels / 1e9:.3g} G) is more than this "
                         f"machine's {memory / 2**30:.3g} GiB can register; at most "
                         f"{supported / 1e9:.3g} G voxels (e.g. {side} x {side} x {side}) are supported: "
                         "resample it coarser first")


def _physical_memory() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def read_text(path: str | os.PathLike, what: str) -> str:
    """A text input (CSV, JSON) as a string: UTF-8, a byte-order mark (as spreadsheets write) dropped; a
    missing, special or non-UTF-8 file is one :class:`InputError` naming the file."""
    path = check_input_path(path, what)
    if not path.is_file():
        raise InputError(f"{path}: is a folder, not a {what}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start}); save the {what} as UTF-8") from None
