"""Progress bars (rich). One helper so every long loop shows the same kind of bar and can be silenced."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
console = Console(stderr=True)


def make_progress(enabled: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        disable=not enabled or not sys.stderr.isatty(),
    )


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate with a progress bar (shown only on an interactive terminal)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress(enabled) as prog:
        task = prog.add_task(description, total=total, info="")
        for x in items:
            yield x
            prog.advance(task)


# Steps over fewer rows (items embedded or tokenized, users evaluated) finish in seconds and get no note.
NOTE_MIN_ROWS = 5000


def note(message: str, rows: int | None = None) -> None:
    """One line on stderr (``sidrec: message``) before a step that can run for minutes without other output, when
    stderr is not a terminal (a log, a pipe, a batch job): there no progress bar is drawn, and a long silence reads
    as a hang. ``rows``: the step's size; below :data:`NOTE_MIN_ROWS` it is quick and says nothing."""
    if (rows is not None and rows < NOTE_MIN_ROWS) or console.is_terminal:
        return
    print(f"sidrec: {message}", file=sys.stderr, flush=True)
