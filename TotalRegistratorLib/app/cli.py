"""The ``totalregistrator`` command line (also ``python -m TotalRegistratorLib``).

Bad input ends with one line ``totalregistrator: error: <file>: <problem>`` on
stderr and exit code 2, leaving no partial outputs; Ctrl-C and SIGTERM end with one line
and exit codes 130 and 143 (:mod:`TotalRegistratorLib.app.running`).
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from ..core import runtime
from ..errors import InputError
from ..optimization.optimizer import OptimizationSettings
from ..registry import (
    BLOCKS,
    DEFAULT_OUTPUTS,
    MAX_ITERATIONS,
    OUTPUT_TABLE,
    OUTPUTS,
    PROGRAM,
    SIMILARITIES,
    SPACING_RANGE_MM,
)
from .arguments import non_negative, path, threads, within
from .phantom_command import add_phantom_command
from .running import exit_now, run_guarded


class ProgressBars:
    """One tqdm bar per stage, fed by the library's ``progress(stage, done, total)`` callbacks.

    ``style="json"`` prints one line ``{"stage": ..., "done": ..., "total": ...}`` per
    update on stderr instead, for programs that run the command line (the Slicer module).
    """

    def __init__(self, style: str = "bar"):
        self.style = style
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.style == "none":
            return
        if self.style == "json":
            print(json.dumps({"stage": stage, "done": done, "total": total}), file=sys.stderr, flush=True)
            return
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>10}", unit="it", leave=True, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _iterations(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("iterations must not be negative")
    if any(v > MAX_ITERATIONS for v in values):
        raise argparse.ArgumentTypeError(f"at most {MAX_ITERATIONS} iterations per level, got {text}")
    return values


def _names(text: str, choices, what: str) -> tuple[str, ...]:
    """A comma-separated subset of ``choices``, returned in the order of ``choices``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(choices)}")
    return tuple(c for c in choices if c in names)


def _outputs(text: str) -> tuple[str, ...]:
    return _names(text, tuple(OUTPUTS), "output(s)")


def _blocks(text: str) -> tuple[str, ...]:
    if text == "none":
        return ()
    if text == "all":
        return BLOCKS
    return _names(text, BLOCKS, "block(s) (or all, none)")


