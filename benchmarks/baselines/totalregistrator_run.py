"""TotalRegistrator in the main environment: instance optimisation, the learned cascade, or both.

``.venv/bin/python benchmarks/baselines/totalregistrator_run.py FIXED MOVING OUTDIR --threads N
[--blocks affine,bone,...] [--refine] [--device cpu|cuda] [--iterations N,N] [--affine-iterations N,N]``
(see protocol.py for the outputs).
Without ``--blocks`` it runs instance optimisation alone; with ``--blocks`` the cascade's blocks
(weights from ``--weights``), and with ``--refine`` instance optimisation starting from the cascade.
"""

from __future__ import annotations

import time
from pathlib import Path

import protocol


def options(parser) -> None:
    parser.add_argument("--blocks", help="comma-separated cascade blocks (default: none, instance optimisation alone)")
    parser.add_argument("--refine", action="store_true", help="instance optimisation after the cascade")
    parser.add_argument("--weights", type=Path, help="folder with <block>.pt files (default: the shipped ones)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    levels = lambda text: tuple(int(v) for v in text.split(","))  # noqa: E731
    parser.add_argument("--iterations", type=levels, help="deformable iterations per level (default: register's)")
    parser.add_argument("--affine-iterations", type=levels, help="affine iterations per level (default: register's)")


def main() -> None:
    args = protocol.parse(__doc__.splitlines()[0], options)
    import SimpleITK as sitk
    import torch

    from TotalRegistratorLib.app import pipeline, report
    from TotalRegistratorLib.core.grid import Grid
    from TotalRegistratorLib.core.itk_bridge import field_to_image
    from TotalRegistratorLib.core.preprocess import Scan
    from TotalRegistratorLib.io import images
    from TotalRegistratorLib.optimization.optimizer import OptimizationSettings

    torch.set_num_threads(args.threads)
    fixed, moving = images.read_image(args.fixed), images.read_image(args.moving)
    schedule = {key: value for key, value in (("deformable_iterations", args.iterations),
                                              ("affine_iterations", args.affine_iterations)) if value}
    settings = OptimizationSettings(seed=args.seed, device=args.device, **schedule)
    cascade = pipeline.load_cascade(args.weights, tuple(args.blocks.split(","))) if args.blocks else None
    start = time.perf_counter()
    result, stages = pipeline.register(Scan(fixed, str(args.fixed)), Scan(moving, str(args.moving)), settings, cascade,
                                       refine=args.refine or cascade is None)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    grid = Grid.from_image(fixed)
    field = sitk.Cast(field_to_image(result.transform.field_on(grid), grid), sitk.sitkVectorFloat32)
    images.write_image(field, args.out / protocol.FIELD, compress=False)
    details = {"stages_s": stages}
    if args.device == "cuda":
        details["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    protocol.finish(args, seconds, report.versions(), **details)


if __name__ == "__main__":
    main()
