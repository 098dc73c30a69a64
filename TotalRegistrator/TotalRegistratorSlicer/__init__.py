"""The TotalRegistrator Slicer module's logic, one job per file.

``library`` (the bundled library's tables), ``parameters`` (settings -> command
line), ``runner`` (the process protocol; ``qprocess``: Slicer's QProcess runner),
``job`` (progress, errors, outputs -> nodes), ``nodes`` (node I/O), ``harden``,
``dependencies``, ``sample`` and ``logic`` (which ties them together). All but
``qprocess`` and ``selftest`` run with MRML alone (Slicer, or the ``slicer-core``
wheel in tests); ``TotalRegistrator.py`` adds the Qt panel.
"""

DOCUMENTATION = "https://github.com/totalregistrator/SlicerTotalRegistrator/blob/main/TotalRegistrator/README.md"
