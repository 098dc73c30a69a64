"""``register``: the cascade and/or instance optimisation of one pair of scans, the library's front door."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.preprocess import Scan
from ..errors import InputError
from ..io import messages
from ..learned.cascade import Cascade, run_cascade
from ..optimization.instance import Result, optimize_pair
from ..optimization.optimizer import OptimizationSettings, Progress, resolve_device
from ..weights import folder as shipped_weights

# The cascade blocks ``register`` runs when none are asked for. None: on the model card's validation
# pairs the shipped cascade, even refined, is less accurate than instance optimisation alone
# (Resources/MODEL_CARD.md); ask for it with ``--blocks all``.
DEFAULT_BLOCKS: tuple[str, ...] = ()


def load_cascade(weights: Path | None, blocks: tuple[str, ...]) -> Cascade:
    """The cascade ``blocks`` from the folder ``weights`` (default: the shipped weights)."""
    return Cascade.load(weights or shipped_weights(), blocks)


def register(fixed: Scan, moving: Scan, settings: OptimizationSettings, cascade: Cascade | None = None,
             refine: bool = True, progress: Progress | None = None) -> tuple[Result, dict[str, float]]:
    """``cascade`` (if given), then instance optimisation from its result (if ``refine``; alone without a
    cascade). Returns the result and seconds per stage (``refine_`` before the refinement's after a cascade).
    """
    result, timings = None, {}
    if cascade is not None:
        result = run_cascade(fixed, moving, cascade, resolve_device(settings.device), progress)
        _check_finite(result, f"the cascade ({', '.join(cascade.names)}; check its weights)")
        timings.update(result.timings)
    if refine or result is None:
        result = optimize_pair(fixed, moving, settings, progress, None if result is None else result.transform)
        _check_finite(result, "instance optimisation")
        if result.start_replaced:
            messages.warn("the cascade's map scored worse than a plain translation of the bodies; instance "
                          "optimisation started from the translation instead")
        if result.kept != "deformable":
            messages.warn(f"the deformable stage scored worse than the {result.kept} stage's map where both see the "
                          f"moving image; the {result.kept} map was kept")
        timings.update({("refine_" if cascade else "") + key: value for key, value in result.timings.items()})
    return result, timings


def _check_finite(result: Result, what: str) -> None:
    """Refuse to go on with a map holding NaN or infinity (one line instead of an all-NaN transform)."""
    transform = result.transform
    if not np.isfinite(transform.affine).all() or (
            transform.residual is not None and not torch.isfinite(transform.residual).all()):
        raise InputError(f"{what} produced NaN or infinite values; no transform was written")
