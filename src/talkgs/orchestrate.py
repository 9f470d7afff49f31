"""Prefect orchestration of the DVC pipeline: one task run per DVC stage.

DVC owns caching and decides what reruns; Prefect adds visibility (the UI, logs per stage),
retries for I/O errors, and table artifacts for the metrics. Rules (docs/architecture.md):

- each task runs ``dvc repro --single-item <stage>``, in dependency order, one at a time
  (DVC takes a repository lock: never two ``dvc repro`` in one workspace);
- Prefect's own result caching is off (``cache_policy=NO_CACHE``) so the two never disagree;
- only I/O failures (:class:`OSError`, e.g. DVC's repository lock held by another process)
  are retried; a failing stage command is not;
- metrics files (``metrics/**/*.json``, ``metrics/**/*.csv``) are published as table
  artifacts with stable keys.

``flows/reproduce.py`` and ``talkgs repro`` are thin wrappers over :func:`reproduce`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_MESSAGES = ("Unable to acquire lock", "lock is held", "LockError")


class StageFailed(RuntimeError):
    """A DVC stage's command failed (not retried: rerunning the same command fails the same way)."""


class DvcLockBusy(OSError):
    """DVC's repository lock is held by another process (retried)."""


def prefect_env(root: Path) -> None:
    """Defaults for a project-local, quiet Prefect: ``PREFECT_HOME`` under the repo, analytics off."""
    os.environ.setdefault("PREFECT_HOME", str((root / ".prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _subprocess_env() -> dict[str, str]:
    """Environment for dvc: the running interpreter's bin dir first on PATH (the stage commands
    pick dvc's interpreter themselves, ``stages/python.sh``; tools they call find this venv's too)."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["TALKGS_PLAIN_LOGS"] = "1"  # the task logger adds its own time/level prefix
    return env


def stage_subject(stage: str) -> str | None:
    """Subject of a ``foreach`` stage name (``extract@demo`` -> ``demo``), ``None`` for plain stages.

    Matrix stages over subjects x variants are named ``stage@<subject>-<variant>``; subject names
    never contain '-'. ``pretrain@<variant>`` and ``audio_features@<audio>`` have no subject.
    """
    if "@" not in stage or stage.split("@", 1)[0] in ("pretrain", "audio_features"):
        return None
    return stage.split("@", 1)[1].split("-", 1)[0]


def list_stages(root: Path, subjects: list[str] | None = None) -> list[str]:
    """DVC stage names in execution order (dependencies first).

    With ``subjects``: the stages of those subjects plus everything upstream of them (e.g. the
    ``make_demo`` stage that produces the demo video).
    """
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        name_of = {s: getattr(s, "name", None) or s.addressing for s in graph.nodes}
        if subjects:
            known = {stage_subject(n) for n in name_of.values()} - {None}
            missing = [s for s in subjects if s not in known]
            if missing:
                raise ValueError(f"no DVC stages for subject(s) {missing}; subjects in dvc.yaml: {sorted(known)}")
            wanted = {s for s, n in name_of.items() if stage_subject(n) in subjects}
            for s in list(wanted):
                wanted |= nx.descendants(graph, s)
            graph = graph.subgraph(wanted)
        # dependencies first; ties broken by name so the order is stable
        order = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=lambda s: name_of[s])
        return [name_of[s] for s in order]


def _run_dvc_stage(stage: str, root: Path, emit: Any) -> str:
    """Run one stage with ``dvc repro --single-item``; stream its output through ``emit``.

    Returns ``"skipped"`` when DVC found it up to date, ``"restored"`` when DVC's run cache
    had its outputs, else ``"ran"``.
    """
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    try:
        proc = subprocess.Popen(
            cmd, cwd=root, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1,
        )  # fmt: skip
    except OSError as e:  # could not start the process at all: I/O, retry
        raise OSError(f"could not start {' '.join(cmd)}: {e}") from e
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            emit(line)
    rc = proc.wait()
    text = "\n".join(lines)
    if rc != 0:
        if any(m in text for m in LOCK_MESSAGES):
            raise DvcLockBusy(f"DVC repository lock busy while running {stage}; another `dvc` is running in {root}")
        tail = "\n".join(lines[-15:])
        raise StageFailed(f"stage {stage} failed (dvc exit {rc}); last output:\n{tail}")
    if "didn't change, skipping" in text:
        return "skipped"
    if "is cached - skipping run" in text:
        return "restored"
    return "ran"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = obj
    return out


def metric_tables(root: Path) -> dict[str, tuple[list[dict[str, Any]], str]]:
    """Tables to publish: ``{artifact_key: (rows, description)}`` from ``metrics/``.

    A json file becomes a two-column (metric, value) table; a csv file is published as is.
    Keys are stable: ``metrics-<path under metrics/ without suffix>``, slugged
    (``metrics/tables/self_driven.csv`` -> ``metrics-tables-self-driven``).
    """
    tables: dict[str, tuple[list[dict[str, Any]], str]] = {}
    mdir = root / "metrics"
    if not mdir.is_dir():
        return tables
    for path in sorted(mdir.rglob("*")):
        if path.suffix not in (".json", ".csv") or not path.is_file():
            continue
        rel = path.relative_to(root)
        key = _slug("metrics-" + str(path.relative_to(mdir).with_suffix("")))
        if path.suffix == ".json":
            flat = _flatten(json.loads(path.read_text()))
            rows = [{"metric": k, "value": v} for k, v in flat.items()]
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        tables[key] = (rows, f"{rel}")
    return tables


@dataclass
class ReproResult:
    ok: bool
    stages: dict[str, str] = field(default_factory=dict)  # stage -> ran / skipped / failed
    artifacts: list[str] = field(default_factory=list)
    error: str | None = None


def _build_flow() -> Any:
    """Define the Prefect task and flow (import of prefect deferred: it is slow)."""
    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_table_artifact
    from prefect.cache_policies import NO_CACHE

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
    def dvc_stage(stage: str, root: str) -> str:
        logger = get_run_logger()
        status = _run_dvc_stage(stage, Path(root), logger.info)
        logger.info("stage %s: %s", stage, status)
        return status

    @task(name="publish-metrics", cache_policy=NO_CACHE, persist_result=False)
    def publish_metrics(root: str) -> list[str]:
        keys = []
        for key, (rows, desc) in metric_tables(Path(root)).items():
            create_table_artifact(table=rows, key=key, description=f"talkgs metrics from `{desc}`")
            keys.append(key)
        return keys

    @flow(name="talkgs-reproduce", persist_result=False, log_prints=True)
    def reproduce_flow(root: str, stages: list[str]) -> dict[str, Any]:
        logger = get_run_logger()
        logger.info("%d stage(s) in order: %s", len(stages), ", ".join(stages))
        done: dict[str, str] = {}
        for stage in stages:  # serial: DVC holds a repository lock
            done[stage] = dvc_stage(stage, root)
        keys = publish_metrics(root)
        return {"stages": done, "artifacts": keys}

    return reproduce_flow


def reproduce(
    root: Path = Path("."), subjects: list[str] | None = None, stages: list[str] | None = None, dry_run: bool = False
) -> ReproResult:
    """Run the DVC stages (all, or those of ``subjects``, or exactly ``stages``) as a Prefect flow."""
    root = Path(root).resolve()
    prefect_env(root)
    order = stages if stages is not None else list_stages(root, subjects)
    if dry_run:
        for s in order:
            print(s)
        return ReproResult(ok=True, stages={s: "planned" for s in order})
    flow = _build_flow()
    try:
        out = flow(str(root), order)
    except (StageFailed, OSError) as e:
        log.error("%s", e)
        return ReproResult(ok=False, error=str(e))
    return ReproResult(ok=True, stages=out["stages"], artifacts=out["artifacts"])
