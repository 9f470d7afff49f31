"""Prefect orchestration of the DVC pipeline: one task run per DVC stage, wired as the DVC DAG.

DVC owns caching and decides what reruns; Prefect adds visibility (the UI, logs per stage),
retries for I/O errors, and artifacts for the metrics, tables, renders and curves. Rules
(docs/architecture.md):

- each task runs ``dvc repro --single-item <stage>``, in dependency order, one at a time
  (DVC takes a repository lock: never two ``dvc repro`` in one workspace); each task waits for
  the tasks of the stages it depends on in ``dvc.yaml`` (``wait_for``), so the flow run graph is
  the DVC DAG, and a failed stage leaves its downstream stages unrun (state ``NotReady``) while
  independent branches still run;
- a stage DVC found up to date (or restored from its run cache) ends ``Completed`` with the
  state name ``Cached``; one that ran ends ``Completed``;
- Prefect's own result caching is off (``cache_policy=NO_CACHE``) so the two never disagree;
- only I/O failures (:class:`OSError`, e.g. DVC's repository lock held by another process)
  are retried; a failing stage command is not;
- a stage's outputs are published as artifacts of its own task run (:func:`stage_artifacts`):
  metrics json as tables (with units), ``metrics/tables/*.md`` as markdown (captions and n/a
  footnotes kept), videos / images / curves as links; each only when its content changed since
  the latest artifact of that key on the server (the content hash is in the description);
- the flow run is named and tagged after what it runs (:func:`run_identity`): subjects,
  variants, git revision, params.yaml hash.

With a work pool (``reproduce(pool=...)``, ``talkgs repro --pool P``) the stages not kept local
(:data:`LOCAL_STAGE_KINDS`) run on the pool's Prefect workers instead, independent ones side by
side, each in the worker's own workspace, sharing outputs through the default DVC remote; the
parent merges their ``dvc.lock`` entries and pulls their outputs (:mod:`talkgs.fanout`).

``flows/reproduce.py`` and ``talkgs repro`` are thin wrappers over :func:`reproduce`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talkgs.dvcrun import (  # noqa: F401  (re-exported: the flow's public names)
    LOCK_MESSAGES,
    DvcLockBusy,
    LogRelay,
    StageFailed,
    _run_dvc_stage,
    _subprocess_env,
    format_status,
)

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "talkgs-artifact-v2"
"""Mixed into every artifact's content hash: a change of how files are rendered republishes."""

LINK_SUFFIXES = (".mp4", ".png", ".jpg", ".gif", ".webm")
"""Files at the top level of a stage output that get a link artifact (videos, sheets, plots)."""


