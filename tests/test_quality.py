"""Data-quality gates (talkgs.preprocess.quality), on bad clips made with ffmpeg from may_5s:
audio that is not speech (pink noise, a 440 Hz sine) stops extract (exit 2, the file and the
fix named) or warns; a head rolled by a wrong rotation tag stops track with the ffmpeg fix;
frames where the face mesh failed are left out of training and of the evaluation metrics."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from badclips import X264, base_clip, with_audio
from conftest import REPO
from talkgs.cli import main

@pytest.fixture(scope="module")
def base(may_video: Path, ffmpeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of may_5s at 160² with its speech (AAC)."""
    return base_clip(ffmpeg, may_video, tmp_path_factory.mktemp("quality") / "base.mp4")


def _repo(root: Path, name: str, video: Path, **on_fail: str) -> Path:
    """A repository root whose params.yaml has subject ``name`` (96²) and the given gate modes."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["subjects"][name] = {"video": str(video), "resolution": 96}
    for section, mode in on_fail.items():  # extract="warning" -> extract.speech_check.on_fail
        gate = {"extract": "speech_check", "track": "roll_check"}[section]
        params[section].setdefault(gate, {})["on_fail"] = mode
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _left(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "data").rglob("*")) if (root / "data").exists() else []


# --------------------------------------------------------------------------------------------
# speech activity (extract)

NOT_SPEECH = {
    "pink_noise": ("anoisesrc=color=pink:r=48000:a=0.3:d=3", "spectral flatness"),
    "sine_440hz": ("sine=f=440:r=48000:d=3", "(a steady tone)"),
}


@pytest.mark.parametrize("kind", list(NOT_SPEECH))
def test_audio_that_is_not_speech_stops_extract(kind: str, base: Path, ffmpeg, tmp_path: Path, caplog) -> None:
    lavfi, reason = NOT_SPEECH[kind]
    video = with_audio(ffmpeg, base, lavfi, tmp_path / f"{kind}.mp4")
    root = _repo(tmp_path / "repo", "bad", video)
    assert main(["-q", "--root", str(root), "extract", "--subject", "bad"]) == 2
    msg = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert msg.startswith(f"{video}: the audio track does not sound like speech ("), msg
    assert reason in msg and "extract.speech_check." in msg, msg
    assert "ffmpeg -i VIDEO -i SPEECH.wav -map 0:v -map 1:a" in msg and "set extract.speech_check.on_fail: warning" in msg, msg
    assert _left(root) == []  # nothing written, no temporary folder


def test_not_speech_as_a_warning_lands_in_meta(base: Path, ffmpeg, tmp_path: Path, caplog) -> None:
    video = with_audio(ffmpeg, base, NOT_SPEECH["pink_noise"][0], tmp_path / "pink.mp4")
    root = _repo(tmp_path / "repo", "noisy", video, extract="warning")
    assert main(["-q", "--root", str(root), "extract", "--subject", "noisy"]) == 0
    meta = json.loads((root / "data/noisy/extract/meta.json").read_text())
    (w,) = [w for w in meta["warnings"] if "does not sound like speech" in w]
    assert "spectral flatness 0.3" in w and "voiced fraction 0.0" in w, w
    assert any(w in r.getMessage() for r in caplog.records if r.levelname == "WARNING")  # and in the log
    sa = meta["speech_activity"]
    assert sa["voiced_fraction"] < 0.1 and sa["spectral_flatness"] > 0.2 and sa["level_std_db"] < 3.0, sa
    assert meta["params"]["speech_check"]["on_fail"] == "warning"


def test_every_real_recording_passes(shared_data: Path) -> None:
    """The clips and recordings of ../shared/data are speech by every measure (params.yaml's
    comment gives the measured ranges)."""
    from talkgs.config import load_params
    from talkgs.io.media import load_audio
    from talkgs.io.video import read_audio
    from talkgs.preprocess.quality import speech_activity, speech_problems

    p = load_params(REPO / "params.yaml").extract.speech_check
    files = sorted((shared_data / "videos").glob("*.mp4")) + sorted((shared_data / "audio").glob("*.wav"))
    assert len(files) >= 13
    for f in files:
        x = read_audio(f, 16000) if f.suffix == ".mp4" else load_audio(f, 16000)
        m = speech_activity(x, 16000)
        assert speech_problems(m, p) == [], (f.name, m)
        assert 0.3 < m["voiced_fraction"] < 0.7 and m["spectral_flatness"] < 0.1 and m["level_std_db"] > 6.0, (f.name, m)


# --------------------------------------------------------------------------------------------
# head roll (track)


def _roll_of(video: Path, out: Path) -> float:
    """Median head roll of ``video`` after extract (face mesh on every 5th frame)."""
    import cv2

    from talkgs.preprocess.extract import ExtractParams, extract
    from talkgs.preprocess.facemesh import FaceMesh
    from talkgs.preprocess.quality import head_roll_deg, median_roll_deg

    meta = extract(video, out, ExtractParams(resolution=96), progress=False)
    lms = []
    with FaceMesh() as mesh:
        for i in range(0, meta["output"]["frames"], 5):
            lm = mesh.process(cv2.cvtColor(cv2.imread(str(out / "frames" / f"{i:06d}.jpg")), cv2.COLOR_BGR2RGB))
            assert lm is not None
            lms.append(lm)
    return median_roll_deg(head_roll_deg(np.stack(lms), np.ones(len(lms), bool)))


@pytest.mark.parametrize(
    ("case", "words"),
    [("wrong_tag", "its rotation tag (+90°, applied by extract as players do) is probably wrong"),
     ("lost_tag", "it has no rotation tag, but its pixels are probably stored turned")],
)  # fmt: skip
def test_a_rolled_head_stops_track_with_the_ffmpeg_fix(case: str, words: str, base: Path, ffmpeg, tmp_path: Path, caplog) -> None:
    """A wrong tag (``-display_rotation 90`` on an upright clip) or pixels turned without one
    (``transpose=1``): the head comes out on its side; the message names the tag and the fix,
    and the fix it gives makes the head upright."""
    video = tmp_path / f"{case}.mp4"
    if case == "wrong_tag":
        ffmpeg("-display_rotation", "90", "-i", str(base), "-c", "copy", str(video))
    else:
        ffmpeg("-i", str(base), "-vf", "transpose=1", *X264, "-c:a", "copy", str(video))
    root = _repo(tmp_path / "repo", "rolled", video)
    assert main(["-q", "--root", str(root), "extract", "--subject", "rolled"]) == 0
    caplog.clear()
    assert main(["-q", "--root", str(root), "track", "--subject", "rolled"]) == 2
    msg = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    m = re.match(rf"{re.escape(str(video))}: the head is rolled ([+-]\d+)° in the extracted frames \(median angle of the eye line", msg)
    assert m and 80 <= abs(int(m.group(1))) <= 100, msg
    assert words in msg and "track.roll_check.max_roll_deg=45" in msg and "set track.roll_check.on_fail: warning" in msg, msg
    assert _left(root)[0] == "data/rolled" and all(p.startswith("data/rolled/extract") for p in _left(root)[1:])  # no track output, no temp
    fix = re.search(r"Fix the tag without re-encoding: (ffmpeg -display_rotation -?\d+ -i \S+ -c copy FIXED\.mp4)", msg)
    assert fix, msg
    cmd = shlex.split(fix.group(1).replace("FIXED.mp4", str(tmp_path / "fixed.mp4")))
    ffmpeg(*cmd[1:])
    assert abs(_roll_of(tmp_path / "fixed.mp4", tmp_path / "fixed_extract")) < 15


def test_roll_check_as_a_warning_and_the_tag_arithmetic(tmp_path: Path) -> None:
    """Warning mode keeps going and records it; the fix turns the tag by the measured roll."""
    from talkgs.preprocess.errors import InputError
    from talkgs.preprocess.quality import RollCheckParams
    from talkgs.preprocess.track import ExtractInfo, check_roll

    lm = np.zeros((10, 478, 3), np.float32)
    lm[:, 33, :2], lm[:, 263, :2] = (50, 40), (50, 60)  # right eye above the left one: turned +90° (clockwise)
    info = ExtractInfo(tmp_path, 10, 96, 96, 25.0, "frames/%06d.jpg", 9, tmp_path / "a.wav", 16000, "clip.mov", 180.0)
    warnings: list[str] = []
    stats = check_roll(info, lm, np.ones(10, bool), RollCheckParams(on_fail="warning"), warnings)
    assert stats["median"] == 90.0 and len(warnings) == 1 and "rolled +90°" in warnings[0] and "rotation tag (+180°" in warnings[0]
    with pytest.raises(InputError, match=r"ffmpeg -display_rotation -90 -i clip\.mov -c copy FIXED\.mp4"):
        check_roll(info, lm, np.ones(10, bool), RollCheckParams(), [])
    upright = lm.copy()
    upright[:, 33, :2], upright[:, 263, :2] = (40, 50), (60, 52)
    assert check_roll(info, upright, np.ones(10, bool), RollCheckParams(), []) == {"median": 5.71, "min": 5.71, "max": 5.71}


# --------------------------------------------------------------------------------------------
# frames without a detected face


@pytest.fixture(scope="module")
def gappy_subject(tiny_subject, tmp_path_factory):  # noqa: ANN001, ANN201
    """The tiny synthetic subject with the face mesh failed on frames 3, 4 (training) and 15 (test)."""
    from conftest import speech_like_wav
    from talkgs.train.synthetic import write_subject_folder

    root = tmp_path_factory.mktemp("gappy") / "gappy"
    wav = speech_like_wav(root.parent / "speech.wav", tiny_subject.n_frames / tiny_subject.fps + 0.1)
    write_subject_folder(tiny_subject, root, wav, undetected=[3, 4, 15])
    return root


def test_undetected_frames_leave_the_splits(gappy_subject: Path) -> None:
    from talkgs.train.data import frame_pool, load_subject

    d = load_subject(gappy_subject)
    n_train = 14
    assert d.train_idx.tolist() == [i for i in range(n_train) if i not in (3, 4)]
    assert d.test_idx.tolist() == [14] and d.excluded.tolist() == [3, 4, 15]
    assert d.train_span.tolist() == list(range(n_train)) and d.test_span.tolist() == [14, 15]
    assert sorted(frame_pool([d]).frames[0].tolist()) == d.train_idx.tolist()  # what the samplers draw from
    few = d.first_seconds(0.4)  # the first 10 frames of the clip, less the two without a face
    assert few.train_idx.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]


def test_training_and_evaluation_count_what_they_left_out(gappy_subject: Path, tiny_variant, tmp_path: Path) -> None:
    from talkgs.eval.metrics import psnr
    from talkgs.eval.protocols import evaluate_self_driven, read_frames
    from talkgs.synthesize import render_test
    from talkgs.train.loop import train

    out = tmp_path / "static"
    res = train(gappy_subject, out, tiny_variant("static", steps_per_phase=2), progress=False)
    assert res["train_frames"] == 12 and res["train_frames_excluded"] == 2
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["excluded_frames"]["count"] == 2 and cfg["excluded_frames"]["frames"] == {"gappy": [3, 4]}
    r = render_test(gappy_subject, out, None, frames_dir=tmp_path / "test", progress=False)
    assert r["frames"] == 2 and r["first_frame"] == 14 and r["excluded"] == [15]  # the whole test part is rendered
    gt = gappy_subject / "extract" / "frames"
    m = evaluate_self_driven(gt, tmp_path / "test", gappy_subject / "segment", fid=False, exclude=r["excluded"])
    assert m["self.frames"] == 2 and m["self.excluded_frames"] == 1 and m["self.face_frames"] <= 1
    (_, ren14), (_, gt14) = read_frames(tmp_path / "test", [14])[0], read_frames(gt, [14])[0]
    assert m["self.psnr_full"] == round(psnr(ren14, gt14), 4)  # frame 14 alone
    assert evaluate_self_driven(gt, tmp_path / "test", gappy_subject / "segment", fid=False)["self.excluded_frames"] == 0
