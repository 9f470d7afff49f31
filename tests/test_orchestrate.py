"""The Prefect flow over DVC stages, on a tiny real DVC pipeline under Prefect's test harness.

What a Prefect user sees is asserted through Prefect's REST API: the flow run graph's edges
(task run ``wait_for`` inputs), ``Cached`` state names, the run's name and tags, artifacts on the
task run of the stage that wrote them (republished only when their content changed), log levels.
"""

from __future__ import annotations

import json
import os
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from talkgs.orchestrate import (
    LogRelay,
    list_stages,
    metric_row,
    metric_tables,
    plan_stages,
    reproduce,
    stage_artifacts,
    stage_subject,
)

PY = sys.executable


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _tiny_pipeline(root: Path) -> None:
    """make_src -> count@a, count@b (foreach) -> report; shaped like the real dvc.yaml: per-subject
    metrics json under metrics/subjects, a render per subject, tables (md + csv) from report."""
    (root / "params.yaml").write_text("subjects:\n  a: {n: 2}\n  b: {n: 3}\nevaluate:\n  variants: [v1]\n")
    (root / "make_src.py").write_text(
        "open('src.txt', 'w').write('hello\\n')\nopen('runs.log', 'a').write('make_src\\n')\n"
    )
    (root / "count.py").write_text(textwrap.dedent("""
        import json, os, sys
        from talkgs.progress import PlainProgress
        key, n = sys.argv[1], int(sys.argv[2])
        os.makedirs("metrics/subjects", exist_ok=True)
        os.makedirs(f"renders/{key}", exist_ok=True)
        bar = PlainProgress("steps", count="step", interval=0)
        t = bar.add_task(f"train {key}", total=2)
        bar.update(t, completed=1)
        bar.update(t, completed=2)
        print(f"careful with {key}", file=sys.stderr)
        json.dump({"n": n, "len": len(open("src.txt").read()), "train": {"time_s": 125.0},
                   "lpips": {"status": "unavailable", "reason": "no AlexNet weights"}},
                  open(f"metrics/subjects/{key}.json", "w"))
        open(f"renders/{key}/comparison.mp4", "wb").write(b"fake video " + key.encode())
        open("runs.log", "a").write(f"count {key}\\n")
    """))
    (root / "report.py").write_text(textwrap.dedent("""
        import json, os
        os.makedirs("metrics/tables", exist_ok=True)
        rows = {f[:-5]: json.load(open("metrics/subjects/" + f)) for f in sorted(os.listdir("metrics/subjects"))}
        md = "### Self-driven\\n\\nCaption: mean over subjects.\\n\\n| subject | n |\\n|---|---|\\n"
        md += "".join(f"| {k} | {v['n']} |\\n" for k, v in rows.items()) + "\\nn/a: LPIPS, no weights\\n"
        open("metrics/tables/self_driven.md", "w").write(md)
        open("metrics/tables/self_driven.csv", "w").write("subject,n\\n" + "".join(f"{k},{v['n']}\\n" for k, v in rows.items()))
        open("metrics/tables/few_shot.md", "w").write("### Few-shot\\n\\n| Metric |\\n|---|\\n| PSNR |\\n")
        open("metrics/tables/few_shot.csv", "w").write("Metric\\nPSNR\\n")
        open("runs.log", "a").write("report\\n")
    """))
    (root / "dvc.yaml").write_text(textwrap.dedent(f"""
        stages:
          make_src:
            cmd: {PY} make_src.py
            deps: [make_src.py]
            outs: [src.txt]
          count:
            foreach: ${{subjects}}
            do:
              cmd: {PY} count.py ${{key}} ${{item.n}}
              deps: [src.txt, count.py]
              params:
                - subjects.${{key}}
              outs:
                - renders/${{key}}
              metrics:
                - metrics/subjects/${{key}}.json:
                    cache: false
          report:
            cmd: {PY} report.py
            deps: [metrics/subjects, report.py]
            outs:
              - metrics/tables:
                  cache: false
    """))


