"""Managing subjects in ``params.yaml``: add a user's video, remove a subject, enable/disable
catalog clips.

``params.yaml`` is edited with ruamel.yaml's round-trip mode, so comments and key order
survive (including the section headings between top-level groups), and written atomically.
Every edit is validated with the strict loader before anything is written; a command that
fails leaves params.yaml and the files it would have changed as they were.
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
from talkgs.config import RESERVED_NAMES, SUBJECT_NAME, ConfigError, load_params, parse_params
from talkgs.io.atomic import atomic_path, temp_prefix, write_bytes, write_text

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML()  # round-trip: keeps comments and order
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 120
    return y


ENTRY_GROUPS = ("subjects", "catalog", "audios", "audio_catalog")
"""Top-level mappings of params.yaml whose entries talkgs adds, moves and removes."""


def _last_entry(node: Any) -> tuple[Any, Any]:
    """``(mapping, key)`` of the deepest last scalar entry of a nested mapping: ruamel keeps the
    comment lines that follow a block (e.g. the next section's heading) on it. ``(None, None)``
    when the mapping is empty or ends in a list."""
    from ruamel.yaml.comments import CommentedMap

    holder = key = None
    while isinstance(node, CommentedMap) and len(node):
        holder, key = node, next(reversed(node))
        node = node[key]
    if isinstance(node, (list, dict)):
        return None, None
    return holder, key


def _take_tail(node: Any) -> str:
    """Detach the comment lines that follow the block ``node`` (its end-of-line comment stays)."""
    holder, key = _last_entry(node)
    entry = holder.ca.items.get(key) if holder is not None else None
    if not entry or len(entry) < 3 or entry[2] is None:
        return ""
    eol, newline, rest = entry[2].value.partition("\n")
    if not newline:
        return ""
    if eol.strip():
        entry[2].value = eol + newline
    else:
        entry[2] = None
    return rest


def _put_tail(doc: Any, group: str, tail: str) -> None:
    """Re-attach ``tail`` (see :func:`_take_tail`) after the block ``doc[group]``'s new last entry."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    node = doc[group]
    if len(node):
        node.fa.set_block_style()  # an emptied group dumps as `{}`; refilled, it is a block again
    if not tail:
        return
    holder, key = _last_entry(node)
    if holder is not None:
        entry = holder.ca.items.setdefault(key, [None, None, None, None])
        if entry[2] is None:
            entry[2] = CommentToken("\n" + tail, CommentMark(0), None)
        else:
            entry[2].value += tail
        return
    keys = list(doc)  # an empty group: the lines go before the next top-level key
    after = keys[keys.index(group) + 1 :]
    if after:
        lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in tail.rstrip("\n").split("\n")]
        doc.yaml_set_comment_before_after_key(after[0], before="\n".join(lines), indent=0)


def _edited_text(params_file: Path, edit: Any) -> str:
    """params.yaml loaded round-trip, ``edit(doc)`` applied, validated with the strict loader
    (errors name ``params_file`` and the key); returns the new text, writes nothing.

    The comment lines between top-level sections stay where they are: ruamel attaches them to
    the last entry of the section above, so they are moved to its new last entry."""
    import io

    import yaml

    y = _yaml()
    doc = y.load(params_file.read_text())
    tails = {g: _take_tail(doc[g]) for g in ENTRY_GROUPS if doc.get(g) is not None}
    edit(doc)
    for g, tail in tails.items():
        if doc.get(g) is not None:
            _put_tail(doc, g, tail)
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    parse_params(yaml.safe_load(text) or {}, str(params_file))
    return text


def _edit_params(params_file: Path, edit: Any) -> None:
    """Apply ``edit(doc)`` to params.yaml (comments kept), validate, write atomically."""
    write_text(params_file, _edited_text(params_file, edit))


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


def _check_name(name: str) -> None:
    if not SUBJECT_NAME.match(name):
        raise ConfigError(
            f"subject name {name!r}: use lower-case letters, digits and '_' (starting with a letter, at most 48 "
            f"characters), e.g. {_suggest_name(name)!r}"
        )
    if name in RESERVED_NAMES:
        why = _RESERVED_WHY.get(name, f"data/{name}/ or models/{name}/ holds other pipeline files")
        raise ConfigError(
            f"subject name {name!r} is reserved ({why}; reserved names: {', '.join(sorted(RESERVED_NAMES))}). "
            f"Pick another name, e.g. {name + '_1'!r}."
        )


