"""Registration quality: Dice per label, folding, SDlogJ and target registration error.

Label maps are integer arrays on the same grid; fields follow
:mod:`TotalRegistratorLib.core.fields` (pullback, LPS mm); landmarks are (n, 3)
arrays of LPS mm.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from .fields import jacobian_determinant
from .grid import Grid


def mask_dice(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Dice overlap 2|A & B| / (|A| + |B|) of two boolean masks (numpy or torch); nan when both are empty."""
    total = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else float("nan")


def dice(a: np.ndarray, b: np.ndarray, labels=None) -> dict[int, float]:
    """Dice overlap per label (labels present in either map, background 0 excluded, unless given)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    if labels is None:
        labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    return {int(label): mask_dice(a == label, b == label) for label in labels}


def jacobian_statistics(field: torch.Tensor, grid: Grid, mask: np.ndarray | None = None) -> dict[str, float]:
    """Folding (% of voxels with det J <= 0) and SDlogJ (std of log det J, clipped at 1e-9), over ``mask``."""
    det = jacobian_determinant(field.double(), grid)[0].cpu().numpy()
    if mask is not None:
        det = det[np.asarray(mask, bool)]
    det = det.ravel()
    return {
        "folding_percent": 100.0 * float((det <= 0).mean()),
        "sdlogj": float(np.log(np.clip(det, 1e-9, None)).std()),
        "jacobian_min": float(det.min()),
        "jacobian_max": float(det.max()),
    }


def target_registration_error(fixed_points: np.ndarray, moving_points: np.ndarray,
                              transform: sitk.Transform | None = None) -> np.ndarray:
    """Distance (mm) between each moving landmark and its fixed landmark mapped by ``transform``.

    ``transform`` maps fixed points into the moving image (the exported
    transform); None measures the unregistered distances.
    """
    fixed_points = np.asarray(fixed_points, float)
    moving_points = np.asarray(moving_points, float)
    if fixed_points.shape != moving_points.shape or fixed_points.ndim != 2 or fixed_points.shape[1] != 3:
        raise ValueError(f"landmark lists must both be (n, 3); got {fixed_points.shape} and {moving_points.shape}")
    mapped = fixed_points if transform is None else np.array([transform.TransformPoint(tuple(p)) for p in fixed_points])
    return np.linalg.norm(mapped - moving_points, axis=1)
