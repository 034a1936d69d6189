"""The progress bars of long commands (build, augment, train-cvae): items, rate, time left."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


@contextmanager
def progress_bar(
    enabled: bool, total: int, done: int, label: str
) -> Iterator[Callable[[int], None]]:
    """A rich bar of `total` items, `done` of them finished before; yields `tick(n)`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import TextColumn

    class _Rate(TextColumn):
        def render(self, task: Any) -> Any:
            # Images made by this run over its time. rich's own speed counts the images a
            # resume skipped, and reads bursts (a batch lands at once) as a huge rate.
            from rich.text import Text

            elapsed = task.finished_time if task.finished_time is not None else task.elapsed
            made = task.completed - done
            if not elapsed or made <= 0:
                return Text("   -- img/s")
            return Text(f"{made / elapsed:6.1f} img/s")

    with rich_progress(middle=(_Rate(""),)) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def rich_progress(*, middle: Sequence[Any] = (), tail: Sequence[Any] = ()) -> Any:
    """A rich `Progress` with synthvision's columns: label, bar, done/total, `middle`, elapsed,
    remaining, `tail` (the build's and train-cvae's bars look alike)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *middle,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *tail,
        transient=False,
    )