_RESERVED_WHY = {
    "raw": "data/raw/ holds the videos themselves",
    "audio": "data/audio/ holds the foreign audios' features",
    "pretrain": "models/pretrain/ holds the cross-subject models",
}


def stage_outputs(root: Path) -> dict[str, str]:
    """Outputs declared in ``root/dvc.yaml`` (``outs``, ``metrics``, ``plots``) -> their stage.

    Templated paths (``data/${key}/extract``) are returned as written; :func:`owner_stage`
    matches them with ``${...}`` standing for any one path component."""
    import yaml

    f = root / "dvc.yaml"
    if not f.is_file():
        return {}
    spec = yaml.safe_load(f.read_text()) or {}
    owned: dict[str, str] = {}
    for stage, body in (spec.get("stages") or {}).items():
        body = body.get("do", body) if isinstance(body, dict) else {}
        for kind in ("outs", "metrics", "plots"):
            for out in body.get(kind) or []:
                for path in out if isinstance(out, dict) else [out]:
                    if isinstance(path, str):
                        owned[path] = stage
    return owned


def owner_stage(path: str | Path, root: Path) -> str | None:
    """The dvc.yaml stage whose output is ``path`` (relative to ``root``) or contains it; None if none."""
    import re

    rel = Path(path).as_posix()
    for out, stage in stage_outputs(root).items():
        pattern = "".join("[^/]+" if part.startswith("${") else re.escape(part) for part in re.split(r"(\$\{[^}]*\})", out))
        if re.fullmatch(pattern + "(/.*)?", rel):
            return stage
    return None


def _referenced_by(doc: dict, path: str, skip: str) -> str | None:
    """The params entry (``group.name``) other than ``subjects/catalog.<skip>`` whose file is ``path``."""
    for group in ENTRY_GROUPS:
        for n, entry in (doc.get(group) or {}).items():
            if group in ("subjects", "catalog") and n == skip:
                continue
            f = (entry or {}).get("video" if group in ("subjects", "catalog") else "path")
            if f is not None and Path(f).as_posix() == Path(path).as_posix():
                return f"{group}.{n}"
    return None


class _Undo:
    """Files a register/remove changes, put back as they were if a later step fails, so a failed
    command leaves the workspace as it found it."""

    def __init__(self) -> None:
        self._saved: list[tuple[Path, bytes | None]] = []
        self._moved: list[tuple[Path, Path]] = []  # (original, backup)
        self._created: list[Path] = []

    def keep(self, path: Path) -> None:
        """Remember ``path``'s content (or absence); a small file."""
        if all(p != path for p, _ in self._saved):
            self._saved.append((path, path.read_bytes() if path.is_file() else None))

    def move_aside(self, path: Path) -> None:
        """Rename a (large) file to a hidden sibling; it comes back on undo, is deleted on commit."""
        if path.exists():
            backup = path.with_name(f"{temp_prefix(path)}undo")  # the temp-file convention: swept, DVC-ignored
            os.replace(path, backup)
            self._moved.append((path, backup))

    def created(self, path: Path) -> None:
        self._created.append(path)

    def undo(self) -> None:
        for path in reversed(self._created):
            path.unlink(missing_ok=True)
        for path, data in reversed(self._saved):
            if data is None:
                path.unlink(missing_ok=True)
            else:
                write_bytes(path, data)
        for path, backup in reversed(self._moved):
            os.replace(backup, path)

    def commit(self) -> None:
        for _, backup in self._moved:
            backup.unlink(missing_ok=True)


