"""Qt-free part of the TotalRegistrator Slicer module: MRML nodes <-> files and the background process.

Everything here runs with MRML alone (Slicer, or the ``slicer-core`` wheel in
tests); the module file ``TotalRegistrator.py`` adds the Qt panel on top.
"""
