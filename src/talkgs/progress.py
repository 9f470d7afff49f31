"""Progress: one look for every long loop of talkgs, on a terminal and in a log.

- :func:`progress_bar` -- when stderr is a terminal, a ``rich.progress.Progress`` on stderr
  (description, bar, n/total, rate, extra fields, elapsed, remaining); when it is not (``dvc
  repro`` piped, Prefect, CI logs, ``2> file``), a :class:`PlainProgress` with the same
  methods that prints one plain line per task every :func:`plain_interval` seconds and when
  the task completes, e.g.
  ``train demo/gaussiantalker: step 1200/4000 (30%), 8.1 steps/s, eta 5m40s, phase deformation, loss 0.0310``.
  Tasks carry a ``rate`` field for the rich bar: ``bar.add_task(desc, total=n, rate=0.0)``.
- :class:`Rate` -- items/s since creation, and :meth:`Rate.due` to refresh at most 4x a second.
- :func:`iterate` -- wrap an iterable in a bar, rate included.

``TALKGS_PROGRESS_SECONDS`` sets the interval of the plain lines (default 15 s; 0: every update).
With ``TALKGS_PLAIN_LOGS=1`` (set by the Prefect flow) each plain line starts ``INFO talkgs.progress: ``
like the plain log records, so the flow logs it at INFO in the stage's task log.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL_S = 15.0
"""Seconds between two plain progress lines of a task (``TALKGS_PROGRESS_SECONDS`` overrides)."""


def plain_interval() -> float:
    """Seconds between plain progress lines: ``TALKGS_PROGRESS_SECONDS`` or :data:`DEFAULT_INTERVAL_S`."""
    raw = os.environ.get("TALKGS_PROGRESS_SECONDS")
    if raw is None or raw.strip() == "":
        return DEFAULT_INTERVAL_S
    from talkgs.configlib import ConfigError

    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"environment variable TALKGS_PROGRESS_SECONDS={raw!r}: give a number of seconds >= 0 (e.g. 15; 0 prints every update) or unset it")
    return value


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(enabled: bool, unit: str = "frames", *, fields: str = "", count: str = "", rate: bool = True):  # noqa: ANN201 - rich type, imported lazily
    """A progress display for long loops (silent when ``enabled`` is false).

    Args:
        unit: what is counted, for the rate (``frames`` → ``12.3 frames/s``).
        fields: extra task fields shown after the rate, as a ``str.format`` template over the
            task's fields, e.g. ``"loss {loss:.4f}, {gaussians} Gaussians"``.
        count: a word before ``n/total`` in the plain lines (``step`` → ``step 1200/4000``).
        rate: show the tasks' ``rate`` field on the rich bar (the plain lines measure the rate).

    Returns:
        A rich ``Progress`` on stderr when it is a terminal, else a :class:`PlainProgress`.
    """
    if enabled and not _is_tty(sys.stderr):
        return PlainProgress(unit, fields=fields, count=count)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = [TextColumn("{task.fields[rate]:>7.1f} " + unit + "/s")] if rate else []
    if fields:
        cols.append(TextColumn(re.sub(r"\{(\w+)", r"{task.fields[\1]", fields)))
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        *cols, TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=False, console=Console(stderr=True),
    )  # fmt: skip


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class PlainTask:
    """One task of a :class:`PlainProgress` (the attributes rich's ``Task`` has that talkgs reads)."""

    description: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    start_completed: float = 0.0
    t_start: float = field(default_factory=time.perf_counter)
    t_printed: float = field(default_factory=time.perf_counter)
    printed_final: bool = False

    @property
    def finished(self) -> bool:
        return self.total is not None and self.completed >= self.total


class PlainProgress:
    """Plain-text progress lines for a stream that is not a terminal (a log).

    Speaks the part of ``rich.progress.Progress`` that talkgs uses (a context manager,
    ``start``/``stop``, ``add_task``, ``update``, ``advance``, ``tasks[id].completed``) and
    prints ``<description>: [<count> ]n/total (p%), r <unit>/s, eta 1m05s[, <fields>]`` for a
    task every ``interval`` seconds of updates and once when it completes (``done in ...``).
    The rate is measured here (items of this run per second since the task was added).
    """

    def __init__(self, unit: str = "frames", *, fields: str = "", count: str = "", interval: float | None = None,
                 stream: IO[str] | None = None) -> None:  # fmt: skip
        self.unit = unit
        self.fields = fields
        self.count = count
        self.interval = plain_interval() if interval is None else float(interval)
        self._stream = stream
        self.tasks: dict[int, PlainTask] = {}

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr  # looked up late: pytest swaps sys.stderr

    # rich.progress.Progress's API ------------------------------------------------------------
    def __enter__(self) -> PlainProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        """Print the final state of every task that has not printed it (e.g. an early break)."""
        for task in self.tasks.values():
            if not task.printed_final and task.completed > task.start_completed:
                self._print(task, final=True)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = PlainTask(description, total, float(completed), dict(fields), start_completed=float(completed))
        return tid

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None, advance: float | None = None,
               description: str | None = None, **fields: Any) -> None:  # fmt: skip
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        if completed is not None:
            task.completed = float(completed)
        if advance is not None:
            task.completed += float(advance)
        task.fields.update(fields)
        now = time.perf_counter()
        if task.finished:
            if not task.printed_final:
                self._print(task, final=True)
        elif now - task.t_printed >= self.interval:
            self._print(task, final=False)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    # the line --------------------------------------------------------------------------------
    def line(self, task: PlainTask, *, final: bool = False) -> str:
        """The plain progress line of ``task`` now."""
        elapsed = time.perf_counter() - task.t_start
        done = task.completed - task.start_completed
        rate = done / elapsed if elapsed > 0 else 0.0
        n = f"{task.completed:g}" + (f"/{task.total:g}" if task.total is not None else "")
        parts = [f"{self.count} {n}" if self.count else n]
        if task.total:
            parts[0] += f" ({100.0 * task.completed / task.total:.0f}%)"
        parts.append(f"{rate:.1f} {self.unit}/s" if rate < 100 else f"{rate:.0f} {self.unit}/s")
        if final or task.finished:
            parts.append(f"done in {_duration(elapsed)}")
        elif task.total is not None and rate > 0:
            parts.append(f"eta {_duration((task.total - task.completed) / rate)}")
        if self.fields:
            try:
                parts.append(self.fields.format(**task.fields))
            except (KeyError, ValueError, TypeError):  # a field not set yet (first update)
                pass
        return f"{task.description}: " + ", ".join(parts)

    def _print(self, task: PlainTask, *, final: bool) -> None:
        task.t_printed = time.perf_counter()
        task.printed_final = final or task.finished
        stream = self.stream
        # under the Prefect flow (TALKGS_PLAIN_LOGS=1) a progress line reads like a log record,
        # which the flow's relay logs at INFO in the stage's task log (not as stray stderr)
        prefix = "INFO talkgs.progress: " if os.environ.get("TALKGS_PLAIN_LOGS") == "1" else ""
        stream.write(prefix + self.line(task, final=final) + "\n")
        stream.flush()


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
