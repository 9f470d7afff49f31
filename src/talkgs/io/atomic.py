"""Atomic outputs: a killed process never leaves a half-written file or folder behind
where a stage or DVC would take it for an output.

Every file is written to a temporary sibling and renamed into place (``os.replace`` is
atomic on POSIX within one filesystem). Folders are built under a temporary sibling and
swapped in at the end, so a stage killed mid-way leaves either the old output or nothing.

**The temp-file convention.** Every temporary name of talkgs starts with :data:`TMP_PREFIX`
and carries the writing process's id::

    .talkgs-tmp-<pid>-<name>.<random><suffix>    a file being written (suffix kept: ffmpeg
                                                  picks the container from it)
    .talkgs-tmp-<pid>-<name>.<random>             a folder being built
    .talkgs-tmp-<pid>-<name>.old                  the previous folder during the swap

A ``SIGKILL`` (or a power cut) cannot be caught, so such names can survive: the repository's
``.dvcignore`` (and ``.gitignore``) list ``.talkgs-tmp-*``, so DVC never hashes or commits
one as part of an output, and :func:`sweep_temp` -- called at the start of every stage for
the outputs it owns -- removes those of dead processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TMP_PREFIX = ".talkgs-tmp-"
"""Start of every temporary file or folder name talkgs writes (``.dvcignore`` covers it)."""

_OURS = re.compile(re.escape(TMP_PREFIX) + r"(?P<pid>\d+)-")
# names of earlier talkgs versions (``.<name>.<mkstemp random>.tmp[.suffix]``, ``.<name>.old-<pid>``)
_LEGACY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$|^\..+\.old-\d+$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_prefix(path: str | os.PathLike[str]) -> str:
    """The temporary-name prefix of this process for output ``path`` (see the module docstring)."""
    return f"{TMP_PREFIX}{os.getpid()}-{Path(path).name}."


def temp_sibling(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """Create an empty temporary file next to ``path`` (usual permissions) and return its path.

    The caller renames it onto ``path`` or removes it; :func:`atomic_path` does both.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` on success.

    The temporary name keeps ``path``'s suffix (tools such as ffmpeg pick the container
    from it). On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, suffix=path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    # numpy scalars / arrays and paths show up in metadata dicts
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serialisable")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder under a temporary sibling and swap it onto ``path`` on success.

    An existing ``path`` is replaced only once the new one is complete. On any exception
    the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f"{temp_prefix(path)}old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# leftovers of killed runs


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_temp_name(name: str) -> bool:
    """A temporary name of talkgs (this convention or an earlier version's)."""
    return name.startswith(TMP_PREFIX) or bool(_LEGACY.match(name))


def _stale(name: str) -> bool:
    """A temporary name whose writer is gone (names without a process id count as gone)."""
    m = _OURS.match(name)
    if m is not None:
        return not _alive(int(m.group("pid")))
    return is_temp_name(name)


def _for_output(name: str, output: str) -> bool:
    """``name`` is a temporary sibling of an output called ``output``."""
    m = _OURS.match(name)
    if m is not None:
        return name[m.end() :].startswith(output + ".")
    return bool(_LEGACY.match(name)) and name.startswith(f".{output}.")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def sweep_temp(*outputs: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders that killed runs left for ``outputs``.

    For each output path: its temporary siblings (``.talkgs-tmp-<pid>-<name>.*`` next to it)
    and, when it is a folder, every temporary name anywhere inside it (e.g. a half-written
    checkpoint in a persisted model folder). Names of a process that is still running are
    kept. Returns what was removed (also logged).
    """
    removed: list[Path] = []
    for out in outputs:
        out = Path(out)
        parent = out.parent
        if parent.is_dir():
            for p in parent.iterdir():
                if _for_output(p.name, out.name) and _stale(p.name):
                    _remove(p)
                    removed.append(p)
        if out.is_dir() and not out.is_symlink():
            for dirpath, dirnames, filenames in os.walk(out):
                for name in [*dirnames, *filenames]:
                    if is_temp_name(name) and _stale(name):
                        _remove(Path(dirpath) / name)
                        removed.append(Path(dirpath) / name)
                dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).exists()]
    if removed:
        log.info("removed %d leftover temporary file(s) of an interrupted run: %s", len(removed), _names(removed))
    return removed


def _names(paths: Iterable[Path], limit: int = 5) -> str:
    paths = list(paths)
    text = ", ".join(str(p) for p in paths[:limit])
    return text + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
