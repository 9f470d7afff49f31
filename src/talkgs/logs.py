"""Logging setup for command-line entry points (rich handler, one place)."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    """Install a rich log handler on the root logger (idempotent).

    ``TALKGS_LOG_LEVEL`` (e.g. ``DEBUG``) overrides the level. ``TALKGS_PLAIN_LOGS=1`` logs
    plain ``LEVEL name: message`` lines instead (set by the Prefect flow for the stages it runs,
    whose output it relays into its own logs).
    """
    from rich.logging import RichHandler

    level = os.environ.get("TALKGS_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    root = logging.getLogger()
    if os.environ.get("TALKGS_PLAIN_LOGS") == "1":
        if not root.handlers:
            logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    elif not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(rich_tracebacks=False, show_path=False, markup=False, log_time_format="[%X]")
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    # chatty third-party loggers
    for name in ("absl", "numba", "matplotlib", "PIL", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