def test_stage_subject():
    assert stage_subject("extract@demo") == "demo"
    assert stage_subject("train@demo-gaussiantalker") == "demo"
    assert stage_subject("make_demo") is None
    assert stage_subject("pretrain@gaussiantalker") is None and stage_subject("audio_features@demo_speech2") is None


def test_plan_has_dvc_edges_and_subject_runs_include_report(dvc_repo: Path):
    _tiny_pipeline(dvc_repo)
    plan = {s.name: s for s in plan_stages(dvc_repo)}
    assert list(plan) == ["make_src", "count@a", "count@b", "report"]
    assert plan["make_src"].upstream == ()
    assert plan["count@a"].upstream == ("make_src",)
    assert plan["report"].upstream == ("count@a", "count@b")
    assert plan["count@b"].outs == ("metrics/subjects/b.json", "renders/b")
    # one subject: its stages, what they depend on, and the subject-less stages downstream (report)
    sub = plan_stages(dvc_repo, ["b"])
    assert [s.name for s in sub] == ["make_src", "count@b", "report"]
    assert sub[-1].upstream == ("count@b",)
    assert list_stages(dvc_repo, ["b"]) == ["make_src", "count@b", "report"]
    with pytest.raises(ValueError, match="no DVC stages for subject"):
        list_stages(dvc_repo, ["zzz"])


def _api(path: str, body: dict[str, Any]) -> Any:
    import httpx
    from prefect.settings import PREFECT_API_URL

    # the raw REST API (prefect 3.8.8's client sends nulls its own server rejects)
    r = httpx.post(f"{PREFECT_API_URL.value()}{path}", json={"limit": 200, "offset": 0, **body}, timeout=30)
    r.raise_for_status()
    return r.json()


def _task_runs(flow_run_id: str) -> dict[str, dict[str, Any]]:
    runs = _api("/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}})
    return {r["name"]: r for r in runs}


def _artifacts(flow_run_id: str) -> list[dict[str, Any]]:
    return _api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})


def _logs(task_run_id: str) -> list[tuple[int, str]]:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    logs = _api("/logs/filter", {"logs": {"task_run_id": {"any_": [task_run_id]}}, "sort": "TIMESTAMP_ASC"})
    return [(r["level"], r["message"]) for r in logs]


