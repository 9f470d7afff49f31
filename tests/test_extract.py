"""Stage ``extract`` on the real may_5s clip and on clips built from it with ffmpeg."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from talkgs.io.media import read_wav
from talkgs.io.video import packet_times, probe
from talkgs.preprocess.extract import (
    ExtractParams,
    FaceSamples,
    choose_crop,
    extract,
    split_indices,
)
from talkgs.preprocess.quality import SpeechCheckParams

RES = 128  # small clips built in the tests are extracted at this size


def _frame(out: Path, i: int) -> np.ndarray:
    img = cv2.imread(str(out / "frames" / f"{i:06d}.jpg"))
    assert img is not None, f"frame {i} missing"
    return img


# --------------------------------------------------------------------------------------------
# real clip


def test_may_outputs(may_video: Path, may_extract: Path) -> None:
    meta = json.loads((may_extract / "meta.json").read_text())
    out = meta["output"]
    assert out["fps"] == 25 and out["frames"] == 125  # 5 s at 25 fps, nothing dropped
    frames = sorted((may_extract / "frames").glob("*.jpg"))
    assert [f.name for f in frames[:2]] == ["000000.jpg", "000001.jpg"] and len(frames) == 125
    assert _frame(may_extract, 124).shape == (256, 256, 3)
    audio, sr = read_wav(may_extract / "audio.wav")
    assert sr == 16000 and len(audio) == 125 * 640 == out["audio_samples"]
    assert np.abs(audio).max() > 0.1  # speech, not silence
    # the clip is already a tight 512² portrait: the head-and-shoulders crop is the whole frame
    assert (meta["crop"]["x"], meta["crop"]["y"], meta["crop"]["size"]) == (0, 0, 512)
    assert meta["source"]["sha256"] == hashlib.sha256(may_video.read_bytes()).hexdigest()
    assert meta["source"]["vfr"] is False and meta["source"]["measured_fps"] == pytest.approx(25.0)
    assert meta["split"] == {
        "test_fraction": pytest.approx(1 / 11),
        "n_train": 113,
        "n_test": 12,
        "train": [0, 113],
        "test": [113, 125],
        "ranges": meta["split"]["ranges"],
    }
    assert meta["warnings"] == []
    assert meta["face_detection"]["face_fraction"] == 1.0
    # atomic: no temporary siblings left next to the output
    assert sorted(p.name for p in may_extract.parent.iterdir() if p.name.startswith(".")) == []


def test_frames_match_source(may_video: Path, may_extract: Path, ffmpeg, tmp_path: Path) -> None:
    """Frame i of the output is frame i of the source (25 → 25 fps: no shift, no drop)."""
    ref = tmp_path / "ref.png"
    ffmpeg("-i", str(may_video), "-vf", "select=eq(n\\,60),scale=256:256:flags=area", "-frames:v", "1", str(ref))
    got = _frame(may_extract, 60).astype(np.float32)
    want = cv2.imread(str(ref)).astype(np.float32)
    assert np.abs(got - want).mean() < 3.0
    assert np.abs(_frame(may_extract, 61).astype(np.float32) - want).mean() > np.abs(got - want).mean()


# --------------------------------------------------------------------------------------------
# clips built from may_5s


@pytest.fixture(scope="module")
def flash_clip(may_video: Path, ffmpeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s, **30 fps**, video stream starting **0.3 s after** the audio; a white square in the
    corner for video time 2.0-2.2 s and a 1 kHz beep at the same instant (audio time 2.3 s)."""
    d = tmp_path_factory.mktemp("flash")
    ffmpeg(
        "-i", str(may_video), "-t", "4", "-an",
        "-vf", "scale=256:256,fps=30,drawbox=x=0:y=0:w=48:h=48:color=white:t=fill:enable='between(t,2,2.2)'",
        "-c:v", "libx264", "-preset", "ultrafast", str(d / "v.mp4"),
    )  # fmt: skip
    ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:duration=4.3",
        "-af", "volume=0:enable='lt(t,2.3)+gt(t,2.5)'", "-c:a", "aac", str(d / "a.m4a"),
    )  # fmt: skip
    ffmpeg("-itsoffset", "0.3", "-i", str(d / "v.mp4"), "-i", str(d / "a.m4a"), "-map", "0:v", "-map", "1:a", "-c", "copy", str(d / "flash.mp4"))
    return d / "flash.mp4"


