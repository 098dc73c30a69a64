"""Train TotalRegistrator cascade blocks headless (see ``python train.py --help``).

Runs the same way under ``python train.py ...``, ``torchrun ... train.py ...``
and ``Slicer --no-main-window --python-script train.py -- ...``: the arguments
after a ``--`` are used when one is present, and the script does not depend on
being ``__main__``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the library beside this script (Slicer, no install)

from TotalRegistratorLib.app.train_command import main  # noqa: E402


def arguments(argv: list) -> list:
    """The script's own arguments: everything after the first ``--`` if present, else after the script name."""
    return argv[argv.index("--") + 1:] if "--" in argv else argv[1:]


raise SystemExit(main(arguments(sys.argv)))
