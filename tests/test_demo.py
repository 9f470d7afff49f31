"""The built-in demo subject (talkgs.demo): a short clip through the same code path as
`talkgs make-demo`, checked from the decoded mp4 the way the pipeline will see it.

Thresholds (measured with mediapipe 0.10.21, espeakng-loader 0.2.4; the clip is deterministic):
- Pearson r between the inner-lip gap MediaPipe measures on the decoded frames and the
  per-frame RMS of the decoded AAC track: 0.65 on the full 12 s 512² demo, 0.72 on this
  5 s 256² clip. The test asks for >= 0.5; the same mouth shifted by 3 frames (120 ms)
  scores 0.02-0.47, and the correlation peaks at lag 0 (the test allows +-2 frames).
- The measured gap tracks the reported ``lip_gap`` with r = 0.93-0.96; the test asks for >= 0.8.
- Eye aspect ratio at the reported blink frames: 0.06-0.12 vs a median of 0.33 (open eyes);
  the test asks for < 0.5 x median at each blink and no such dip elsewhere.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from talkgs.demo import DEFAULT_TEXT, DemoParams, make_demo, mouth_track
from talkgs.io.media import ffmpeg_exe, load_audio, read_wav
from talkgs.tts import SpeechEvent

SECONDS, SIZE, FPS = 5.0, 256, 25


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    d = tmp_path_factory.mktemp("demo")
    out, wav = d / "demo.mp4", d / "demo.wav"
    info = make_demo(out, DemoParams(seconds=SECONDS, size=SIZE, fps=FPS), progress=False, wav=wav)
    return out, info, wav


def _decode(path: Path, size: int) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)


@pytest.fixture(scope="module")
def tracked(clip: tuple[Path, dict, Path]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Decoded frames ``[T, H, W, 3]`` and MediaPipe's 478 landmarks per frame (None if no face)."""
    import mediapipe as mp

    frames = _decode(clip[0], SIZE)
    lms: list[np.ndarray | None] = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        for f in frames:
            res = fm.process(f)
            if not res.multi_face_landmarks:
                lms.append(None)
            else:
                lms.append(np.array([[p.x * SIZE, p.y * SIZE] for p in res.multi_face_landmarks[0].landmark]))
    return frames, lms


def _frame_rms(audio: np.ndarray, sr: int, n: int) -> np.ndarray:
    spf = sr // FPS
    n = min(n, len(audio) // spf)
    return np.sqrt(np.mean(audio[: n * spf].reshape(n, spf).astype(np.float64) ** 2, axis=1))


def test_streams_and_duration(clip: tuple[Path, dict, Path]) -> None:
    out, info, _ = clip
    err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(out)], capture_output=True).stderr.decode()
    video = [ln for ln in err.splitlines() if "Video:" in ln]
    audio = [ln for ln in err.splitlines() if "Audio:" in ln]
    assert len(video) == 1 and "h264" in video[0] and f"{SIZE}x{SIZE}" in video[0] and "25 fps" in video[0], err
    assert len(audio) == 1 and "aac" in audio[0] and "16000 Hz" in audio[0] and "mono" in audio[0], err
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err)
    assert m, err
    dur = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    assert abs(dur - SECONDS) < 0.1, f"mp4 lasts {dur} s, expected {SECONDS}"
    assert info["frames"] == int(SECONDS * FPS) and info["duration_s"] == SECONDS
    assert len(info["mouth_open"]) == len(info["lip_gap"]) == len(info["head_pose"]) == info["frames"]
    # the speech was cut at a word boundary of the default text
    assert info["spoken_text"] and DEFAULT_TEXT.startswith(info["spoken_text"])


def test_face_found_in_every_frame(clip: tuple[Path, dict, Path], tracked) -> None:
    frames, lms = tracked
    assert len(frames) == clip[1]["frames"]
    missing = [i for i, lm in enumerate(lms) if lm is None]
    assert not missing, f"MediaPipe found no face in frames {missing}"


