"""Elastix (itk-elastix) with its default rigid, affine and B-spline parameter maps, run in sequence.

Run in its own environment (see protocol.py for the arguments and outputs):
``.venv-elastix/bin/python benchmarks/baselines/elastix_bspline.py FIXED MOVING OUTDIR --threads N``.
Transformix's deformation field is already the pullback on the fixed grid (fixed point x -> moving
point x + u(x), LPS mm). The thread count is set globally: calling SetNumberOfThreads on the filter
crashes with the B-spline map.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import protocol

MAPS = ("rigid", "affine", "bspline")


def options(parser) -> None:
    parser.add_argument("--maps", default=",".join(MAPS), help="default parameter maps to run, in order")


def main() -> None:
    args = protocol.parse(__doc__.splitlines()[0], options)
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(args.threads)
    fixed = itk.imread(str(args.fixed), itk.F)
    moving = itk.imread(str(args.moving), itk.F)
    parameters = itk.ParameterObject.New()
    maps = args.maps.split(",")
    for name in maps:
        parameters.AddParameterMap(parameters.GetDefaultParameterMap(name))
    start = time.perf_counter()
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=parameters, log_to_console=False)
    seconds = time.perf_counter() - start
    os.chdir(args.out)  # transformix writes deformationField.nii into the working directory
    field = itk.transformix_deformation_field(moving, result)
    itk.imwrite(field, protocol.FIELD)
    Path("deformationField.nii").unlink(missing_ok=True)
    protocol.finish(args, seconds, {"itk": itk.Version.GetITKVersion(), "itk-elastix": _version("itk-elastix")},
                    parameter_maps=maps)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
