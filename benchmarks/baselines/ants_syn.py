"""ANTs SyN (antspyx) with its defaults: centre of mass, affine, then SyN (Mattes MI, reg_iterations 40, 20, 0).

antspyx's ``SyN`` preset: an initial translation between the intensity centres of mass, an affine stage
(Mattes MI, 2100x1200x1200x0 iterations, shrink 4x2x2x1, so none at full resolution) and SyN[0.2, 3, 0]
(Mattes MI, 40x20x0, shrink 4x2x1). There is no rigid stage (that is ``SyNRA``).

Run in its own environment (antspyx pins numpy < 2.4 and scipy < 1.16; see protocol.py):
``.venv-ants/bin/python benchmarks/baselines/ants_syn.py FIXED MOVING OUTDIR --threads N``.
The forward transforms [warp, affine] map fixed points into the moving image; antsApplyTransforms
composes them into one displacement field on the fixed grid (ITK LPS mm, pullback), which is
re-written as MetaImage by ANTs' own ITK so no reader reinterprets the NIfTI vector components.
"""

from __future__ import annotations

import time

import protocol


def main() -> None:
    args = protocol.parse(__doc__.splitlines()[0])
    from importlib.metadata import version

    import ants

    fixed = ants.image_read(str(args.fixed))
    moving = ants.image_read(str(args.moving))
    start = time.perf_counter()
    registration = ants.registration(fixed, moving, type_of_transform="SyN", outprefix=str(args.out / "ants_"))
    seconds = time.perf_counter() - start
    composed = ants.apply_transforms(fixed, moving, registration["fwdtransforms"], compose=str(args.out / "ants_"))
    ants.image_write(ants.image_read(composed), str(args.out / protocol.FIELD))
    protocol.finish(args, seconds, {"antspyx": version("antspyx")},
                    forward_transforms=[str(t) for t in registration["fwdtransforms"]])


if __name__ == "__main__":
    main()
