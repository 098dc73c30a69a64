"""The ``register`` file job: read two scans, register them, write the outputs the user asked for.

Every input is checked before any work; outputs go to a staging folder and move
into place only when all of them are complete (:class:`~TotalRegistratorLib.io.outputs.OutputFolder`).
Which files each output name writes is :data:`TotalRegistratorLib.registry.OUTPUTS`.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import torch

from ..core import preprocess
from ..core.itk_bridge import field_to_image
from ..core.preprocess import Scan
from ..errors import InputError
from ..io import images, messages, outputs, validation
from ..optimization.instance import Result, check_overlap, resample_moving, subtraction
from ..optimization.optimizer import OptimizationSettings, Progress, resolve_device
from ..registry import DEFAULT_OUTPUTS, OUTPUT_TABLE, OUTPUTS, REPORT_FILE
from ..weights import folder as shipped_weights
from .overview import save_overview
from .pipeline import load_cascade, register
from .report import dice_report, field_summary, image_similarity, peak_memory_mb, versions

ALL_FILES = (*(name for o in OUTPUT_TABLE for name in o.files), REPORT_FILE)


@dataclass
class RegisterJob:
    """One ``register`` run: input files, output folder and settings.

    ``outputs`` are names of :data:`~TotalRegistratorLib.registry.OUTPUTS` (None: the defaults, plus
    ``labels`` when label maps are given). ``blocks`` of the cascade (from ``weights``, default the
    shipped ones) run first; ``refine`` then runs instance optimisation from their result (with no
    blocks it is the whole registration). ``export_spacing`` (mm) puts the written field on the fixed
    image's box at that spacing instead of the working grid's lattice over that box.
    """

    fixed: Path
    moving: Path
    output: Path
    settings: OptimizationSettings = field(default_factory=OptimizationSettings)
    outputs: tuple[str, ...] | None = None
    export_spacing: float | None = None
    fixed_labels: Path | None = None
    moving_labels: Path | None = None
    blocks: tuple[str, ...] = ()
    weights: Path | None = None
    refine: bool = True

    def chosen_outputs(self) -> tuple[str, ...]:
        if self.outputs is None:
            return (*DEFAULT_OUTPUTS, "labels") if self.fixed_labels else DEFAULT_OUTPUTS
        unknown = [name for name in self.outputs if name not in OUTPUTS]
        if unknown:
            raise InputError(f"--outputs: unknown output(s) {', '.join(unknown)}; choose from {', '.join(OUTPUTS)}")
        if "labels" in self.outputs and self.fixed_labels is None:
            raise InputError("--outputs labels: give --fixed-labels and --moving-labels")
        return tuple(o.name for o in OUTPUT_TABLE if o.name in self.outputs)

    def check(self) -> None:
        """Refuse bad combinations and output paths before any work (one-line :class:`InputError`)."""
        outputs.check_output_dir(self.output)
        outputs.check_not_an_input([Path(self.output) / name for name in ALL_FILES],
                                   [self.fixed, self.moving, self.fixed_labels, self.moving_labels])
        if (self.fixed_labels is None) != (self.moving_labels is None):
            raise InputError(f"{self.fixed_labels or self.moving_labels}: give both --fixed-labels and --moving-labels")
        if not self.blocks and not self.refine:
            raise InputError("--no-refine needs cascade blocks to run (--blocks)")
        self.chosen_outputs()


def run_register_job(job: RegisterJob, progress: Progress | None = None) -> dict:
    """Run ``job`` and return its report (also written as ``report.json``; its ``warnings`` list the
    questionable inputs). Holds the output folder's lock from the start: a second run into the same
    folder fails at once."""
    job.check()
    with outputs.output_lock(job.output), messages.record_warnings() as warned:
        return _run(job, progress, warned)


def _read_scan(path: Path) -> tuple[Scan, list[str]]:
    """The scan at ``path`` with its body mask found when it has one (a refusal of the mask is raised again
    where the caller asks for it), and the warnings its reading raised, not yet issued (for any thread)."""
    with messages.deferred_warnings() as warned:
        scan = Scan(images.read_image(path), str(path))
    try:
        _ = scan.mask
    except InputError:
        pass
    return scan, warned


def earlier_outputs(folder: Path) -> list[str]:
    """The files that the earlier run's ``report.json`` in ``folder`` says it wrote (for replacing them)."""
    try:
        written = json.loads((folder / REPORT_FILE).read_text()).get("outputs", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [REPORT_FILE, *(name for o in OUTPUT_TABLE if o.name in written for name in o.files)]


def _run(job: RegisterJob, progress: Progress | None, warned: list[str]) -> dict:
    clock = time.perf_counter()
    chosen = job.chosen_outputs()
    with ThreadPoolExecutor(1) as pool:  # the moving scan is read (and masked) while the fixed one is
        reading = pool.submit(_read_scan, job.moving)
        fixed, fixed_warnings = _read_scan(job.fixed)
        validation.check_grid_options(fixed.image, job.fixed, job.settings.spacing, job.export_spacing)
        moving, moving_warnings = reading.result()
    for message in fixed_warnings + moving_warnings:  # in order, as if read one after the other
        messages.warn(message)
    label_maps = None
    if job.fixed_labels is not None:
        label_maps = (images.read_image(job.fixed_labels, labels=True),
                      images.read_image(job.moving_labels, labels=True))
        images.check_same_grid(label_maps[0], fixed.image, job.fixed_labels, "the fixed image")
        images.check_same_grid(label_maps[1], moving.image, job.moving_labels, "the moving image")
    cascade = load_cascade(job.weights, job.blocks) if job.blocks else None
    check_overlap(fixed, moving)
    _ = fixed.mask, moving.mask  # computed (and kept) now, so their refusals come before the warnings show
    messages.release_warnings()
    timings = {"read": time.perf_counter() - clock}
    result, stage_times = register(fixed, moving, job.settings, cascade, job.refine, progress)
    timings.update(stage_times)

    clock = time.perf_counter()
    transform = result.to_sitk(job.export_spacing)
    report = {**_report(job, result, fixed, moving, transform), "warnings": warned}
    if label_maps is not None:
        warped_labels = resample_moving(label_maps[1], fixed.image, transform, labels=True)
        report["dice"] = dice_report(label_maps[0], resample_moving(label_maps[1], fixed.image, labels=True),
                                     warped_labels)
    timings["export"] = time.perf_counter() - clock

    clock = time.perf_counter()
    with outputs.OutputFolder(job.output, earlier=earlier_outputs) as out:
        if "transform" in chosen:
            images.write_transform(transform, out / "transform.h5")
        if "displacement" in chosen:
            grid = result.export_grid(job.export_spacing)
            images.write_image(sitk.Cast(field_to_image(result.transform.field_on(grid), grid),
                                         sitk.sitkVectorFloat32), out / "displacement.nii.gz")
        warped = resample_moving(moving.image, fixed.image, transform) if {"warped", "subtraction"} & {*chosen} \
            else None
        if "warped" in chosen:
            images.write_image(warped, out / "warped.nii.gz")
        if "subtraction" in chosen:
            images.write_image(subtraction(fixed.image, resample_moving(moving.image, fixed.image)),
                               out / "subtraction_before.nii.gz")
            images.write_image(subtraction(fixed.image, warped), out / "subtraction_after.nii.gz")
        if "labels" in chosen:
            images.write_image(warped_labels, out / "warped_labels.nii.gz")
        if "overview" in chosen:
            save_overview(out / "overview.png", fixed.image, moving.image, transform,
                          title=f"{Path(job.moving).name} -> {Path(job.fixed).name}")
        timings["write"] = time.perf_counter() - clock
        timings["total"] = sum(timings.values())
        report.update(outputs=list(chosen), timings_s=timings, peak_memory_mb=peak_memory_mb())
        if torch.cuda.is_available():
            report["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        with outputs.atomic_path(out / REPORT_FILE) as tmp:
            tmp.write_text(outputs.to_json(report))
    return report


def _report(job: RegisterJob, result: Result, fixed: Scan, moving: Scan, transform: sitk.Transform) -> dict:
    """The report's settings, environment, similarity and field quality (inside the fixed body)."""
    body_on_grid = sitk.GetArrayFromImage(preprocess.resample(
        result.fixed_mask, result.grid, labels=True, default=0)) > 0
    affine = result.transform.affine
    return {
        "fixed": str(job.fixed), "moving": str(job.moving), "settings": job.settings.as_dict(),
        "blocks": list(job.blocks), "weights": str(job.weights or shipped_weights()) if job.blocks else None,
        "refine": job.refine, "export_spacing_mm": job.export_spacing,
        "export_grid": None if result.transform.is_linear else _grid_summary(result.export_grid(job.export_spacing)),
        "device": str(resolve_device(job.settings.device)), "threads": torch.get_num_threads(),
        "versions": versions(), "working_grid": _grid_summary(result.grid),
        "affine_matrix": affine.tolist(), "kept_stage": result.kept,
        "cascade_start_replaced": result.start_replaced,
        "similarity_local_ncc": image_similarity(fixed, moving, transform, result.grid, body_on_grid),
        "field_in_body": field_summary(result.transform.field_on(result.grid), result.grid, body_on_grid),
    }


def _grid_summary(grid) -> dict:
    return {"size": grid.size, "spacing_mm": grid.spacing}