def add_subject(
    name: str,
    video: Path,
    *,
    resolution: int | None = None,
    force: bool = False,
    params_file: Path = Path("params.yaml"),
    dvc_track: bool = True,
) -> Path:
    """Check ``video``, copy it to ``data/raw/<name>.<ext>``, track it with ``dvc add`` and
    register it under ``subjects`` in params.yaml (comments kept).

    Everything is checked before anything is written: the name (syntax, reserved names), the
    resolution override (the bounds of ``subjects.<name>.resolution``), the file (exists, a
    video extension, and :func:`talkgs.preprocess.extract.probe_input`: a readable video stream,
    not truncated, long enough, an audio track that is not silent; and ``extract.speech_check``:
    it sounds like speech), an existing subject of that
    name (``force`` replaces it), and that the copy would not overwrite a file another stage
    produces (``data/raw/demo.mp4`` is stage make_demo's) or another entry uses. Then the copy,
    ``dvc add`` and the params edit happen as one step: if one fails the others are undone.

    Returns the path of the copy. Raises :class:`ConfigError` (name, options, params) or
    :class:`~talkgs.preprocess.errors.InputError` (the video), with nothing written.
    """
    from talkgs.configlib import FRAME_PIXELS

    _check_name(name)
    FRAME_PIXELS.check(resolution, f"subjects.{name}.resolution")
    video = Path(video)
    if not video.is_file():
        raise ConfigError(f"{video}: no such file. Give the path of a talking-portrait video (mp4, mov, mkv, webm).")
    if video.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(
            f"{video}: unsupported extension {video.suffix!r}; expected one of {sorted(VIDEO_SUFFIXES)}. "
            "Convert it with ffmpeg (e.g. `ffmpeg -i in.xyz out.mp4`)."
        )
    params = load_params(params_file)
    existing = params.subjects.get(name) or params.catalog.get(name)
    if existing is not None and not force:
        raise ConfigError(f"subject {name!r} already exists in {params_file}; pick another name, or pass --force to replace it")
    root = params_file.parent
    dest_rel = paths.RAW / f"{name}{video.suffix.lower()}"
    dest = root / dest_rel
    stage = owner_stage(dest_rel, root)
    if stage is not None:
        raise ConfigError(
            f"{dest_rel} is the output of stage {stage!r} (dvc.yaml); add-subject never overwrites it"
            f"{' (also with --force)' if force else ''}. Pick another name, e.g. {name + '_1'!r}."
        )
    import yaml

    user = _referenced_by(yaml.safe_load(params_file.read_text()) or {}, dest_rel.as_posix(), skip=name)
    if user is not None:
        raise ConfigError(f"{dest_rel} is the file of {user} in {params_file}; add-subject never overwrites it. Pick another name.")
    if dest.resolve() == video.resolve():
        raise ConfigError(f"{video} is already the subject's copy {dest_rel}; give the original video")
    if dvc_track and not (root / ".dvc").is_dir():
        raise ConfigError(f"{root.resolve()} is not a DVC repository (no .dvc/): run `dvc init` there, or pass --no-dvc")

    import dataclasses

    from talkgs.preprocess.extract import check_speech, probe_input
    from talkgs.preprocess.quality import speech_activity

    ex = params.extract if resolution is None else dataclasses.replace(params.extract, resolution=resolution)
    probed = probe_input(video, ex)  # InputError: "<video>: <what is wrong>. <fix>"
    frames = max(1, int(round(probed.timing.duration_s * ex.fps)))  # the speech gate, on what extract measures
    n = int(round(frames * ex.sample_rate / ex.fps))
    check_speech(video, speech_activity(probed.audio[:n], ex.sample_rate), ex.speech_check, lambda m: log.warning("%s: %s", video, m))

    def edit(doc: Any) -> None:
        from ruamel.yaml.comments import CommentedMap

        entry = CommentedMap(video=dest_rel.as_posix())
        if resolution is not None:
            entry["resolution"] = resolution
        entry["note"] = f"added with `talkgs add-subject` from {video.name}"
        if doc.get("subjects") is None:
            doc["subjects"] = CommentedMap()
        if doc.get("catalog") is not None and name in doc["catalog"]:
            del doc["catalog"][name]
        doc["subjects"][name] = entry

    text = _edited_text(params_file, edit)
    if existing is not None and Path(existing.video).as_posix() != dest_rel.as_posix():
        log.warning("subject %r pointed at %s; that file is left as it is", name, existing.video)

    undo = _Undo()
    try:
        undo.keep(root / f"{dest_rel}.dvc")
        undo.keep(dest.parent / ".gitignore")
        dest.parent.mkdir(parents=True, exist_ok=True)
        undo.move_aside(dest)  # --force: the previous copy, restored if a step fails
        with atomic_path(dest) as tmp:
            shutil.copyfile(video, tmp)
        undo.created(dest)
        log.info("copied %s -> %s (%.1f MB)", video, dest_rel, dest.stat().st_size / 1e6)
        if dvc_track:
            _dvc(["add", str(dest_rel)], cwd=root)
        write_text(params_file, text)
    except BaseException:
        undo.undo()
        raise
    undo.commit()
    return dest