def test_mouth_opening_follows_speech(clip: tuple[Path, dict, Path], tracked) -> None:
    out, info, wav = clip
    _, lms = tracked
    L = np.stack(lms)
    face_h = np.linalg.norm(L[:, 10] - L[:, 152], axis=1)
    gap = np.linalg.norm(L[:, 13] - L[:, 14], axis=1) / face_h  # inner-lip gap / face height
    audio = load_audio(out, 16000)  # the AAC track, as the pipeline will read it
    rms = _frame_rms(audio, 16000, len(gap))
    n = len(rms)
    assert n >= len(gap) - 1
    r = np.corrcoef(gap[:n], rms)[0, 1]
    assert r >= 0.5, f"mouth opening vs speech RMS: Pearson r = {r:.3f} (< 0.5)"
    # in sync: the correlation peaks within +-2 frames (80 ms) of zero lag
    def lagged(k: int) -> float:
        a, b = gap[max(0, k) : n + min(0, k)], rms[max(0, -k) : n - max(0, k)]
        return float(np.corrcoef(a, b)[0, 1])

    lags = list(range(-6, 7))
    best = lags[int(np.argmax([lagged(k) for k in lags]))]
    assert abs(best) <= 2, f"mouth/speech correlation peaks at a lag of {best} frames"
    # the reported per-frame opening is what the video shows
    r_rep = np.corrcoef(gap, info["lip_gap"])[0, 1]
    assert r_rep >= 0.8, f"measured lip gap vs reported lip_gap: r = {r_rep:.3f}"
    # the wav written beside it is the same speech
    w, sr = read_wav(wav)
    assert sr == 16000 and abs(len(w) / sr - SECONDS) < 1e-3
    assert np.corrcoef(_frame_rms(w, sr, n), rms)[0, 1] > 0.98


def _ear(L: np.ndarray) -> np.ndarray:
    """Eye aspect ratio per frame, both eyes averaged: lid gap / eye width."""
    def one(up: list[int], lo: list[int], c1: int, c2: int) -> np.ndarray:
        return np.linalg.norm(L[:, up] - L[:, lo], axis=2).mean(1) / np.linalg.norm(L[:, c1] - L[:, c2], axis=1)

    return 0.5 * (one([160, 159, 158], [144, 145, 153], 33, 133) + one([385, 386, 387], [380, 374, 373], 362, 263))


def test_blinks_visible_at_reported_frames(clip: tuple[Path, dict, Path], tracked) -> None:
    info = clip[1]
    _, lms = tracked
    ear = _ear(np.stack(lms))
    med = float(np.median(ear))
    assert info["blinks"] == len(info["blink_frames"]) >= 1
    for k in info["blink_frames"]:
        assert ear[k] < 0.5 * med, f"blink at frame {k}: EAR {ear[k]:.3f} vs median {med:.3f}"
    dips = np.flatnonzero(ear < 0.5 * med)
    stray = [int(i) for i in dips if min(abs(i - k) for k in info["blink_frames"]) > 3]
    assert not stray, f"eyes closed at frames {stray}, away from the reported blinks {info['blink_frames']}"


def test_head_moves_background_still(tracked) -> None:
    frames, lms = tracked
    f = frames.astype(np.float32)
    corners = np.concatenate([f[:, :32, :32], f[:, :32, -32:]], axis=1)  # plain studio backdrop
    assert np.abs(corners - corners[:1]).mean(axis=(1, 2, 3)).max() < 2.0, "the background moves"
    nose = np.stack(lms)[:, 1]
    assert np.ptp(nose, axis=0).max() > 1.0, "the head does not move"


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    p = DemoParams(seconds=2.0, size=96, seed=3)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    ia = make_demo(a, p, progress=False)
    ib = make_demo(b, p, progress=False)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert ia["head_pose"] == ib["head_pose"] and ia["mouth_open"] == ib["mouth_open"]
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_mouth_track_bilabial_closes() -> None:
    sr = 16000
    samples = (0.3 * np.sin(2 * np.pi * 200 * np.arange(sr) / sr)).astype(np.float32)
    ev = [
        SpeechEvent("phoneme", 0.0, 1, 0, "ˈɑː"),
        SpeechEvent("phoneme", 0.3, 1, 0, "m"),
        SpeechEvent("phoneme", 0.4, 1, 0, "ɑ"),
        SpeechEvent("end", 0.7, 1, 0),
        SpeechEvent("phoneme", 0.7, 1, 0, ""),
    ]
    t = np.array([0.15, 0.35, 0.55, 0.95])
    opening, rounding = mouth_track(ev, samples, sr, t, lead=0.0)
    assert opening[0] > 0.6 and opening[2] > 0.6
    assert opening[1] < 0.3 * opening[0], opening
    assert opening[3] < 0.3 * opening[0], "pauses should close the mouth"
    assert np.all(np.abs(rounding) <= 1)


@pytest.mark.parametrize(
    "kw", [dict(size=255), dict(size=32), dict(seconds=1.0), dict(fps=0), dict(text=" "), dict(crop=1.0)]
)
def test_params_validated(kw: dict) -> None:
    with pytest.raises(ValueError):
        DemoParams(**kw)


def test_output_must_be_mp4(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mp4"):
        make_demo(tmp_path / "x.avi", DemoParams(seconds=2.0, size=64), progress=False)
