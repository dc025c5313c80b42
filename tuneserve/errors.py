"""The error type every CLI command turns into one readable line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, missing file, unprepared model).

    The CLI prints ``error: <message>`` and exits with code 2, never a traceback.
    """