def test_flow_graph_cached_names_tags_artifacts(dvc_repo: Path, prefect_harness):
    _tiny_pipeline(dvc_repo)
    first = reproduce(dvc_repo, subjects=["a"])
    assert first.ok, first.error
    assert first.stages == {"make_src": "ran", "count@a": "ran", "report": "ran"}
    assert json.loads((dvc_repo / "metrics/subjects/a.json").read_text())["len"] == 6

    # run name and tags: what the run covers and the revision it runs
    fr = _api("/flow_runs/filter", {"flow_runs": {"id": {"any_": [first.flow_run_id]}}})[0]
    assert fr["name"] == first.flow_run_name and fr["name"].startswith("a@nogit-p"), fr["name"]
    assert {"talkgs", "scope:subjects", "subject:a", "variant:v1", "git:nogit"} <= set(fr["tags"])
    assert any(t.startswith("params:") for t in fr["tags"])

    # the DVC DAG as task run inputs: each task waits for its dvc.yaml dependencies
    runs = _task_runs(first.flow_run_id)
    assert set(runs) == {"make_src", "count@a", "report"}
    waits = {n: {i["id"] for i in r["task_inputs"].get("wait_for", [])} for n, r in runs.items()}
    assert waits == {"make_src": set(), "count@a": {runs["make_src"]["id"]}, "report": {runs["count@a"]["id"]}}
    assert {r["state"]["name"] for r in runs.values()} == {"Completed"}
    assert {"stage:count", "subject:a", "talkgs"} <= set(runs["count@a"]["tags"])

    # artifacts hang off the task run of the stage that wrote them
    arts = {a["key"]: a for a in _artifacts(first.flow_run_id)}
    assert sorted(arts) == sorted(first.artifacts)
    assert set(arts) == {"metrics-subjects-a", "render-renders-a-comparison", "metrics-tables-self-driven",
                         "metrics-tables-few-shot"}  # fmt: skip
    assert arts["metrics-subjects-a"]["task_run_id"] == runs["count@a"]["id"]
    uri = (dvc_repo / "renders/a/comparison.mp4").resolve().as_uri()  # a link artifact: markdown with the link
    assert arts["render-renders-a-comparison"]["data"] == f"[renders/a/comparison.mp4]({uri})"
    assert arts["metrics-tables-self-driven"]["task_run_id"] == runs["report"]["id"]
    assert arts["metrics-tables-self-driven"]["type"] == "markdown"
    assert "Caption: mean over subjects." in arts["metrics-tables-self-driven"]["data"]
    assert "few-shot is off" in arts["metrics-tables-few-shot"]["data"]
    table = json.loads(arts["metrics-subjects-a"]["data"])
    assert {"metric": "train.time_s", "value": 125.0, "unit": "s", "note": "2m05s"} in table
    assert {"metric": "lpips", "value": "n/a", "unit": "", "note": "no AlexNet weights"} in table

    # logs: one prefix, levels mapped, progress at INFO, DVC's hints not at INFO
    logs = _logs(runs["count@a"]["id"])
    assert (logging.WARNING, "careful with a") in logs, logs
    progress = [m for lv, m in logs if "talkgs.progress: train a: step" in m]
    assert progress and all(lv == logging.INFO for lv, m in logs if m in progress), logs
    assert not [m for lv, m in logs if "dvc push" in m or "git add" in m], logs

    # second run: DVC skips everything, the tasks end "Cached", nothing is republished
    second = reproduce(dvc_repo, subjects=["a"])
    assert second.ok and set(second.stages.values()) == {"skipped"}
    assert {r["state"]["name"] for r in _task_runs(second.flow_run_id).values()} == {"Cached"}
    assert second.artifacts == [] and _artifacts(second.flow_run_id) == []
    assert (dvc_repo / "runs.log").read_text().count("\n") == 3

    # the whole pipeline: count@b runs, a stays Cached, report reruns (its input changed)
    third = reproduce(dvc_repo)
    assert third.ok, third.error
    assert third.stages == {"make_src": "skipped", "count@a": "skipped", "count@b": "ran", "report": "ran"}
    runs3 = _task_runs(third.flow_run_id)
    assert runs3["count@a"]["state"]["name"] == "Cached" and runs3["count@b"]["state"]["name"] == "Completed"
    assert {i["id"] for i in runs3["report"]["task_inputs"]["wait_for"]} == {runs3["count@a"]["id"], runs3["count@b"]["id"]}
    assert set(third.artifacts) == {"metrics-subjects-b", "render-renders-b-comparison", "metrics-tables-self-driven"}
    assert third.flow_run_name.startswith("all@")


def test_failing_stage_goes_red_with_its_exit_code(dvc_repo: Path, prefect_harness):
    (dvc_repo / "boom.py").write_text(
        "import sys\nopen('tries.log', 'a').write('x')\nprint('ERROR talkgs.pipeline: stage boom: no frames in x.mp4', file=sys.stderr)\n"
        "raise SystemExit(3)\n"
    )
    (dvc_repo / "dvc.yaml").write_text(textwrap.dedent(f"""
        stages:
          boom:
            cmd: {PY} boom.py
            outs: [never.txt]
          after:
            cmd: {PY} -c "open('after.txt','w').write('x')"
            deps: [never.txt]
            outs: [after.txt]
          other:
            cmd: {PY} -c "open('other.txt','w').write('x')"
            outs: [other.txt]
    """))
    res = reproduce(dvc_repo)
    assert not res.ok
    assert "stage boom failed (its command exited with 3): talkgs.pipeline: stage boom: no frames in x.mp4" in (res.error or "")
    assert "dvc exit" not in (res.error or "")
    assert (dvc_repo / "tries.log").read_text() == "x", "a failing command is not retried"
    assert not (dvc_repo / "after.txt").exists()
    assert (dvc_repo / "other.txt").exists(), "an independent stage still runs"
    assert res.stages == {"boom": "failed", "after": "not run", "other": "ran"}
    runs = _task_runs(res.flow_run_id)
    assert runs["boom"]["state"]["type"] == "FAILED" and runs["after"]["state"]["name"] == "NotReady"
    fr = _api("/flow_runs/filter", {"flow_runs": {"id": {"any_": [res.flow_run_id]}}})[0]
    assert fr["state"]["type"] == "FAILED"
    errors = [m for lv, m in _logs(runs["boom"]["id"]) if lv == logging.ERROR]
    assert any("no frames in x.mp4" in m for m in errors) and any("exited with 3" in m for m in errors)


