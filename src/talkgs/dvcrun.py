"""Running one DVC stage: ``dvc repro --single-item <stage>`` with its output relayed, line by
line, at the right log levels (:class:`LogRelay`), and its failures told apart (a failing command,
:class:`StageFailed`; DVC's repository lock held elsewhere, :class:`DvcLockBusy`). Used by the
Prefect flow (:mod:`talkgs.orchestrate`) and by a fan-out worker's flow run (:mod:`talkgs.fanout`).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_MESSAGES = ("Unable to acquire lock", "lock is held", "LockError")


class StageFailed(RuntimeError):
    """A DVC stage's command failed (not retried: rerunning the same command fails the same way)."""


class DvcLockBusy(OSError):
    """DVC's repository lock is held by another process (retried)."""


def _subprocess_env() -> dict[str, str]:
    """Environment for dvc: the running interpreter's bin dir first on PATH (the stage commands
    pick dvc's interpreter themselves, ``stages/python.sh``; tools they call find this venv's too)."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # stage logs as `LEVEL name: message` (progress lines too), which the relay maps onto the
    # task logger's levels: one prefix, the task logger's
    env["TALKGS_PLAIN_LOGS"] = "1"
    return env


def format_status(raw: dict[str, Any], names: list[str]) -> dict[str, str]:
    """``{stage: what changed | ""}`` from ``dvc status --json`` output (or ``Repo.status()``)."""
    out = {n: "" for n in names}
    for key, changes in raw.items():
        name = key.split(":", 1)[-1]  # "dvc.yaml:count@a" or "count@a"
        parts = []
        for ch in changes:
            if isinstance(ch, dict):
                for what, files in ch.items():
                    parts.append(f"{what}: " + (", ".join(f"{k} ({v})" for k, v in files.items()) if isinstance(files, dict) else str(files)))
            else:
                parts.append(str(ch))
        if name in out:
            out[name] = "; ".join(parts) or "changed"
    return out



# ----------------------------------------------------------------------------------------------
# running one stage: dvc repro, its output relayed at the right levels


_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}  # fmt: skip
_PLAIN_LOG = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+: .*)$")
_DVC_LEVEL = re.compile(r"^(ERROR|WARNING): (.*)$")
_ABSL = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+\s+\S+:\d+\] ")
_NOISE = (
    re.compile(r"^To track the changes with git, run:$"),
    re.compile(r"^\s*git add .*dvc\.lock.*$"),
    re.compile(r"^To enable auto staging, run:$"),
    re.compile(r"^\s*dvc config core\.autostage true$"),
    re.compile(r"^Use `dvc push` to send your updates to remote storage\.$"),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
)
_TB_CONT = ("Traceback (most recent call last):", "During handling of the above exception", "The above exception was")


class LogRelay:
    """Maps a stage's output lines onto log levels, one record per line (a traceback: one record).

    - ``LEVEL name: message`` (talkgs's plain logs, progress lines included) -> that level,
      ``name: message``;
    - DVC's ``ERROR: ...`` / ``WARNING: ...`` -> ERROR / WARNING; a Python traceback -> ERROR;
    - DVC's ``git add dvc.lock`` / autostage / ``dvc push`` hints, MediaPipe's absl I/W lines
      -> DEBUG (absl E -> WARNING, F -> ERROR);
    - anything else: stdout -> INFO, stderr -> WARNING.
    """

    def __init__(self, emit: Callable[[int, str], None]) -> None:
        self.emit = emit
        self._tb: list[str] = []
        self.tail: list[str] = []  # the last non-noise lines (for the failure message)
        self.errors: list[str] = []  # ERROR-level records

    def _out(self, level: int, msg: str) -> None:
        if level > logging.DEBUG:
            self.tail = (self.tail + [msg])[-15:]
        if level >= logging.ERROR:
            self.errors.append(msg)
        self.emit(level, msg)

    def line(self, line: str, stderr: bool) -> None:
        line = line.rstrip("\r\n")
        if self._tb:
            if line.startswith((" ", "\t")) or not line.strip() or line.startswith(_TB_CONT):
                self._tb.append(line)
                return
            self._tb.append(line)  # the exception line ends it
            self.flush()
            return
        if not line.strip():
            return
        if stderr and line.startswith("Traceback (most recent call last):"):
            self._tb = [line]
            return
        if any(p.match(line) for p in _NOISE):
            self.emit(logging.DEBUG, line)
            return
        if m := _ABSL.match(line):
            self._out({"I": logging.DEBUG, "W": logging.DEBUG, "E": logging.WARNING}.get(m.group(1), logging.ERROR), line)
            return
        if m := _PLAIN_LOG.match(line):
            self._out(_LEVELS[m.group(1)], m.group(2))
            return
        if m := _DVC_LEVEL.match(line):
            self._out(_LEVELS[m.group(1)], m.group(2))
            return
        self._out(logging.WARNING if stderr else logging.INFO, line)

    def flush(self) -> None:
        if self._tb:
            tb, self._tb = self._tb, []
            while tb and not tb[-1].strip():
                tb.pop()
            self._out(logging.ERROR, "\n".join(tb))


_EXITED = re.compile(r"exited with (-?\d+)")


def _run_dvc_stage(stage: str, root: Path, emit: Callable[[int, str], None]) -> str:
    """Run one stage with ``dvc repro --single-item``; relay its output through ``emit(level, msg)``.

    Returns ``"skipped"`` when DVC found it up to date, ``"restored"`` when DVC's run cache
    had its outputs, else ``"ran"``. Raises :class:`StageFailed` with the stage command's own exit
    status and error lines, :class:`DvcLockBusy` when DVC's lock is held.
    """
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    try:
        proc = subprocess.Popen(
            cmd, cwd=root, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, errors="replace",
        )  # fmt: skip
    except OSError as e:  # could not start the process at all: I/O, retry
        raise OSError(f"could not start {' '.join(cmd)}: {e}") from e
    lines: queue.Queue[tuple[bool, str | None]] = queue.Queue()

    def pump(stream: Any, is_err: bool) -> None:
        for line in stream:
            lines.put((is_err, line))
        lines.put((is_err, None))

    pumps = [threading.Thread(target=pump, args=(s, e), daemon=True) for s, e in ((proc.stdout, False), (proc.stderr, True))]
    for t in pumps:
        t.start()
    relay = LogRelay(emit)
    text: list[str] = []
    open_streams = 2
    while open_streams:
        is_err, line = lines.get()
        if line is None:
            open_streams -= 1
            continue
        text.append(line)
        relay.line(line, is_err)
    relay.flush()
    rc = proc.wait()
    out = "".join(text)
    if rc != 0:
        if any(m in out for m in LOCK_MESSAGES):
            raise DvcLockBusy(f"DVC repository lock busy while running {stage}; another `dvc` is running in {root}")
        m = _EXITED.search(out)
        what = f"its command exited with {m.group(1)}" if m else f"dvc repro exited with {rc}"
        # the stage's own last error (a traceback's last line), else its last output line
        own = [e for e in relay.errors if not e.startswith("failed to reproduce")]
        said = [t for t in relay.tail if not t.startswith("failed to reproduce")]
        reason = (own or said or ["(no output)"])[-1].splitlines()[-1]
        tail = "\n".join(relay.tail[-10:])
        raise StageFailed(f"stage {stage} failed ({what}): {reason}\nlast output:\n{tail}")
    if "didn't change, skipping" in out:
        return "skipped"
    if "is cached - skipping run" in out:
        return "restored"
    return "ran"
