"""No wall-clock time in a DVC output: rerunning a deterministic stage writes the same bytes (so
nothing downstream reruns); the times go to metrics/timings/<stage>/ (cache: false metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TIME_KEYS = {"timing_s", "seconds", "elapsed_s", "wall_s", "it_s", "generation_s"}


def _keys(obj) -> set[str]:  # noqa: ANN001
    if isinstance(obj, dict):
        return set(obj) | set().union(*(_keys(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_keys(v) for v in obj)) if obj else set()
    return set()


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_timings_are_cache_false_metrics_never_outs():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = set()
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        for out in body.get("outs") or []:
            path = next(iter(out)) if isinstance(out, dict) else out
            assert not path.startswith("metrics/timings"), f"{name}: timings must not be a cached output"
        for m in body.get("metrics") or []:
            (path, opts), = m.items()
            if path.startswith("metrics/timings/"):
                assert opts.get("cache") is False, f"{name}: {path} must be cache: false"
                declared.add(name)
    assert {"track", "features", "pretrain", "train", "train_fewshot"} <= declared
    for stage in ("evaluate", "evaluate_fewshot"):  # the training time it reports is a declared dependency
        assert any(d.startswith("metrics/timings/train/") for d in spec["stages"][stage]["deps"]), stage


@pytest.fixture(scope="module")
def small_extract(may_video: Path, ffmpeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2.5 s of may_5s extracted at 128²."""
    from talkgs.preprocess.extract import ExtractParams, extract

    d = tmp_path_factory.mktemp("timings")
    clip = d / "clip.mp4"
    ffmpeg("-i", str(may_video), "-t", "2.5", "-vf", "scale=256:256", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(clip))
    extract(clip, d / "extract", ExtractParams(resolution=128), progress=False)
    return d / "extract"


def test_track_and_features_rerun_to_the_same_bytes(small_extract: Path, tmp_path: Path):
    from talkgs.features import FeaturesParams, build_features
    from talkgs.preprocess.track import TrackParams, track

    first: dict[str, dict[str, bytes]] = {}
    for run in ("first", "rerun"):  # the same paths twice, as `dvc repro` after `dvc repro -f`
        rep = track(small_extract, tmp_path / "track", TrackParams(), progress=False, timings=tmp_path / "timings/track.json")
        assert rep["timing_s"]["total"] > 0, "the caller still gets the times"
        build_features(small_extract, tmp_path / "track", tmp_path / "features", FeaturesParams(), progress=False,
                       timings=tmp_path / "timings/features.json")  # fmt: skip
        outs = {out: _files(tmp_path / out) for out in ("track", "features")}
        if run == "first":
            first = outs
    for out, files in outs.items():
        assert files.keys() == first[out].keys() and [k for k in files if files[k] != first[out][k]] == [], f"{out}: a rerun wrote other bytes"
    assert not _keys(json.loads((tmp_path / "track/report.json").read_text())) & TIME_KEYS
    assert not _keys(json.loads((tmp_path / "features/features.json").read_text())) & TIME_KEYS
    t = json.loads((tmp_path / "timings/track.json").read_text())
    assert t["timing_s"]["total"] > 0 and t["timing_s"]["bundle_adjustment"] >= 0
    f = json.loads((tmp_path / "timings/features.json").read_text())
    assert f["timing_s"]["total"] > 0 and "mel" in f["timing_s"]["audio_encoders"]
