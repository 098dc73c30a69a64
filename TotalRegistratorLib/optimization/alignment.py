"""The starting translation of instance optimisation: one that a partial overlap cannot trap.

Two scans of one patient (or of two patients) often cover different ranges along z: an
upper-abdomen slab against a thorax-to-pelvis scan. Lining up their body centroids then
starts the optimisation tens of millimetres off, in a basin it never leaves. So the
start is the best scoring of a few candidate translations (fixed LPS mm -> moving LPS
mm): the identity (the scanners' own coordinates), the body-centroid translation, and
the centroid translation in x and y combined with every z shift, in steps of twice the
coarsest level's spacing (then the best one's neighbours at one spacing), that keeps the
two bodies overlapping along z by at least :data:`MIN_OVERLAP` of the shorter one.
Scores come from the caller (the similarity loss at the coarsest pyramid level, lower
is better), so this module only proposes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..core.grid import Grid

MIN_OVERLAP = 0.25  # of the shorter body's z extent: shifts leaving less overlap are not tried
CENTROID_MARGIN = 0.002  # a z shift must beat the centroid translation's loss by this much to replace it


def z_range(grid: Grid) -> tuple[float, float]:
    """The LPS z extent (mm) of ``grid``'s box."""
    z = grid.corners()[:, 2]
    return float(z.min()), float(z.max())


def z_shifts(fixed_box: Grid, moving_box: Grid, step: float, min_overlap: float = MIN_OVERLAP) -> np.ndarray:
    """Shifts ``t`` along z (mm; a fixed point at z maps to z + t), ``step`` apart and centred in the range
    where the fixed box moved by ``t`` overlaps the moving box along z by at least ``min_overlap`` of the
    shorter of the two (empty when no shift does)."""
    (f0, f1), (m0, m1) = z_range(fixed_box), z_range(moving_box)
    need = min_overlap * min(f1 - f0, m1 - m0)
    low, high = m0 - f1 + need, m1 - f0 - need  # overlap = min(f1 + t, m1) - max(f0 + t, m0) >= need
    if high < low:
        return np.zeros(0)
    count = int(np.floor((high - low) / step)) + 1
    return low + step * np.arange(count) + 0.5 * ((high - low) - step * (count - 1))


def translation(shift: np.ndarray) -> np.ndarray:
    """The 4 x 4 matrix of a translation by ``shift`` (LPS mm)."""
    matrix = np.eye(4)
    matrix[:3, 3] = shift
    return matrix


def initial_translation(fixed_box: Grid, moving_box: Grid, fixed_centroid: np.ndarray, moving_centroid: np.ndarray,
                        step: float, loss: Callable[[np.ndarray], float]) -> np.ndarray:
    """The 4 x 4 starting translation: the candidate (see the module) with the lowest ``loss(matrix)``.

    ``fixed_box`` and ``moving_box`` are the working grids around the bodies; the centroid translation is
    kept unless a z shift beats it by :data:`CENTROID_MARGIN` (noise must not move a good start).
    """
    centroid = translation(np.asarray(moving_centroid, float) - np.asarray(fixed_centroid, float))

    def shifted(t: float) -> np.ndarray:
        return translation([centroid[0, 3], centroid[1, 3], t])

    best, best_loss = centroid, loss(centroid) - CENTROID_MARGIN

    def consider(matrix: np.ndarray) -> bool:
        nonlocal best, best_loss
        value = loss(matrix)
        if value < best_loss:
            best, best_loss = matrix, value
        return value == best_loss

    consider(np.eye(4))
    winner = None
    for t in z_shifts(fixed_box, moving_box, 2 * step):  # every other step first, then the winner's neighbours
        if consider(shifted(t)):
            winner = t
    if winner is not None:
        for t in (winner - step, winner + step):
            consider(shifted(t))
    return best
