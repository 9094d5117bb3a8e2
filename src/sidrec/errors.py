"""User-facing errors.

Every problem a user can fix (a missing file, a malformed line, an unknown config key, NaN embeddings)
raises :class:`SidrecError`. The CLI turns it into one line on stderr and exit code 2 without a traceback,
so a user sees *what* is wrong and *where*, not our call stack.
"""

from __future__ import annotations

from pathlib import Path


class SidrecError(Exception):
    """An error caused by input the user controls; reported as one line, exit code 2."""


def input_error(path: str | Path, message: str, line: int | None = None) -> SidrecError:
    """Build an error that names the file (and line) at fault, the way every reader reports problems."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return SidrecError(f"{where}: {message}")
