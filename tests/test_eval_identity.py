"""CSIM and LMD-68 with dlib's real models (talkgs.eval.identity) on real frames of the shared clips:
the same person 14 s apart is similar and other people are not, LMD-68 is 0 for identical frames and
grows with a mouth warp, the landmark box matches dlib's detector, a missing model file is named."""

from __future__ import annotations

import talkgs  # noqa: F401
import cv2
import numpy as np
import pytest

from talkgs.eval import identity as idn
from talkgs.eval.landmarks import detect_landmarks
from talkgs.pretrained import PretrainedMissing


def _frame(video, i: int) -> np.ndarray:
    if not video.is_file():
        pytest.skip(f"{video} not found")
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, i)
    ok, f = cap.read()
    cap.release()
    assert ok, f"{video}: cannot read frame {i}"
    return cv2.cvtColor(f, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def faces(shared_data):
    """512² frames: German speaker at 0 s and 14 s, Trump, Ocasio-Cortez; with their MediaPipe boxes."""
    v = shared_data / "videos"
    imgs = {
        "german_0": _frame(v / "german_20s.mp4", 0),
        "german_14s": _frame(v / "german_20s.mp4", 350),
        "trump": _frame(v / "trump_10s.mp4", 0),
        "aoc": _frame(v / "hdtf_WDA_AlexandriaOcasioCortez_000.mp4", 0),
    }
    lms = detect_landmarks(list(imgs.values()))
    return {k: (img, lm, idn.box_from_landmarks(lm)) for (k, img), lm in zip(imgs.items(), lms)}


def test_csim_same_person_high_other_people_low(faces) -> None:
    d = {k: idn.descriptor(img, box) for k, (img, _, box) in faces.items()}
    assert all(v.shape == (128,) for v in d.values())
    same = idn.csim(d["german_0"], d["german_14s"])
    others = [idn.csim(d["german_0"], d["trump"]), idn.csim(d["german_0"], d["aoc"]), idn.csim(d["trump"], d["aoc"])]
    assert same > 0.97 and max(others) < 0.92 and same - max(others) > 0.08, (same, others)
    assert idn.csim(d["trump"], d["trump"]) == pytest.approx(1.0)
    # dlib's own scale (Euclidean distance, same person below 0.6)
    assert np.linalg.norm(d["german_0"] - d["german_14s"]) < 0.4
    assert min(np.linalg.norm(d["german_0"] - d[k]) for k in ("trump", "aoc")) > 0.6
    ref, n = idn.reference_descriptor([faces["german_0"][0], faces["german_14s"][0]])
    assert n == 2 and idn.csim(ref, d["german_0"]) > 0.99 > idn.csim(ref, d["trump"])


def _warp_mouth(img: np.ndarray, pts68: np.ndarray, strength: float) -> np.ndarray:
    """Stretch the image vertically around the mouth centre (smooth radial falloff): the mouth opens."""
    m = pts68[idn.MOUTH68]
    c = m.mean(0)
    radius = 1.2 * np.ptp(m[:, 0])
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float32)
    w = np.clip(1 - np.sqrt((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / radius, 0, 1) ** 2
    map_y = (c[1] + (ys - c[1]) / (1 + strength * w)).astype(np.float32)
    return cv2.remap(img, xs, map_y, cv2.INTER_LINEAR)


def test_lmd68_is_zero_for_identical_frames_and_grows_with_a_mouth_warp(faces) -> None:
    img, _, box = faces["german_0"]
    ref = idn.landmarks68(img, box)
    assert ref.shape == (68, 2) and (ref[:, 0] >= box[0] - 5).all() and (ref[:, 0] <= box[2] + 5).all()
    got = [idn.landmarks68(_warp_mouth(img, ref, s), box) for s in (0.0, 0.3, 0.7)]
    d = idn.lmd68_per_frame(np.stack(got), np.stack([ref] * 3))
    assert d[0] == pytest.approx(0.0, abs=0.3) and 0.5 < d[1] < d[2], d
    assert idn.lmd68_per_frame(ref[None], ref[None])[0] == 0.0
    shifted = ref + [7.0, -4.0]  # mean-centred per frame: a translation costs nothing
    assert idn.lmd68_per_frame(shifted[None], ref[None])[0] == pytest.approx(0.0, abs=1e-9)


def test_landmark_box_matches_dlibs_detector(faces) -> None:
    import dlib

    det = dlib.get_frontal_face_detector()
    for name, (img, lm, box) in faces.items():
        r = det(img, 1)[0]
        a, b = np.array(box, float), np.array([r.left(), r.top(), r.right(), r.bottom()], float)
        inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        assert inter / union > 0.7, (name, box, b)
    assert idn.box_from_landmarks(np.full((478, 3), np.nan)) is None
    with pytest.raises(ValueError, match="478"):
        idn.box_from_landmarks(np.zeros((68, 2)))


def test_subsample_is_even_and_bounded() -> None:
    assert idn.subsample(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert idn.subsample(101, 5).tolist() == [0, 25, 50, 75, 100]
    assert idn.subsample(0, 3).tolist() == []


def test_missing_model_file_is_named(tmp_path, monkeypatch) -> None:
    from talkgs.eval.protocols import evaluate_cross_driven, evaluate_self_driven

    missing = tmp_path / "nowhere" / "shape_predictor_68_face_landmarks.dat"
    monkeypatch.setenv("TALKGS_DLIB_SHAPE_68", str(missing))
    idn.models.cache_clear()
    try:
        with pytest.raises(PretrainedMissing, match="shape_predictor_68_face_landmarks.dat") as e:
            idn.models()
        assert "TALKGS_DLIB_SHAPE_68" in str(e.value) and "make setup" in str(e.value)
        # the protocols fail at once, before reading anything (no silent n/a)
        with pytest.raises(PretrainedMissing, match=str(missing)):
            evaluate_self_driven(tmp_path / "gt", tmp_path / "render", tmp_path / "segment")
        with pytest.raises(PretrainedMissing, match=str(missing)):
            evaluate_cross_driven({"a": tmp_path / "a.mp4"})
    finally:
        monkeypatch.delenv("TALKGS_DLIB_SHAPE_68")
        idn.models.cache_clear()
