"""Fan-out of DVC stages to Prefect workers: the ``talkgs-stage`` flow a worker runs, and the
parent's side of the exchange.

A stage sent to a work pool runs as a flow run of the deployment ``talkgs-stage/talkgs-stage``
(:data:`DEPLOYMENT`) on whichever worker of the pool picks it up. The worker's flow run
(:func:`run_stage_in_workspace`):

1. takes a workspace of its own (``$TALKGS_WORKSPACES/slot-<i>/<repo key>``, default
   ``~/.cache/talkgs/workspaces``; one flow run per slot at a time, an ``flock`` says which is
   free), a git clone of the parent's repository at the parent's commit (``git fetch`` +
   ``git checkout --detach <rev>``; it keeps its DVC cache between runs);
2. writes the parent's ``dvc.lock`` (as it is when the stage is sent: the entries of the stages
   that ran before it in this sweep) and the ``cache: false`` outputs of the stage's upstream
   stages (metrics / timings json, curves csv: they are not in the DVC remote), then
   ``dvc pull <upstream stages>`` (their cached outputs, from the DVC remote);
3. ``dvc repro --single-item <stage>`` (its output relayed to the flow run's logs, as in the
   serial flow), ``dvc push <stage>``;
4. returns the stage's ``dvc.lock`` entry and the contents of its ``cache: false`` outputs, as a
   JSON result (Prefect result storage: ``PREFECT_LOCAL_STORAGE_PATH`` on one machine, a shared
   result storage block across machines; see README "Fan-out").

The parent (``talkgs.orchestrate``) writes those files and the lock entry into its own
workspace and ``dvc pull``s the stage's cached outputs, so that when the sweep ends its workspace
is what a serial ``dvc repro`` would have left.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from talkgs.dvcrun import StageFailed, _run_dvc_stage, _subprocess_env, format_status

PROTOCOL = 1
"""Version of the parameters / result exchanged between the parent flow and a worker's flow run."""

FLOW_NAME = "talkgs-stage"
DEPLOYMENT_NAME = "talkgs-stage"
DEPLOYMENT = f"{FLOW_NAME}/{DEPLOYMENT_NAME}"
MAX_SLOTS = 64


class WorkspaceError(StageFailed):
    """A worker could not prepare its workspace (clone, checkout, pull)."""


def run_cmd(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> str:
    """Run a command; on failure raise :class:`WorkspaceError` naming ``what`` with its stderr."""
    r = subprocess.run(cmd, cwd=cwd, env=env or _subprocess_env(), capture_output=True, text=True, errors="replace")
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip() or "(no output)").splitlines()[-5:]
        raise WorkspaceError(f"{what} failed in {cwd} (`{' '.join(cmd[-4:])}` exit {r.returncode}): " + " | ".join(msg))
    return r.stdout


def _stage_target(root: Path, stage: str) -> str:
    """``<root>/dvc.yaml:<stage>`` (``<root>/<path>.dvc`` for a ``dvc add``-ed file): DVC's
    Python API resolves a bare name against the process's cwd."""
    if stage.endswith(".dvc"):
        return str(Path(root).resolve() / stage)
    return f"{Path(root).resolve() / 'dvc.yaml'}:{stage}"


def dvc_op(root: Path, op: str, stages: list[str]) -> None:
    """``dvc pull|push <stages>`` in this process (DVC's Python API: no CLI start-up per call)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            getattr(repo, op)(targets=[_stage_target(root, s) for s in stages])
    except DvcException as e:
        raise WorkspaceError(f"`dvc {op} {' '.join(stages)}` failed in {root}: {e}") from e


def stage_changes(root: Path, stage: str) -> str:
    """What ``dvc status <stage>`` says (``""``: up to date), in this process."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return format_status(repo.status(targets=[_stage_target(root, stage)]), [stage])[stage]


# ----------------------------------------------------------------------------------------------
# files that travel with the exchange (cache: false outputs)


