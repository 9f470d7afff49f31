"""Landmark metrics on known cases: LMD (mean-centred, translation-free, known value under a scaling),
AU proxies / AUE (zero for identical landmarks, the right AU moves), mouth-opening correlation with a
lag search, speech envelope."""

from __future__ import annotations

import talkgs  # noqa: F401
import numpy as np
import pytest

from talkgs.eval import landmarks as L
from talkgs.preprocess import facemesh as fm


@pytest.fixture(scope="module")
def clip(astronaut_landmarks) -> np.ndarray:
    """12 frames of the astronaut's landmarks, slightly moved in-plane (a similarity per frame) with
    small jitter: ``float64 [12, 478, 3]``."""
    rng = np.random.default_rng(0)
    base = astronaut_landmarks.astype(np.float64)
    c = base.mean(0)
    out = []
    for k in range(12):
        a = 0.05 * np.sin(k)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        out.append((base - c) @ rot.T * (1 + 0.02 * k) + c + [3 * k, -2 * k, 0] + 0.05 * rng.standard_normal(base.shape))
    return np.stack(out)


def test_lmd_zero_for_identical_and_translation_free(clip) -> None:
    assert L.lmd(clip, clip, "mouth") == 0.0
    assert L.lmd(clip, clip, "face") == 0.0
    moved = clip.copy()
    moved[:, :, :2] += [5.0, -7.0]  # the papers' LMD removes each frame's centroid
    assert L.lmd(moved, clip) == pytest.approx(0.0, abs=1e-9)


def test_lmd_known_value_under_a_mouth_scaling(clip) -> None:
    e = 0.1
    pred = clip.copy()
    mouth = pred[:, L.MOUTH_IDX, :2]
    c = mouth.mean(1, keepdims=True)
    pred[:, L.MOUTH_IDX, :2] = c + (1 + e) * (mouth - c)
    expected = e * np.linalg.norm(clip[:, L.MOUTH_IDX, :2] - clip[:, L.MOUTH_IDX, :2].mean(1, keepdims=True), axis=-1).mean()
    assert L.lmd(pred, clip, "mouth") == pytest.approx(expected, rel=1e-9)
    assert 0 < L.lmd(pred, clip, "face") < L.lmd(pred, clip, "mouth")


def test_lmd_skips_frames_without_a_face(clip) -> None:
    pred = clip.copy()
    pred[3] = np.nan
    assert np.isnan(L.lmd_per_frame(pred, clip)[3]) and L.lmd(pred, clip) == 0.0
    with pytest.raises(ValueError, match="region"):
        L.lmd(clip, clip, "eyes")
    with pytest.raises(ValueError, match="ground-truth frames"):
        L.lmd(clip[:3], clip)


def test_action_units_zero_error_for_identical_and_respond_to_motion(clip) -> None:
    ref = L.au_reference(clip)
    gt = L.action_units(clip, ref)
    assert set(gt) == set(L.AU_LOWER + L.AU_UPPER)
    errs = L.aue(gt, gt)
    assert errs["aue_lower"] == 0.0 and errs["aue_upper"] == 0.0
    # pose does not leak in: the jittered similarity per frame leaves the upper AUs near neutral
    assert all(np.abs(gt[k]).max() < 0.6 for k in ("AU01", "AU02", "AU04", "AU05"))
    # open the jaw: lower lip (inner + outer) and chin move down by 4% of the face height
    opened = clip.copy()
    face_h = np.linalg.norm(clip[:, fm.CHIN, :2] - clip[:, fm.FOREHEAD_TOP, :2], axis=-1)[:, None]
    low = [fm.LOWER_LIP_INNER, 87, 178, 88, 95, 317, 402, 318, 324, 17, 84, 181, 91, 146, 314, 405, 321, 375, fm.CHIN]
    opened[:, low, 1] += 0.04 * face_h
    au = L.action_units(opened, ref)
    assert (au["AU25"] > gt["AU25"] + 0.5).all() and (au["AU26"] > gt["AU26"] + 0.5).all()
    e = L.aue(au, gt)
    assert e["aue_lower"] > 0.3 and e["aue_upper"] < 0.05 * e["aue_lower"]
    # close the eyes: upper lids onto the lower lids -> blink AU45 near 5, lower face untouched
    closed = clip.copy()
    for lids in (fm.RIGHT_EYE_LIDS, fm.LEFT_EYE_LIDS):
        for up, down in lids:
            closed[:, up] = closed[:, down]
    au = L.action_units(closed, ref)
    assert (au["AU45"] > 4.5).all() and (gt["AU45"] < 1.0).all()
    e = L.aue(au, gt)
    assert e["aue_upper"] > 0.5 and e["aue_lower"] < 0.05


def test_mouth_opening_and_lagged_correlation() -> None:
    t = np.arange(60)
    x = np.sin(t / 3.0) + 0.3 * np.sin(t / 1.3)
    y = np.roll(x, 2)  # y follows x by 2 frames
    c, lag, corrs = L.lagged_correlation(x, y, max_lag=3)
    assert lag == 2 and c == pytest.approx(1.0, abs=1e-9) and set(corrs) == set(range(-3, 4))
    c0, lag0, _ = L.lagged_correlation(x, -x, max_lag=0)
    assert lag0 == 0 and c0 == pytest.approx(-1.0)
    xn = x.copy()
    xn[:55] = np.nan
    assert np.isnan(L.lagged_correlation(xn, y, 2)[0])
    assert np.isnan(L.lagged_correlation(np.ones(20), y[:20], 1)[0])  # constant series


def test_mouth_opening_is_similarity_invariant(clip) -> None:
    m = L.mouth_opening(clip)
    assert m.shape == (12,) and np.all(m >= 0)
    assert np.allclose(L.mouth_opening(2.0 * clip + 7.0), m)


def test_speech_envelope_follows_energy() -> None:
    sr, fps = 16000, 25
    t = np.arange(sr * 2) / sr
    amp = np.where((t > 0.4) & (t < 1.2), 0.5, 0.05)
    env = L.speech_envelope(amp * np.sin(2 * np.pi * 200 * t), sr, fps)
    assert env.shape == (50,)
    assert env[20] == pytest.approx(0.5 / np.sqrt(2), rel=0.02) and env[45] == pytest.approx(0.05 / np.sqrt(2), rel=0.05)
    assert L.speech_envelope(np.zeros(100), sr, fps, n_frames=3).tolist() == [0.0, 0.0, 0.0]