def _add_register(subparsers) -> None:
    defaults = OptimizationSettings()
    p = subparsers.add_parser("register", help="register MOVING onto FIXED and write transform, images, report")
    p.add_argument("fixed", type=path, help="fixed CT (NIfTI, NRRD, MHA/MHD or a DICOM folder)")
    p.add_argument("moving", type=path, help="moving CT")
    p.add_argument("-o", "--output", type=path, required=True, help="output folder")
    p.add_argument("--blocks", type=_blocks, default=None, metavar="LIST",
                   help="cascade blocks to run, in the fixed order affine,bone,thorax,abdomen,wholebody: a "
                        "comma-separated subset, 'all', or 'none' for instance optimisation alone (default: "
                        "none, or all with --weights; see Resources/MODEL_CARD.md)")
    p.add_argument("--weights", type=path, default=None, help="folder with <block>.pt files (default: shipped)")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="skip the instance-optimisation refinement after the cascade")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=threads, default=None,
                   help="CPU threads for torch, at most the machine's CPUs (default: torch's choice; use 1 when "
                        "other work shares the cores)")
    p.add_argument("--seed", type=non_negative(int), default=defaults.seed)
    p.add_argument("--similarity", choices=SIMILARITIES, default=defaults.similarity,
                   help="local NCC (default), MIND-SSC or Parzen mutual information (contrast/multiphase)")
    p.add_argument("--iterations", type=_iterations, metavar="N,N",
                   default=defaults.deformable_iterations,
                   help="deformable iterations per level, coarse to fine (default %(default)s); 0,0 = affine only")
    p.add_argument("--affine-iterations", type=_iterations, metavar="N,N", default=defaults.affine_iterations)
    p.add_argument("--smoothness", type=non_negative(float), default=defaults.smoothness,
                   help="weight of the diffusion term")
    spacing = within(float, *SPACING_RANGE_MM)
    p.add_argument("--spacing", type=spacing, default=defaults.spacing,
                   help=f"finest working spacing in mm ({SPACING_RANGE_MM[0]:g}..{SPACING_RANGE_MM[1]:g})")
    p.add_argument("--export-spacing", type=spacing, default=None,
                   help="write the field on the fixed image's box at this spacing (mm) instead of the working "
                        "grid's lattice over the fixed image's box (the compact, exact default)")
    p.add_argument("--outputs", type=_outputs, default=None, metavar="LIST",
                   help="comma-separated outputs to write: " + ", ".join(
                       f"{o.name} ({o.description})" for o in OUTPUT_TABLE)
                   + f"; default {','.join(DEFAULT_OUTPUTS)} (and labels with label maps); report.json always")
    p.add_argument("--fixed-labels", type=path, help="label map of the fixed image: report Dice before/after")
    p.add_argument("--moving-labels", type=path, help="label map of the moving image (also warped)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="progress on stderr: tqdm bars, JSON lines (for programs), or nothing")
    p.set_defaults(func=_run_register)


def _run_register(args: argparse.Namespace) -> int:
    from ..io.outputs import to_json
    from .pipeline import DEFAULT_BLOCKS
    from .register_job import RegisterJob, run_register_job

    if len(args.iterations) != 2 or len(args.affine_iterations) != 2:
        raise InputError("--iterations and --affine-iterations take two values: coarse,fine")
    settings = OptimizationSettings(similarity=args.similarity, spacing=args.spacing, smoothness=args.smoothness,
                                    deformable_iterations=args.iterations, affine_iterations=args.affine_iterations,
                                    seed=args.seed, device=args.device)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    bars = ProgressBars("none" if args.quiet else args.progress)
    try:
        blocks = (DEFAULT_BLOCKS if args.weights is None else _blocks("all")) if args.blocks is None \
            else args.blocks
        job = RegisterJob(args.fixed, args.moving, args.output, settings, args.outputs, args.export_spacing,
                          args.fixed_labels, args.moving_labels, blocks, args.weights, args.refine)
        report = run_register_job(job, bars)
    finally:
        bars.close()
    summary = {"output": str(args.output), "seconds": round(report["timings_s"]["total"], 1),
               "local_ncc": report["similarity_local_ncc"],
               "folding_percent": report["field_in_body"]["folding_percent"]}
    if "dice" in report:
        summary["mean_dice"] = {k: round(report["dice"][f"mean_{k}"], 4) for k in ("before", "after")}
    print(to_json(summary, indent=None))
    return 0


def _add_warp(subparsers) -> None:
    p = subparsers.add_parser("warp", help="resample an image or label map through a transform")
    p.add_argument("input", type=path)
    p.add_argument("transform", type=path, help="ITK transform file (e.g. transform.h5 from register)")
    p.add_argument("--reference", type=path, required=True, help="image whose grid the output takes (the fixed)")
    p.add_argument("--labels", action="store_true", help="nearest-neighbour interpolation for label maps")
    p.add_argument("-o", "--output", type=path, required=True)
    p.set_defaults(func=_run_warp)


def _run_warp(args: argparse.Namespace) -> int:
    from .warp_job import run_warp

    run_warp(args.input, args.transform, args.reference, args.output, args.labels)
    return 0


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="Dice between label maps, folding of a transform, landmark TRE")
    p.add_argument("--labels", type=path, nargs=2, metavar=("FIXED_LABELS", "WARPED_LABELS"))
    p.add_argument("--transform", type=path, help="displacement field transform (.h5) for folding and TRE")
    p.add_argument("--mask", type=path, help="only count folding and errors inside this label map (e.g. fixed labels)")
    p.add_argument("--truth", type=path, help="ground-truth transform: report the displacement error of --transform")
    p.add_argument("--landmarks", type=path, nargs=2, metavar=("FIXED_POINTS", "MOVING_POINTS"),
                   help="CSV (x,y,z LPS mm; commas or semicolons) or Slicer markups .json (every control point "
                        "of every markup, in file order)")
    p.add_argument("-o", "--output", type=path, help="also write the report as JSON here")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..io.outputs import atomic_path, check_not_an_input, check_output_file, to_json
    from .evaluate_job import run_evaluate

    if args.output:
        check_output_file(args.output, (".json",))
        check_not_an_input([args.output], [*(args.labels or ()), args.transform, args.mask,
                                           *(args.landmarks or ()), args.truth])
    report = run_evaluate(args.labels, args.transform, args.mask, args.landmarks, args.truth)
    text = to_json(report)
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text(text)
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_register, _add_warp, _add_evaluate, add_phantom_command):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for bad input, 130/143 when interrupted)."""
    args = build_parser().parse_args(argv)
    runtime.configure()
    return run_guarded(PROGRAM, lambda: args.func(args))


def console_main() -> None:
    """The ``totalregistrator`` command: :func:`main`, then :func:`~.running.exit_now` with its code."""
    exit_now(main())


if __name__ == "__main__":
    console_main()
