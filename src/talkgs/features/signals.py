"""Per-frame face signals from the tracked landmarks (no OpenFace: landmark geometry).

All measurements are taken on *pose-removed* landmarks: each frame's MediaPipe landmarks (x, y
in pixels, relative z scaled like the canonical shape) are aligned to the track's canonical
rigid landmarks by a 3D similarity (Umeyama on the rigid subset), giving landmarks in the head
frame in metres. Head rotation and distance therefore do not leak into the signals.

- ``blink`` (AU45-like, GaussianTalker / ER-NeRF's eye feature): mean eye aspect ratio (EAR:
  lid distance over eye width, 3 lid pairs, both eyes) mapped per clip to OpenFace's 0-5
  intensity range: 0 at the clip's typical open EAR (median), 5 at ``closed_ratio`` x that
  (a closed eye in MediaPipe's mesh keeps a small EAR), linear and clipped in between.
- ``expression``: a small upper-face vector (:data:`EXPRESSION_NAMES`), each relative to the
  clip's median so that 0 is the subject's neutral: brow raise per side (brow height above the
  eye centre, AU1+2), inner brow raise (AU1), brow furrow (inner brows drawn together, AU4),
  eye opening per side (EAR over its median minus 1: > 0 widening, AU5; < 0 narrowing). Lengths
  are in units of the outer-eye-corner distance.
- ``mouth_open``: inner-lip gap over mouth width.
- ``landmark_motion``: pose-removed landmarks minus the clip's median shape (metres, head
  frame): the non-rigid landmark-level motion HiCoDe and D3-Talker condition on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talkgs.preprocess import facemesh as fm
from talkgs.preprocess.track import TrackResult, apply_similarity, umeyama

EXPRESSION_NAMES = ("brow_raise_r", "brow_raise_l", "brow_inner_raise", "brow_furrow", "eye_open_r", "eye_open_l")
"""Columns of the ``expression`` vector ("r"/"l": the subject's right/left)."""

RIGHT_BROW_UPPER = fm.RIGHT_BROW[:5]
LEFT_BROW_UPPER = fm.LEFT_BROW[:5]
RIGHT_BROW_INNER = 107
LEFT_BROW_INNER = 336


def head_frame_landmarks(
    landmarks: np.ndarray, canonical: np.ndarray, rigid_idx: np.ndarray, z_scale: float = 1.0, chunk: int = 2048
) -> np.ndarray:
    """Pose-removed landmarks ``float32 [T, 478, 3]`` (metres, canonical head frame).

    ``landmarks [T, 478, 3]`` as tracked (pixels, MediaPipe z), ``canonical [478, 3]``,
    ``rigid_idx [K]`` the landmarks the similarity is fitted on.
    """
    out = np.empty(landmarks.shape, np.float32)
    tgt = canonical[rigid_idx].astype(np.float64)
    for s in range(0, len(landmarks), chunk):
        x = landmarks[s : s + chunk].astype(np.float64)
        x[..., 2] *= z_scale
        sc, rot, t = umeyama(x[:, rigid_idx], tgt)
        out[s : s + chunk] = apply_similarity(sc, rot, t, x)
    return out


def eye_aspect_ratios(lm: np.ndarray) -> np.ndarray:
    """EAR of the subject's right and left eye, ``[T, 2]``, from ``lm [T, 478, 3]`` (3D distances)."""
    out = []
    for corners, lids in ((fm.RIGHT_EYE_CORNERS, fm.RIGHT_EYE_LIDS), (fm.LEFT_EYE_CORNERS, fm.LEFT_EYE_LIDS)):
        width = np.linalg.norm(lm[:, corners[0]] - lm[:, corners[1]], axis=-1)
        opening = np.mean([np.linalg.norm(lm[:, u] - lm[:, d], axis=-1) for u, d in lids], axis=0)
        out.append(opening / np.maximum(width, 1e-9))
    return np.stack(out, -1)


def au45_from_ear(ear: np.ndarray, closed_ratio: float, open_ear: float | None = None) -> tuple[np.ndarray, float]:
    """Blink intensity 0..5 from EAR ``[T]``; returns it and the open-eye EAR used (clip median by default)."""
    open_ear = float(np.median(ear)) if open_ear is None else float(open_ear)
    closed = closed_ratio * open_ear
    au = 5.0 * np.clip((open_ear - ear) / max(open_ear - closed, 1e-9), 0.0, 1.0)
    return au.astype(np.float32), open_ear


@dataclass
class FaceSignals:
    """Signals of one clip, ``T`` frames."""

    landmarks_head: np.ndarray
    """``float32 [T, 478, 3]`` pose-removed landmarks (metres)."""
    reference: np.ndarray
    """``float32 [478, 3]`` the clip's median pose-removed shape."""
    landmark_motion: np.ndarray
    """``float32 [T, 478, 3]`` = landmarks_head - reference."""
    ear: np.ndarray
    """``float32 [T]`` mean eye aspect ratio."""
    blink: np.ndarray
    """``float32 [T]`` AU45-like, 0..5."""
    expression: np.ndarray
    """``float32 [T, 6]`` (:data:`EXPRESSION_NAMES`)."""
    mouth_open: np.ndarray
    """``float32 [T]``."""
    open_ear: float


def face_signals(track: TrackResult, closed_ratio: float = 0.4) -> FaceSignals:
    """Compute every signal of a tracked clip (see the module docstring)."""
    lm = head_frame_landmarks(track.landmarks, track.canonical, track.rigid_indices, track.z_scale)
    reference = np.median(lm, axis=0).astype(np.float32)
    ears = eye_aspect_ratios(lm)
    ear = ears.mean(-1)
    blink, open_ear = au45_from_ear(ear, closed_ratio)
    unit = float(np.linalg.norm(reference[fm.LEFT_EYE_CORNERS[1]] - reference[fm.RIGHT_EYE_CORNERS[0]]))

    def centre(idx: tuple[int, ...]) -> np.ndarray:
        return lm[:, list(idx)].mean(1)

    y = 1  # head frame: y points down (towards the chin)
    raise_r = (centre(fm.RIGHT_EYE)[:, y] - centre(RIGHT_BROW_UPPER)[:, y]) / unit
    raise_l = (centre(fm.LEFT_EYE)[:, y] - centre(LEFT_BROW_UPPER)[:, y]) / unit
    inner = 0.5 * (
        (lm[:, fm.RIGHT_EYE_CORNERS[1], y] - lm[:, RIGHT_BROW_INNER, y]) + (lm[:, fm.LEFT_EYE_CORNERS[0], y] - lm[:, LEFT_BROW_INNER, y])
    ) / unit
    furrow = -np.linalg.norm(lm[:, RIGHT_BROW_INNER] - lm[:, LEFT_BROW_INNER], axis=-1) / unit
    feats = np.stack([raise_r, raise_l, inner, furrow], -1)
    feats -= np.median(feats, axis=0)
    eye_open = ears / np.median(ears, axis=0) - 1.0
    expression = np.concatenate([feats, eye_open], -1).astype(np.float32)

    gap = np.linalg.norm(lm[:, fm.UPPER_LIP_INNER] - lm[:, fm.LOWER_LIP_INNER], axis=-1)
    width = np.linalg.norm(lm[:, fm.MOUTH_CORNERS[0]] - lm[:, fm.MOUTH_CORNERS[1]], axis=-1)
    mouth = (gap / np.maximum(width, 1e-9)).astype(np.float32)
    return FaceSignals(
        landmarks_head=lm,
        reference=reference,
        landmark_motion=(lm - reference).astype(np.float32),
        ear=ear.astype(np.float32),
        blink=blink,
        expression=expression,
        mouth_open=mouth,
        open_ear=open_ear,
    )


def blink_peaks(blink: np.ndarray, threshold: float = 2.0, min_gap: int = 8) -> np.ndarray:
    """Frames of local blink maxima above ``threshold``, at least ``min_gap`` frames apart (strongest first kept)."""
    cand = np.nonzero(blink >= threshold)[0]
    cand = cand[np.argsort(-blink[cand], kind="stable")]
    chosen: list[int] = []
    for c in cand:
        if all(abs(int(c) - o) >= min_gap for o in chosen):
            chosen.append(int(c))
    return np.array(sorted(chosen), np.int64)
