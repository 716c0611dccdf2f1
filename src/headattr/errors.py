"""User-facing errors.

A `HeadattrError` is a problem with the user's input (a path, a flag, a dataset row). The CLI prints
its message on one line and exits with status 2; no traceback. Everything else is a bug and is allowed
to raise normally.
"""

from __future__ import annotations


class HeadattrError(Exception):
    """Bad input: the message names what is wrong, where, and how to fix it."""

    exit_code = 2
