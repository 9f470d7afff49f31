"""Stage ``segment`` on may_5s (256²): label maps are sane, stable, and follow the face."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from talkgs.preprocess import facemesh as fm
from talkgs.preprocess.segment import (
    BACKGROUND,
    EYES,
    FACE,
    HAIR,
    HEAD_CLASSES,
    LABELS,
    LIPS,
    MOUTH,
    TORSO,
    head_region,
    face_frame,
    inpaint,
)


def _labels(seg: Path, i: int) -> np.ndarray:
    lab = cv2.imread(str(seg / "labels" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
    assert lab is not None and lab.dtype == np.uint8 and lab.ndim == 2
    return lab


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def stats(may_segment: Path) -> dict[str, np.ndarray]:
    with open(may_segment / "frame_stats.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def test_outputs(may_extract: Path, may_segment: Path) -> None:
    n = json.loads((may_extract / "meta.json").read_text())["output"]["frames"]
    assert len(list((may_segment / "labels").glob("*.png"))) == n == 125
    assert len(list((may_segment / "torso").glob("*.jpg"))) == n
    for name in ("background.png", "contact_sheet.png", "segment.json", "frame_stats.csv"):
        assert (may_segment / name).is_file(), name
    summary = json.loads((may_segment / "segment.json").read_text())
    assert [(c["id"], c["name"]) for c in summary["classes"]] == list(LABELS.items())
    assert summary["stats"]["face_found_fraction"] == 1.0
    assert summary["warnings"] == []
    lab = _labels(may_segment, 0)
    assert lab.shape == (256, 256) and set(np.unique(lab)) <= set(LABELS)
    assert {BACKGROUND, TORSO, FACE, HAIR, EYES, LIPS} <= set(np.unique(lab))
    sheet = cv2.imread(str(may_segment / "contact_sheet.png"))
    assert sheet.shape[0] > 256 and sheet.shape[1] >= 5 * 200


def test_face_inside_person_and_layout(may_segment: Path, stats: dict[str, np.ndarray]) -> None:
    # the face oval (mesh) lies inside the person mask (selfie segmentation): two models agree
    assert stats["face_in_person"].min() > 0.97
    for i in (0, 60, 124):
        lab = _labels(may_segment, i)
        ys, xs = np.mgrid[: lab.shape[0], : lab.shape[1]]
        face_y = ys[lab == FACE].mean()
        assert ys[lab == TORSO].mean() > face_y  # torso below the face
        assert ys[lab == HAIR].mean() < face_y  # hair above (May: hair around and over the top)
        assert ys[lab == EYES].mean() < ys[lab == LIPS].mean()
        # head classes form one blob: face, eyes and mouth are surrounded by head/person labels
        head = np.isin(lab, HEAD_CLASSES).astype(np.uint8)
        n_blobs, _, st, _ = cv2.connectedComponentsWithStats(head)
        assert st[1:, cv2.CC_STAT_AREA].max() > 0.95 * head.sum()
    areas = {k: stats[f"area_{v}"].mean() for k, v in LABELS.items()}
    assert 0.1 < areas[FACE] < 0.35 and 0.1 < areas[BACKGROUND] < 0.6


def test_mouth_interior_follows_lip_gap(may_segment: Path, may_extract: Path, stats: dict[str, np.ndarray]) -> None:
    gap, mouth = stats["lip_gap"], stats["area_mouth"]
    # area grows with the lip gap (over the 125 frames; measured: Pearson 0.91, Spearman 0.80)
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    assert np.corrcoef(gap, mouth)[0, 1] > 0.8
    assert np.corrcoef(rank(gap), rank(mouth))[0, 1] > 0.7
    closed, open_ = gap < np.quantile(gap, 0.1), gap > np.quantile(gap, 0.9)
    assert mouth[open_].mean() > 4 * mouth[closed].mean()
    # whenever the mouth is open, the inner-lip region (independent face mesh run) is covered
    i = int(np.argmax(gap))
    with fm.FaceMesh(static=True) as mesh:
        lm = mesh.process(_rgb(may_extract / "frames" / f"{i:06d}.jpg"))
    assert lm is not None
    inner = np.zeros((256, 256), np.uint8)
    cv2.fillPoly(inner, [fm.polygon(lm, "lips_inner")], 1)
    inner = cv2.erode(inner, np.ones((3, 3), np.uint8))  # tolerate 1 px of landmark jitter
    lab = _labels(may_segment, i)
    assert inner.sum() > 50
    assert (lab[inner > 0] == MOUTH).mean() > 0.95


def test_eyes_shrink_on_blinks(stats: dict[str, np.ndarray]) -> None:
    ear, eyes = stats["eye_aspect_ratio"], stats["area_eyes"]
    blink = int(np.argmin(ear))
    assert ear[blink] < 0.5 * np.median(ear)  # may_5s has a blink
    assert eyes[blink] < 0.85 * np.median(eyes)  # brows stay, the eye openings collapse
    assert np.corrcoef(ear, eyes)[0, 1] > 0.5


def test_labels_are_stable(may_segment: Path, stats: dict[str, np.ndarray]) -> None:
    change = stats["label_change"][1:]
    assert change.mean() < 0.03 and change.max() < 0.08, (change.mean(), change.max())
    # recompute one from the files: the stat is what it says
    a, b = _labels(may_segment, 40), _labels(may_segment, 41)
    assert (a != b).mean() == pytest.approx(change[40], abs=1e-4)


def test_background_plate_and_torso_frames(may_extract: Path, may_segment: Path) -> None:
    plate = _rgb(may_segment / "background.png").astype(np.float32)
    frame = _rgb(may_extract / "frames" / "000060.jpg").astype(np.float32)
    lab = _labels(may_segment, 60)
    bg = cv2.erode((lab == BACKGROUND).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert bg.sum() > 1000
    assert np.abs(plate[bg] - frame[bg]).mean() < 8  # the plate is the visible background
    torso = _rgb(may_segment / "torso" / "000060.jpg").astype(np.float32)
    face = cv2.erode((lab == FACE).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    body = cv2.erode((lab == TORSO).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert np.abs(torso[face] - plate[face]).mean() < 4  # head replaced by the plate
    assert np.abs(torso[body] - frame[body]).mean() < 4  # torso kept
    assert np.abs(torso[face] - frame[face]).mean() > 20


# --------------------------------------------------------------------------------------------
# units


def test_landmark_groups_follow_mediapipe_edges() -> None:
    import mediapipe as mp

    m = mp.solutions.face_mesh
    edges = {
        "face_oval": m.FACEMESH_FACE_OVAL, "lips_outer": m.FACEMESH_LIPS, "lips_inner": m.FACEMESH_LIPS,
        "right_eye": m.FACEMESH_RIGHT_EYE, "left_eye": m.FACEMESH_LEFT_EYE,
        "right_brow": m.FACEMESH_RIGHT_EYEBROW, "left_brow": m.FACEMESH_LEFT_EYEBROW,
        "right_iris": m.FACEMESH_RIGHT_IRIS, "left_iris": m.FACEMESH_LEFT_IRIS,
    }  # fmt: skip
    for name, group in fm.GROUPS.items():
        und = {frozenset(e) for e in edges[name]}
        loop = [frozenset((a, b)) for a, b in zip(group, group[1:] + group[:1])]
        missing = [tuple(e) for e in loop if e not in und]
        # brows are open polylines in MediaPipe: the two closing edges are ours
        assert len(missing) <= (2 if "brow" in name else 0), (name, missing)
        assert len(set(group)) == len(group)
    assert len(set(fm.LIPS_OUTER) | set(fm.LIPS_INNER)) == 40
    assert max(max(g) for g in fm.GROUPS.values()) < fm.NUM_LANDMARKS


def test_face_frame_and_head_region() -> None:
    lm = np.zeros((fm.NUM_LANDMARKS, 3), np.float32)
    t = np.linspace(0, 2 * np.pi, len(fm.FACE_OVAL), endpoint=False)
    lm[list(fm.FACE_OVAL), 0] = 100 + 40 * np.sin(t)  # an upright oval, 80 wide, 120 tall
    lm[list(fm.FACE_OVAL), 1] = 100 - 60 * np.cos(t)
    lm[fm.FOREHEAD_TOP, :2], lm[fm.CHIN, :2] = (100, 40), (100, 160)
    ff = face_frame(lm)
    assert np.allclose(ff.up, [0, -1]) and np.allclose(ff.right, [1, 0])
    assert ff.half_height == pytest.approx(60) and ff.half_width_right == pytest.approx(40, abs=0.5)
    region = head_region(ff, 1.5, 3.0)
    assert region[:, 1].min() == pytest.approx(100 - 180, abs=1)  # top: 3 half-heights up
    assert region[:, 1].max() == pytest.approx(160, abs=1)  # bottom: chin level
    assert region[:, 0].min() == pytest.approx(40, abs=1) and region[:, 0].max() == pytest.approx(160, abs=1)


def test_inpaint_keeps_known_pixels_and_fills_holes() -> None:
    img = np.zeros((256, 256, 3), np.uint8)
    img[:, :128] = (200, 50, 50)
    img[:, 128:] = (50, 50, 200)
    hole = np.zeros((256, 256), np.uint8)
    hole[64:192, 100:156] = 1
    out = inpaint(img.copy(), hole, 5)
    assert np.array_equal(out[hole == 0], img[hole == 0])
    assert np.abs(out[100:150, 100:110].astype(int) - (200, 50, 50)).mean() < 40  # left side from left colour
    assert np.abs(out[100:150, 146:156].astype(int) - (50, 50, 200)).mean() < 40
