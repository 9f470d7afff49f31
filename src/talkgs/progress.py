"""Progress bars: one look for every long loop of talkgs (rich, frames/s shown).

- :func:`progress_bar` -- a ``rich.progress.Progress`` (description, bar, n/total, rate,
  elapsed, remaining); tasks carry a ``rate`` field: ``bar.add_task(desc, total=n, rate=0.0)``.
- :class:`Rate` -- items/s since creation, and :meth:`Rate.due` to refresh at most 4x a second.
- :func:`iterate` -- wrap an iterable in a bar, rate included.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_bar(enabled: bool, unit: str = "frames"):  # noqa: ANN201 - rich type, imported lazily
    """A rich progress bar (disabled, i.e. silent, when ``enabled`` is false)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.1f} " + unit + "/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )  # fmt: skip


class Rate:
    """Items per second since creation, for the progress bar."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last = 0.0

    def due(self) -> bool:
        """True at most 4x a second (throttles bar refreshes in tight loops)."""
        now = time.perf_counter()
        if now - self.last > 0.25:
            self.last = now
            return True
        return False

    def rate(self, n: int) -> float:
        return n / max(time.perf_counter() - self.t0, 1e-9)


def iterate(items: Iterable[T], enabled: bool, label: str, total: int | None = None, unit: str = "frames") -> Iterator[T]:
    """Yield ``items`` while a progress bar (with the rate) advances; silent when not ``enabled``."""
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(True, unit) as bar:
        task = bar.add_task(label, total=total, rate=0.0)
        meter = Rate()
        k = 0
        for k, x in enumerate(items, 1):
            yield x
            if meter.due():
                bar.update(task, completed=k, rate=meter.rate(k))
        bar.update(task, completed=k, rate=meter.rate(k))
