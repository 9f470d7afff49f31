"""Managing subjects in ``params.yaml``: add a user's video, enable/disable catalog clips.

``params.yaml`` is edited with ruamel.yaml's round-trip mode, so comments and key order
survive, and written atomically. Every edit is re-validated with the strict loader before
the file is replaced.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from talkgs import paths
from talkgs.config import SUBJECT_NAME, ConfigError, load_params
from talkgs.io.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML()  # round-trip: keeps comments and order
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 120
    return y


def _edit_params(params_file: Path, edit: Any) -> None:
    """Load params.yaml round-trip, apply ``edit(doc)``, validate, write atomically."""
    import io

    y = _yaml()
    doc = y.load(params_file.read_text())
    edit(doc)
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    tmp = params_file.with_name(f".{params_file.name}.check")
    try:
        tmp.write_text(text)
        load_params(tmp)  # strict validation of the edited file before it replaces the original
    finally:
        tmp.unlink(missing_ok=True)
    write_text(params_file, text)


GROUPS = {"subjects": ("subjects", "catalog"), "audios": ("audios", "audio_catalog")}
"""kind -> (built group, opt-in catalog group) in params.yaml."""


def _move(names: list[str], src: str, dst: str, params_file: Path) -> list[str]:
    """Move entries ``names`` from group ``src`` to ``dst`` of params.yaml (kept ones are skipped)."""
    moved: list[str] = []

    def edit(doc: Any) -> None:
        from ruamel.yaml.comments import CommentedMap

        if doc.get(dst) is None:
            doc[dst] = CommentedMap()
        for n in names:
            if n in doc[dst]:
                continue
            doc[dst][n] = doc[src].pop(n)
            moved.append(n)
        if src == "subjects":  # a disabled subject leaves the few-shot sweep too
            fs = (doc.get("evaluate") or {}).get("few_shot") or {}
            listed = fs.get("subjects") or []
            for n in moved:
                if n in listed:
                    listed.remove(n)
                    log.info("%s: removed %s from evaluate.few_shot.subjects", params_file, n)

    _edit_params(params_file, edit)
    return moved


def enable(names: list[str], params_file: Path = Path("params.yaml"), kind: str = "subjects") -> list[str]:
    """Move catalog entries into the built set (``subjects`` or ``audios``); no-op for enabled ones."""
    built, catalog = GROUPS[kind]
    params = load_params(params_file)
    have_built, have_cat = getattr(params, built), getattr(params, catalog)
    for n in names:
        if n not in have_cat and n not in have_built:
            raise ConfigError(f"{params_file}: no {kind[:-1]} {n!r} in {catalog} or {built} ({catalog}: {sorted(have_cat)})")
    return _move([n for n in names if n not in have_built], catalog, built, params_file)


def disable(names: list[str], params_file: Path = Path("params.yaml"), kind: str = "subjects") -> list[str]:
    """Move built entries back into the catalog (their outputs stay on disk and in the DVC cache)."""
    built, catalog = GROUPS[kind]
    have_built = getattr(load_params(params_file), built)
    for n in names:
        if n not in have_built:
            raise ConfigError(f"{params_file}: {kind[:-1]} {n!r} is not enabled (enabled: {sorted(have_built)})")
    return _move(names, built, catalog, params_file)


def add_subject(
    name: str,
    video: Path,
    *,
    resolution: int | None = None,
    force: bool = False,
    params_file: Path = Path("params.yaml"),
    dvc_track: bool = True,
) -> Path:
    """Copy ``video`` under ``data/raw/``, track it with ``dvc add``, register it as a subject.

    Returns the path of the copy. Raises :class:`ConfigError` for a bad name, a missing or
    non-video file, or an existing subject (unless ``force``).
    """
    if not SUBJECT_NAME.match(name):
        raise ConfigError(
            f"subject name {name!r}: use lower-case letters, digits and '_' (starting with a letter), "
            f"e.g. {_suggest_name(name)!r}"
        )
    video = Path(video)
    if not video.is_file():
        raise ConfigError(f"{video}: no such file. Give the path of a talking-portrait video (mp4, mov, mkv, webm).")
    if video.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(
            f"{video}: unsupported extension {video.suffix!r}; expected one of {sorted(VIDEO_SUFFIXES)}. "
            "Convert it with ffmpeg (e.g. `ffmpeg -i in.xyz out.mp4`)."
        )
    params = load_params(params_file)
    if (name in params.subjects or name in params.catalog) and not force:
        raise ConfigError(f"subject {name!r} already exists in {params_file}; pick another name or pass --force")
    root = params_file.parent
    dest_rel = paths.RAW / f"{name}{video.suffix.lower()}"
    dest = root / dest_rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        shutil.copyfile(video, tmp)
    log.info("copied %s -> %s (%.1f MB)", video, dest_rel, dest.stat().st_size / 1e6)
    if dvc_track:
        _dvc(["add", str(dest_rel)], cwd=root)

    def edit(doc: Any) -> None:
        from ruamel.yaml.comments import CommentedMap

        entry = CommentedMap(video=str(dest_rel))
        if resolution is not None:
            entry["resolution"] = resolution
        entry["note"] = f"added with `talkgs add-subject` from {video.name}"
        if doc.get("subjects") is None:
            doc["subjects"] = CommentedMap()
        if doc.get("catalog") is not None and name in doc["catalog"]:
            del doc["catalog"][name]
        doc["subjects"][name] = entry

    _edit_params(params_file, edit)
    return dest


def _suggest_name(name: str) -> str:
    import re

    s = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "subject"
    return s if s[0].isalpha() else f"s_{s}"


def _dvc(args: list[str], cwd: Path) -> None:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {cwd}:\n{proc.stderr.strip() or proc.stdout.strip()}")
    log.debug("dvc %s: %s", " ".join(args), proc.stdout.strip())
