"""Progress bars for long work, shaped as ``start(label, total) -> advance(n=1)``.

Library code takes that callable, so it stays free of any terminal library and tests can pass
a silent one; the command line passes rich bars.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

Advance = Callable[..., None]
Start = Callable[[str, int], Advance]


def rich_progress(console: Console | None = None) -> tuple[Progress, Start]:
    """A rich Progress (use it as a context manager) and the matching ``start`` callable."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console or Console(stderr=True), transient=True)

    def start(label: str, total: int) -> Advance:
        task = bar.add_task(label, total=total)
        return lambda n=1: bar.advance(task, n)

    return bar, start


def silent(label: str, total: int) -> Advance:
    return lambda n=1: None
