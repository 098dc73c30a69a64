"""The ``evaluate`` job: Dice between label maps, folding of a transform, landmark TRE, error against a truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core import fields, metrics
from ..core.grid import Grid
from ..core.itk_bridge import transform_to_field
from ..errors import InputError
from ..io import images
from ..io.landmarks import read_landmarks
from ..optimization.instance import resample_moving
from .report import field_summary


def run_evaluate(labels: tuple[Path, Path] | None = None, transform_path: Path | None = None,
                 mask_path: Path | None = None, landmarks: tuple[Path, Path] | None = None,
                 truth_path: Path | None = None) -> dict:
    """Dice per label between two label maps, folding of a transform, TRE between landmark lists,
    and the displacement error of a transform against a ground-truth transform (on the truth's grid).
    """
    report: dict = {}
    transform = images.read_transform(transform_path) if transform_path else None
    if truth_path and transform is None:
        raise InputError(f"{truth_path}: --truth needs --transform to compare with")
    if labels:
        a, b = (images.read_image(p, labels=True) for p in labels)
        images.check_same_grid(b, a, labels[1], str(labels[0]))
        scores = metrics.dice(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        report["dice"] = scores
        report["dice_mean"] = float(np.nanmean(list(scores.values()))) if scores else float("nan")
    mask_image = images.read_image(mask_path, labels=True) if mask_path else None

    def mask_on(grid: Grid) -> np.ndarray | None:
        if mask_image is None:
            return None
        mask = sitk.GetArrayFromImage(resample_moving(mask_image, grid.reference_image(), labels=True)) > 0
        if not mask.any():
            raise InputError(f"{mask_path}: mask has no voxels on the transform's grid")
        return mask

    if isinstance(transform, sitk.DisplacementFieldTransform):
        grid = Grid.from_image(transform.GetDisplacementField())
        report["field"] = field_summary(transform_to_field(transform, grid), grid, mask_on(grid))
    elif transform is not None and hasattr(transform, "GetMatrix"):  # linear: folds everywhere or nowhere
        report["linear"] = {"determinant": float(np.linalg.det(np.reshape(transform.GetMatrix(), (3, 3))))}
    if truth_path:
        truth = images.read_transform(truth_path)
        if not isinstance(truth, sitk.DisplacementFieldTransform):
            raise InputError(f"{truth_path}: ground truth must be a displacement field transform")
        grid = Grid.from_image(truth.GetDisplacementField())
        true_field = transform_to_field(truth, grid)
        error = fields.magnitude(transform_to_field(transform, grid) - true_field)[0].numpy()
        initial = fields.magnitude(true_field)[0].numpy()
        mask = mask_on(grid)
        if mask is not None:
            error, initial = error[mask], initial[mask]
        report["error_vs_truth_mm"] = {"mean": float(error.mean()), "p95": float(np.percentile(error, 95)),
                                       "max": float(error.max()), "unregistered_mean": float(initial.mean())}
    if landmarks:
        fixed_points, moving_points = (read_landmarks(p) for p in landmarks)
        if fixed_points.shape != moving_points.shape:
            raise InputError(f"{landmarks[1]}: {len(moving_points)} landmarks, but {landmarks[0]} has "
                             f"{len(fixed_points)}")
        before = metrics.target_registration_error(fixed_points, moving_points)
        report["tre_mm"] = {"before_mean": float(before.mean()), "before": before.tolist()}
        if transform is not None:
            after = metrics.target_registration_error(fixed_points, moving_points, transform)
            report["tre_mm"].update(after_mean=float(after.mean()), after=after.tolist())
    if not report:
        raise InputError("evaluate: give --labels, --transform, --truth and/or --landmarks")
    return report
