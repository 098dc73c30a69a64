#!/usr/bin/env bash
# The wheel carries everything the library needs: build it, install it into a fresh virtual environment
# (no source tree on the path), make a phantom pair there and run the shipped cascade with refinement.
# Usage: Testing/check_wheel.sh PYTHON   (run by `make test`; about two minutes, most of it installing torch)
set -euo pipefail
python=${1:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$work/dist" "$repo"
wheel=$(ls "$work"/dist/*.whl)
"$python" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = [b for b in ("affine", "bone", "thorax", "abdomen", "wholebody") if f"TotalRegistratorLib/weights/{b}.pt" not in names]
assert not missing, f"the wheel lacks the weights of {missing}"
PY
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check -c "$repo/constraints.txt" "$wheel"
cd "$work"  # nothing of the source tree is importable from here
"$work/venv/bin/totalregistrator" phantom -o pair --pairs 1 --kind intra --seed 3 --spacing 8
"$work/venv/bin/totalregistrator" register pair/pair000_fixed.nii.gz pair/pair000_moving.nii.gz -o out \
  --blocks all --iterations 10,5 --affine-iterations 10,5 --quiet
"$work/venv/bin/python" - "$work" <<'PY'
import json, sys
from pathlib import Path
import TotalRegistratorLib
work = Path(sys.argv[1])
report = json.loads((work / "out" / "report.json").read_text())
library = Path(TotalRegistratorLib.__file__).resolve().parent
assert library.is_relative_to(work / "venv"), f"imported {library}, not the installed wheel"
assert report["blocks"] == ["affine", "bone", "thorax", "abdomen", "wholebody"], report["blocks"]
assert Path(report["weights"]).resolve() == library / "weights", report["weights"]
assert (work / "out" / "transform.h5").is_file()
print(f"wheel check passed: {library} ran the shipped cascade, weights from {report['weights']}")
PY
