"""The contract between benchmarks/compare.py and a method script (standard library only).

Every method is a script run as ``python SCRIPT FIXED MOVING OUTDIR --threads N [method options]``,
each in its own virtual environment. It writes into OUTDIR:

* ``displacement.mha``: the pullback displacement field on the FIXED image's grid, 3 components
  (x, y, z) in LPS millimetres: the fixed point ``x`` maps to the moving point ``x + u(x)``
  (ITK resampling convention; MetaImage, so no NIfTI RAS/LPS reinterpretation of vectors).
* ``run.json``: ``seconds`` (the registration call only, images already in memory, field export
  excluded), ``peak_memory_mb`` (peak RSS of the process, see :func:`peak_memory_mb`), ``threads``
  and ``versions``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path

FIELD = "displacement.mha"
RUN = "run.json"
THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS")


def parse(description: str, extra=None) -> argparse.Namespace:
    """Parse the common arguments (plus ``extra(parser)``'s) and cap every thread pool at ``--threads``.

    Call before importing ITK, ANTs or torch: their pools read the environment when they start.
    OpenMP threads sleep instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``): on a
    shared 2-core machine a two-thread torch registration took 153 s spinning and 13 s passive
    (6.5 s on one thread).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("fixed", type=Path)
    parser.add_argument("moving", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    for name in THREAD_VARIABLES:
        os.environ[name] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def peak_memory_mb() -> float:
    """Peak resident memory of this program (MB): VmHWM on Linux, else ``ru_maxrss``.

    Linux carries ``ru_maxrss`` over fork and exec, so a script started by a large parent (the
    benchmark, holding torch and a pair) would report at least the parent's size; VmHWM belongs to
    the program's own address space.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def finish(args: argparse.Namespace, seconds: float, versions: dict[str, str], **details) -> None:
    """Write ``run.json`` (after ``displacement.mha`` exists)."""
    if not (args.out / FIELD).is_file():
        raise RuntimeError(f"{args.out / FIELD} was not written")
    report = {"seconds": seconds, "peak_memory_mb": peak_memory_mb(),
              "threads": args.threads, "versions": versions, **details}
    (args.out / RUN).write_text(json.dumps(report, indent=2))