def test_resample_and_audio_alignment(flash_clip: Path, tmp_path: Path) -> None:
    beep = SpeechCheckParams(on_fail="warning")  # a beep, not speech: warned about, extracted
    meta = extract(flash_clip, tmp_path / "out", ExtractParams(resolution=RES, speech_check=beep), progress=False)
    assert any("does not sound like speech" in w for w in meta["warnings"]), meta["warnings"]
    out = tmp_path / "out"
    assert meta["source"]["measured_fps"] == pytest.approx(30.0, abs=0.01)
    assert meta["source"]["first_frame_s"] == pytest.approx(0.3, abs=0.01)
    assert meta["output"]["frames"] == 100  # 4 s at 25 fps
    corner = np.array([_frame(out, i)[:8, :8].mean() for i in range(meta["output"]["frames"])])
    flash = int(np.argmax(corner > 200))
    assert flash in (49, 50, 51)  # video time 2.0 s
    audio, sr = read_wav(out / "audio.wav")
    assert len(audio) == 100 * 640
    env = np.abs(audio).reshape(-1, 640).max(axis=1)  # per-frame peak
    assert env.max() > 0.08  # lavfi's sine has amplitude 1/8
    beep = int(np.argmax(env > 0.05))
    assert abs(beep - flash) <= 1, f"beep at frame {beep}, flash at frame {flash}: audio and frames are misaligned"


