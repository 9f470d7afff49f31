"""The Prefect flow over DVC stages, on a tiny real DVC pipeline under Prefect's test harness."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from talkgs.orchestrate import list_stages, metric_tables, reproduce, stage_subject

PY = sys.executable


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _tiny_pipeline(root: Path) -> None:
    """make_src -> count@a, count@b (foreach) -> metrics json; shaped like the real dvc.yaml."""
    (root / "params.yaml").write_text("subjects:\n  a: {n: 2}\n  b: {n: 3}\n")
    (root / "make_src.py").write_text(
        "open('src.txt', 'w').write('hello\\n')\nopen('runs.log', 'a').write('make_src\\n')\n"
    )
    (root / "count.py").write_text(textwrap.dedent("""
        import json, os, sys
        key, n = sys.argv[1], int(sys.argv[2])
        os.makedirs("metrics", exist_ok=True)
        json.dump({"n": n, "len": len(open("src.txt").read())}, open(f"metrics/{key}.json", "w"))
        open("runs.log", "a").write(f"count {key}\\n")
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
              metrics:
                - metrics/${{key}}.json:
                    cache: false
    """))


def test_stage_subject():
    assert stage_subject("extract@demo") == "demo"
    assert stage_subject("train@demo-gaussiantalker") == "demo"
    assert stage_subject("make_demo") is None
    assert stage_subject("pretrain@gaussiantalker") is None and stage_subject("audio_features@demo_speech2") is None


def test_list_stages_orders_dependencies_first(dvc_repo: Path):
    _tiny_pipeline(dvc_repo)
    assert list_stages(dvc_repo) == ["make_src", "count@a", "count@b"]
    assert list_stages(dvc_repo, ["b"]) == ["make_src", "count@b"]
    with pytest.raises(ValueError, match="no DVC stages for subject"):
        list_stages(dvc_repo, ["zzz"])


def test_flow_runs_stages_then_skips_and_publishes(dvc_repo: Path, prefect_harness):
    _tiny_pipeline(dvc_repo)
    first = reproduce(dvc_repo)
    assert first.ok, first.error
    assert first.stages == {"make_src": "ran", "count@a": "ran", "count@b": "ran"}
    assert json.loads((dvc_repo / "metrics/b.json").read_text()) == {"n": 3, "len": 6}
    assert sorted(first.artifacts) == ["metrics-a", "metrics-b"]

    second = reproduce(dvc_repo)  # DVC decides: nothing changed, nothing reruns
    assert second.ok and set(second.stages.values()) == {"skipped"}
    assert (dvc_repo / "runs.log").read_text().count("\n") == 3

    # read back through the REST API (prefect 3.8.8's client sends nulls its own server rejects)
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"key": {"any_": ["metrics-a"]}}, "limit": 5, "offset": 0, "sort": "CREATED_DESC"}
    arts = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30).json()
    assert len(arts) == 2 and all(a["type"] == "table" for a in arts), arts  # one per run
    assert '"metric": "len"' in arts[0]["data"] and '"value": 6' in arts[0]["data"]


def test_failing_stage_stops_flow_without_retry(dvc_repo: Path, prefect_harness):
    (dvc_repo / "boom.py").write_text("open('tries.log', 'a').write('x')\nraise SystemExit(3)\n")
    (dvc_repo / "dvc.yaml").write_text(textwrap.dedent(f"""
        stages:
          boom:
            cmd: {PY} boom.py
            outs: [never.txt]
          after:
            cmd: {PY} -c "open('after.txt','w').write('x')"
            deps: [never.txt]
            outs: [after.txt]
    """))
    res = reproduce(dvc_repo)
    assert not res.ok and "stage boom failed" in (res.error or "")
    assert (dvc_repo / "tries.log").read_text() == "x", "a failing command is not retried"
    assert not (dvc_repo / "after.txt").exists()


def test_metric_tables_keys_are_stable(tmp_path: Path):
    (tmp_path / "metrics/tables").mkdir(parents=True)
    (tmp_path / "metrics/demo").mkdir()
    (tmp_path / "metrics/demo/GaussianTalker.json").write_text(json.dumps({"psnr": {"face": 30.1}, "fps": 5}))
    (tmp_path / "metrics/tables/self_driven.csv").write_text("variant,psnr\nstatic,25.0\n")
    t = metric_tables(tmp_path)
    assert set(t) == {"metrics-demo-gaussiantalker", "metrics-tables-self-driven"}
    assert t["metrics-demo-gaussiantalker"][0] == [
        {"metric": "psnr.face", "value": 30.1}, {"metric": "fps", "value": 5}
    ]
