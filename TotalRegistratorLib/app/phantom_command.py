"""The ``phantom`` subcommand: simulated pairs with ground truth, a pairs CSV and a PNG gallery.

Output folder (written atomically: nothing appears unless every pair succeeds):
``pairNNN_{fixed,moving}.nii.gz`` (int16 HU), ``pairNNN_{fixed,moving}_labels.nii.gz``
(structure ids of :data:`TotalRegistratorLib.registry.LABELS`), for intra-patient
and multiphase pairs ``pairNNN_transform.h5`` (ITK DisplacementFieldTransform,
pullback: fixed point -> moving point, LPS mm) and ``pairNNN_displacement.nii.gz``,
plus ``pairs.csv`` and ``gallery.png``. The files of the pairs that an earlier run's ``pairs.csv``
lists are removed, so the folder holds exactly the pairs that ``pairs.csv`` lists; no other file
(e.g. a user's ``pair2024_notes.txt``) is ever touched.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ..io.labels import write_pairs_csv
from ..io.outputs import OutputFolder
from ..registry import PHANTOM_SPACING_RANGE_MM
from ..simulation.pairs import KINDS, Pair, make_pair, pair_seed
from .arguments import non_negative, path, positive

GALLERY_ROWS = 12
MAX_PAIRS = 100_000
PAIR_FILES = ("fixed.nii.gz", "moving.nii.gz", "fixed_labels.nii.gz", "moving_labels.nii.gz", "transform.h5",
              "displacement.nii.gz")  # pairNNN_<name>
_PAIR_FILE = re.compile(rf"(pair[0-9]+)_({'|'.join(re.escape(name) for name in PAIR_FILES)})")


def _spacing(text: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"spacing must be mm as one number or x,y,z, not {text!r}") from None
    if len(values) not in (1, 3) or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"spacing must be one or three positive numbers (mm), not {text!r}")
    low, high = PHANTOM_SPACING_RANGE_MM
    if not all(low <= v <= high for v in values):
        raise argparse.ArgumentTypeError(f"spacing must lie in {low:g}..{high:g} mm, not {text!r}")
    return tuple(values * 3) if len(values) == 1 else tuple(values)


def earlier_pair_files(folder: Path) -> set[str]:
    """The files an earlier run wrote into ``folder``: every file of each pair its ``pairs.csv`` lists, the
    CSV and the gallery (nothing when there is no readable ``pairs.csv`` of ours)."""
    try:
        with open(folder / "pairs.csv", newline="", encoding="utf-8") as handle:
            cells = [cell for row in csv.reader(handle) for cell in row]
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()
    stems = {match.group(1) for cell in cells if (match := _PAIR_FILE.fullmatch(cell))}
    return {f"{stem}_{name}" for stem in stems for name in PAIR_FILES} | ({"pairs.csv", "gallery.png"} if stems
                                                                        else set())


def add_phantom_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``phantom`` on an argparse subparsers object; it dispatches through ``func=run_phantom``."""
    parser = subparsers.add_parser(
        "phantom", help="simulate CT pairs with ground-truth transforms",
        description="Write simulated thorax-abdomen-pelvis CT pairs with label maps, ground-truth transforms "
                    "(intra-patient and multiphase), a pairs CSV and a PNG gallery.")
    parser.add_argument("-o", "--output", type=path, required=True,
                        help="output folder (created; written atomically)")
    parser.add_argument("--pairs", type=positive(int, MAX_PAIRS), default=1, help="number of pairs (default 1)")
    parser.add_argument("--kind", choices=KINDS, default="intra",
                        help="intra: same patient, later scan; multiphase: other contrast phase; inter: two patients")
    parser.add_argument("--seed", type=non_negative(int), default=0, help="random seed (same seed, same pairs)")
    parser.add_argument("--spacing", type=_spacing, default=None,
                        help="voxel spacing in mm, one value or x,y,z (default: scanner-like, in-plane 0.6-1 mm, "
                             "slices 0.8-5 mm; slow and large, about 1 minute per pair)")
    parser.set_defaults(func=run_phantom)
    return parser


def run_phantom(args: argparse.Namespace) -> int:
    rows = []
    with OutputFolder(args.output, earlier=earlier_pair_files) as out:
        records = []
        for i in tqdm(range(args.pairs), desc=f"{args.kind} pairs", unit="pair"):
            pair = make_pair(args.kind, pair_seed(args.seed, i), spacing=args.spacing)
            records.append(pair.write(out.staging, f"pair{i:03d}"))
            if i < GALLERY_ROWS:
                rows.append(gallery_row(pair))
        write_pairs_csv(out / "pairs.csv", records)
        write_gallery(rows, out / "gallery.png", args.pairs)
    print(f"wrote {args.pairs} {args.kind} pair(s) to {out.path}")
    return 0


def _coronal(image: sitk.Image) -> np.ndarray:
    """Mid-coronal slice, superior up, patient's right on the left of the picture (LPS index order)."""
    oriented = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayViewFromImage(oriented)
    return np.array(array[::-1, array.shape[1] // 2, :])


def gallery_row(pair: Pair) -> dict:
    """Coronal slices of one pair for the gallery (small: the volumes are not kept)."""
    row = {"fixed": _coronal(pair.fixed), "moving": _coronal(pair.moving),
           "labels": _coronal(pair.fixed_labels), "aspect": pair.fixed.GetSpacing()[2] / pair.fixed.GetSpacing()[0],
           "moving_aspect": pair.moving.GetSpacing()[2] / pair.moving.GetSpacing()[0], "kind": pair.kind}
    if pair.truth is not None:
        warped = sitk.Resample(pair.moving, pair.fixed, pair.transform(), sitk.sitkLinear, -1000.0)
        row["warped"] = _coronal(warped)
    return row


def write_gallery(rows: list[dict], path, total: int) -> None:
    """One row per pair: fixed with labels, moving, and moving warped by the ground truth (if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["fixed + labels", "moving", "moving warped by ground truth"]
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 4.2 * len(rows)), squeeze=False)
    window = {"cmap": "gray", "vmin": -400, "vmax": 400, "interpolation": "nearest"}
    for r, (row, ax) in enumerate(zip(rows, axes, strict=True)):
        ax[0].imshow(row["fixed"], aspect=row["aspect"], **window)
        ax[0].imshow(np.ma.masked_equal(row["labels"], 0), cmap="tab20", vmin=0, vmax=20, alpha=0.45,
                     aspect=row["aspect"], interpolation="nearest")
        ax[1].imshow(row["moving"], aspect=row["moving_aspect"], **window)
        if "warped" in row:
            ax[2].imshow(row["warped"], aspect=row["aspect"], **window)
        else:
            ax[2].text(0.5, 0.5, "inter-patient:\nno ground truth", ha="center", va="center")
        for c, a in enumerate(ax):
            a.set_title(f"pair {r}: {columns[c]}" if c == 0 else columns[c], fontsize=9)
            a.axis("off")
    if total > len(rows):
        fig.suptitle(f"first {len(rows)} of {total} pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
