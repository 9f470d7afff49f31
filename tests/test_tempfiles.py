"""The temp-file convention (talkgs.io.atomic): every temporary name starts with
``.talkgs-tmp-<pid>-``; DVC ignores such names (``.dvcignore``), so a hard-killed stage cannot
leave one inside an output; the next run of a stage removes those of its outputs; Ctrl-C and
SIGTERM in a stage or ``talkgs`` command print one line (exit 130 / 143) and leave nothing."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from talkgs.io.atomic import TMP_PREFIX, atomic_dir, atomic_path, sweep_temp

SRC = str(REPO / "src")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), DVC_NO_ANALYTICS="1", COLUMNS="200")


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(TMP_PREFIX + "*"))


def test_temporary_names_carry_the_prefix_and_the_pid(tmp_path: Path) -> None:
    pre = f"{TMP_PREFIX}{os.getpid()}-"
    with atomic_path(tmp_path / "out.mp4") as t:
        assert t.name.startswith(pre + "out.mp4.") and t.suffix == ".mp4" and t.parent == tmp_path
    with atomic_dir(tmp_path / "segment") as d:
        assert d.name.startswith(pre + "segment.") and d.parent == tmp_path
    with atomic_dir(tmp_path / "segment") as d:  # the swap of an existing folder: .old under the prefix too
        (d / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "segment"]


def test_sigkill_mid_write_leaves_an_ignored_name_the_next_sweep_removes(tmp_path: Path) -> None:
    """A writer killed with SIGKILL (nothing can be cleaned up) leaves its prefixed temp file;
    while it runs the sweep keeps it, once it is dead the sweep removes it, and only the
    temporaries of the output asked for."""
    dest = tmp_path / "models" / "checkpoint.pt"
    script = textwrap.dedent(
        """
        import sys, time
        from talkgs.io.atomic import atomic_path
        with atomic_path(sys.argv[1]) as tmp:
            tmp.write_bytes(b"x" * 4096)
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(dest)], stdout=subprocess.PIPE, env=_env(), text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        left = _temps(dest.parent)
        assert len(left) == 1 and left[0].startswith(f"{TMP_PREFIX}{proc.pid}-checkpoint.pt.") and left[0].endswith(".pt")
        assert sweep_temp(dest) == [] and _temps(dest.parent) == left  # its writer is alive: kept
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _temps(dest.parent) == left and not dest.exists()
    other = dest.parent / f"{TMP_PREFIX}{_dead_pid()}-curves.csv.abc123.csv"  # another output's
    other.write_text("x")
    legacy = dest.parent / ".checkpoint.pt.k2j4h5g6.tmp.pt"  # the names of earlier versions
    legacy.write_text("x")
    removed = sweep_temp(dest)
    assert sorted(p.name for p in removed) == sorted([*left, legacy.name])
    assert sorted(p.name for p in dest.parent.iterdir()) == [other.name]


def test_dvc_never_hashes_a_temporary_name(dvc_repo: Path) -> None:
    """``.dvcignore`` covers the prefix: `dvc check-ignore` says so, and a persisted model
    folder holding a killed run's checkpoint temp is hashed without it."""
    shutil.copy(REPO / ".dvcignore", dvc_repo / ".dvcignore")
    model = dvc_repo / "models" / "s" / "v"
    model.mkdir(parents=True)
    (model / "checkpoint.pt").write_bytes(b"model")
    (model / f"{TMP_PREFIX}{_dead_pid()}-checkpoint.pt.q1w2e3r4.pt").write_bytes(b"half")
    seg = dvc_repo / "data" / "s" / f"{TMP_PREFIX}{_dead_pid()}-segment.z9x8c7v6"
    seg.mkdir(parents=True)
    (seg / "labels.png").write_bytes(b"half")
    env = _env()
    tmp_ck = next(model.glob(TMP_PREFIX + "*")).relative_to(dvc_repo)
    proc = subprocess.run([sys.executable, "-m", "dvc", "check-ignore", str(tmp_ck), str(seg.relative_to(dvc_repo))],
                          cwd=dvc_repo, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_ck) in proc.stdout and seg.name in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "dvc", "check-ignore", "models/s/v/checkpoint.pt"], cwd=dvc_repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 1  # the real output is not ignored
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "models/s/v"], cwd=dvc_repo, env=env, check=True, capture_output=True)
    assert "nfiles: 1" in (dvc_repo / "models" / "s" / "v.dvc").read_text()


STAGE_OUTPUTS = {
    # stage function -> (library function it calls, the outputs whose temporaries it removes)
    "extract": ("talkgs.preprocess.extract.extract", ["data/demo/extract"]),
    "segment": ("talkgs.preprocess.segment.segment", ["data/demo/segment"]),
    "track": ("talkgs.preprocess.track.track", ["data/demo/track"]),
    "features": ("talkgs.features.build.build_features", ["data/demo/features"]),
    "train": ("talkgs.train.loop.train", ["models/demo/static", "plots/train/demo/static.csv"]),
    "evaluate": ("talkgs.eval.run.evaluate_variant", ["renders/demo/static", "metrics/subjects/demo/static.json"]),
    "ground_truth": ("talkgs.eval.run.evaluate_subject_ground_truth", ["metrics/subjects/demo/ground_truth.json"]),
    "report": ("talkgs.eval.report.build_tables", ["metrics/tables"]),
}


