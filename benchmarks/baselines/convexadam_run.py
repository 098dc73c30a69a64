"""ConvexAdam (PyPI convexadam) with its package defaults: MIND-SSC features, coupled convex optimisation, then Adam.

``convex_adam_pt``'s defaults are its Learn2Reg configuration: MIND-SSC (radius 1, dilation 2), a discrete
correlation search of +-4 control points at a 6-voxel grid solved by coupled convex optimisation and made
inverse consistent, then 80 Adam iterations on a 2-voxel grid with diffusion weight 1.25 (float32 on CPU).

Run in its own environment (see protocol.py for the arguments and outputs):
``.venv-convexadam/bin/python benchmarks/baselines/convexadam_run.py FIXED MOVING OUTDIR --threads N``.
ConvexAdam takes two arrays on one voxel grid, so both images are resampled (linear, air -1024 outside) onto
the working grid: the fixed image's origin and direction, its spacing but none finer than 2 mm, covering
the fixed image's box, the size rounded up to a multiple of 6 (the package's pooling drops a remainder, which
would stretch its coarse grids over the image). ConvexAdam returns an array ``d`` (H, W, D, 3) in voxels of
that grid: component k runs along array axis k, and the fixed voxel ``i`` is compared with the moving voxel
``i + d(i)`` (its ``apply_convex`` warps with ``map_coordinates(moving, identity + d)``). The arrays are
passed in ITK index order (x, y, z), so the pullback in LPS mm is ``u = direction @ (spacing * d)``, which is
then resampled (linear) onto the fixed grid. ``Testing/test_convexadam_baseline.py`` checks this on a
translated phantom. The seconds in run.json include the resampling onto the working grid.
"""

from __future__ import annotations

import math
import time

import protocol

MIN_SPACING = 2.0  # mm: the working grid is never finer than this
MULTIPLE = 6  # the package's default grid_sp (6) and grid_sp_adam (2) divide the working grid's size
AIR = -1024.0


def options(parser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device (the package itself picks CUDA when present)")


def working_grid(fixed):
    """The working grid as a SimpleITK image of zeros: fixed origin and direction, spacing >= 2 mm, covering its box."""
    import SimpleITK as sitk

    spacing = [max(s, MIN_SPACING) for s in fixed.GetSpacing()]
    size = []
    for n, s, w in zip(fixed.GetSize(), fixed.GetSpacing(), spacing):
        covering = math.ceil((n - 1) * s / w - 1e-6) + 1
        size.append(MULTIPLE * math.ceil(covering / MULTIPLE))
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetOrigin(fixed.GetOrigin())
    grid.SetSpacing(spacing)
    grid.SetDirection(fixed.GetDirection())
    return grid


def main() -> None:
    args = protocol.parse(__doc__.splitlines()[0], options)
    from importlib.metadata import version

    import numpy as np
    import SimpleITK as sitk
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    device = torch.device(args.device)
    fixed = sitk.ReadImage(str(args.fixed), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(args.moving), sitk.sitkFloat32)

    def xyz(image):  # SimpleITK arrays are (z, y, x): ITK index order for the package
        return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))

    start = time.perf_counter()
    grid = working_grid(fixed)
    fixed_w = sitk.Resample(fixed, grid, sitk.Transform(), sitk.sitkLinear, AIR, sitk.sitkFloat32)
    moving_w = sitk.Resample(moving, grid, sitk.Transform(), sitk.sitkLinear, AIR, sitk.sitkFloat32)
    # the package's own dtype default is float16, which it replaces by float32 on CPU (printing a warning)
    dtype = {"dtype": torch.float32} if device.type == "cpu" else {}
    d = convex_adam_pt(xyz(fixed_w), xyz(moving_w), device=device, **dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    u = (d * np.asarray(grid.GetSpacing())) @ direction.T  # (x, y, z, 3) voxels -> LPS mm
    field = sitk.GetImageFromArray(u.transpose(2, 1, 0, 3).astype(np.float32), isVector=True)
    field.CopyInformation(grid)
    field = sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32)
    sitk.WriteImage(field, str(args.out / protocol.FIELD))
    details = {"working_grid": {"size": list(grid.GetSize()), "spacing": list(grid.GetSpacing())},
               "device": str(device)}
    if device.type == "cuda":
        details["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    protocol.finish(args, seconds, {"convexadam": version("convexadam"), "torch": torch.__version__,
                                    "simpleitk": sitk.Version.VersionString()}, **details)


if __name__ == "__main__":
    main()
