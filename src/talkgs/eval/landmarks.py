"""Landmark-based metrics: LMD, action-unit proxies (AUE-L / AUE-U), mouth-motion lip sync.

Landmarks are MediaPipe's 478-point face mesh (:class:`talkgs.preprocess.facemesh.FaceMesh`) run
on the rendered and the ground-truth frames alike, per frame in static mode by default (each frame
detected on its own, as the papers' ``face_alignment`` scripts do; a frame without a detected face
is left out and counted).

**LMD** (:func:`lmd`), as the papers' ``LMDMeter`` (AD-NeRF / ER-NeRF / GaussianTalker code):
per frame, the landmarks of the region are mean-centred (the centroid removed, no scale or
rotation alignment), then the mean Euclidean distance between corresponding points, in pixels of
the evaluated frames, averaged over frames. The papers use the 20 mouth points 48:68 of the
68-point (dlib / FAN) layout; here the mouth is MediaPipe's 40 lip points (outer + inner lip
contours, :data:`MOUTH_IDX`) and "face" is the 468 mesh points (no irises). Values are in pixels at
the evaluation resolution (papers: 512²), so they scale with it.

**Action units** (:func:`action_units`): OpenFace is not available offline (no installable package ships its models), so
AU intensities are landmark-geometry proxies in the spirit of :mod:`talkgs.features.signals`:
each frame's landmarks are aligned (3D similarity on rigid forehead/nose landmarks) onto a frontal
reference shape of the ground truth in units of the outer-eye-corner distance, then

=========================  ============================================================  ==========
AU (proxy)                 measurement (aligned landmarks, y down)                       full scale
=========================  ============================================================  ==========
AU25 lips part             inner-lip gap / mouth width (absolute, 0 = closed)            0.6
AU26 jaw drop              chin − nose tip height, minus the reference median            0.25
AU20 lip stretch           mouth-corner distance, minus the reference median             0.15
AU12 lip-corner raise      lip-centre height − mouth-corner height, minus the median     0.10
AU01 inner brow raise      inner eye corner − inner brow height, minus the median        0.10
AU02 outer brow raise      outer eye corner − outer brow height, minus the median        0.10
AU04 brow lowerer          −(inner brow distance), minus the median                      0.08
AU05 upper-lid raise       eye aspect ratio / its median − 1                             0.5
AU45 blink                 :func:`talkgs.features.signals.au45_from_ear` (0..5)          (0..5)
=========================  ============================================================  ==========

Each proxy is multiplied by 5 / full scale, so ~5 means a strong action like OpenFace's 0–5
intensities (signed: a proxy below the subject's neutral is negative). "The median" is always the
**ground truth's** (the reference of :func:`au_reference`), so renders and ground truth share one
neutral. AUE-L (lower face: AU25, AU26, AU20, AU12) and AUE-U (upper face: AU01, AU02, AU04, AU05,
AU45) are the mean absolute differences render vs ground truth over frames and AUs
(:func:`aue`). The numbers are not comparable with OpenFace-based values in the papers; they rank
variants of this project against each other. The full scales are rough physiological ranges
(e.g. a wide-open mouth has a gap of ~0.6 x its width), not fitted.

**Mouth-motion lip sync without weights** (:func:`lagged_correlation`): the Pearson correlation of
the rendered mouth opening (:func:`mouth_opening`, inner-lip gap / mouth width: similarity
invariant, so no pose removal) with the ground-truth mouth opening (self-driven) or with the
driving speech's energy envelope (:func:`speech_envelope`; cross-driven), maximised over a small
lag (±2 frames vs ground truth, ±3 frames vs audio; the lag is reported). Ground truth's own
video-vs-envelope correlation is the reference level for the latter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from talkgs.preprocess import facemesh as fm

log = logging.getLogger(__name__)

__all__ = [
    "MOUTH_IDX",
    "FACE_IDX",
    "AU_LOWER",
    "AU_UPPER",
    "FULL_SCALE",
    "detect_landmarks",
    "detected",
    "lmd",
    "lmd_per_frame",
    "AUReference",
    "au_reference",
    "align_to_reference",
    "action_units",
    "aue",
    "mouth_opening",
    "speech_envelope",
    "lagged_correlation",
]

MOUTH_IDX = np.array(fm.LIPS_OUTER + fm.LIPS_INNER)
"""The 40 MediaPipe lip points used for the mouth LMD (dlib/FAN's 48:68 equivalent)."""
FACE_IDX = np.arange(fm.NUM_LANDMARKS - 10)
"""The 468 mesh points (irises excluded) used for the full-face LMD."""

AU_LOWER = ("AU25", "AU26", "AU20", "AU12")
"""Lower-face AU proxies (AUE-L)."""
AU_UPPER = ("AU01", "AU02", "AU04", "AU05", "AU45")
"""Upper-face AU proxies (AUE-U)."""
FULL_SCALE = {"AU25": 0.6, "AU26": 0.25, "AU20": 0.15, "AU12": 0.10, "AU01": 0.10, "AU02": 0.10, "AU04": 0.08, "AU05": 0.5}
"""Proxy value mapped to intensity 5 (see the module docstring)."""

_BLINK_CLOSED_RATIO = 0.4  # as talkgs.features.signals.face_signals' default
_OUTER_BROW = (70, 300)  # subject's right / left brow, outer end of the upper edge
_INNER_BROW = (107, 336)  # as talkgs.features.signals.RIGHT_BROW_INNER / LEFT_BROW_INNER
_UPPER_LIP_TOP, _LOWER_LIP_BOTTOM = 0, 17


def detect_landmarks(frames: Iterable[np.ndarray], *, static: bool = True) -> np.ndarray:
    """MediaPipe landmarks of each frame: ``float32 [T, 478, 3]`` (pixels; NaN rows where no face).

    ``frames``: ``uint8 [H, W, 3]`` RGB. ``static=True`` detects every frame on its own; False uses
    MediaPipe's tracking mode (one sequence).
    """
    out = []
    with fm.FaceMesh(static=static) as mesh:
        for f in frames:
            lm = mesh.process(np.ascontiguousarray(f))
            out.append(np.full((fm.NUM_LANDMARKS, 3), np.nan, np.float32) if lm is None else lm)
    if not out:
        raise ValueError("detect_landmarks: no frames")
    return np.stack(out)


def detected(lm: np.ndarray) -> np.ndarray:
    """``bool [T]``: the frames of ``lm [T, 478, k]`` whose landmarks are all finite (a face was found)."""
    return np.isfinite(lm.reshape(len(lm), -1)).all(1)


def _check_lm(lm: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(lm, np.float64)
    if a.ndim != 3 or a.shape[1] != fm.NUM_LANDMARKS or a.shape[2] < 2:
        raise ValueError(f"{what}: expected landmarks [T, {fm.NUM_LANDMARKS}, 2 or 3], found {a.shape}")
    return a


def lmd_per_frame(pred: np.ndarray, gt: np.ndarray, region: str = "mouth") -> np.ndarray:
    """Per-frame LMD ``[T]`` (NaN where either frame has no face); ``pred, gt [T, 478, >=2]``."""
    p, g = _check_lm(pred, "lmd pred"), _check_lm(gt, "lmd gt")
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"lmd: {p.shape[0]} rendered vs {g.shape[0]} ground-truth frames")
    idx = {"mouth": MOUTH_IDX, "face": FACE_IDX}.get(region)
    if idx is None:
        raise ValueError(f"lmd: region must be 'mouth' or 'face', found {region!r}")
    p, g = p[:, idx, :2], g[:, idx, :2]
    p = p - p.mean(1, keepdims=True)
    g = g - g.mean(1, keepdims=True)
    return np.sqrt(((p - g) ** 2).sum(-1)).mean(-1)


def lmd(pred: np.ndarray, gt: np.ndarray, region: str = "mouth") -> float:
    """Mean LMD in pixels over the frames where both have a face (NaN if none); see the module doc."""
    d = lmd_per_frame(pred, gt, region)
    d = d[np.isfinite(d)]
    return float(d.mean()) if len(d) else float("nan")


# ----------------------------------------------------------------------------------------------
# action units


@dataclass
class AUReference:
    """The ground truth's frontal reference shape and neutral values (see :func:`au_reference`)."""

    shape: np.ndarray
    """``[478, 3]`` frontal (x right, y down), in units of the outer-eye-corner distance."""
    rigid_idx: np.ndarray
    """``[K]`` landmarks the per-frame similarity is fitted on."""
    medians: dict[str, float] = field(default_factory=dict)
    """Raw proxy medians of the ground truth (the neutral)."""
    open_ear: float = float("nan")


def align_to_reference(lm: np.ndarray, shape: np.ndarray, rigid_idx: np.ndarray) -> np.ndarray:
    """``lm [T, 478, 3]`` aligned by a 3D similarity (on ``rigid_idx``) onto ``shape`` (NaN rows kept)."""
    from talkgs.preprocess.track import apply_similarity, umeyama

    lm = _check_lm(lm, "align")
    if lm.shape[2] != 3:
        raise ValueError("align_to_reference: needs 3D landmarks [T, 478, 3]")
    out = np.full(lm.shape, np.nan)
    ok = detected(lm)
    if ok.any():
        s, rot, t = umeyama(lm[ok][:, rigid_idx], shape[rigid_idx])
        out[ok] = apply_similarity(s, rot, t, lm[ok])
    return out


def au_reference(gt_landmarks: np.ndarray) -> AUReference:
    """Reference of the ground-truth landmarks ``[T, 478, 3]``: Procrustes mean shape made frontal
    (unit: outer-eye-corner distance), its rigid landmarks (forehead/temples/nose, as the track
    stage's candidates) and the median of each raw proxy (the neutral)."""
    from talkgs.preprocess.track import frontalise, procrustes_mean, rigid_candidates

    lm = _check_lm(gt_landmarks, "au_reference")
    ok = detected(lm)
    if ok.sum() < 1:
        raise ValueError("au_reference: no ground-truth frame has a detected face")
    shapes = lm[ok]
    mean, _ = procrustes_mean(shapes, FACE_IDX)
    front = frontalise(mean, 1.0)
    rigid = rigid_candidates(front)
    mean, _ = procrustes_mean(shapes, rigid)
    ref = AUReference(shape=frontalise(mean, 1.0), rigid_idx=rigid)
    raw = _raw_proxies(align_to_reference(shapes, ref.shape, rigid))
    ref.medians = {k: float(np.median(v)) for k, v in raw.items()}
    ref.open_ear = ref.medians["ear"]
    return ref


def _raw_proxies(a: np.ndarray) -> dict[str, np.ndarray]:
    """Raw geometric measurements of aligned landmarks ``a [T, 478, 3]`` (y down)."""
    from talkgs.features.signals import eye_aspect_ratios

    y = 1
    dist = lambda i, j: np.linalg.norm(a[:, i] - a[:, j], axis=-1)  # noqa: E731
    width = dist(*fm.MOUTH_CORNERS)
    ears = eye_aspect_ratios(a)
    corners_y = a[:, list(fm.MOUTH_CORNERS), y].mean(1)
    lip_centre_y = 0.5 * (a[:, _UPPER_LIP_TOP, y] + a[:, _LOWER_LIP_BOTTOM, y])
    inner = 0.5 * ((a[:, fm.RIGHT_EYE_CORNERS[1], y] - a[:, _INNER_BROW[0], y]) + (a[:, fm.LEFT_EYE_CORNERS[0], y] - a[:, _INNER_BROW[1], y]))
    outer = 0.5 * ((a[:, fm.RIGHT_EYE_CORNERS[0], y] - a[:, _OUTER_BROW[0], y]) + (a[:, fm.LEFT_EYE_CORNERS[1], y] - a[:, _OUTER_BROW[1], y]))
    return {
        "AU25": dist(fm.UPPER_LIP_INNER, fm.LOWER_LIP_INNER) / np.maximum(width, 1e-9),
        "AU26": a[:, fm.CHIN, y] - a[:, fm.NOSE_TIP, y],
        "AU20": width,
        "AU12": lip_centre_y - corners_y,
        "AU01": inner,
        "AU02": outer,
        "AU04": -dist(*_INNER_BROW),
        "ear_r": ears[:, 0],
        "ear_l": ears[:, 1],
        "ear": ears.mean(-1),
    }


def action_units(landmarks: np.ndarray, ref: AUReference) -> dict[str, np.ndarray]:
    """AU proxy intensities ``{name: [T]}`` (:data:`AU_LOWER` + :data:`AU_UPPER`; NaN where no face)
    of ``landmarks [T, 478, 3]`` against the ground-truth reference ``ref``."""
    from talkgs.features.signals import au45_from_ear

    a = align_to_reference(landmarks, ref.shape, ref.rigid_idx)
    raw = _raw_proxies(a)
    out: dict[str, np.ndarray] = {}
    for k, full in FULL_SCALE.items():
        if k == "AU25":
            v = raw[k]
        elif k == "AU05":
            v = 0.5 * (raw["ear_r"] / ref.medians["ear_r"] + raw["ear_l"] / ref.medians["ear_l"]) - 1.0
        else:
            v = raw[k] - ref.medians[k]
        out[k] = 5.0 * v / full
    ear = raw["ear"]
    blink = np.full(len(ear), np.nan)
    ok = np.isfinite(ear)
    blink[ok], _ = au45_from_ear(ear[ok], _BLINK_CLOSED_RATIO, open_ear=ref.open_ear)
    out["AU45"] = blink
    return {k: out[k] for k in (*AU_LOWER, *AU_UPPER)}


def aue(pred: dict[str, np.ndarray], gt: dict[str, np.ndarray]) -> dict[str, float]:
    """AU errors: ``{"aue_lower", "aue_upper", "aue_<au>" ...}``: mean |pred − gt| over frames where
    both are finite (and over the AUs of the group)."""
    out: dict[str, float] = {}
    for k in (*AU_LOWER, *AU_UPPER):
        d = np.abs(np.asarray(pred[k], np.float64) - np.asarray(gt[k], np.float64))
        d = d[np.isfinite(d)]
        out[f"aue_{k.lower()}"] = float(d.mean()) if len(d) else float("nan")
    out["aue_lower"] = float(np.mean([out[f"aue_{k.lower()}"] for k in AU_LOWER]))
    out["aue_upper"] = float(np.mean([out[f"aue_{k.lower()}"] for k in AU_UPPER]))
    return {"aue_lower": out.pop("aue_lower"), "aue_upper": out.pop("aue_upper"), **out}


# ----------------------------------------------------------------------------------------------
# mouth motion and speech


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap / mouth width per frame ``[T]`` (3D distances when given; NaN where no face)."""
    lm = _check_lm(landmarks, "mouth_opening")
    gap = np.linalg.norm(lm[:, fm.UPPER_LIP_INNER] - lm[:, fm.LOWER_LIP_INNER], axis=-1)
    width = np.linalg.norm(lm[:, fm.MOUTH_CORNERS[0]] - lm[:, fm.MOUTH_CORNERS[1]], axis=-1)
    return gap / np.maximum(width, 1e-9)


def speech_envelope(samples: np.ndarray, sample_rate: int, fps: float, n_frames: int | None = None, window_frames: float = 2.0) -> np.ndarray:
    """RMS energy of ``samples`` around each video frame's centre ``[T]``: frame ``k`` covers
    ``[k/fps, (k+1)/fps)``; the RMS is over ``window_frames`` frame durations centred on it
    (zero-padded outside the signal). ``T`` = ``n_frames`` or the number of whole frames."""
    x = np.asarray(samples, np.float64).reshape(-1)
    t = int(n_frames) if n_frames is not None else int(len(x) * fps // sample_rate)
    half = 0.5 * window_frames * sample_rate / fps
    out = np.zeros(t)
    for k in range(t):
        c = (k + 0.5) * sample_rate / fps
        a, b = int(round(c - half)), int(round(c + half))
        seg = x[max(a, 0) : max(min(b, len(x)), 0)]
        out[k] = np.sqrt((seg**2).sum() / max(b - a, 1))
    return out


def lagged_correlation(x: np.ndarray, y: np.ndarray, max_lag: int, min_overlap: int = 8) -> tuple[float, int, dict[int, float]]:
    """Pearson correlation of ``x[t]`` with ``y[t + lag]`` for ``|lag| <= max_lag`` (NaNs skipped).

    Returns ``(best correlation, its lag, {lag: correlation})``; NaN and lag 0 when no lag has
    ``min_overlap`` finite pairs or a constant series. Positive lag: ``y`` follows ``x``.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    corrs: dict[int, float] = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            a, b = x[: len(x) - lag] if lag else x, y[lag:]
        else:
            a, b = x[-lag:], y[: len(y) + lag]
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < min_overlap:
            continue
        a, b = a[ok], b[ok]
        if a.std() == 0 or b.std() == 0:
            continue
        corrs[lag] = float(np.corrcoef(a, b)[0, 1])
    if not corrs:
        return float("nan"), 0, corrs
    best = max(corrs, key=lambda k: (corrs[k], -abs(k)))
    return corrs[best], best, corrs