def remove_subjects(names: list[str], params_file: Path = Path("params.yaml"), *, apply: bool = False) -> list[str]:
    """Remove subjects: their params entry (``subjects`` or ``catalog``, and ``evaluate.few_shot.subjects``),
    and for a video ``talkgs add-subject`` copied in, ``data/raw/<name>.<ext>`` and its ``.dvc``
    file (and its line in ``data/raw/.gitignore``). Files another stage produces (the demo clip)
    or another entry uses, and videos outside ``data/raw`` (the catalog's ``../shared`` clips),
    are never deleted; the subject's pipeline outputs (``data/<name>/``, ``models/<name>/``, ...)
    stay until deleted by hand.

    Returns one line per action (what is removed, what stays). With ``apply=False`` nothing is
    touched (the plan); with ``apply=True`` the params edit and the deletions happen as one step.
    Raises :class:`ConfigError` for an unknown name or when the edit would leave params.yaml
    invalid (e.g. a variant's ``pretrain.subjects`` names the subject).
    """
    import yaml

    params = load_params(params_file)
    root = params_file.parent
    if not names:
        raise ConfigError("`talkgs subjects remove` needs the names of the subjects to remove")
    for n in names:
        if n not in params.subjects and n not in params.catalog:
            from talkgs.configlib import closest_hint

            raise ConfigError(
                f"{params_file}: no subject {n!r} in subjects or catalog.{closest_hint(n, [*params.subjects, *params.catalog])} "
                f"Subjects: {', '.join(sorted(params.subjects))}; catalog: {', '.join(sorted(params.catalog))}"
            )
    doc = yaml.safe_load(params_file.read_text()) or {}
    plan: list[str] = []
    delete: list[Path] = []
    for n in names:
        group = "subjects" if n in params.subjects else "catalog"
        plan.append(f"removes {group}.{n} from {params_file.name}")
        video = Path((params.subjects.get(n) or params.catalog[n]).video)
        rel = video.as_posix()
        stage = owner_stage(rel, root)
        user = _referenced_by(doc, rel, skip=n)
        ours = not video.is_absolute() and video.parent == paths.RAW and video.stem == n
        if stage is not None:
            plan.append(f"keeps {rel}: the output of stage {stage!r}")
        elif user is not None:
            plan.append(f"keeps {rel}: {user} uses it too")
        elif not ours:
            plan.append(f"keeps {rel}: not a copy made by add-subject")
        else:
            for f in (root / f"{rel}.dvc", root / rel):
                if f.exists():
                    plan.append(f"deletes {f.relative_to(root)}")
                    delete.append(f)
        left = [f"{d}/{n}/" for d in ("data", "models", "renders", "metrics/subjects") if (root / d / n).exists()]
        if left:
            plan.append(f"keeps the pipeline outputs {', '.join(left)} (delete them by hand to free the space)")

    def edit(doc: Any) -> None:
        for n in names:
            for group in ("subjects", "catalog"):
                if doc.get(group) is not None and n in doc[group]:
                    del doc[group][n]
            listed = ((doc.get("evaluate") or {}).get("few_shot") or {}).get("subjects") or []
            if n in listed:
                listed.remove(n)
                plan.append(f"removes {n} from evaluate.few_shot.subjects")

    try:
        text = _edited_text(params_file, edit)
    except ConfigError as e:
        raise ConfigError(f"cannot remove {', '.join(names)}: {e}; take it out of there first") from None
    if not apply:
        return plan
    undo = _Undo()
    try:
        for f in delete:
            if f.suffix == ".dvc":
                undo.keep(f)
                undo.keep(f.parent / ".gitignore")
                f.unlink()
                _drop_gitignore_line(f.parent / ".gitignore", f"/{f.name[: -len('.dvc')]}")
            else:
                undo.move_aside(f)
        write_text(params_file, text)
    except BaseException:
        undo.undo()
        raise
    undo.commit()
    return plan


def _drop_gitignore_line(gitignore: Path, line: str) -> None:
    """Remove ``line`` from a .gitignore DVC maintains (``dvc remove`` does the same); delete it when empty."""
    if not gitignore.is_file():
        return
    lines = [ln for ln in gitignore.read_text().splitlines() if ln.strip() != line]
    if any(ln.strip() for ln in lines):
        write_text(gitignore, "\n".join(lines) + "\n")
    else:
        gitignore.unlink()


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
