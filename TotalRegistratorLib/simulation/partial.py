"""Partial-overlap pairs: two scans cut to slabs of whole slices along z whose anatomy overlaps over a
random fraction of :data:`PARTIAL_OVERLAP` of the shorter one (see :mod:`.pairs`, kinds ``*-partial``).

Heights are those of the phantom's anatomy frame (z, mm; T12/L1 at 0) at the in-plane centre of each
slice (:func:`slice_heights`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.grid import Grid
from .phantom import Phantom

PARTIAL_OVERLAP = (0.3, 0.6)  # z overlap of partial-overlap pairs, a fraction of the shorter scan's range
PARTIAL_LENGTH_MM = (220.0, 400.0)  # each partial scan's z range (anatomy frame), before fitting the phantom


def slice_heights(ph: Phantom, grid: Grid, mapping=None) -> np.ndarray:
    """The phantom's anatomy-frame height (z, mm) at the in-plane centre of each slice (k) of ``grid``,
    seen through ``mapping`` (a pullback to the phantom's world, e.g. a :class:`Motion`) if given."""
    k = np.arange(grid.size[2], dtype=float)
    indices = np.stack([np.full_like(k, (grid.size[0] - 1) / 2), np.full_like(k, (grid.size[1] - 1) / 2), k], axis=1)
    world = torch.as_tensor(grid.transform_indices(indices), dtype=torch.float64)
    if mapping is not None:
        world = mapping(world)
    return ph.to_anatomy(world)[2].numpy()


def overlap_fraction(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The overlap of two ranges as a fraction of the shorter one (0 when they do not overlap)."""
    shorter = min(a[1] - a[0], b[1] - b[0])
    return max(min(a[1], b[1]) - max(a[0], b[0]), 0.0) / shorter if shorter > 0 else 0.0


def _slab(heights: np.ndarray, low: float, high: float) -> tuple[int, int]:
    """The slices ``start:stop`` whose heights lie in ``[low, high]`` (at least two, around the range's middle)."""
    inside = np.flatnonzero((heights >= low) & (heights <= high))
    if inside.size >= 2:
        return int(inside[0]), int(inside[-1]) + 1
    middle = int(np.argmin(np.abs(heights - (low + high) / 2)))
    start = min(max(middle - 1, 0), heights.size - 2)
    return start, start + 2


def _span(heights: np.ndarray, slab: tuple[int, int]) -> tuple[float, float]:
    part = heights[slab[0]:slab[1]]
    return float(part.min()), float(part.max())


def partial_slabs(rng: np.random.Generator, fixed_heights: np.ndarray,
                  moving_heights: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """Slices ``(start, stop)`` of the fixed and the moving scan (by their :func:`slice_heights`, rising
    with k) for a partial-overlap pair: each a slab of :data:`PARTIAL_LENGTH_MM` (shrunk to fit the heights
    both scans hold), one higher and one lower (at random), overlapping over a random fraction of
    :data:`PARTIAL_OVERLAP` of the shorter slab. The fraction holds for the heights of the slabs' end
    slices: the fixed slab grows or shrinks by whole slices at its inner end until it does (ValueError
    where slices are too thick for that).
    """
    if min(fixed_heights.size, moving_heights.size) < 8:
        raise ValueError("a partial-overlap pair needs scans of at least 8 slices before cutting: use a finer "
                         "spacing or size along z")
    low = max(fixed_heights.min(), moving_heights.min())
    high = min(fixed_heights.max(), moving_heights.max())
    lengths = rng.uniform(*PARTIAL_LENGTH_MM, 2)  # fixed, moving
    target = rng.uniform(*PARTIAL_OVERLAP)
    fixed_on_top = bool(rng.random() < 0.5)
    union = lengths.sum() - target * lengths.min()
    if union > high - low:
        lengths, union = lengths * (high - low) / union, high - low
    bottom = low + rng.uniform() * (high - low - union)
    upper, lower = (lengths[0], lengths[1]) if fixed_on_top else (lengths[1], lengths[0])
    ranges = (bottom + union - upper, bottom + union), (bottom, bottom + lower)  # upper slab, lower slab
    fixed_range, moving_range = ranges if fixed_on_top else ranges[::-1]
    moving = _slab(moving_heights, *moving_range)
    fixed = _slab(fixed_heights, *fixed_range)
    # whole slices move the slab ends: grow or shrink the fixed slab at its inner end until the fraction
    # (of the end slices' heights) lies inside PARTIAL_OVERLAP, with a little room for interpolation
    lowest, highest = PARTIAL_OVERLAP[0] + 0.005, PARTIAL_OVERLAP[1] - 0.005
    for _ in range(fixed_heights.size):
        fraction = overlap_fraction(_span(fixed_heights, fixed), _span(moving_heights, moving))
        if lowest <= fraction <= highest:
            return fixed, moving
        grow = 1 if fraction < lowest else -1
        start, stop = fixed
        start, stop = (start - grow, stop) if fixed_on_top else (start, stop + grow)
        if start < 0 or stop > fixed_heights.size or stop - start < 2:
            break
        fixed = start, stop
    raise ValueError(f"the scans' slices are too thick along z for a partial-overlap pair (overlap fraction "
                     f"{fraction:.2f}, not in {PARTIAL_OVERLAP[0]:g}..{PARTIAL_OVERLAP[1]:g}): use a finer spacing "
                     "or size")


def cut_to_slabs(rng: np.random.Generator, fixed: tuple[Phantom, Grid], moving: tuple[Phantom, Grid],
                 fixed_mapping=None) -> tuple[Grid, Grid]:
    """The fixed and moving scan grids (each with its phantom) cut to :func:`partial_slabs`; the fixed
    heights are seen through ``fixed_mapping`` (the pair's motion) when given."""
    (fixed_phantom, fixed_grid), (moving_phantom, moving_grid) = fixed, moving
    (f0, f1), (m0, m1) = partial_slabs(rng, slice_heights(fixed_phantom, fixed_grid, fixed_mapping),
                                       slice_heights(moving_phantom, moving_grid))
    return fixed_grid.slab(f0, f1), moving_grid.slab(m0, m1)