def read_files(root: Path, rels: list[str]) -> dict[str, str]:
    """``{path relative to root: base64 contents}`` of the files at or under ``rels`` (missing ones skipped)."""
    root = Path(root)
    out: dict[str, str] = {}
    for rel in rels:
        p = root / rel
        paths = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p] if p.is_file() else []
        for q in paths:
            out[os.path.relpath(q, root)] = base64.b64encode(q.read_bytes()).decode()
    return out


def write_files(root: Path, files: dict[str, str]) -> None:
    """Write :func:`read_files`' output under ``root`` (atomically: temp file + rename)."""
    root = Path(root).resolve()
    for rel, b64 in files.items():
        dest = (root / rel).resolve()
        if root not in dest.parents:
            raise ValueError(f"refusing to write {rel!r} outside {root}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".talkgs-tmp-{os.getpid()}-{dest.name}")
        tmp.write_bytes(base64.b64decode(b64))
        os.replace(tmp, dest)


def uncached_outs(root: Path, stage: str) -> list[str]:
    """The ``cache: false`` outputs of a stage (paths relative to ``root``)."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        for s in repo.index.stages:
            if (getattr(s, "name", None) or s.addressing) == stage:
                return sorted(os.path.relpath(o.fs_path, root) for o in s.outs if not o.use_cache)
    raise ValueError(f"no DVC stage {stage!r} in {root}")


def lock_entry(root: Path, stage: str) -> dict[str, Any]:
    """The stage's entry in ``root/dvc.lock``."""
    import yaml

    lock = yaml.safe_load((Path(root) / "dvc.lock").read_text()) or {}
    entry = (lock.get("stages") or {}).get(stage)
    if entry is None:
        raise WorkspaceError(f"`dvc repro --single-item {stage}` left no entry for it in {root / 'dvc.lock'}")
    return entry


def merge_lock_entry(root: Path, stage: str, entry: dict[str, Any]) -> None:
    """Put a stage's lock entry into ``root/dvc.lock`` the way DVC itself updates it."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(str(Path(root) / "dvc.lock")) as data:
        if not data:
            data.update({"schema": "2.0"})
        data["stages"] = data.get("stages", {})
        data["stages"].update({stage: entry})


# ----------------------------------------------------------------------------------------------
# the worker's workspace


def workspaces_dir() -> Path:
    return Path(os.environ.get("TALKGS_WORKSPACES") or Path.home() / ".cache" / "talkgs" / "workspaces")


@contextlib.contextmanager
def workspace_slot(repo: str, base: Path | None = None) -> Iterator[Path]:
    """A workspace directory no other flow run uses meanwhile (``slot-<i>/<repo key>``, the
    first slot whose lock file is free; held until the block exits)."""
    base = Path(base or workspaces_dir())
    base.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(repo.encode()).hexdigest()[:10] + "-" + Path(repo.rstrip("/")).name.removesuffix(".git")
    for i in range(MAX_SLOTS):
        fh = open(base / f"slot-{i}.lock", "w")  # noqa: SIM115 - held for the block
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        try:
            yield base / f"slot-{i}" / key
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
        return
    raise WorkspaceError(f"all {MAX_SLOTS} workspace slots under {base} are busy")


def prepare_workspace(ws: Path, repo: str, rev: str) -> None:
    """``ws`` becomes a clone of ``repo`` at commit ``rev`` (untracked files removed, git-ignored
    ones, i.e. DVC outputs and ``.dvc/cache``, kept)."""
    ws.parent.mkdir(parents=True, exist_ok=True)
    if not (ws / ".git").exists():
        run_cmd(["git", "clone", "--quiet", "--no-checkout", repo, str(ws)], ws.parent, f"git clone of {repo}")
    try:
        run_cmd(["git", "cat-file", "-e", f"{rev}^{{commit}}"], ws, "git cat-file")
    except WorkspaceError:
        run_cmd(["git", "fetch", "--quiet", repo, rev], ws, f"git fetch of {rev} from {repo} (is the commit pushed?)")
    run_cmd(["git", "checkout", "--quiet", "--force", "--detach", rev], ws, f"git checkout {rev}")
    run_cmd(["git", "clean", "-q", "-f", "-d"], ws, "git clean")


def run_stage_in_workspace(
    ws: Path, stage: str, lock: str, pull: list[str], files: dict[str, str], emit: Callable[[int, str], None]
) -> dict[str, Any]:
    """Steps 2-4 of the module docstring in a prepared workspace; returns the result dict."""
    if lock:
        (ws / "dvc.lock").write_text(lock)
    else:
        (ws / "dvc.lock").unlink(missing_ok=True)
    write_files(ws, files)
    t = time.monotonic()
    if pull:
        dvc_op(ws, "pull", pull)
        emit(logging.INFO, f"dvc pull {' '.join(pull)}: {time.monotonic() - t:.1f} s")
    src = ws / "src"
    if (src / "talkgs").is_dir():  # the stage code of this commit, not the worker's installed copy
        os.environ["PYTHONPATH"] = str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")
    t = time.monotonic()
    status = _run_dvc_stage(stage, ws, emit)
    emit(logging.INFO, f"dvc repro --single-item {stage}: {status}, {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    dvc_op(ws, "push", [stage])
    emit(logging.INFO, f"dvc push {stage}: {time.monotonic() - t:.1f} s")
    return {
        "protocol": PROTOCOL,
        "status": status,
        "lock": lock_entry(ws, stage),
        "files": read_files(ws, uncached_outs(ws, stage)),
        "host": socket.gethostname(),
        "workspace": str(ws),
    }


@flow(name=FLOW_NAME, persist_result=True, result_serializer="json", log_prints=True)
def stage_flow(
    stage: str, repo: str, rev: str, lock: str = "", pull: list[str] | None = None,
    files: dict[str, str] | None = None, protocol: int = PROTOCOL,
) -> dict[str, Any]:  # fmt: skip
    """Run one DVC stage in this worker's own workspace (see the module docstring)."""
    if protocol != PROTOCOL:
        raise WorkspaceError(
            f"the parent flow speaks fan-out protocol {protocol}, this worker's talkgs {PROTOCOL}: "
            "install the parent's commit on the worker"
        )
    logger = get_run_logger()
    with workspace_slot(repo) as ws:
        t = time.monotonic()
        prepare_workspace(ws, repo, rev)
        logger.info("stage %s in workspace %s (host %s): %s at %s, %.1f s", stage, ws, socket.gethostname(), repo,
                    rev[:10], time.monotonic() - t)  # fmt: skip
        return run_stage_in_workspace(ws, stage, lock, pull or [], files or {}, lambda lv, m: logger.log(lv, "%s", m))


def ensure_deployment(pool: str) -> str:
    """Register (or update) the ``talkgs-stage`` deployment on work pool ``pool``; its
    entrypoint is this module (workers import it from their installed talkgs). Returns its id."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.types.entrypoint import EntrypointType

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise WorkspaceError(
                f"no Prefect work pool {pool!r} on {client.api_url}: create it with "
                f"`prefect work-pool create --type process {pool}` and start workers with `prefect worker start --pool {pool}`"
            ) from None
    dep = stage_flow.to_deployment(
        name=DEPLOYMENT_NAME, work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH,
        description="one talkgs DVC stage in a worker's own workspace (talkgs.fanout)",
        concurrency_limit=None, parameters={}, tags=["talkgs"],
    )  # fmt: skip
    return str(dep.apply())


def decode_result(flow_run: Any) -> dict[str, Any]:
    """The result dict of a finished ``talkgs-stage`` flow run (from Prefect's result storage)."""
    res = flow_run.state.result(raise_on_failure=True)
    if isinstance(res, str):
        res = json.loads(res)
    if not isinstance(res, dict) or res.get("protocol") != PROTOCOL:
        raise WorkspaceError(f"flow run {flow_run.name} returned no talkgs-stage result of protocol {PROTOCOL}: {str(res)[:200]}")
    return res
