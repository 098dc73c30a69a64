"""File-to-folder jobs behind the command line: register, warp, evaluate.

Every job validates all of its inputs before writing anything, writes into a
staging folder, and moves the outputs into place only when all succeeded.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..app.overview import save_overview
from ..core import metrics, preprocess
from ..core.grid import Grid
from ..core.itk_bridge import displacement_image, transform_to_field
from ..errors import InputError
from ..io import images, outputs
from ..learned.cascade import BLOCKS, Cascade, run_cascade
from ..optimization import similarity
from ..optimization.instance import Result, register, resample_moving, subtraction
from ..optimization.optimizer import OptimizationSettings, Progress, resolve_device
from ..weights import folder as weights_folder

REGISTER_OUTPUTS = ("transform.h5", "displacement.nii.gz", "warped.nii.gz", "subtraction_before.nii.gz",
                    "subtraction_after.nii.gz", "overview.png", "report.json")
WARPED_LABELS = "warped_labels.nii.gz"  # also written when label maps are given


DEFAULT_WEIGHTS = weights_folder()


def load_cascade(weights: Path | None, blocks: tuple[str, ...]) -> Cascade:
    """The cascade ``blocks`` from ``weights`` (default: the shipped weights)."""
    return Cascade.load(weights or DEFAULT_WEIGHTS, blocks)


# The cascade blocks ``register`` runs when none are asked for. None: on the model card's validation
# pairs the shipped cascade, even refined, is less accurate than instance optimisation alone
# (Resources/MODEL_CARD.md); ask for it with ``--blocks all``.
DEFAULT_BLOCKS: tuple[str, ...] = ()


def shipped_blocks() -> tuple[str, ...]:
    """The blocks whose weights ship in Resources/weights (empty when there are none)."""
    return tuple(b for b in BLOCKS if (DEFAULT_WEIGHTS / f"{b}.pt").is_file())


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


def image_similarity(fixed: sitk.Image, others: dict[str, sitk.Image], grid: Grid) -> dict[str, float]:
    """Local NCC (radius 2, in [0, 1], higher is better) of the fixed image with each of ``others``
    (images on the fixed grid), evaluated on ``grid``; the fixed image is resampled once.
    """
    def on_grid(image: sitk.Image) -> torch.Tensor:
        array = sitk.GetArrayFromImage(preprocess.resample(image, grid))
        return preprocess.normalize_intensity(torch.as_tensor(array)[None, None].float())

    target = on_grid(fixed)
    return {name: float(-similarity.local_ncc(target, on_grid(image), radius=2)) for name, image in others.items()}


def dice_report(fixed_labels: sitk.Image, moving_labels: sitk.Image, result: Result,
                transform: sitk.Transform) -> tuple[dict, sitk.Image]:
    """Dice per label before (identity) and after registration, and the warped label map."""
    fixed_array = sitk.GetArrayFromImage(fixed_labels)
    before = sitk.GetArrayFromImage(resample_moving(moving_labels, result.fixed, labels=True))
    warped = resample_moving(moving_labels, result.fixed, transform, labels=True)
    after = sitk.GetArrayFromImage(warped)
    labels = sorted(set(np.unique(fixed_array).tolist()) - {0})
    scores = {"before": metrics.dice(fixed_array, before, labels), "after": metrics.dice(fixed_array, after, labels)}
    for key in ("before", "after"):
        scores[f"mean_{key}"] = float(np.nanmean(list(scores[key].values()))) if labels else float("nan")
    return scores, warped


def register_images(fixed: sitk.Image, moving: sitk.Image, settings: OptimizationSettings,
                    cascade: Cascade | None = None, refine: bool = True, progress: Progress | None = None,
                    names: tuple[str, str] = ("fixed", "moving")) -> tuple[Result, dict[str, float]]:
    """``cascade`` (if given) then instance optimisation from its result (if ``refine``; alone without a
    cascade). Returns the result and seconds per stage (``refine_`` before the refinement's after a cascade).
    """
    result, timings = None, {}
    if cascade is not None:
        result = run_cascade(fixed, moving, cascade, resolve_device(settings.device), names, progress)
        timings.update(result.timings)
    if refine or result is None:
        result = register(fixed, moving, settings, progress, names, initial=result)
        timings.update({("refine_" if cascade else "") + key: value for key, value in result.timings.items()})
    return result, timings


def run_register(fixed_path: Path, moving_path: Path, output: Path, settings: OptimizationSettings,
                 export_spacing: float | None = None, fixed_labels: Path | None = None,
                 moving_labels: Path | None = None, progress: Progress | None = None,
                 blocks: tuple[str, ...] = (), weights: Path | None = None, refine: bool = True) -> dict:
    """Register two files and write the outputs of :data:`REGISTER_OUTPUTS` (plus warped labels) to ``output``.

    ``blocks`` of the cascade (from ``weights``) run first; ``refine`` then runs instance
    optimisation from their result (with no blocks it is the whole registration). An
    affine-only run without refinement writes an ITK affine transform instead of a field.
    """
    start = time.perf_counter()
    outputs.check_output_dir(output)
    written = (*REGISTER_OUTPUTS, WARPED_LABELS)
    outputs.check_not_an_input([Path(output) / name for name in written],
                          [fixed_path, moving_path, fixed_labels, moving_labels])
    fixed = images.read_image(fixed_path)
    moving = images.read_image(moving_path)
    label_maps = None
    if (fixed_labels is None) != (moving_labels is None):
        raise InputError(f"{fixed_labels or moving_labels}: give both --fixed-labels and --moving-labels")
    if fixed_labels is not None:
        label_maps = (images.read_image(fixed_labels, labels=True), images.read_image(moving_labels, labels=True))
        images.check_same_grid(label_maps[0], fixed, fixed_labels, "the fixed image")
        images.check_same_grid(label_maps[1], moving, moving_labels, "the moving image")
    names = (str(fixed_path), str(moving_path))
    cascade = load_cascade(weights, blocks) if blocks else None
    timings = {"read": time.perf_counter() - start}
    result, stage_times = register_images(fixed, moving, settings, cascade, refine, progress, names)
    timings.update(stage_times)

    start = time.perf_counter()
    affine_only = tuple(blocks) == ("affine",) and not refine
    transform = result.affine_transform() if affine_only else result.transform(export_spacing)
    body_on_grid = sitk.GetArrayFromImage(preprocess.resample(
        preprocess.mask_to_image(result.fixed_mask, fixed), result.grid, labels=True, default=0)) > 0
    before = resample_moving(moving, fixed)
    warped = resample_moving(moving, fixed, transform)
    report = {
        "fixed": str(fixed_path), "moving": str(moving_path), "settings": settings.as_dict(),
        "blocks": list(blocks), "weights": str(weights or DEFAULT_WEIGHTS) if blocks else None, "refine": refine,
        "export_spacing_mm": export_spacing, "device": str(resolve_device(settings.device)),
        "threads": torch.get_num_threads(),
        "versions": versions(), "working_grid": {"size": result.grid.size, "spacing_mm": result.grid.spacing},
        "affine_matrix": None if result.affine is None else result.affine.tolist(),
        "similarity_local_ncc": image_similarity(fixed, {"before": before, "after": warped}, result.grid),
        "field_in_body": field_summary(result.field, result.grid, body_on_grid),  # on the working grid
    }
    timings["export"] = time.perf_counter() - start

    start = time.perf_counter()
    with outputs.OutputFolder(output, replaces=written) as out:
        images.write_transform(transform, out / "transform.h5")
        images.write_image(displacement_image(result.transform(export_spacing) if affine_only else transform),
                       out / "displacement.nii.gz")
        images.write_image(warped, out / "warped.nii.gz")
        images.write_image(subtraction(fixed, before), out / "subtraction_before.nii.gz")
        images.write_image(subtraction(fixed, warped), out / "subtraction_after.nii.gz")
        if label_maps is not None:
            report["dice"], warped_labels = dice_report(*label_maps, result, transform)
            images.write_image(warped_labels, out / WARPED_LABELS)
        save_overview(out / "overview.png", {"fixed": fixed, "moving": before, "warped": warped,
                                             "|fixed - moving|": subtraction(fixed, before),
                                             "|fixed - warped|": subtraction(fixed, warped)},
                      title=f"{Path(moving_path).name} -> {Path(fixed_path).name}")
        timings["write"] = time.perf_counter() - start
        timings["total"] = sum(timings.values())
        report["timings_s"] = timings
        report["peak_memory_mb"] = peak_memory_mb()
        if torch.cuda.is_available():
            report["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        with outputs.atomic_path(out / "report.json") as tmp:
            tmp.write_text(outputs.to_json(report))
    return report


def field_summary(field: torch.Tensor, grid: Grid, mask: np.ndarray | None = None) -> dict[str, float]:
    """Folding, SDlogJ and displacement magnitude statistics of a field (inside ``mask`` if given)."""
    stats = metrics.jacobian_statistics(field, grid, mask)
    magnitude = field[0].norm(dim=0).numpy()
    if mask is not None:
        magnitude = magnitude[np.asarray(mask, bool)]
    stats.update(displacement_mean_mm=float(magnitude.mean()), displacement_max_mm=float(magnitude.max()))
    return stats


def run_warp(input_path: Path, transform_path: Path, reference_path: Path, output: Path, labels: bool) -> None:
    """Resample ``input`` onto ``reference``'s grid through an ITK transform file (nearest for labels).

    Images get the input's minimum value outside its field of view (air for CT).
    """
    outputs.check_output_file(output, outputs.IMAGE_SUFFIXES)
    image = images.read_image(input_path, labels=labels)
    transform = images.read_transform(transform_path)
    reference = images.read_volume(reference_path)  # only its grid is used
    default = None if labels else float(sitk.GetArrayViewFromImage(image).min())
    outputs.check_not_an_input([output], [input_path, transform_path, reference_path])
    images.write_image(resample_moving(image, reference, transform, labels=labels, default=default), output)


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
        true_field = transform_to_field(truth, grid)[0]
        error = (transform_to_field(transform, grid)[0] - true_field).norm(dim=0).numpy()
        initial = true_field.norm(dim=0).numpy()
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
