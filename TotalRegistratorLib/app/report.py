"""What a registration report holds besides timings: versions, memory, similarity, Dice and field quality."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..core import fields, metrics, preprocess
from ..core.grid import Grid
from ..core.preprocess import Scan
from ..optimization import similarity


def versions() -> dict[str, str]:
    return {"TotalRegistrator": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "SimpleITK": sitk.Version_VersionString(), "numpy": np.__version__}


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process in MB (None where the OS does not say).

    Linux's VmHWM is used first: ``ru_maxrss`` carries a parent's peak across fork and exec.
    On CUDA also see ``torch.cuda.max_memory_allocated``.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def image_similarity(fixed: Scan, moving: Scan, transform: sitk.Transform, grid: Grid,
                     body: np.ndarray | None = None) -> dict[str, float]:
    """Local NCC (radius 2, in [0, 1], higher is better) of the fixed image with the moving image before
    (identity) and after (``transform``) registration, evaluated on ``grid`` from the scans' previews,
    averaged over ``body`` ([K, J, I] bool on ``grid``: the anatomy, not the noise of the air around it)."""
    def smoothed(scan: Scan) -> sitk.Image:
        return preprocess.antialiased(scan.preview, min(grid.spacing))

    def on_grid(image: sitk.Image, through: sitk.Transform | None = None) -> torch.Tensor:
        array = sitk.GetArrayFromImage(preprocess.resample(image, grid, transform=through, antialias=False))
        return preprocess.normalize_intensity(torch.as_tensor(array)[None, None].float())

    target, moving_image = on_grid(smoothed(fixed)), smoothed(moving)  # the moving scan smoothed once for both
    mask = None if body is None else torch.as_tensor(body)[None, None].float()
    return {name: float(-similarity.local_ncc(target, on_grid(moving_image, through), mask, radius=2))
            for name, through in (("before", None), ("after", transform))}


def dice_report(fixed_labels: sitk.Image, before: sitk.Image, after: sitk.Image) -> dict:
    """Dice per label of the moving label map on the fixed grid before (identity) and after registration."""
    fixed_array = sitk.GetArrayFromImage(fixed_labels)
    labels = sorted(set(np.unique(fixed_array).tolist()) - {0})
    scores = {key: metrics.dice(fixed_array, sitk.GetArrayFromImage(image), labels)
              for key, image in (("before", before), ("after", after))}
    for key in ("before", "after"):
        scores[f"mean_{key}"] = float(np.nanmean(list(scores[key].values()))) if labels else float("nan")
    return scores


def field_summary(field: torch.Tensor, grid: Grid, mask: np.ndarray | None = None) -> dict[str, float]:
    """Folding, SDlogJ and displacement magnitude statistics of a field (inside ``mask`` if given)."""
    stats = metrics.jacobian_statistics(field, grid, mask)
    magnitude = fields.magnitude(field)[0].numpy()
    if mask is not None:
        magnitude = magnitude[np.asarray(mask, bool)]
    stats.update(displacement_mean_mm=float(magnitude.mean()), displacement_max_mm=float(magnitude.max()))
    return stats
