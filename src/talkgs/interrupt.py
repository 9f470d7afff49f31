"""Ctrl-C and SIGTERM in the command-line entry points (``talkgs ...``, ``stages/*.py``).

Both become an exception in the main thread, so every atomic writer
(:mod:`talkgs.io.atomic`) removes its temporary file on the way out, and the entry point
prints one line instead of a traceback: exit status 130 for Ctrl-C (SIGINT), 143 for SIGTERM
(what DVC, Prefect or a job scheduler send to cancel a run). Only ``SIGKILL`` cannot be
caught; the temporary files it leaves are ignored by DVC and removed by the next run.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised in the main thread by :func:`install_sigterm`)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"signal {signal.Signals(signum).name}")


def install_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def exit_code(e: KeyboardInterrupt) -> int:
    """130 (128 + SIGINT) for Ctrl-C, 143 (128 + SIGTERM) for :class:`Terminated`."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def message(e: KeyboardInterrupt, what: str) -> str:
    """The one line an interrupted entry point logs."""
    how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
    return (
        f"{what}: {how}. Nothing half-written was left behind (outputs are written atomically); "
        "run the same command again to redo it (training resumes from its last checkpoint)."
    )
