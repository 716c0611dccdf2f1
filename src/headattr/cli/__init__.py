"""The `headattr` command line."""

from headattr.cli.commands import main

__all__ = ["main"]
