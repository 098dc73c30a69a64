"""Landmark files: CSV in LPS mm or Slicer markups JSON (RAS or LPS), read as an (n, 3) LPS array."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError


def read_landmarks(path: Path) -> np.ndarray:
    """Landmarks (n, 3) in LPS mm from a CSV (three numbers per row, or a header naming x, y, z columns; LPS)
    or a Slicer .json markups file (RAS or LPS)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such landmark file")
    try:
        if path.suffix == ".json":
            markups = json.loads(path.read_text())["markups"][0]
            points = np.array([p["position"] for p in markups["controlPoints"]], float)
            ras = markups.get("coordinateSystem", "LPS") == "RAS"
        else:
            rows = [[v.strip() for v in line.split(",")] for line in path.read_text().splitlines() if line.strip()]
            columns = slice(None)
            if rows and not all(_is_number(v) for v in rows[0]):  # a header: take its x, y, z columns
                header = [name.lower() for name in rows.pop(0)]
                columns = [header.index(axis) for axis in "xyz"]
            points = np.array([np.array(row, dtype=object)[columns] for row in rows], float)
            ras = False
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read landmarks ({type(err).__name__}: {err})") from None
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0 or not np.isfinite(points).all():
        raise InputError(f"{path}: landmarks must be one or more rows of three finite numbers (x, y, z mm)")
    if ras:
        points[:, :2] *= -1
    return points


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