def prefect_env(root: Path) -> None:
    """Defaults for a project-local, quiet Prefect: ``PREFECT_HOME`` under the repo, analytics off."""
    os.environ.setdefault("PREFECT_HOME", str((root / ".prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def stage_subject(stage: str) -> str | None:
    """Subject of a ``foreach`` stage name (``extract@demo`` -> ``demo``), ``None`` for plain stages.

    Matrix stages over subjects x variants are named ``stage@<subject>-<variant>``; subject names
    never contain '-'. ``pretrain@<variant>`` and ``audio_features@<audio>`` have no subject.
    """
    if "@" not in stage or stage.split("@", 1)[0] in ("pretrain", "audio_features"):
        return None
    return stage.split("@", 1)[1].split("-", 1)[0]


# ----------------------------------------------------------------------------------------------
# the plan: which stages, in which order, with which edges


@dataclass(frozen=True)
class PlannedStage:
    """One DVC stage of a run: its direct upstream stages (among the planned ones) and outputs."""

    name: str
    upstream: tuple[str, ...]
    outs: tuple[str, ...]  # paths relative to the repository root (outs, metrics, plots)
    needs: tuple[str, ...] = ()  # direct upstream stages in the whole dvc.yaml, planned or not
    uncached: tuple[str, ...] = ()  # the ``cache: false`` outs (not in a DVC remote)


def plan_stages(root: Path, subjects: list[str] | None = None, stages: list[str] | None = None) -> list[PlannedStage]:
    """The DVC stages to run, dependencies first, with their edges (from ``dvc.yaml``).

    - no arguments: every stage;
    - ``subjects``: the stages of those subjects, everything upstream of them (e.g. ``make_demo``,
      ``pretrain@V``, ``audio_features@A``) and the subject-less stages downstream of them
      (``report``, so a one-subject run refreshes ``metrics/tables``);
    - ``stages``: exactly those (names as ``dvc stage list`` prints them).
    """
    import networkx as nx
    from dvc.repo import Repo

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        name_of = {s: getattr(s, "name", None) or s.addressing for s in graph.nodes}
        if stages is not None:
            unknown = sorted(set(stages) - set(name_of.values()))
            if unknown:
                raise ValueError(f"no DVC stage(s) {unknown} in {root / 'dvc.yaml'}; `dvc stage list` lists them")
            wanted = {s for s, n in name_of.items() if n in set(stages)}
        elif subjects:
            known = {stage_subject(n) for n in name_of.values()} - {None}
            missing = [s for s in subjects if s not in known]
            if missing:
                raise ValueError(f"no DVC stages for subject(s) {missing}; subjects in dvc.yaml: {sorted(known)}")
            own = {s for s, n in name_of.items() if stage_subject(n) in subjects}
            wanted = set(own)
            for s in own:
                wanted |= nx.descendants(graph, s)  # upstream
                wanted |= {d for d in nx.ancestors(graph, s) if stage_subject(name_of[d]) is None}  # downstream, subject-less
        else:
            wanted = set(graph.nodes)
        sub = graph.subgraph(wanted)
        # dependencies first; ties broken by name so the order is stable
        order = list(nx.lexicographical_topological_sort(sub.reverse(copy=False), key=lambda s: name_of[s]))
        plan = []
        for s in order:
            outs = tuple(sorted(os.path.relpath(o.fs_path, root) for o in s.outs))
            up = tuple(sorted(name_of[d] for d in sub.successors(s)))
            needs = tuple(sorted(name_of[d] for d in graph.successors(s)))
            uncached = tuple(sorted(os.path.relpath(o.fs_path, root) for o in s.outs if not o.use_cache))
            plan.append(PlannedStage(name_of[s], up, outs, needs, uncached))
        return plan


def list_stages(root: Path, subjects: list[str] | None = None) -> list[str]:
    """DVC stage names in execution order (dependencies first); see :func:`plan_stages`."""
    return [s.name for s in plan_stages(root, subjects)]


def dvc_status(root: Path, names: list[str]) -> dict[str, str]:
    """What ``dvc status`` says of each stage now: ``""`` when up to date, else what changed
    (``changed deps: src.txt (modified)``). A stage downstream of a changed one may still show up to date:
    DVC only knows after the upstream stage ran (see :func:`dry_run_plan`)."""
    if not names:
        return {}
    cmd = [sys.executable, "-m", "dvc", "status", "--json", *names]
    r = subprocess.run(cmd, cwd=root, env=_subprocess_env(), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"`dvc status` failed in {root} (exit {r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return format_status(json.loads(r.stdout or "{}"), names)


def dry_run_plan(root: Path, plan: list[PlannedStage]) -> dict[str, str]:
    """``{stage: "would run: <why>" | "may run: after <upstream>" | "up to date"}`` from ``dvc status``.

    "may run": a stage that is up to date now but downstream of one that would run; DVC reruns it
    only if that stage's new outputs differ (a deterministic rerun writes the same bytes).
    """
    status = dvc_status(root, [s.name for s in plan])
    verdict: dict[str, str] = {}
    moving: set[str] = set()
    for s in plan:
        if status[s.name]:
            verdict[s.name] = f"would run: {status[s.name]}"
            moving.add(s.name)
        elif moving.intersection(s.upstream):
            verdict[s.name] = "may run: after " + ", ".join(u for u in s.upstream if u in moving)
            moving.add(s.name)
        else:
            verdict[s.name] = "up to date"
    return verdict


# ----------------------------------------------------------------------------------------------
# run names and tags


def _git(root: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def run_identity(root: Path, subjects: list[str] | None, stages: list[str] | None = None) -> tuple[str, list[str]]:
    """``(flow run name, tags)`` for a run: what it covers and the revision it runs.

    Name: ``<scope>@<git short sha>[+dirty]-p<params hash>``, scope ``all``, the subjects joined
    by ``+`` or ``stages``. Tags: ``talkgs``, ``scope:all|subjects|stages``, ``subject:<S>``,
    ``variant:<V>`` (``params.yaml: evaluate.variants``), ``git:<sha>`` (+ ``git:dirty``),
    ``params:<hash>`` (first 8 hex of params.yaml's sha256).
    """
    import yaml

    root = Path(root)
    params_path = root / "params.yaml"
    raw = params_path.read_bytes() if params_path.is_file() else b""
    phash = hashlib.sha256(raw).hexdigest()[:8]
    params = yaml.safe_load(raw) or {} if raw else {}
    all_subjects = sorted((params.get("subjects") or {}).keys()) if isinstance(params.get("subjects"), dict) else []
    variants = list(((params.get("evaluate") or {}).get("variants") or [])) if isinstance(params.get("evaluate"), dict) else []
    sha = _git(root, "rev-parse", "--short=7", "HEAD") or "nogit"
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no")) if sha != "nogit" else False
    if stages is not None:
        scope, kind, subj = "stages", "stages", sorted({s for s in map(stage_subject, stages) if s})
    elif subjects:
        scope, kind, subj = "+".join(subjects), "subjects", list(subjects)
    else:
        scope, kind, subj = "all", "all", all_subjects
    name = f"{scope}@{sha}{'+dirty' if dirty else ''}-p{phash}"
    tags = ["talkgs", f"scope:{kind}", *[f"subject:{s}" for s in subj], *[f"variant:{v}" for v in variants],
            f"git:{sha}", *(["git:dirty"] if dirty else []), f"params:{phash}"]  # fmt: skip
    return name, tags


def stage_tags(stage: str) -> list[str]:
    """Tags of a stage's task run: ``stage:<stage kind>`` and ``subject:<S>`` where it has one."""
    subj = stage_subject(stage)
    return [f"stage:{stage.split('@', 1)[0]}", *([f"subject:{subj}"] if subj else [])]


# ----------------------------------------------------------------------------------------------
# artifacts


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict) and not _is_unavailable(obj):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = obj
    return out


def _is_unavailable(v: Any) -> bool:
    return isinstance(v, dict) and v.get("status") == "unavailable" and "reason" in v


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


_UNITS = (
    (re.compile(r"(^|[._])(it_s|steps_s)$"), "steps/s"),
    (re.compile(r"(^|[._])fps$"), "frames/s"),
    (re.compile(r"(^|[._])psnr([._][a-z_]+)?$"), "dB"),
    (re.compile(r"_ms$"), "ms"),
    (re.compile(r"_px$"), "px"),
    (re.compile(r"(^|[._])lmd[a-z0-9]*_(mouth|face)$"), "px"),  # landmark distances: pixels at the evaluated size
    (re.compile(r"(_s|_seconds|(^|[._])seconds)$"), "s"),
)


def metric_row(key: str, value: Any) -> dict[str, Any]:
    """One row of a metrics table: ``metric``, ``value``, ``unit`` (from the key's suffix:
    ``_s`` seconds, ``it_s`` steps/s, ``fps``, ``psnr`` dB, ...) and ``note`` (an unavailable
    metric's reason; a duration over a minute in minutes and seconds)."""
    if _is_unavailable(value):
        return {"metric": key, "value": "n/a", "unit": "", "note": str(value["reason"])}
    unit = next((u for pat, u in _UNITS if pat.search(key)), "") if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    note = _duration(value) if unit == "s" and value >= 60 else ""
    return {"metric": key, "value": value, "unit": unit, "note": note}


@dataclass
class ArtifactSpec:
    """An artifact to publish: ``kind`` table / markdown / link, its payload, from which file."""

    key: str
    kind: str
    payload: Any
    source: str  # path relative to the repository root
    digest: str  # content hash (of the file and ARTIFACT_FORMAT)
    link_text: str = ""

    @property
    def description(self) -> str:
        return f"`{self.source}` (talkgs; sha256 {self.digest})"


def _digest(*chunks: bytes) -> str:
    h = hashlib.sha256(ARTIFACT_FORMAT.encode())
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256(ARTIFACT_FORMAT.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _key(prefix: str, rel: str) -> str:
    return _slug(f"{prefix}-{Path(rel).with_suffix('')}")


def _csv_rows(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _file_specs(root: Path, rel: str) -> list[ArtifactSpec]:
    """The artifacts of one output file (none for files that are not metrics, tables, media, curves)."""
    path = root / rel
    parts = Path(rel).parts
    if not path.is_file():
        return []
    if parts[0] == "metrics" and path.suffix == ".json":
        raw = path.read_bytes()
        try:
            flat = _flatten(json.loads(raw))
        except json.JSONDecodeError:
            return []
        rows = [metric_row(k, v) for k, v in flat.items()]
        return [ArtifactSpec(_key("metrics", str(Path(*parts[1:]))), "table", rows, rel, _digest(raw))]
    if parts[0] == "metrics" and path.suffix == ".md":
        raw = path.read_bytes()
        text = raw.decode()
        sibling = path.with_suffix(".csv")
        if sibling.is_file():
            header, _ = _csv_rows(sibling.read_text())
            if len(header) <= 1:  # a table without a single data column: say so instead
                hint = " (few-shot is off: `params.yaml: evaluate.few_shot.subjects` is empty)" if "few_shot" in path.stem else ""
                title = text.splitlines()[0] if text.strip() else f"### {path.stem}"
                text = f"{title}\n\nNo runs feed this table yet{hint}; `{rel}` has no data columns.\n"
        return [ArtifactSpec(_key("metrics", str(Path(*parts[1:]))), "markdown", text, rel, _digest(raw))]
    if parts[0] == "metrics" and path.suffix == ".csv":
        if path.with_suffix(".md").is_file():
            return []  # the markdown version carries the caption and the footnotes
        raw = path.read_bytes()
        header, rows = _csv_rows(raw.decode())
        if not rows or len(header) <= 1:
            return []
        return [ArtifactSpec(_key("metrics", str(Path(*parts[1:]))), "table", rows, rel, _digest(raw))]
    if path.suffix.lower() in LINK_SUFFIXES or (parts[0] == "plots" and path.suffix == ".csv"):
        what = "curves" if path.suffix == ".csv" else "render" if path.suffix in (".mp4", ".webm", ".gif") else "image"
        return [ArtifactSpec(_key(what, rel), "link", path.resolve().as_uri(), rel, _file_digest(path), link_text=rel)]
    return []


def stage_artifacts(root: Path, outs: Iterable[str]) -> list[ArtifactSpec]:
    """The artifacts of a stage's outputs (``outs``: paths relative to ``root``, as in
    :class:`PlannedStage`): metrics json -> table (metric, value, unit, note); ``metrics/**.md`` ->
    markdown (a csv beside it is not published twice; a table without data columns becomes a
    note); other ``metrics/**.csv`` -> table; ``plots/**.csv`` (curves) and the videos / images at
    the top level of an output (``comparison.mp4``, ``contact_sheet.png``) -> ``file://`` links.
    Keys are stable: ``metrics-<path under metrics/>``, ``render-``/``image-``/``curves-<path>``,
    slugged (``metrics/tables/self_driven.md`` -> ``metrics-tables-self-driven``)."""
    root = Path(root).resolve()
    specs: list[ArtifactSpec] = []
    for rel in outs:
        path = root / rel
        if path.is_dir():
            inner = sorted(path.rglob("*")) if Path(rel).parts[0] == "metrics" else sorted(path.iterdir())
            for p in inner:
                if p.is_file() and not p.name.startswith("."):
                    specs += _file_specs(root, os.path.relpath(p, root))
        else:
            specs += _file_specs(root, rel)
    return specs


def metric_tables(root: Path) -> dict[str, tuple[list[dict[str, Any]], str]]:
    """Every table artifact of ``metrics/`` (json and csv files): ``{key: (rows, source path)}``."""
    mdir = Path(root) / "metrics"
    if not mdir.is_dir():
        return {}
    return {s.key: (s.payload, s.source) for s in stage_artifacts(root, ["metrics"]) if s.kind == "table"}


def _latest_digests(keys: list[str]) -> dict[str, str]:
    """``{key: content hash}`` of the latest artifact of each key on the Prefect server."""
    from prefect.client.orchestration import get_client

    if not keys:
        return {}
    body = {"artifacts": {"key": {"any_": keys}}, "limit": len(keys), "offset": 0}
    with get_client(sync_client=True) as client:
        # the raw route: prefect 3.8.8's read_latest_artifacts sends nulls its own server rejects
        resp = client.request("POST", "/artifacts/latest/filter", json=body)
        resp.raise_for_status()
    out = {}
    for a in resp.json():
        m = re.search(r"sha256 ([0-9a-f]{16})", a.get("description") or "")
        if m:
            out[a["key"]] = m.group(1)
    return out


def publish_artifacts(specs: list[ArtifactSpec], logger: Any) -> tuple[list[str], list[str]]:
    """Publish the specs whose content changed since the server's latest artifact of their key
    (in the current task run, so they hang off it). Returns ``(published keys, unchanged keys)``."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    latest = _latest_digests([s.key for s in specs])
    published, unchanged = [], []
    for s in specs:
        if latest.get(s.key) == s.digest:
            unchanged.append(s.key)
            continue
        if s.kind == "table":
            create_table_artifact(table=s.payload, key=s.key, description=s.description)
        elif s.kind == "markdown":
            create_markdown_artifact(markdown=s.payload, key=s.key, description=s.description)
        else:
            create_link_artifact(link=s.payload, link_text=s.link_text, key=s.key, description=s.description)
        published.append(s.key)
    if published:
        logger.info("published %d artifact(s): %s", len(published), ", ".join(published))
    if unchanged:
        logger.info("%d artifact(s) unchanged, not republished: %s", len(unchanged), ", ".join(unchanged))
    return published, unchanged


# ----------------------------------------------------------------------------------------------
# the flow


@dataclass
class ReproResult:
    ok: bool
    stages: dict[str, str] = field(default_factory=dict)  # stage -> ran / skipped / restored / failed / not run
    artifacts: list[str] = field(default_factory=list)  # keys published by this run
    error: str | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None


LOCAL_STAGE_KINDS = ("make_demo", "report")
"""Stages a fan-out run keeps in the parent's workspace: cheap, and ``report`` reads every
subject's metrics (the kind is the part of the name before ``@``)."""


@dataclass
class FanOut:
    """A fan-out run's settings and the parent's bookkeeping (see :mod:`talkgs.fanout`)."""

    pool: str
    repo: str  # what workers `git clone` / `git fetch` (a path on one machine, a URL across machines)
    rev: str  # the commit workers check out
    local_kinds: tuple[str, ...] = LOCAL_STAGE_KINDS
    uncached: dict[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> cache: false outs
    pushed: set[str] = field(default_factory=set)  # stages whose cached outs are in the DVC remote
    poll_s: float = 1.0

    def is_local(self, stage: str) -> bool:
        # a `dvc add`-ed file (`data/raw/x.mp4.dvc`) has no command: nothing to send
        return stage.endswith(".dvc") or stage.split("@", 1)[0] in self.local_kinds


def fanout_preflight(root: Path, pool: str, repo: str | None, local_kinds: tuple[str, ...] = LOCAL_STAGE_KINDS) -> FanOut:
    """Check what a fan-out run needs (a Prefect server, a commit, no uncommitted changes workers
    would not see, a default DVC remote) and return its :class:`FanOut`."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise StageFailed(
            "fan-out (--pool) needs a Prefect server that the workers reach too: set PREFECT_API_URL "
            "(e.g. `make ui`, then PREFECT_API_URL=http://127.0.0.1:4200/api)"
        )
    rev = _git(root, "rev-parse", "HEAD")
    if not rev:
        raise StageFailed(f"fan-out runs a git commit on the workers, and {root} has none: commit first")
    everything = plan_stages(root)
    outs = [o for s in everything for o in s.outs]
    # -z: one "XY path" entry per NUL, leading status blanks kept (renames add the old path as an entry)
    st = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    changed = [e[3:] if len(e) > 3 and e[2] == " " else e for e in st.stdout.split("\0") if e]
    unseen = [c for c in changed if c != "dvc.lock" and not any(c == o or c.startswith(o.rstrip("/") + "/") for o in outs)]
    if unseen:
        raise StageFailed(
            f"fan-out runs commit {rev[:10]} on the workers, which would not see the uncommitted changes to "
            f"{', '.join(unseen[:8])}{' …' if len(unseen) > 8 else ''}: commit them first (dvc.lock and stage outputs may differ)"
        )
    remote = _git(root, "config", "--file", ".dvc/config", "core.remote")
    if not remote:
        r = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=root, env=_subprocess_env(),
                           capture_output=True, text=True)  # fmt: skip
        remote = r.stdout.strip() if r.returncode == 0 else ""
    if not remote:
        raise StageFailed(
            "fan-out shares stage outputs through a DVC remote and there is no default one: "
            "`dvc remote add -d NAME URL` (a directory, s3://bucket/path, ...) and commit .dvc/config"
        )
    return FanOut(pool=pool, repo=repo or str(root), rev=rev, local_kinds=tuple(local_kinds),
                  uncached={s.name: s.uncached for s in everything})  # fmt: skip


def _remote_stage(stage: str, root: Path, spec: dict[str, Any], fan: FanOut, ws_lock: threading.Lock,
                  run_tags: list[str], logger: Any) -> str:  # fmt: skip
    """One stage on the work pool: send it (with what it needs) to a worker, take its outputs back."""
    from prefect.deployments import run_deployment

    from talkgs import fanout

    with ws_lock:
        why = fanout.stage_changes(root, stage)
        if not why:
            return "skipped"
        missing = [n for n in spec["needs"] if n not in fan.pushed]
        if missing:  # outputs made (or found up to date) here, which the worker pulls
            logger.info("dvc push %s", " ".join(missing))
            fanout.dvc_op(root, "push", missing)
            fan.pushed.update(missing)
        lock = (root / "dvc.lock").read_text() if (root / "dvc.lock").is_file() else ""
        files = fanout.read_files(root, [u for n in spec["needs"] for u in fan.uncached.get(n, ())])
    logger.info("stage %s (%s): sent to work pool %s", stage, why, fan.pool)
    fr = run_deployment(
        fanout.DEPLOYMENT, flow_run_name=stage, timeout=None, poll_interval=fan.poll_s,
        tags=[*run_tags, *stage_tags(stage)],
        parameters={"stage": stage, "repo": fan.repo, "rev": fan.rev, "lock": lock, "pull": list(spec["needs"]),
                    "files": files, "protocol": fanout.PROTOCOL},
    )  # fmt: skip
    if not fr.state.is_completed():
        raise StageFailed(f"stage {stage} failed on work pool {fan.pool} (flow run {fr.name}, {fr.state.name}): {fr.state.message}")
    res = fanout.decode_result(fr)
    logger.info("stage %s: %s on %s (%s)", stage, res["status"], res["host"], res["workspace"])
    with ws_lock:
        fanout.write_files(root, res["files"])
        fanout.merge_lock_entry(root, stage, res["lock"])
        if set(spec["outs"]) - set(spec["uncached"]):
            fanout.dvc_op(root, "pull", [stage])  # its cached outs, from the remote
        fan.pushed.add(stage)
    return res["status"]


def _build_flow(sink: dict[str, Any], fan: FanOut | None = None, run_tags: list[str] | None = None) -> Any:
    """Define the Prefect task and flow (import of prefect deferred: it is slow). The flow writes
    its stage outcomes into ``sink`` (they survive a failed run). With ``fan``, the stages not
    kept local run on its work pool, as many at once as its workers take."""
    from prefect import flow, get_run_logger, tags, task
    from prefect.cache_policies import NO_CACHE
    from prefect.runtime import flow_run
    from prefect.states import Completed
    from prefect.task_runners import ThreadPoolTaskRunner

    ws_lock = threading.Lock()  # one DVC command at a time in this workspace (DVC's repository lock)

    def retry_on_io(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except OSError:
            return True
        except Exception:  # noqa: BLE001 - any other failure is final
            return False
        return False

    @task(
        name="dvc-stage", task_run_name="{stage}", retries=2, retry_delay_seconds=10,
        retry_condition_fn=retry_on_io, cache_policy=NO_CACHE, persist_result=False,
    )  # fmt: skip
    def dvc_stage(stage: str, root: str, spec: dict[str, Any]) -> Any:
        logger = get_run_logger()
        if fan is not None and not fan.is_local(stage):
            status = _remote_stage(stage, Path(root), spec, fan, ws_lock, run_tags or [], logger)
        else:
            with ws_lock:
                status = _run_dvc_stage(stage, Path(root), lambda level, msg: logger.log(level, "%s", msg))
        published, _ = publish_artifacts(stage_artifacts(Path(root), spec["outs"]), logger)
        sink.setdefault("artifacts", []).extend(published)
        if status == "ran":
            logger.info("stage %s: ran", stage)
            return status
        why = "DVC found it up to date" if status == "skipped" else "DVC restored its outputs from the run cache"
        logger.info("stage %s: cached (%s)", stage, why)
        return Completed(name="Cached", message=why, data=status)

    @flow(name="talkgs-reproduce", persist_result=False, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
    def reproduce_flow(root: str, plan: list[dict[str, Any]]) -> dict[str, str]:
        logger = get_run_logger()
        sink["flow_run_id"], sink["flow_run_name"] = str(flow_run.id), flow_run.name
        logger.info("%d stage(s) in order: %s", len(plan), ", ".join(s["name"] for s in plan))
        if fan is not None:
            remote = [s["name"] for s in plan if not fan.is_local(s["name"])]
            logger.info("fan-out to work pool %s at %s: %d stage(s) on workers, the others here", fan.pool, fan.rev[:10], len(remote))
        futures: dict[str, Any] = {}
        # submitted in dependency order, each waiting for its dvc.yaml dependencies (the edges of
        # the flow run graph); serially (one thread) or, fanning out, side by side
        for s in plan:
            with tags(*stage_tags(s["name"]), *([f"pool:{fan.pool}"] if fan and not fan.is_local(s["name"]) else [])):
                futures[s["name"]] = dvc_stage.submit(
                    s["name"], root, s, wait_for=[futures[u] for u in s["upstream"] if u in futures]
                )
        outcome: dict[str, str] = {}
        failed: list[str] = []
        for name, fut in futures.items():
            fut.wait()
            state = fut.state
            if state.is_completed():
                outcome[name] = fut.result()
            elif state.is_failed() or state.is_crashed():
                outcome[name] = "failed"
                failed.append(state.message or name)
            else:
                outcome[name] = "not run"
        sink["stages"] = outcome
        if failed:
            blocked = [n for n, o in outcome.items() if o == "not run"]
            more = f"; not run (upstream failed): {', '.join(blocked)}" if blocked else ""
            raise StageFailed("; ".join(failed) + more)
        return outcome

    if fan is not None:
        # a thread per stage at most: threads only wait on workers, the pool sets the parallelism
        return reproduce_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=max(1, min(64, sink["n_stages"]))))
    return reproduce_flow


def reproduce(
    root: Path = Path("."), subjects: list[str] | None = None, stages: list[str] | None = None, dry_run: bool = False,
    pool: str | None = None, repo: str | None = None, local_kinds: tuple[str, ...] = LOCAL_STAGE_KINDS,
) -> ReproResult:  # fmt: skip
    """Run the DVC stages (all, or those of ``subjects`` + ``report``, or exactly ``stages``) as a
    Prefect flow; with ``dry_run``, print what ``dvc status`` says would run, run nothing.

    With ``pool`` (a Prefect work pool), the stages not in ``local_kinds`` run on its workers,
    independent ones side by side, sharing outputs through the default DVC remote; workers
    clone ``repo`` (default: ``root``) at HEAD. See :mod:`talkgs.fanout`."""
    root = Path(root).resolve()
    prefect_env(root)
    plan = plan_stages(root, subjects, stages)
    if dry_run:
        verdict = dry_run_plan(root, plan)
        width = max((len(s.name) for s in plan), default=0)
        for s in plan:
            print(f"{s.name:<{width}}  {verdict[s.name]}")
        n = sum(v.startswith("would") for v in verdict.values())
        print(f"{n} of {len(plan)} stage(s) would run, {sum(v.startswith('may') for v in verdict.values())} may run")
        return ReproResult(ok=True, stages=verdict)
    from prefect import tags

    name, run_tags = run_identity(root, subjects, stages)
    sink: dict[str, Any] = {"n_stages": len(plan)}
    payload = [{"name": s.name, "upstream": list(s.upstream), "outs": list(s.outs), "needs": list(s.needs),
                "uncached": list(s.uncached)} for s in plan]  # fmt: skip
    try:
        fan = None
        if pool:
            from talkgs import fanout

            fan = fanout_preflight(root, pool, repo, local_kinds)
            fanout.ensure_deployment(pool)
            run_tags = [*run_tags, f"pool:{pool}"]
        flow = _build_flow(sink, fan, run_tags).with_options(flow_run_name=name)
        with tags(*run_tags):
            flow(str(root), payload)
    except (StageFailed, OSError) as e:
        log.error("%s", e)
        return ReproResult(ok=False, stages=sink.get("stages", {}), artifacts=sink.get("artifacts", []), error=str(e),
                           flow_run_id=sink.get("flow_run_id"), flow_run_name=sink.get("flow_run_name"))  # fmt: skip
    return ReproResult(ok=True, stages=sink.get("stages", {}), artifacts=sink.get("artifacts", []),
                       flow_run_id=sink.get("flow_run_id"), flow_run_name=sink.get("flow_run_name"))  # fmt: skip