def test_rotation_is_applied(may_video: Path, ffmpeg, tmp_path: Path) -> None:
    """A phone-style file: pixels stored sideways + display matrix → extracted upright."""
    ffmpeg("-i", str(may_video), "-t", "3", "-vf", "crop=384:512:64:0,scale=192:256", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy", str(tmp_path / "upright.mp4"))
    ffmpeg("-i", str(tmp_path / "upright.mp4"), "-vf", "transpose=1", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy", str(tmp_path / "sideways.mp4"))
    ffmpeg("-display_rotation", "90", "-i", str(tmp_path / "sideways.mp4"), "-c", "copy", str(tmp_path / "rotated.mp4"))
    info = probe(tmp_path / "rotated.mp4")
    assert info.rotation == 90 and (info.width, info.height) == (256, 192) and info.display_size == (192, 256)
    params = ExtractParams(resolution=RES)
    m_rot = extract(tmp_path / "rotated.mp4", tmp_path / "rot", params, progress=False)
    m_ref = extract(tmp_path / "upright.mp4", tmp_path / "ref", params, progress=False)
    assert m_rot["source"]["rotation_deg"] == 90
    assert [m_rot["crop"][k] for k in ("x", "y", "size")] == [m_ref["crop"][k] for k in ("x", "y", "size")]
    diff = np.abs(_frame(tmp_path / "rot", 30).astype(np.float32) - _frame(tmp_path / "ref", 30).astype(np.float32))
    assert diff.mean() < 4.0


@pytest.mark.parametrize("suffix", ["mov", "mkv", "webm"])
def test_containers(may_video: Path, ffmpeg, tmp_path: Path, suffix: str) -> None:
    src = tmp_path / f"clip.{suffix}"
    if suffix == "webm":
        codec = ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M", "-c:a", "libopus"]
    else:
        codec = ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]
    ffmpeg("-i", str(may_video), "-t", "2.5", "-vf", "scale=160:160", *codec, str(src))
    meta = extract(src, tmp_path / "out", ExtractParams(resolution=RES), progress=False)
    assert meta["output"]["frames"] in (62, 63)
    assert meta["source"]["vfr"] is False
    assert len(list((tmp_path / "out" / "frames").glob("*.jpg"))) == meta["output"]["frames"]


# --------------------------------------------------------------------------------------------
# units


def test_split_indices() -> None:
    assert split_indices(125, 1 / 11) == (113, 12)
    assert split_indices(11, 1 / 11) == (10, 1)  # exact fraction, no float rounding
    assert split_indices(6500, 1 / 11) == (int(6500 * 10 / 11), 6500 - int(6500 * 10 / 11))
    assert split_indices(100, 0.2) == (80, 20)


def _faces(boxes: list[tuple[float, float, float, float]]) -> FaceSamples:
    b = np.asarray(boxes, dtype=np.float64)
    return FaceSamples(
        boxes=b, times_s=np.arange(len(b), dtype=np.float64), n_samples=len(b), missing_times_s=np.zeros(0),
        n_multi=0, area_ratios=np.zeros(0), keyframes_only=False, n_fallback=0,
    )  # fmt: skip


def test_choose_crop_wide_shot() -> None:
    p = ExtractParams()
    crop = choose_crop(_faces([(860, 300, 200, 200)] * 5), 1920, 1080, p)
    assert crop.size == int(p.crop_scale * 200) // 2 * 2 and not crop.clamped
    assert crop.x + crop.size / 2 == pytest.approx(960, abs=1)  # centred on the face
    assert crop.y + p.face_center_y * crop.size == pytest.approx(400, abs=1)
    # a head moving sideways: the crop grows to hold every sampled face box
    moving = _faces([(x, 300, 200, 200) for x in (400, 860, 860, 860, 1300)])
    big = choose_crop(moving, 3840, 2160, p)
    assert big.x <= 400 - 0.15 * 200 + 1 and big.x + big.size >= 1500 + 0.15 * 200 - 1
    assert big.y <= 300 - 0.15 * 200 and big.y + big.size >= 500 + 0.15 * 200
    # ...up to the frame: then centred on the faces' extent
    clamped = choose_crop(moving, 1920, 1080, p)
    assert clamped.size == 1080 and clamped.clamped
    assert clamped.x + clamped.size / 2 == pytest.approx((370 + 1530) / 2, abs=1)
    # at the frame edge: shifted inside, clamped to the frame size
    edge = choose_crop(_faces([(0, 0, 300, 300)] * 3), 640, 480, p)
    assert (edge.x, edge.y, edge.size) == (0, 0, 480) and edge.clamped


def test_packet_times_vfr(may_video: Path, ffmpeg, tmp_path: Path) -> None:
    vfr = tmp_path / "vfr.mp4"
    ffmpeg(
        "-i", str(may_video), "-t", "3", "-an",
        "-vf", "scale=64:64,settb=1/1000,setpts='(N*0.04+0.02*mod(N\\,2))/TB'",
        "-fps_mode", "vfr", "-enc_time_base:v", "1:1000", "-c:v", "libx264", "-preset", "ultrafast", str(vfr),
    )  # fmt: skip
    d = np.diff(packet_times(vfr).pts_s)
    assert set(np.round(d * 1000).astype(int)) >= {20, 60}
    assert np.allclose(np.diff(packet_times(may_video).pts_s), 0.04)


def test_keyframe_sampling(may_video: Path, ffmpeg, tmp_path: Path) -> None:
    """Files with many keyframes (long videos) are sampled from keyframes only (no full decode)."""
    src = tmp_path / "gop5.mp4"
    ffmpeg("-i", str(may_video), "-t", "3", "-vf", "scale=160:160", "-g", "5", "-keyint_min", "5", "-sc_threshold", "0",
           "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(src))  # fmt: skip
    assert packet_times(src).keyframe.sum() == 15
    params = ExtractParams(resolution=RES, keyframe_sampling_min=10, detect_samples=6)
    meta = extract(src, tmp_path / "out", params, progress=False)
    det = meta["face_detection"]
    assert det["keyframes_only"] is True and det["sampled_frames"] == 5 and det["face_fraction"] == 1.0
    assert meta["output"]["frames"] == 75
