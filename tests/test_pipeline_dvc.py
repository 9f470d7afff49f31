"""The real DVC pipeline on a short demo clip: every stage runs, a second `dvc repro` does nothing.

Runs in a temporary copy of the repository (dvc.yaml, stages/, src/) with a small demo
(4 s, 128² frames) and a tiny training preset (a few dozen steps), so the whole DAG -- demo,
preprocessing, training of every evaluated variant, evaluation, tables -- takes a couple of
minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _dvc(root: Path, *args: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for d in ("stages", "src"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["demo"] = {**(params.get("demo") or {}), "seconds": 4.0, "size": 256}
    params["subjects"]["demo"]["resolution"] = 128
    params["train"]["presets"]["tiny"] = {
        "description": "test: a few dozen steps", "resolution": 64, "init_points": 300, "max_gaussians": 500,
        "iteration_scale": 0.003, "loss_weights": {"lpips": 0.0}, "sh_degree": 1, "triplane_resolution": 16,
        "checkpoint_every": 10,
    }
    params["train"]["preset"] = "tiny"
    params["evaluate"]["fid"] = False
    params["evaluate"]["identity"] = {"max_frames": 8, "reference_frames": 4}  # dlib: ~0.1 s per descriptor
    # syncgaussian is evaluated: the sync expert trains (train: auto), briefly, and is its asset
    params["sync_expert"] = {**params["sync_expert"], "steps": 20, "batch_size": 8, "width": 8}
    params["evaluate"]["variants"] = [*params["evaluate"]["variants"], "syncgaussian"]
    # few-shot sweep: 2 s trains (the 4 s clip's training split is 3.6 s), 10 s is unavailable
    params["evaluate"]["few_shot"] = {"subjects": ["demo"], "variants": ["gaussiantalker"], "seconds": [2, 10]}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True, env=env)
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    return root


def test_dvc_repro_runs_every_stage_then_nothing(pipeline_repo: Path):
    out = _dvc(pipeline_repo, "repro")
    for stage in (
        "make_demo", "extract@demo", "segment@demo", "track@demo", "features@demo", "audio_features@demo_speech2",
        "train@demo-static", "train@demo-gaussiantalker", "evaluate@demo-gaussiantalker", "ground_truth@demo", "report",
        "train_fewshot@demo-gaussiantalker-2", "evaluate_fewshot@demo-gaussiantalker-10", "pretrain@gaussiantalker",
        "sync_expert", "pretrain@syncgaussian", "train@demo-syncgaussian", "evaluate@demo-syncgaussian",
    ):
        assert f"Running stage '{stage}'" in out, out
    # no pretrain.subjects: the pretrain stage says so (train@S-V depends on it alike)
    none = json.loads((pipeline_repo / "models/pretrain/static/none.json").read_text())
    assert none["pretrained"] is False and "no pretrain.subjects" in none["reason"]
    meta = json.loads((pipeline_repo / "data/demo/extract/meta.json").read_text())
    n = len(list((pipeline_repo / "data/demo/extract/frames").glob("*.jpg")))
    assert n == meta["frame_count"] and 90 <= n <= 130
    assert len(list((pipeline_repo / "data/demo/segment/labels").glob("*.png"))) == n
    assert (pipeline_repo / "data/demo/segment/contact_sheet.png").is_file()
    m = json.loads((pipeline_repo / "metrics/subjects/demo/gaussiantalker.json").read_text())
    assert 10 < m["self.psnr_face"] < 60 and m["variant"] == "gaussiantalker"
    assert m["self.lpips_face"]["status"] == "unavailable", "no AlexNet weights here: reported, never faked"
    renders = pipeline_repo / "renders/demo/gaussiantalker"
    assert (renders / "comparison.mp4").is_file() and (renders / "cross_demo_speech2.mp4").is_file()
    curves = (pipeline_repo / "plots/train/demo/gaussiantalker.csv").read_text().splitlines()
    assert curves[0].startswith("step,") and len(curves) >= 3, "training curves as a DVC plot"
    sync = json.loads((pipeline_repo / "metrics/sync_expert.json").read_text())
    assert sync["chance"] == 0.5 and sync["pairs"] > 0 and sync["steps"] == 20 and not sync["held_out_subjects"]
    assert (pipeline_repo / "models/sync_expert/checkpoint.pt").is_file()
    # the expert is syncgaussian's asset (copied by its pretrain stage), and no other variant's
    asset = pipeline_repo / "models/pretrain/syncgaussian/assets/sync_expert.pt"
    assert asset.read_bytes() == (pipeline_repo / "models/sync_expert/checkpoint.pt").read_bytes()
    assert not (pipeline_repo / "models/pretrain/static/assets").exists()
    sg = json.loads((pipeline_repo / "metrics/subjects/demo/syncgaussian.json").read_text())
    # measured, not judged: the tiny preset gives TalkingGaussian's branches 9 static steps each (9.7 dB here)
    assert 5 < sg["self.psnr_face"] < 60 and sg["variant"] == "syncgaussian"
    assert "syncgaussian" in (pipeline_repo / "metrics/tables/self_driven.md").read_text()
    table = (pipeline_repo / "metrics/tables/self_driven.md").read_text()
    assert "gaussiantalker" in table and "static" in table

    # few-shot: the 2 s run trained on its first 50 frames and was measured on the same test split
    fs = json.loads((pipeline_repo / "metrics/subjects/demo/gaussiantalker@fewshot2.json").read_text())
    assert fs["fewshot.train_frames"] == 50 and fs["self.frames"] == m["self.frames"]
    assert 10 < fs["self.psnr_face"] < 60
    cfg = yaml.safe_load((pipeline_repo / "models/demo/gaussiantalker@fewshot2/config.yaml").read_text())
    assert cfg["data"]["n_train"] == 50 and cfg["data"]["train_seconds"] == 2.0
    assert (pipeline_repo / "renders/demo/gaussiantalker@fewshot2/comparison.mp4").is_file()
    # 10 s is longer than the clip's training split: not trained, reported unavailable with the reason
    fs10 = json.loads((pipeline_repo / "metrics/subjects/demo/gaussiantalker@fewshot10.json").read_text())
    assert fs10["self.psnr_face"]["status"] == "unavailable" and "shorter than the 10 s" in fs10["self.psnr_face"]["reason"]
    assert not (pipeline_repo / "models/demo/gaussiantalker@fewshot10/checkpoint.pt").exists()
    few = (pipeline_repo / "metrics/tables/few_shot.md").read_text()
    assert "gaussiantalker @2s" in few and "gaussiantalker @10s" in few and "gaussiantalker @all" in few, few

    # bytecode and numba caches written next to the sources are not code changes (.dvcignore)
    for cache in ("src/talkgs/io/__pycache__/media.cpython-311.pyc", "src/talkgs/render/__pycache__/cpu.kernel-1.py311.nbi"):
        (pipeline_repo / cache).parent.mkdir(exist_ok=True)
        (pipeline_repo / cache).write_bytes(b"\0" * 16)
    again = _dvc(pipeline_repo, "repro")
    assert "Running stage" not in again and "up to date" in again, again

    status = _dvc(pipeline_repo, "status")
    assert "up to date" in status


def test_params_change_reruns_only_downstream(pipeline_repo: Path):
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["evaluate"]["comparison_video"] = False
    (pipeline_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(pipeline_repo, "repro")
    assert "Running stage 'evaluate@demo-static'" in out and "Running stage 'evaluate@demo-gaussiantalker'" in out
    for upstream in ("make_demo", "extract@demo", "segment@demo", "train@demo-static", "train@demo-gaussiantalker"):
        assert f"Running stage '{upstream}'" not in out, out


def test_dvc_dag_shows_the_stages(pipeline_repo: Path):
    dag = _dvc(pipeline_repo, "dag", "--md")
    for stage in ("make_demo", "extract@demo", "segment@demo", "track@demo", "train@demo-gaussiantalker", "report"):
        assert stage in dag


def test_a_retrained_sync_expert_retrains_only_the_variants_built_from_it(pipeline_repo: Path):
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["sync_expert"]["steps"] = 24
    (pipeline_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(pipeline_repo, "repro")
    for stage in ("sync_expert", "pretrain@syncgaussian", "train@demo-syncgaussian", "evaluate@demo-syncgaussian"):
        assert f"Running stage '{stage}'" in out, out
    for stage in ("train@demo-static", "train@demo-gaussiantalker", "evaluate@demo-static"):
        assert f"Running stage '{stage}'" not in out, out
    assert json.loads((pipeline_repo / "metrics/sync_expert.json").read_text())["steps"] == 24
