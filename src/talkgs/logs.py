"""Logging setup for command-line entry points (rich handler, one place)."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    """Install a rich log handler on the root logger (idempotent).

    ``TALKGS_LOG_LEVEL`` (e.g. ``DEBUG``) overrides the level.
    """
    from rich.logging import RichHandler

    level = os.environ.get("TALKGS_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(rich_tracebacks=False, show_path=False, markup=False, log_time_format="[%X]")
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    # chatty third-party loggers
    for name in ("absl", "numba", "matplotlib", "PIL", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