@pytest.mark.parametrize("stage", list(STAGE_OUTPUTS))
def test_each_stage_first_removes_what_a_killed_run_left(stage: str, tmp_path: Path, monkeypatch) -> None:
    """Temporaries of the stage's own outputs (beside them, and inside a persisted folder) go;
    another stage's stay (it may be running)."""
    import importlib

    from talkgs import pipeline
    from talkgs.config import load_params

    target, outputs = STAGE_OUTPUTS[stage]
    mod, fn = target.rsplit(".", 1)
    calls = []

    def fake(*a, **k):  # the stage's work: not under test here
        calls.append(a)
        if stage == "train":
            (tmp_path / "models/demo/static/curves.csv").write_text("step\n")
        return collections.defaultdict(int)

    monkeypatch.setattr(importlib.import_module(mod), fn, fake)
    dead = _dead_pid()
    planted = []
    for out in outputs:
        p = tmp_path / out
        p.parent.mkdir(parents=True, exist_ok=True)
        beside = p.parent / f"{TMP_PREFIX}{dead}-{p.name}.a1b2c3d4{p.suffix}"
        beside.mkdir() if not p.suffix else beside.write_text("half")
        planted.append(beside)
        if not p.suffix:  # a folder output: a half-written file inside it too
            p.mkdir(exist_ok=True)
            (p / f"{TMP_PREFIX}{dead}-checkpoint.pt.e5f6g7h8.pt").write_text("half")
            planted.append(p / f"{TMP_PREFIX}{dead}-checkpoint.pt.e5f6g7h8.pt")
    foreign = tmp_path / "data" / "demo" / f"{TMP_PREFIX}{dead}-{'segment' if stage != 'segment' else 'track'}.x1y2z3w4"
    foreign.mkdir(parents=True)
    params = load_params(REPO / "params.yaml")
    args = (params, "demo", "static", tmp_path) if stage in ("train", "evaluate") else (params, tmp_path) if stage == "report" else (params, "demo", tmp_path)
    getattr(pipeline, stage)(*args, progress=False)
    assert calls, "the stage ran"
    assert [p for p in planted if p.exists()] == []
    assert foreign.is_dir()


def test_training_and_synthesis_remove_a_killed_write(tiny_subject_dir: Path, tiny_variant, tmp_path: Path) -> None:
    """The real calls: training sweeps its model folder before it resumes (a half-written
    checkpoint of a killed run), synthesis the temporaries of its output file."""
    from talkgs.synthesize import synthesize
    from talkgs.train.loop import train

    out = tmp_path / "models" / "tiny" / "static"
    out.mkdir(parents=True)
    half = out / f"{TMP_PREFIX}{_dead_pid()}-checkpoint.pt.r5t6y7u8.pt"
    half.write_bytes(b"\0" * 1024)
    train(tiny_subject_dir, out, tiny_variant("static", steps_per_phase=2), progress=False)
    assert not half.exists() and (out / "checkpoint.pt").is_file()
    mp4 = tmp_path / "out.mp4"
    left = tmp_path / f"{TMP_PREFIX}{_dead_pid()}-out.mp4.i9o8p7a6.mp4"
    left.write_bytes(b"\0" * 1024)
    synthesize(tiny_subject_dir, out, tiny_subject_dir / "extract" / "audio.wav", mp4, max_frames=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "out.mp4"]


_STUCK_STAGE = """
import sys, time
import talkgs
from talkgs import pipeline
from talkgs.io.atomic import atomic_dir

def stuck(params, subject, root, *, progress=True):  # a segment run, interrupted while it writes
    with atomic_dir(root / "data" / subject / "segment") as tmp:
        (tmp / "half.png").write_bytes(b"x" * 4096)
        print("ready", flush=True)
        time.sleep(60)

pipeline.segment = stuck
if sys.argv[2] == "stage":
    pipeline.stage_main("segment", ["--subject", "demo", "--root", sys.argv[1]])
else:
    from talkgs.cli import main
    sys.exit(main(["--root", sys.argv[1], "segment", "--subject", "demo"]))
"""


@pytest.mark.parametrize(
    ("entry", "sig", "code", "words"),
    [("stage", signal.SIGINT, 130, "stage segment: interrupted (Ctrl-C)."), ("cli", signal.SIGTERM, 143, "talkgs segment: terminated (SIGTERM).")],
)
def test_interrupt_prints_one_line_and_leaves_nothing(entry: str, sig: int, code: int, words: str, tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data" / "demo").mkdir(parents=True)
    # SIGINT back to its default in the child: under a shell's background job (`pytest &`) it is
    # ignored, which Python (and talkgs) rightly keep, as `nohup` users expect
    proc = subprocess.Popen([sys.executable, "-c", _STUCK_STAGE, str(tmp_path), entry], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert len(_temps(tmp_path / "data" / "demo")) == 1
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    text = " ".join((out + err).split())
    assert proc.returncode == code, text
    assert words in text and "Nothing half-written was left behind" in text and "run the same command again" in text, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert list((tmp_path / "data" / "demo").iterdir()) == []
