"""The zlib-compatible codec for gzip data: ISA-L's (PyPI ``isal``, a dependency; 3-5x faster than zlib at
its fastest level, both ways) where it is installed, else zlib itself. Same API: ``compressobj``,
``decompressobj``, ``error``."""

from __future__ import annotations

import zlib
from types import ModuleType

codec: ModuleType = zlib
FASTEST_LEVEL = 1  # zlib: on CT, level 6 saves about 10 % of the size for 3-4 times the time
try:
    from isal import isal_zlib

    codec, FASTEST_LEVEL = isal_zlib, 2  # ISA-L's levels are 0-3; on CT 2 is as fast as 0 and 1, and smallest
except ImportError:
    pass
