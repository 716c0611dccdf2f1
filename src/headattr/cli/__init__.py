"""The `headattr` command line: a thin layer over the Python API, one module per command group.

`app` holds the click group and `main` (input problems are `HeadattrError`s, printed on one line with exit
status 2, never a traceback); `options` the flags several commands share. Importing the command modules here
attaches their commands to the group.
"""

from headattr.cli import analyze, attribute, benchmark, demo, generate, info, interop, prune, sparse  # noqa: F401
from headattr.cli.app import main

__all__ = ["main"]
