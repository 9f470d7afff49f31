"""Face signals (pose invariance, blink / mouth / brow responses on a synthetic sequence built
from a real face mesh) and the features stage on a real clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from talkgs.features import FeaturesParams, build_features
from talkgs.features.cache import check_aligned, read_audio_table, read_frames_table
from talkgs.features.signals import EXPRESSION_NAMES, blink_peaks, face_signals
from talkgs.preprocess import facemesh as fm
from talkgs.preprocess.errors import InputError
from talkgs.preprocess.track import TrackResult, frontalise, rigid_candidates

T = 40
BLINK = {10: 0.5, 11: 0.85, 12: 0.5}
MOUTH = range(20, 26)
BROWS = range(30, 33)


def _synthetic_track(base: np.ndarray, seed: int = 0) -> TrackResult:
    """``T`` frames of MediaPipe-like landmarks: expression changes on the base face, then a
    random head rotation, scale and shift per frame."""
    rng = np.random.default_rng(seed)
    base = base.astype(np.float64)
    frames = []
    for i in range(T):
        lm = base.copy()
        if i in BLINK:
            for u, d in (*fm.RIGHT_EYE_LIDS, *fm.LEFT_EYE_LIDS):
                lm[u] += BLINK[i] * (base[d] - base[u])
        if i in MOUTH:
            lm[fm.LOWER_LIP_INNER, 1] += 12.0
        if i in BROWS:
            lm[list(fm.RIGHT_BROW + fm.LEFT_BROW), 1] -= 5.0
        c = lm.mean(0)
        rot = Rotation.from_rotvec(rng.normal(0, 0.15, 3)).as_matrix()
        lm = (lm - c) @ rot.T * rng.uniform(0.8, 1.2) + c + np.r_[rng.normal(0, 10, 2), 0]
        frames.append(lm)
    canonical = frontalise(base, 0.09)
    rigid = rigid_candidates(canonical)[:80]
    return TrackResult(
        k=np.eye(3), image_size=(512, 512), fps=25.0, world_to_camera=np.tile(np.eye(4), (T, 1, 1)),
        world_to_camera_initial=np.tile(np.eye(4), (T, 1, 1)), landmarks=np.array(frames, np.float32),
        detected=np.ones(T, bool), canonical=canonical.astype(np.float32), rigid_indices=rigid, z_scale=1.0,
        reproj_error=np.zeros(T, np.float32), reproj_error_initial=np.zeros(T, np.float32),
    )  # fmt: skip


def test_signals_respond_to_expressions_not_to_pose(astronaut_landmarks: np.ndarray) -> None:
    sig = face_signals(_synthetic_track(astronaut_landmarks))
    neutral = [i for i in range(T) if i not in BLINK and i not in MOUTH and i not in BROWS]
    # pose removal: neutral frames are identical in the head frame whatever the head pose
    assert np.abs(sig.landmark_motion[neutral]).max() < 1e-5
    assert sig.landmarks_head.shape == (T, 478, 3) and sig.expression.shape == (T, len(EXPRESSION_NAMES))
    # blink: 0 when open, rising with closure, 5 at (nearly) closed
    assert np.abs(sig.blink[neutral]).max() < 1e-3
    assert sig.blink[11] == pytest.approx(5.0) and 1.5 < sig.blink[10] < 5.0
    assert list(blink_peaks(sig.blink)) == [11]
    # mouth opening
    assert sig.mouth_open[list(MOUTH)].min() > sig.mouth_open[neutral].max() + 0.02
    # brow raise on both sides, nothing on neutral frames; eye opening negative in the blink
    e = {n: sig.expression[:, i] for i, n in enumerate(EXPRESSION_NAMES)}
    for name in ("brow_raise_r", "brow_raise_l", "brow_inner_raise"):
        assert e[name][list(BROWS)].min() > 0.03, name
        assert np.abs(e[name][neutral]).max() < 1e-4, name
    assert e["eye_open_r"][11] < -0.5 and e["eye_open_l"][11] < -0.5
    # motion is where the face moved: lower lip during the mouth opening
    lip = np.linalg.norm(sig.landmark_motion[list(MOUTH), fm.LOWER_LIP_INNER], axis=-1)
    assert lip.min() > 1e-3  # metres


def test_features_stage_on_real_clip(may_extract: Path, may_track: Path, may_features: Path) -> None:
    frames = read_frames_table(may_features / "frames.parquet", n_frames=125)
    audio = read_audio_table(may_features / "audio_mel.parquet", n_frames=125, encoder="mel")
    check_aligned(frames, audio)
    assert audio.features.shape == (125, 16, 80)
    summary = json.loads((may_features / "features.json").read_text())
    assert (frames.split == "train").sum() == summary["n_train"] == 113
    assert (frames.split[113:] == "test").all()
    assert frames.meta["expression_names"] == list(EXPRESSION_NAMES)
    assert len(frames.meta["canonical_landmarks"]) == 478
    np.testing.assert_allclose(frames.intrinsics[0, 2:], [128, 128])
    assert frames.blink.min() >= 0 and frames.blink.max() <= 5
    # the clip has two visible blinks (checked on the contact sheet): around frames 5 and 100
    peaks = blink_peaks(frames.blink)
    assert any(2 <= p <= 9 for p in peaks) and any(96 <= p <= 104 for p in peaks), peaks
    assert frames.blink[20:90].max() < 2.0
    assert (may_features / "blink_sheet.png").stat().st_size > 10_000
    # she is talking: the mouth opens and closes
    assert np.percentile(frames.mouth_open, 95) > 2 * np.percentile(frames.mouth_open, 5)
    df = pd.read_parquet(may_features / "frames.parquet")
    assert len(df) == 125 and df["blink"].dtype == np.float32


def test_features_input_errors(may_extract: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="track.npz: not found. Run the track stage"):
        build_features(may_extract, tmp_path / "no_track", tmp_path / "out", FeaturesParams(), progress=False)
    with pytest.raises(ValueError, match="unknown audio encoder"):
        FeaturesParams(audio_encoders=["deepspeech"])
    assert not (tmp_path / "out").exists()


def test_demo_ground_truth(tmp_path: Path) -> None:
    """The built-in demo knows its blinks and head pose: the blink peaks land on its blink
    frames, and the refined head rotation follows its yaw and roll (smoother than PnP)."""
    from talkgs.demo import DemoParams, make_demo
    from talkgs.preprocess import refine
    from talkgs.preprocess.extract import ExtractParams, extract
    from talkgs.preprocess.track import TrackParams, load_track, track

    info = make_demo(tmp_path / "demo.mp4", DemoParams(seconds=6.0, size=256, blink_interval=1.5), progress=False)
    extract(tmp_path / "demo.mp4", tmp_path / "extract", ExtractParams(resolution=256), progress=False)
    rep = track(tmp_path / "extract", tmp_path / "track", TrackParams(), progress=False)
    build_features(tmp_path / "extract", tmp_path / "track", tmp_path / "features", FeaturesParams(), progress=False)
    frames = read_frames_table(tmp_path / "features" / "frames.parquet", n_frames=info["frames"])
    truth = list(info["blink_frames"])
    peaks = list(blink_peaks(frames.blink))
    assert len(truth) >= 2 and len(peaks) == len(truth), (truth, peaks)
    assert all(abs(p - t) <= 2 for p, t in zip(peaks, truth)), (truth, peaks)
    # head rotation: yaw and roll of the demo (degrees) vs the tracked rotation relative to frame 0
    tr = load_track(tmp_path / "track")
    pose = np.asarray(info["head_pose"])
    rel = refine.matrix_to_rotvec_np(tr.world_to_camera[:, :3, :3] @ tr.world_to_camera[0, :3, :3].T)
    assert abs(np.corrcoef(rel[:, 1], pose[:, 0])[0, 1]) > 0.9  # yaw: rotation about the camera y axis
    assert abs(np.corrcoef(rel[:, 2], pose[:, 2])[0, 1]) > 0.9  # roll: about the optical axis
    assert rep["jitter"]["refined"]["angular_deg_mean"] < 0.5 * rep["jitter"]["initial"]["angular_deg_mean"]
