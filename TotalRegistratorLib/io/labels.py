"""TotalSegmentator name mapping, label-map reading and the pairs CSV.

One table of structures serves the phantom, real data, training and evaluation:
:data:`TotalRegistratorLib.registry.LABELS` maps each of the paper's 12
structures to its label id (1..12, 0 is background). Label maps are integer
images in any orientation; masks on a grid are arrays ``[S, K, J, I]`` in the
order of a structure tuple.

Real label maps come as TotalSegmentator v2 output, either one multi-label file
(v2 ids, embedded below by name) or a folder with one ``<name>.nii.gz`` per
structure; both are mapped by name with the paper's merges (vertebrae + sacrum,
ribs + sternum + costal cartilages, femur + hip, kidney + cyst, lung lobes,
heart chambers).

Pairs CSV: columns ``fixed, moving`` and optionally ``fixed_labels,
moving_labels, transform, label_format`` (``structures`` = our ids, the
default; ``totalsegmentator`` = v2 ids). Relative paths are resolved against
the CSV's folder. ``transform`` is the ground-truth pullback (fixed -> moving)
ITK transform.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..registry import LABELS, STRUCTURES, TRAINING_STRUCTURES
from .images import check_same_grid, read_image
from .outputs import atomic_path
from .validation import check_input_path, read_text

_SPINE = ("S1", "L5", "L4", "L3", "L2", "L1", *(f"T{i}" for i in range(12, 0, -1)), *(f"C{i}" for i in range(7, 0, -1)))
_LUNG_LOBES = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
               "lung_lower_lobe_right")

# TotalSegmentator v2 ("total" task) ids of the names this library uses.
TOTALSEGMENTATOR_V2_IDS: dict[str, int] = {
    "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6, "pancreas": 7,
    **{name: 10 + i for i, name in enumerate(_LUNG_LOBES)},
    "prostate": 22, "kidney_cyst_left": 23, "kidney_cyst_right": 24, "sacrum": 25,
    **{f"vertebrae_{v}": 26 + i for i, v in enumerate(_SPINE)},
    "heart": 51, "femur_left": 75, "femur_right": 76, "hip_left": 77, "hip_right": 78,
    **{f"rib_{side}_{n}": base + n for side, base in (("left", 91), ("right", 103)) for n in range(1, 13)},
    "sternum": 116, "costal_cartilages": 117,
}

# Source name -> structure. Our own names map to themselves (folders we write); the heart chambers are
# TotalSegmentator v1 / heartchambers names.
SOURCE_TO_STRUCTURE: dict[str, str] = {
    **{name: name for name in STRUCTURES},
    **{name: "lung" for name in _LUNG_LOBES},
    **{name: "heart" for name in ("heart_myocardium", "heart_atrium_left", "heart_ventricle_left",
                                  "heart_atrium_right", "heart_ventricle_right")},
    **{name: "kidney" for name in ("kidney_left", "kidney_right", "kidney_cyst_left", "kidney_cyst_right")},
    **{name: "vertebrae" for name in ("sacrum", *(f"vertebrae_{v}" for v in _SPINE))},
    **{name: "ribs" for name in ("sternum", "costal_cartilages",
                                 *(f"rib_{s}_{n}" for s in ("left", "right") for n in range(1, 13)))},
    **{name: "pelvis_bone" for name in ("femur_left", "femur_right", "hip_left", "hip_right")},
}

LABEL_FORMATS = ("structures", "totalsegmentator")


def totalsegmentator_lookup() -> np.ndarray:
    """Array ``lut`` with ``lut[v2_id]`` = our structure id (0 for structures we do not use)."""
    lut = np.zeros(256, np.uint8)
    for name, ts_id in TOTALSEGMENTATOR_V2_IDS.items():
        lut[ts_id] = LABELS[SOURCE_TO_STRUCTURE[name]]
    return lut


def _labels_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def map_totalsegmentator(labels: sitk.Image) -> sitk.Image:
    """A TotalSegmentator v2 multi-label image as a uint8 image of our structure ids."""
    values = sitk.GetArrayViewFromImage(labels)
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"label values {values.min()}..{values.max()} are not TotalSegmentator v2 ids")
    return _labels_image(totalsegmentator_lookup()[values.astype(np.int64)], labels)


def _read_folder(folder: Path) -> sitk.Image:
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")))
    stems = [(p, p.name.split(".")[0]) for p in files]
    known = [(p, SOURCE_TO_STRUCTURE[stem]) for p, stem in stems if stem in SOURCE_TO_STRUCTURE]
    if not known:
        raise InputError(f"{folder}: folder holds no label file named after a known structure (e.g. liver.nii.gz)")
    reference = read_image(known[0][0], labels=True)
    out = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    for path, structure in known:
        image = read_image(path, labels=True)
        check_same_grid(image, reference, path, known[0][0].name)
        out[sitk.GetArrayViewFromImage(image) > 0] = LABELS[structure]
    return _labels_image(out, reference)


def read_structures(path: str | os.PathLike, label_format: str = "structures") -> sitk.Image:
    """Read a label map as a uint8 image of our structure ids (:data:`~TotalRegistratorLib.registry.LABELS`).

    ``path`` is a multi-label file (``label_format`` ``structures`` or
    ``totalsegmentator``) or a folder of one binary file per structure, named
    by TotalSegmentator or by us (the format is then implied by the names).
    """
    path = Path(path)
    if label_format not in LABEL_FORMATS:
        raise InputError(f"{path}: unknown label format {label_format!r} (use one of {', '.join(LABEL_FORMATS)})")
    if path.is_dir():
        return _read_folder(path)
    image = read_image(path, labels=True)
    if label_format == "totalsegmentator":
        try:
            return map_totalsegmentator(image)
        except ValueError as err:
            raise InputError(f"{path}: {err}") from None
    values = sitk.GetArrayViewFromImage(image)
    if values.min() < 0 or values.max() > len(STRUCTURES):
        raise InputError(f"{path}: label values {values.min()}..{values.max()} exceed the structure ids "
                         f"1..{len(STRUCTURES)}; for TotalSegmentator output set label_format=totalsegmentator")
    return sitk.Cast(image, sitk.sitkUInt8)


def structure_masks(label_map: np.ndarray, structures: tuple[str, ...] = TRAINING_STRUCTURES) -> np.ndarray:
    """Boolean masks ``[S, K, J, I]`` of ``structures`` from a label map ``[K, J, I]`` of our ids."""
    ids = np.array([LABELS[s] for s in structures])
    return np.asarray(label_map)[None] == ids.reshape(-1, 1, 1, 1)


# --- pairs CSV -------------------------------------------------------------------------------------
PAIR_COLUMNS = ("fixed", "moving", "fixed_labels", "moving_labels", "transform", "label_format")
_REQUIRED = ("fixed", "moving")


@dataclass(frozen=True)
class PairRecord:
    """One pair of scans on disk; optional entries are None."""

    fixed: Path
    moving: Path
    fixed_labels: Path | None = None
    moving_labels: Path | None = None
    transform: Path | None = None
    label_format: str = "structures"


def read_pairs_csv(path: str | os.PathLike) -> list[PairRecord]:
    """Read a pairs CSV, resolving relative paths against its folder and checking that every file exists.

    Column names are those of :data:`PAIR_COLUMNS` (spaces around them and a UTF-8 byte-order mark, as
    spreadsheets write, are ignored); an unknown column is an error rather than silently unused.
    """
    path = Path(path)
    text = read_text(path, "pairs CSV")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        reader.fieldnames = columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in _REQUIRED if c not in columns]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'})")
        unknown = [c for c in columns if c not in PAIR_COLUMNS]
        if unknown:
            raise InputError(f"{path}: unknown column(s) {', '.join(unknown)} (known: {', '.join(PAIR_COLUMNS)})")
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise InputError(f"{path}: not a readable CSV ({err})") from None
    if not rows:
        raise InputError(f"{path}: no pairs listed")
    records = []
    for line, row in rows:
        entries: dict[str, Path | str | None] = {}
        for column in PAIR_COLUMNS[:5]:
            value = (row.get(column) or "").strip()
            if not value:
                if column in _REQUIRED:
                    raise InputError(f"{path}: line {line}: empty '{column}'")
                entries[column] = None
                continue
            file = Path(value) if Path(value).is_absolute() else path.parent / value
            try:
                check_input_path(file)  # missing, unreadable, a pipe or a link loop: said as such
            except InputError as err:
                raise InputError(f"{path}: line {line}: {column} file {err}") from None
            entries[column] = file
        label_format = (row.get("label_format") or "structures").strip() or "structures"
        if label_format not in LABEL_FORMATS:
            raise InputError(f"{path}: line {line}: label_format {label_format!r} is not one of {LABEL_FORMATS}")
        records.append(PairRecord(**entries, label_format=label_format))
    return records


def write_pairs_csv(path: str | os.PathLike, records: list[PairRecord]) -> None:
    """Write a pairs CSV atomically, with paths relative to its folder where possible."""
    path = Path(path)

    def relative(file: Path | None) -> str:
        if file is None:
            return ""
        try:
            return Path(os.path.relpath(Path(file).resolve(), path.parent.resolve())).as_posix()
        except ValueError:  # another drive on Windows
            return str(file)

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(PAIR_COLUMNS)
        for r in records:
            writer.writerow([relative(r.fixed), relative(r.moving), relative(r.fixed_labels),
                             relative(r.moving_labels), relative(r.transform), r.label_format])
