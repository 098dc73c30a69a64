"""Landmark files: CSV in LPS mm or Slicer markups JSON (RAS or LPS), read as an (n, 3) LPS array.

CSV: three numbers per row, or a header naming x, y, z columns; separated by commas, or by semicolons
(with decimal commas, as European spreadsheets write); a UTF-8 byte-order mark is ignored.
JSON: every control point of every markup in the file, in file order, each markup in its own
``coordinateSystem`` (LPS or RAS; absent means LPS, anything else is refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .validation import read_text

COORDINATE_SYSTEMS = ("LPS", "RAS")


def read_landmarks(path: Path) -> np.ndarray:
    """Landmarks (n, 3) in LPS mm from a CSV or a Slicer .json markups file (see the module)."""
    path = Path(path)
    text = read_text(path, "landmark file")
    try:
        points = _from_json(text, path) if path.suffix.lower() == ".json" else _from_csv(text)
    except RecursionError:
        raise InputError(f"{path}: cannot read landmarks (JSON nested too deeply)") from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: cannot read landmarks ({type(err).__name__}: {str(err)[:120]})") from None
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0 or not np.isfinite(points).all():
        raise InputError(f"{path}: landmarks must be one or more rows of three finite numbers (x, y, z mm)")
    return points


def _from_json(text: str, path: Path) -> np.ndarray:
    points = []
    for markup in json.loads(text)["markups"]:
        system = markup.get("coordinateSystem", "LPS")
        if system not in COORDINATE_SYSTEMS:
            raise InputError(f"{path}: unknown coordinateSystem {str(system)[:40]!r} (expected LPS or RAS)")
        flip = np.array([-1.0, -1.0, 1.0]) if system == "RAS" else np.ones(3)
        points += [np.asarray(p["position"], float) * flip for p in markup["controlPoints"]]
    return np.array(points, float)


def _from_csv(text: str) -> np.ndarray:
    lines = [line for line in text.splitlines() if line.strip()]
    semicolons = bool(lines) and ";" in lines[0]
    rows = [[v.strip().replace(",", ".") if semicolons else v.strip() for v in line.split(";" if semicolons else ",")]
            for line in lines]
    columns = slice(None)
    if rows and not all(_is_number(v) for v in rows[0]):  # a header: take its x, y, z columns
        header = [name.lower() for name in rows.pop(0)]
        missing = [axis for axis in "xyz" if axis not in header]
        if missing:
            raise ValueError(f"header has no column {', '.join(missing)} (has {', '.join(header)})")
        columns = [header.index(axis) for axis in "xyz"]
    return np.array([np.array(row, dtype=object)[columns] for row in rows], float)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
