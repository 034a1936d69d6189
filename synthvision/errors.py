"""User-facing errors.

`SpecError` is the one exception type the CLI turns into a single clear line and exit code 2:
raise it for anything the user can fix (a bad spec key, a missing file, an unknown class).
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SpecError(ValueError):
    """Bad user input: the message names what is wrong and how to fix it."""


class OutputDirError(SpecError):
    """The output directory cannot be used as asked (exists, unwritable, other spec)."""