def test_dry_run_says_what_would_run(dvc_repo: Path, capsys):
    _tiny_pipeline(dvc_repo)
    subprocess_run = __import__("subprocess").run
    subprocess_run([PY, "-m", "dvc", "repro", "-q"], cwd=dvc_repo, check=True, capture_output=True)
    (dvc_repo / "params.yaml").write_text("subjects:\n  a: {n: 2}\n  b: {n: 4}\nevaluate:\n  variants: [v1]\n")
    res = reproduce(dvc_repo, dry_run=True)
    assert res.stages["make_src"] == "up to date" and res.stages["count@a"] == "up to date"
    assert res.stages["count@b"].startswith("would run: changed deps")
    assert res.stages["report"] == "may run: after count@b"
    out = capsys.readouterr().out
    assert "1 of 4 stage(s) would run, 1 may run" in out


def test_log_relay_levels():
    got: list[tuple[int, str]] = []
    relay = LogRelay(lambda lv, m: got.append((lv, m)))
    for line, err in [
        ("Running stage 'x':", False),
        ("INFO talkgs.pipeline: extract demo: 300 frames", True),
        ("WARNING talkgs.track: head roll 12 deg", True),
        ("W0000 00:00:1712345678.123456   123 inference_feedback_manager.cc:114] Feedback manager", True),
        ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", True),
        ("Traceback (most recent call last):", True),
        ('  File "x.py", line 1, in <module>', True),
        ("ValueError: bad", True),
        ("ERROR: failed to reproduce 'x': failed to run: python x.py, exited with 1", True),
        ("Use `dvc push` to send your updates to remote storage.", False),
        ("some stray stderr", True),
    ]:
        relay.line(line + "\n", err)
    relay.flush()
    assert got == [
        (logging.INFO, "Running stage 'x':"),
        (logging.INFO, "talkgs.pipeline: extract demo: 300 frames"),
        (logging.WARNING, "talkgs.track: head roll 12 deg"),
        (logging.DEBUG, "W0000 00:00:1712345678.123456   123 inference_feedback_manager.cc:114] Feedback manager"),
        (logging.DEBUG, "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"),
        (logging.ERROR, 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nValueError: bad'),
        (logging.ERROR, "failed to reproduce 'x': failed to run: python x.py, exited with 1"),
        (logging.DEBUG, "Use `dvc push` to send your updates to remote storage."),
        (logging.WARNING, "some stray stderr"),
    ]


def test_metric_rows_units_and_reasons():
    assert metric_row("train.time_s", 693.15) == {"metric": "train.time_s", "value": 693.15, "unit": "s", "note": "11m33s"}
    assert metric_row("it_s", 5.7)["unit"] == "steps/s" and metric_row("render.fps", 20.0)["unit"] == "frames/s"
    assert metric_row("self.psnr_face", 30.3)["unit"] == "dB" and metric_row("steps", 4000)["unit"] == ""
    assert metric_row("x", {"status": "unavailable", "reason": "why"})["note"] == "why"


def test_artifact_keys_are_stable(tmp_path: Path):
    (tmp_path / "metrics/tables").mkdir(parents=True)
    (tmp_path / "metrics/demo").mkdir()
    (tmp_path / "metrics/demo/GaussianTalker.json").write_text(json.dumps({"psnr": {"face": 30.1}, "fps": 5}))
    (tmp_path / "metrics/tables/self_driven.csv").write_text("variant,psnr\nstatic,25.0\n")
    (tmp_path / "metrics/tables/all_metrics.csv").write_text("variant,psnr\nstatic,25.0\n")
    (tmp_path / "metrics/tables/self_driven.md").write_text("### Self-driven\n\ncaption\n")
    t = metric_tables(tmp_path)
    assert set(t) == {"metrics-demo-gaussiantalker", "metrics-tables-all-metrics"}
    assert t["metrics-demo-gaussiantalker"][0] == [
        {"metric": "psnr.face", "value": 30.1, "unit": "dB", "note": ""},
        {"metric": "fps", "value": 5, "unit": "frames/s", "note": ""},
    ]
    kinds = {s.key: s.kind for s in stage_artifacts(tmp_path, ["metrics/tables"])}
    assert kinds == {"metrics-tables-self-driven": "markdown", "metrics-tables-all-metrics": "table"}


# ----------------------------------------------------------------------------------------------
# fan-out to Prefect workers (talkgs.fanout): a real server, a process work pool, two workers


LOCAL = ("prep", "report")
"""Stages the fan-out test keeps in the parent: prep's outputs reach the workers through the remote."""

SWEEP_SLEEP_S = float(os.environ.get("TALKGS_SWEEP_SLEEP_S", "2"))
"""How long each toy training sleeps. The test checks what the fan-out does (same lock, both
workers, child runs on their stages, a Cached rerun) and prints the wall times; it does not time
them: `python benchmarks/fanout.py` runs it with 25 s trainings, long enough that two at once beat
a worker's per-stage overhead (8-14 s for the process worker to start the flow-run process on 2
shared cores, 1-3 s of dvc pull / push), and prints serial vs fan-out."""


def _sweep_repo(root: Path, remote: Path) -> None:
    """prep@S (a cached out + a cache: false json) -> train@S-V (2 x 2 matrix; sleeps; reads
    both) -> report (aggregates every subject x variant), committed, with a directory DVC remote."""
    import subprocess

    from conftest import _run

    root.mkdir(parents=True)
    _run(["git", "init", "-q"], root)
    _run([PY, "-m", "dvc", "init", "-q"], root)
    _run([PY, "-m", "dvc", "remote", "add", "-d", "shared", str(remote)], root)
    (root / "params.yaml").write_text("subjects:\n  a: {n: 2}\n  b: {n: 3}\nevaluate:\n  variants: [v1, v2]\n"
                                      f"sleep: {SWEEP_SLEEP_S}\n")  # fmt: skip
    (root / "prep.py").write_text(textwrap.dedent("""
        import json, os, sys
        s = sys.argv[1]
        os.makedirs(f"data/{s}", exist_ok=True); os.makedirs("metrics/prep", exist_ok=True)
        open(f"data/{s}/frames.txt", "w").write(f"frames of {s}\\n" * 3)
        json.dump({"frames": 3}, open(f"metrics/prep/{s}.json", "w"))
    """))
    (root / "train.py").write_text(textwrap.dedent("""
        import json, os, sys, time, yaml
        s, v = sys.argv[1], sys.argv[2]
        p = yaml.safe_load(open("params.yaml"))
        time.sleep(p["sleep"])
        frames = open(f"data/{s}/frames.txt").read()
        n = json.load(open(f"metrics/prep/{s}.json"))["frames"] * p["subjects"][s]["n"]
        os.makedirs(f"models/{s}/{v}", exist_ok=True); os.makedirs(f"metrics/subjects/{s}", exist_ok=True)
        open(f"models/{s}/{v}/model.txt", "w").write(f"{v} on {frames!r} x{n}\\n")
        json.dump({"psnr": 20.0 + n + len(v)}, open(f"metrics/subjects/{s}/{v}.json", "w"))
        print(f"INFO talkgs.train: trained {s}/{v}")
    """))
    (root / "report.py").write_text(textwrap.dedent("""
        import json, os
        os.makedirs("metrics/tables", exist_ok=True)
        rows = []
        for s in sorted(os.listdir("metrics/subjects")):
            for f in sorted(os.listdir(f"metrics/subjects/{s}")):
                rows.append(f"| {s} | {f[:-5]} | {json.load(open(f'metrics/subjects/{s}/{f}'))['psnr']} |")
        open("metrics/tables/sweep.md", "w").write("### Sweep\\n\\n| subject | variant | psnr |\\n|---|---|---|\\n" + "\\n".join(rows) + "\\n")
    """))
    (root / "dvc.yaml").write_text(textwrap.dedent(f"""
        stages:
          prep:
            foreach: [a, b]
            do:
              cmd: {PY} prep.py ${{item}}
              deps: [prep.py]
              outs:
                - data/${{item}}
              metrics:
                - metrics/prep/${{item}}.json:
                    cache: false
          train:
            matrix:
              subject: [a, b]
              variant: [v1, v2]
            cmd: {PY} train.py ${{item.subject}} ${{item.variant}}
            deps:
              - train.py
              - data/${{item.subject}}
              - metrics/prep/${{item.subject}}.json
            params:
              - sleep
              - subjects.${{item.subject}}
            outs:
              - models/${{item.subject}}/${{item.variant}}
            metrics:
              - metrics/subjects/${{item.subject}}/${{item.variant}}.json:
                  cache: false
          report:
            cmd: {PY} report.py
            deps: [report.py, metrics/subjects]
            outs:
              - metrics/tables:
                  cache: false
    """))
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-q", "-m", "toy sweep"], root)
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout == ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lock_stages(root: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


@pytest.fixture
def prefect_pool(tmp_path: Path):
    """A real Prefect server on a free port (its own PREFECT_HOME), a process work pool and two
    `prefect worker start` processes, each with its own workspace directory. Yields
    ``(pool, {worker: workspace dir})``; stops them all in the end. Skips when the server does not start."""
    import os
    import signal
    import subprocess
    import time

    import httpx
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    port, home, pool = _free_port(), tmp_path / "prefect-home", "talkgs-test-pool"
    url = f"http://127.0.0.1:{port}/api"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_LOCAL_STORAGE_PATH=str(home / "storage"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1",
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_HEARTBEAT_SECONDS="5",
               PYTHONPATH=os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
               PATH=str(Path(PY).parent) + os.pathsep + os.environ.get("PATH", ""))  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: str, **extra: str) -> subprocess.Popen:
        p = subprocess.Popen(cmd, env={**env, **extra}, stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
        procs.append(p)
        return p

    try:
        server = start([PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
                       "server.log")  # fmt: skip
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (tmp_path / "server.log").read_text()[-1500:]
                pytest.skip(f"the Prefect server did not start on port {port} (exit {server.poll()}): {tail}")
            time.sleep(1)
        env["PREFECT_API_URL"] = url
        subprocess.run([PY, "-m", "prefect", "work-pool", "create", "--type", "process", pool], env=env, check=True,
                       capture_output=True)  # fmt: skip
        spaces = {w: tmp_path / f"ws-{w}" for w in ("w1", "w2")}
        for w, ws in spaces.items():
            start([PY, "-m", "prefect", "worker", "start", "--pool", pool, "--name", w, "--limit", "1"], f"worker-{w}.log",
                  TALKGS_WORKSPACES=str(ws))  # fmt: skip
        while True:  # both workers polling, so the fan-out's wall time does not include their start-up
            r = httpx.post(f"{url}/work_pools/{pool}/workers/filter", json={}, timeout=10)
            if r.status_code == 200 and {w["name"] for w in r.json()} >= set(spaces):
                break
            dead = [p for p in procs[1:] if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = " / ".join((tmp_path / f"worker-{w}.log").read_text()[-800:] for w in spaces)
                pytest.fail(f"the Prefect workers did not come up: {logs}")
            time.sleep(1)
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home),
                                         PREFECT_LOCAL_STORAGE_PATH: str(home / "storage")}):  # fmt: skip
            try:
                yield pool, spaces
            finally:  # send this process's queued logs and events while the server is up (else the
                # log and event workers retry a dead server for a minute at exit)
                from prefect.events.worker import EventsWorker
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=15)
                EventsWorker.drain_all(timeout=15)
    finally:
        t_stop = time.monotonic()
        for p in reversed(procs):  # workers first, then the server; each its own process group
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        print(f"stopped the Prefect server and workers in {time.monotonic() - t_stop:.1f} s")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_fans_out_to_two_workers_same_lock(tmp_path: Path, prefect_pool):
    import subprocess
    import time

    pool, spaces = prefect_pool
    remote = tmp_path / "dvc-remote"
    serial_root, fan_root = tmp_path / "serial", tmp_path / "fanout"
    _sweep_repo(serial_root, remote)
    _sweep_repo(fan_root, remote)

    t0 = time.monotonic()
    serial = reproduce(serial_root)
    t_serial = time.monotonic() - t0
    assert serial.ok, serial.error

    t0 = time.monotonic()
    fan = reproduce(fan_root, pool=pool, local_kinds=LOCAL)
    t_fan = time.monotonic() - t0
    print(f"\nsweep of 2 subjects x 2 variants ({SWEEP_SLEEP_S:.0f} s per training): "
          f"serial {t_serial:.1f} s, fan-out to 2 workers {t_fan:.1f} s")  # fmt: skip
    assert fan.ok, fan.error
    names = ["prep@a", "prep@b", "train@a-v1", "train@a-v2", "train@b-v1", "train@b-v2", "report"]
    assert set(fan.stages) == set(names) and set(fan.stages.values()) == {"ran"}, fan.stages

    # the same dvc.lock as the serial run (every dep / out hash), and the workspace in that state
    assert _lock_stages(fan_root) == _lock_stages(serial_root)
    for rel in ["metrics/tables/sweep.md", "models/b/v2/model.txt", "metrics/subjects/a/v1.json", "data/a/frames.txt"]:
        assert (fan_root / rel).read_bytes() == (serial_root / rel).read_bytes(), rel
    st = subprocess.run([PY, "-m", "dvc", "status", "--json"], cwd=fan_root, capture_output=True, text=True, check=True)
    assert json.loads(st.stdout) == {}, st.stdout
    # both workers ran stages, each in its own workspace
    for w, ws in spaces.items():
        assert list(ws.glob("slot-0/*/.git")), f"worker {w} ran no stage"

    # the child flow runs hang off the stage's task runs; a rerun sends nothing, every stage Cached
    runs = _task_runs(fan.flow_run_id)
    subflows = _api("/flow_runs/filter", {"flow_runs": {"parent_task_run_id": {"any_": [r["id"] for r in runs.values()]}}})
    assert sorted(f["name"] for f in subflows) == [n for n in names if n.startswith("train@")]
    for f in sorted(subflows, key=lambda f: f["start_time"]):
        print(f"  {f['name']}: started {f['start_time'][11:22]}, ran {f['total_run_time']:.1f} s, "
              f"{f['estimated_start_time_delta']:.1f} s after it was sent")  # fmt: skip
    again = reproduce(fan_root, pool=pool, local_kinds=LOCAL)
    assert again.ok and set(again.stages.values()) == {"skipped"}, again.stages
    assert {r["state"]["name"] for r in _task_runs(again.flow_run_id).values()} == {"Cached"}


def test_fanout_preflight_refuses_what_workers_would_not_see(tmp_path: Path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from talkgs.orchestrate import StageFailed, fanout_preflight

    root = tmp_path / "repo"
    _sweep_repo(root, tmp_path / "remote")
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(StageFailed, match="needs a Prefect server"):
            fanout_preflight(root, "p", None)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        fan = fanout_preflight(root, "p", None)
        assert fan.repo == str(root) and len(fan.rev) == 40 and fan.uncached["prep@a"] == ("metrics/prep/a.json",)
        assert fan.is_local("report") and fan.is_local("data/raw/x.mp4.dvc") and not fan.is_local("train@a-v1")
        (root / "dvc.lock").write_text("schema: '2.0'\n")  # the lock and stage outputs may differ
        (root / "train.py").write_text("changed = True\n")
        with pytest.raises(StageFailed, match="uncommitted changes to train.py: commit"):
            fanout_preflight(root, "p", None)
