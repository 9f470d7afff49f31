"""Stage ``track``: face landmarks, camera intrinsics and a stable per-frame head pose.

No 3DMM: MediaPipe landmarks, a person-specific rigid landmark shape estimated from the clip,
OpenCV optical flow and a PyTorch bundle adjustment.

1. **Landmarks.** MediaPipe face mesh with refined landmarks (478 points: 468 mesh + 10 iris) on
   every frame in tracking mode. Frames where it fails are linearly interpolated from their
   neighbours and flagged (``detected = False``); more than ``max_failed_fraction`` failed
   frames, or a gap longer than ``max_failed_run``, is an :class:`InputError` listing them.
   The same pass tracks optical-flow keypoints (:class:`~talkgs.preprocess.refine.KeypointTracker`).
   A head rolled beyond ``roll_check.max_roll_deg`` (median eye-line angle; a wrong rotation tag
   lays it on its side) is an :class:`InputError` naming the tag and the ffmpeg fix, or a warning.
2. **Canonical shape.** ``fit_frames`` detected frames are aligned by generalised Procrustes
   (3D similarity on MediaPipe's x, y and relative z times ``z_scale``); the mean shape, turned
   to face the camera and scaled so that the outer eye corners are ``eye_corner_distance_m``
   apart, starts the canonical shape. The rigid subset used for pose: among the landmarks of
   the rigid region (forehead, temples, nose, upper cheeks: no eyes, brows, lips, jaw), the
   ``rigid_keep_fraction`` with the smallest residual after alignment, thinned to
   ``rigid_landmarks`` spread over the face (farthest-point sampling). On real clips
   MediaPipe's forehead points have about twice the residual of the nose and cheeks, so the
   forehead is mostly left to the optical-flow keypoints.
3. **Focal search** (SyncTalk / SyncGaussian): for each of ``focal_steps`` focal lengths
   (log-spaced over ``focal_range`` x the image width) the rigid shape and the poses of the fit
   frames are optimised jointly (L-BFGS, reprojection error + a prior keeping the shape near its
   start); the focal with the lowest RMS reprojection error wins (parabolic refinement in
   log-focal around the best grid point).
4. **Per-frame pose**: PnP of the rigid subset on every frame (``initial`` poses).
5. **Refinement** (SyncGaussian §3.3): bundle adjustment of LK keypoints and poses with a
   temporal smoothness term (:func:`~talkgs.preprocess.refine.bundle_adjust`).

Conventions (what the renderer takes, gsplat-style): OpenCV camera, x right, y down, z forward;
``world_to_camera`` is 4x4 with ``X_cam = R X_world + t``; the head is static in the world
(the camera moves); world units are metres (scale fixed by ``eye_corner_distance_m``); the world
origin is the centroid of the rigid landmarks, world axes: x towards the subject's left (image
right), y down (chin), z into the head. Intrinsics ``K`` are in pixels of the extracted frames
with continuous pixel coordinates: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, the
principal point is the image centre ``(W/2, H/2)``.

Output folder (written atomically)::

    track.npz    format_version   int, TRACK_FORMAT_VERSION
                 K                float64 [3, 3]
                 image_size       int64 [2] (W, H)
                 fps              float64
                 world_to_camera  float64 [T, 4, 4]  refined poses (use these)
                 world_to_camera_initial float64 [T, 4, 4]  per-frame PnP before refinement
                 landmarks        float32 [T, 478, 3] MediaPipe: x, y pixels, z relative depth in
                                  pixels at x's scale (smaller = closer); interpolated where not detected
                 detected         bool [T]
                 canonical        float32 [478, 3] canonical landmark shape (world, metres)
                 rigid_indices    int64 [K] landmarks used for pose
                 z_scale          float64, the factor applied to MediaPipe's z for the canonical shape
                 reproj_error     float32 [T] mean rigid-landmark reprojection error (px), refined
                 reproj_error_initial float32 [T] the same before refinement
                 keypoints        float32 [P, 3] bundle-adjusted keypoints (world)
                 keypoint_frame / keypoint_track int32 [M], keypoint_uv float32 [M, 2]: observations
                 focal_candidates, focal_errors float64 [S]: the focal search
    report.json  focal, failed frames, head roll, warnings, keypoint statistics, reprojection error
                 and pose jitter before/after refinement, params (no timings: they go to the
                 ``timings`` file of :func:`track`, so a rerun writes the same bytes)
    report.png   focal search, head rotation, jitter and reprojection error over time
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
import torch

from talkgs.configlib import FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, STEPS, Range
from talkgs.io.atomic import atomic_dir, write_json
from talkgs.preprocess import facemesh as fm
from talkgs.preprocess import refine
from talkgs.preprocess.errors import InputError
from talkgs.preprocess.quality import RollCheckParams, head_roll_deg, median_roll_deg
from talkgs.progress import progress_bar

log = logging.getLogger(__name__)

TRACK_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrackParams:
    """Parameters of the ``track`` stage (``params.yaml: track``)."""

    min_detection_confidence: Annotated[float, FRACTION] = 0.5
    """MediaPipe face detection confidence (used when the mesh re-detects the face)."""
    min_tracking_confidence: Annotated[float, FRACTION] = 0.5
    """MediaPipe tracking confidence; below it the face is re-detected."""
    max_failed_fraction: Annotated[float, Range(0, 1, hi_open=True)] = 0.1
    """Error when the face mesh fails on more than this fraction of frames."""
    max_failed_run: Annotated[int, STEPS] = 25
    """Error when it fails on more than this many consecutive frames (too long to interpolate)."""
    fit_frames: Annotated[int, Range(4, 100_000)] = 64
    """Detected frames (evenly spaced) used to estimate the canonical shape and the focal length."""
    z_scale: Annotated[float, Range(0, 100, lo_open=True)] = 1.0
    """Multiplier on MediaPipe's relative z when building the initial canonical shape."""
    eye_corner_distance_m: Annotated[float, Range(0, 1, lo_open=True, unit="metres")] = 0.09
    """Assumed distance between the outer eye corners (fixes world units = metres)."""
    rigid_landmarks: Annotated[int, Range(6, 300)] = 60
    """Number of rigid landmarks used for pose (spread over the rigid region)."""
    rigid_keep_fraction: Annotated[float, Range(0, 1, lo_open=True)] = 0.7
    """Fraction of the rigid-region candidates with the lowest non-rigid residual that may be used."""
    focal_range: tuple[Annotated[float, POSITIVE], Annotated[float, POSITIVE]] = (1.0, 4.0)
    """Focal search range in units of the image width (1 ≈ 53° FOV, 4 ≈ 14°; AD-NeRF/SyncTalk
    search 600..1500 px at 450² ≈ 1.3..3.3)."""
    focal_steps: Annotated[int, Range(3, 1000)] = 13
    """Log-spaced focal candidates in the search."""
    focal_flat_px: Annotated[float, NON_NEGATIVE] = 0.1
    """A focal search whose RMS errors differ by less than this (px) is 'flat' (weakly determined:
    reported, no warning when the best focal is at the range edge)."""
    fit_iterations: Annotated[int, Range(1, 100_000)] = 60
    """L-BFGS iterations of the shape+pose fit per focal candidate."""
    shape_prior: Annotated[float, NON_NEGATIVE] = 0.05
    """Weight of the prior keeping the canonical shape near its start (per px² of displacement)."""
    refine: bool = True
    """Run the optical-flow keypoint bundle adjustment (False: PnP poses are final)."""
    keypoints: Annotated[int, Range(8, 100_000)] = 100
    """Target number of live LK keypoint tracks."""
    reseed_fraction: Annotated[float, Range(0, 1, lo_open=True)] = 0.8
    """New keypoints are seeded when fewer than this fraction of ``keypoints`` are alive."""
    keypoint_quality: Annotated[float, PROBABILITY] = 0.01
    """Shi-Tomasi quality level for seeding (relative to the best corner)."""
    keypoint_min_distance: Annotated[int, Range(0, 1000, unit="pixels")] = 7
    """Minimum distance between keypoints in pixels."""
    lk_window: Annotated[int, Range(5, 255, unit="pixels")] = 21
    """Lucas-Kanade window side in pixels."""
    lk_levels: Annotated[int, Range(0, 10)] = 3
    """Lucas-Kanade pyramid levels above the full-resolution image."""
    fb_threshold: Annotated[float, POSITIVE] = 0.7
    """Forward-backward error (pixels) above which a track is dropped."""
    min_track_length: Annotated[int, Range(2, 100_000)] = 5
    """Tracks with fewer observations are not used in the bundle adjustment."""
    ba_point_iterations: Annotated[int, STEPS] = 30
    """L-BFGS iterations of BA stage 1 (3D keypoints only)."""
    ba_iterations: Annotated[int, STEPS] = 150
    """L-BFGS iterations of BA stage 2 (keypoints and poses jointly)."""
    ba_lr: Annotated[float, POSITIVE] = 1.0
    """L-BFGS step size (with strong-Wolfe line search)."""
    ba_huber_px: Annotated[float, POSITIVE] = 2.0
    """Scale (pixels) of the pseudo-Huber robust cost."""
    ba_track_outlier_px: Annotated[float, POSITIVE] = 2.0
    """Tracks whose median residual after stage 1 exceeds this (pixels) are dropped."""
    landmark_weight: Annotated[float, POSITIVE] = 1.0
    """Weight of the rigid-landmark reprojection term in the BA (per landmark, vs 1 per keypoint)."""
    smoothness_weight: Annotated[float, NON_NEGATIVE] = 4.0
    """Weight of the temporal smoothness term (head-point acceleration in pixels, 16 points)."""
    roll_check: RollCheckParams = field(default_factory=RollCheckParams)
    """Is the head upright in the frames (a wrong rotation tag lays it on its side)? An error or
    a warning (:mod:`talkgs.preprocess.quality`)."""

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.max_failed_fraction < 1.0, "max_failed_fraction must be in [0, 1)"),
            (self.max_failed_run >= 0, "max_failed_run must be >= 0"),
            (self.fit_frames >= 4, "fit_frames must be >= 4"),
            (self.z_scale > 0, "z_scale must be > 0"),
            (self.eye_corner_distance_m > 0, "eye_corner_distance_m must be > 0"),
            (6 <= self.rigid_landmarks <= 300, "rigid_landmarks must be in 6..300"),
            (0 < self.rigid_keep_fraction <= 1, "rigid_keep_fraction must be in (0, 1]"),
            (0 < self.focal_range[0] < self.focal_range[1], "focal_range must be (low, high) with 0 < low < high"),
            (self.focal_steps >= 3, "focal_steps must be >= 3"),
            (self.focal_flat_px >= 0, "focal_flat_px must be >= 0"),
            (self.fit_iterations >= 1, "fit_iterations must be >= 1"),
            (self.shape_prior >= 0, "shape_prior must be >= 0"),
            (self.keypoints >= 8, "keypoints must be >= 8"),
            (0 < self.reseed_fraction <= 1, "reseed_fraction must be in (0, 1]"),
            (self.lk_window >= 5 and self.lk_window % 2 == 1, "lk_window must be odd and >= 5"),
            (self.lk_levels >= 0, "lk_levels must be >= 0"),
            (self.fb_threshold > 0, "fb_threshold must be > 0"),
            (self.min_track_length >= 2, "min_track_length must be >= 2"),
            (self.ba_iterations >= 0 and self.ba_point_iterations >= 0, "BA iterations must be >= 0"),
            (self.ba_lr > 0 and self.ba_huber_px > 0 and self.ba_track_outlier_px > 0, "ba_lr, ba_huber_px, ba_track_outlier_px must be > 0"),
            (self.landmark_weight > 0, "landmark_weight must be > 0 (it anchors the pose)"),
            (self.smoothness_weight >= 0, "smoothness_weight must be >= 0"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"track params: {msg}")


# ----------------------------------------------------------------------------------------------
# extract folder


@dataclass(frozen=True)
class ExtractInfo:
    """What the track and features stages need from an extract folder's ``meta.json``."""

    root: Path
    n_frames: int
    width: int
    height: int
    fps: float
    frame_pattern: str
    n_train: int
    audio: Path
    sample_rate: int
    source: str = ""
    """The source video (``meta.json`` ``source.path``)."""
    rotation_deg: float = 0.0
    """The rotation tag extract applied (``source.rotation_deg``)."""

    def frame_path(self, i: int) -> Path:
        return self.root / (self.frame_pattern % i)


def read_extract(extract_dir: Path) -> ExtractInfo:
    """Read and check ``extract_dir/meta.json`` (and that the frames exist)."""
    extract_dir = Path(extract_dir)
    meta_path = extract_dir / "meta.json"
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: not found. Run the extract stage first (`dvc repro extract@<subject>`).")
    try:
        meta = json.loads(meta_path.read_text())
        out = meta["output"]
        info = ExtractInfo(
            root=extract_dir,
            n_frames=int(out["frames"]),
            width=int(out["width"]),
            height=int(out["height"]),
            fps=float(out["fps"]),
            frame_pattern=str(out["frame_pattern"]),
            n_train=int(meta["split"]["n_train"]),
            audio=extract_dir / str(out["audio"]),
            sample_rate=int(out["sample_rate"]),
            source=str(meta.get("source", {}).get("path", "")),
            rotation_deg=float(meta.get("source", {}).get("rotation_deg") or 0.0),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{meta_path}: missing or invalid key {e}. It was written by another talkgs version; rerun the extract stage.") from e
    last = info.frame_path(info.n_frames - 1)
    if info.n_frames < 3 or not info.frame_path(0).is_file() or not last.is_file():
        raise InputError(f"{extract_dir}: meta.json announces {info.n_frames} frames but {last} is missing. Rerun the extract stage.")
    return info


def _iter_frames(info: ExtractInfo, prefetch: int = 4) -> Iterator[tuple[int, np.ndarray]]:
    """Decoded ``uint8 [H, W, 3]`` BGR frames in order, decoded ahead in a thread (cv2 releases the GIL)."""

    def load(i: int) -> np.ndarray:
        img = cv2.imread(str(info.frame_path(i)), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"{info.frame_path(i)}: cannot be read. The extract folder is damaged; rerun the extract stage.")
        if img.shape[:2] != (info.height, info.width):
            raise InputError(f"{info.frame_path(i)}: is {img.shape[1]}x{img.shape[0]}, meta.json says {info.width}x{info.height}. Rerun the extract stage.")
        return img

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        pending = collections.deque(ex.submit(load, i) for i in range(min(prefetch, info.n_frames)))
        for i in range(info.n_frames):
            img = pending.popleft().result()
            if i + prefetch < info.n_frames:
                pending.append(ex.submit(load, i + prefetch))
            yield i, img


# ----------------------------------------------------------------------------------------------
# landmarks


def format_frames(idx: np.ndarray, limit: int = 12) -> str:
    """``[3, 4, 5, 9]`` → ``"3-5, 9"`` (at most ``limit`` ranges shown)."""
    idx = np.asarray(idx)
    if len(idx) == 0:
        return "none"
    runs: list[tuple[int, int]] = []
    start = prev = int(idx[0])
    for v in idx[1:]:
        v = int(v)
        if v != prev + 1:
            runs.append((start, prev))
            start = v
        prev = v
    runs.append((start, prev))
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (f" and {len(runs) - limit} more ranges" if len(runs) > limit else "")


def check_and_interpolate(landmarks: np.ndarray, detected: np.ndarray, where: Path, params: TrackParams) -> np.ndarray:
    """Apply the failure policy and fill failed frames by linear interpolation (edges: nearest).

    ``landmarks [T, 478, 3]`` (undefined where not ``detected [T]``) → filled copy.
    """
    n = len(detected)
    failed = np.nonzero(~detected)[0]
    longest = 0
    if len(failed):
        breaks = np.nonzero(np.diff(failed) != 1)[0]
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [len(failed) - 1]])
        longest = int((ends - starts + 1).max())
    frac = len(failed) / n
    if detected.sum() < 3 or frac > params.max_failed_fraction or longest > params.max_failed_run:
        raise InputError(
            f"{where}: the face mesh failed on {len(failed)} of {n} frames ({100 * frac:.1f}%, allowed "
            f"{100 * params.max_failed_fraction:.0f}%; longest gap {longest} frames, allowed {params.max_failed_run}): "
            f"frames {format_frames(failed)}. Look at those frames: trim the video to where the face is visible "
            "and unobstructed, or raise track.max_failed_fraction / track.max_failed_run."
        )
    out = landmarks.copy()
    if len(failed):
        good = np.nonzero(detected)[0]
        flat = landmarks[good].reshape(len(good), -1)
        interp = np.stack([np.interp(failed, good, flat[:, j]) for j in range(flat.shape[1])], 1)
        out[failed] = interp.reshape(len(failed), *landmarks.shape[1:])
    return out


def check_roll(info: ExtractInfo, landmarks: np.ndarray, detected: np.ndarray, p: RollCheckParams, warnings: list[str]) -> dict[str, float]:
    """The roll-angle gate: the median in-plane head roll (eye line) of the detected frames must
    be within ``p.max_roll_deg``; else an :class:`InputError` (``on_fail: error``) or a warning
    appended to ``warnings``. Returns ``{"median", "min", "max"}`` (degrees) for the report."""
    roll = head_roll_deg(landmarks, detected)
    med = median_roll_deg(roll)
    seen = roll[np.isfinite(roll)]
    stats = {"median": round(med, 2), "min": round(float(seen.min()), 2), "max": round(float(seen.max()), 2)}
    if abs(med) <= p.max_roll_deg:
        return stats
    video = info.source or str(info.root)
    turn = int(round(med / 90.0)) * 90  # the picture is turned by about this much (clockwise on screen)
    fix = (info.rotation_deg + turn + 180.0) % 360.0 - 180.0
    fix = 180.0 if fix == -180.0 else fix + 0.0  # + 0.0: no '-0'
    tag = (
        f"its rotation tag ({info.rotation_deg:+g}°, applied by extract as players do) is probably wrong"
        if info.rotation_deg
        else "it has no rotation tag, but its pixels are probably stored turned (a phone recording whose tag was lost)"
    )
    what = (
        f"the head is rolled {med:+.0f}° in the extracted frames (median angle of the eye line over {len(seen)} frames; "
        f"track.roll_check.max_roll_deg={p.max_roll_deg:g})"
    )
    if p.on_fail == "warning":
        msg = f"{video}: {what}; {tag}"
        warnings.append(msg)
        log.warning("%s", msg)
        return stats
    raise InputError(
        f"{video}: {what}: {tag}. Fix the tag without re-encoding: "
        f"ffmpeg -display_rotation {fix:g} -i {video} -c copy FIXED.mp4, point the subject's video at FIXED.mp4 and rerun "
        "(or set track.roll_check.on_fail: warning in params.yaml if the head really is tilted)."
    )


# ----------------------------------------------------------------------------------------------
# canonical shape, rigid subset, focal search


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched 3D similarity ``dst ≈ s R src + t``: ``src [B, n, 3]``, ``dst [n, 3]`` or ``[B, n, 3]``.

    Returns ``s [B]``, ``R [B, 3, 3]``, ``t [B, 3]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    ms, md = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    xs, xd = src - ms, dst - md
    cov = np.einsum("bni,bnj->bij", xd, xs) / src.shape[1]
    u, d, vt = np.linalg.svd(cov)
    sgn = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    e = np.ones((len(src), 3))
    e[:, 2] = sgn
    rot = np.einsum("bij,bj,bjk->bik", u, e, vt)
    var = (xs**2).sum((1, 2)) / src.shape[1]
    s = (d * e).sum(1) / np.maximum(var, 1e-12)
    t = md[:, 0] - s[:, None] * np.einsum("bij,bj->bi", rot, ms[:, 0])
    return s, rot, t


def apply_similarity(s: np.ndarray, rot: np.ndarray, t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``s [B]``, ``R [B, 3, 3]``, ``t [B, 3]`` applied to ``x [B, N, 3]``."""
    return s[:, None, None] * np.einsum("bij,bnj->bni", rot, x) + t[:, None]


def procrustes_mean(shapes: np.ndarray, idx: np.ndarray, iters: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes on ``shapes [S, N, 3]`` using landmarks ``idx``.

    Returns the mean shape ``[N, 3]`` (at the first shape's scale) and the per-landmark RMS
    residual ``[N]`` of the aligned shapes around it (relative to the mean's size).
    """
    ref = shapes[0]
    for _ in range(iters):
        s, rot, t = umeyama(shapes[:, idx], ref[idx])
        aligned = apply_similarity(s, rot, t, shapes)
        ref = aligned.mean(0)
    size = np.sqrt(((ref[idx] - ref[idx].mean(0)) ** 2).sum(1).mean())
    resid = np.sqrt(((aligned - ref) ** 2).sum(-1).mean(0)) / size
    return ref, resid


def frontalise(shape: np.ndarray, eye_corner_distance_m: float) -> np.ndarray:
    """Rotate a ``[N, 3]`` landmark shape to face the camera (x: right eye → left eye outer corners,
    y: forehead → chin, z = x × y into the head) and scale it to metres."""
    x = shape[fm.LEFT_EYE_CORNERS[1]] - shape[fm.RIGHT_EYE_CORNERS[0]]
    scale = eye_corner_distance_m / np.linalg.norm(x)
    x = x / np.linalg.norm(x)
    y = shape[fm.CHIN] - shape[fm.FOREHEAD_TOP]
    y = y - (y @ x) * x
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    rot = np.stack([x, y, z])
    return (shape - shape.mean(0)) @ rot.T * scale


def rigid_candidates(canonical: np.ndarray) -> np.ndarray:
    """Mesh landmarks that may be rigid: no irises, eyes, brows (with a margin) or anything below
    the base of the nose. ``canonical [478, 3]`` frontalised (y down). Returns indices."""
    n_mesh = fm.NUM_LANDMARKS - 10
    eye_dist = np.linalg.norm(canonical[fm.LEFT_EYE_CORNERS[1]] - canonical[fm.RIGHT_EYE_CORNERS[0]])
    ok = np.ones(n_mesh, bool)
    ok &= canonical[:n_mesh, 1] <= canonical[2, 1]  # above the nose base (landmark 2)
    soft = [*fm.RIGHT_EYE, *fm.LEFT_EYE, *fm.RIGHT_BROW, *fm.LEFT_BROW]
    d = np.linalg.norm(canonical[:n_mesh, None, :2] - canonical[None, soft, :2], axis=-1).min(1)
    ok &= d > 0.12 * eye_dist
    return np.nonzero(ok)[0]


def select_rigid(canonical: np.ndarray, resid: np.ndarray, cand: np.ndarray, params: TrackParams) -> np.ndarray:
    """The rigid subset: candidates whose Procrustes residual is within the best
    ``rigid_keep_fraction`` (drops the landmarks that move or that MediaPipe places unsteadily),
    then ``rigid_landmarks`` of them spread over the face by farthest-point sampling in the
    frontal x-y plane (starting at the nose tip), so that the forehead and temples are kept
    as well as the nose: a wide base constrains pitch and yaw."""
    n_keep = max(params.rigid_landmarks, int(round(params.rigid_keep_fraction * len(cand))))
    pool = cand[np.argsort(resid[cand], kind="stable")[:n_keep]]
    if len(pool) <= params.rigid_landmarks:
        return np.sort(pool)
    xy = canonical[pool, :2]
    chosen = [int(np.argmin(np.linalg.norm(xy - canonical[fm.NOSE_TIP, :2], axis=1)))]
    dist = np.linalg.norm(xy - xy[chosen[0]], axis=1)
    while len(chosen) < params.rigid_landmarks:
        j = int(np.argmax(dist))
        chosen.append(j)
        dist = np.minimum(dist, np.linalg.norm(xy - xy[j], axis=1))
    return np.sort(pool[chosen])


@dataclass
class CameraFit:
    k: np.ndarray
    """``[3, 3]`` intrinsics."""
    canonical: np.ndarray
    """``[478, 3]`` canonical landmarks (world, metres)."""
    rigid_idx: np.ndarray
    """``[K]`` rigid landmark indices."""
    focal_candidates: np.ndarray
    focal_errors: np.ndarray
    """RMS reprojection error (px) of the fit frames per candidate."""
    fit_error_px: float
    """RMS reprojection error at the chosen focal."""


def _intrinsics(f: float, width: int, height: int) -> np.ndarray:
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def pnp(k: np.ndarray, obj: np.ndarray, uv: np.ndarray, init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pose of ``obj [K, 3]`` seen at continuous pixels ``uv [K, 2]``: ``(rvec [3], tvec [3])``."""
    # K and uv are both in continuous pixel coordinates: no half-pixel shift is needed here
    obj64 = np.ascontiguousarray(obj, np.float64)
    uv64 = np.ascontiguousarray(uv, np.float64)
    if init is None:
        ok, rvec, tvec = cv2.solvePnP(obj64, uv64, k, None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            ok, rvec, tvec = cv2.solvePnP(obj64, uv64, k, None, flags=cv2.SOLVEPNP_EPNP)
        rvec, tvec = rvec.copy(), tvec.copy()
    else:
        rvec, tvec = init[0].reshape(3, 1).copy(), init[1].reshape(3, 1).copy()
    _, rvec, tvec = cv2.solvePnP(obj64, uv64, k, None, rvec, tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    return rvec.ravel(), tvec.ravel()


def fit_shape_and_poses(
    shape0: np.ndarray, uv: np.ndarray, k: np.ndarray, iters: int, prior: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Jointly fit a rigid shape ``[K, 3]`` (started at ``shape0``) and the poses of ``S`` frames to
    observations ``uv [S, K, 2]`` with intrinsics ``k``. Returns ``(shape, w2c [S, 4, 4], rms_px)``."""
    dtype = torch.float64
    init = [pnp(k, shape0, uv[i]) for i in range(len(uv))]
    rot0 = torch.as_tensor(refine.rotvec_to_matrix_np(np.stack([r for r, _ in init])), dtype=dtype)
    t0 = torch.as_tensor(np.stack([t for _, t in init]), dtype=dtype)
    f = float(k[0, 0])
    px_to_m = float(np.median(t0[:, 2].numpy())) / f
    head_r = float(np.linalg.norm(shape0 - shape0.mean(0), axis=1).mean())
    px_to_rad = px_to_m / head_r
    s0 = torch.as_tensor(shape0, dtype=dtype)
    obs = torch.as_tensor(uv, dtype=dtype)
    kk = torch.tensor([k[0, 0], k[1, 1]], dtype=dtype)
    cc = torch.tensor([k[0, 2], k[1, 2]], dtype=dtype)
    ds = torch.zeros_like(s0, requires_grad=True)
    dr = torch.zeros_like(t0, requires_grad=True)
    dt = torch.zeros_like(t0, requires_grad=True)

    def residual() -> tuple[torch.Tensor, torch.Tensor]:
        rot = refine.rotvec_to_matrix(dr * px_to_rad) @ rot0
        t = t0 + dt * px_to_m
        x = (s0 + ds * px_to_m) @ rot.transpose(1, 2) + t[:, None]
        proj = x[..., :2] / x[..., 2:3].clamp_min(1e-6) * kk + cc
        return ((proj - obs) ** 2).sum(-1).mean(), rot

    opt = torch.optim.LBFGS([ds, dr, dt], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        r2, _ = residual()
        loss = r2 + prior * (ds**2).sum(-1).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        r2, rot = residual()
        shape = (s0 + ds * px_to_m).numpy()
        t = (t0 + dt * px_to_m).numpy()
    return shape, refine.make_w2c(rot.numpy(), t), float(math.sqrt(float(r2)))


def fit_camera(landmarks: np.ndarray, detected: np.ndarray, width: int, height: int, params: TrackParams) -> CameraFit:
    """Canonical shape, rigid subset and focal length from the landmarks ``[T, 478, 3]``."""
    good = np.nonzero(detected)[0]
    sel = good[np.unique(np.linspace(0, len(good) - 1, min(params.fit_frames, len(good))).round().astype(int))]
    shapes = landmarks[sel].astype(np.float64).copy()
    shapes[..., 2] *= params.z_scale
    n_mesh = fm.NUM_LANDMARKS - 10
    # first pass: align on all mesh points to find the rigid candidates, then rank by residual
    mean, _ = procrustes_mean(shapes, np.arange(n_mesh))
    cand = rigid_candidates(frontalise(mean, params.eye_corner_distance_m))
    mean, resid = procrustes_mean(shapes, cand)
    rigid = select_rigid(frontalise(mean, params.eye_corner_distance_m), resid, cand, params)
    mean, resid = procrustes_mean(shapes, rigid)
    canonical = frontalise(mean, params.eye_corner_distance_m)
    canonical -= canonical[rigid].mean(0)
    shape0 = canonical[rigid]
    uv = landmarks[sel][:, rigid, :2].astype(np.float64)

    cands = np.geomspace(params.focal_range[0] * width, params.focal_range[1] * width, params.focal_steps)
    errors = np.array([fit_shape_and_poses(shape0, uv, _intrinsics(f, width, height), params.fit_iterations, params.shape_prior)[2] for f in cands])
    best = int(np.argmin(errors))
    f_opt = float(cands[best])
    if 0 < best < len(cands) - 1:  # parabola through the three points around the minimum (log focal)
        x = np.log(cands[best - 1 : best + 2])
        a, b, _ = np.polyfit(x, errors[best - 1 : best + 2], 2)
        if a > 0:
            f_opt = float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))
    spread = float(errors.max() - errors.min())
    if best in (0, len(cands) - 1):
        # flat curves are the rule on real clips (small head rotations): then the edge is as good
        # as anywhere; warn only when the error still clearly falls towards the edge
        level = logging.WARNING if spread > params.focal_flat_px else logging.INFO
        log.log(
            level,
            "focal search: the best focal %.0f px is at the edge of track.focal_range %s x width (RMS spread over "
            "the range %.3f px)%s",
            f_opt, params.focal_range, spread,
            "; widen focal_range" if level == logging.WARNING else ": the clip barely determines the focal",
        )  # fmt: skip
    k = _intrinsics(f_opt, width, height)
    shape, _, rms = fit_shape_and_poses(shape0, uv, k, params.fit_iterations, params.shape_prior)
    # full canonical: the Procrustes mean moved onto the fitted rigid shape, rigid points as fitted
    s, rot, t = umeyama(canonical[None, rigid], shape)
    full = apply_similarity(s, rot, t, canonical[None])[0]
    full[rigid] = shape
    origin = full[rigid].mean(0)
    full -= origin
    return CameraFit(k=k, canonical=full, rigid_idx=rigid, focal_candidates=cands, focal_errors=errors, fit_error_px=rms)


def pnp_all(k: np.ndarray, obj: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Per-frame PnP for ``uv [T, K, 2]`` (each frame starts from the previous pose) → ``w2c [T, 4, 4]``."""
    rv = np.zeros((len(uv), 3))
    tv = np.zeros((len(uv), 3))
    prev = None
    for i in range(len(uv)):
        rv[i], tv[i] = pnp(k, obj, uv[i], prev)
        prev = (rv[i], tv[i])
    return refine.make_w2c(refine.rotvec_to_matrix_np(rv), tv)


# ----------------------------------------------------------------------------------------------
# the stage


@dataclass
class TrackResult:
    """Contents of ``track.npz`` (see the module docstring)."""

    k: np.ndarray
    image_size: tuple[int, int]
    fps: float
    world_to_camera: np.ndarray
    world_to_camera_initial: np.ndarray
    landmarks: np.ndarray
    detected: np.ndarray
    canonical: np.ndarray
    rigid_indices: np.ndarray
    z_scale: float
    reproj_error: np.ndarray
    reproj_error_initial: np.ndarray

    @property
    def n_frames(self) -> int:
        return len(self.world_to_camera)


def load_track(track_dir: Path) -> TrackResult:
    """Read and check ``track_dir/track.npz``."""
    path = Path(track_dir) / "track.npz"
    if not path.is_file():
        raise InputError(f"{path}: not found. Run the track stage first (`dvc repro track@<subject>`).")
    with np.load(path) as z:
        version = int(z["format_version"]) if "format_version" in z else -1
        if version != TRACK_FORMAT_VERSION:
            raise InputError(f"{path}: format version {version}, this talkgs reads {TRACK_FORMAT_VERSION}. Rerun the track stage.")
        res = TrackResult(
            k=z["K"], image_size=tuple(int(v) for v in z["image_size"]), fps=float(z["fps"]),  # type: ignore[arg-type]
            world_to_camera=z["world_to_camera"], world_to_camera_initial=z["world_to_camera_initial"],
            landmarks=z["landmarks"], detected=z["detected"], canonical=z["canonical"],
            rigid_indices=z["rigid_indices"], z_scale=float(z["z_scale"]),
            reproj_error=z["reproj_error"], reproj_error_initial=z["reproj_error_initial"],
        )  # fmt: skip
    t = res.n_frames
    shapes = {
        "world_to_camera_initial": (res.world_to_camera_initial.shape, (t, 4, 4)),
        "landmarks": (res.landmarks.shape, (t, fm.NUM_LANDMARKS, 3)),
        "detected": (res.detected.shape, (t,)),
        "canonical": (res.canonical.shape, (fm.NUM_LANDMARKS, 3)),
    }
    for name, (found, want) in shapes.items():
        if tuple(found) != want:
            raise InputError(f"{path}: {name} has shape {tuple(found)}, expected {want}. The file is damaged; rerun the track stage.")
    return res


def _stats(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": float("nan"), "median": float("nan"), "p95": float("nan")}
    return {"mean": float(x.mean()), "median": float(np.median(x)), "p95": float(np.percentile(x, 95))}


def track(
    extract_dir: Path, out_dir: Path, params: TrackParams, *, progress: bool = True, timings: Path | None = None
) -> dict[str, Any]:
    """Run the track stage on ``extract_dir`` and write ``out_dir`` (see the module docstring).

    Returns the report (also written as ``report.json``) plus ``timing_s`` (seconds per step),
    which is not in ``report.json`` (the output holds no wall-clock time: a rerun writes the same
    bytes) but in the json file ``timings`` when given.
    """
    extract_dir, out_dir = Path(extract_dir), Path(out_dir)
    info = read_extract(extract_dir)
    t_start = time.perf_counter()
    n = info.n_frames
    landmarks = np.zeros((n, fm.NUM_LANDMARKS, 3), np.float32)
    detected = np.zeros(n, bool)
    tracker = refine.KeypointTracker(params)
    t_mesh = 0.0
    t_flow = 0.0
    with progress_bar(progress) as bar, fm.FaceMesh(
        min_detection_confidence=params.min_detection_confidence, min_tracking_confidence=params.min_tracking_confidence
    ) as mesh:  # fmt: skip
        task = bar.add_task("face mesh + optical flow", total=n, rate=0.0)
        t_loop = time.perf_counter()
        for i, bgr in _iter_frames(info):
            t0 = time.perf_counter()
            lm = mesh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            t1 = time.perf_counter()
            if lm is not None:
                landmarks[i] = lm
                detected[i] = True
            if params.refine:
                tracker.step(i, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), lm)
            t2 = time.perf_counter()
            t_mesh += t1 - t0
            t_flow += t2 - t1
            if i % 10 == 9 or i == n - 1:
                bar.update(task, completed=i + 1, rate=(i + 1) / (time.perf_counter() - t_loop))
        t_pass = time.perf_counter() - t_loop
    landmarks = check_and_interpolate(landmarks, detected, extract_dir / "frames", params)
    warnings: list[str] = []
    roll = check_roll(info, landmarks, detected, params.roll_check, warnings)

    t0 = time.perf_counter()
    cam = fit_camera(landmarks, detected, info.width, info.height, params)
    rigid_obj = cam.canonical[cam.rigid_idx].astype(np.float64)
    lm_uv = landmarks[:, cam.rigid_idx, :2].astype(np.float64)
    w2c0 = pnp_all(cam.k, rigid_obj, lm_uv)
    t_fit = time.perf_counter() - t0
    err0 = refine.reprojection_errors(cam.k, w2c0, rigid_obj, lm_uv).astype(np.float32)

    ba: refine.BAResult | None = None
    tracks = tracker.result()
    if params.refine:
        surface = cam.canonical[: fm.NUM_LANDMARKS - 10].astype(np.float64)
        ba = refine.bundle_adjust(cam.k, w2c0, rigid_obj, lm_uv, detected, tracks, params, surface=surface, progress=progress)
        w2c = ba.w2c
    else:
        w2c = w2c0.copy()
    err1 = refine.reprojection_errors(cam.k, w2c, rigid_obj, lm_uv).astype(np.float32)

    failed = np.nonzero(~detected)[0]
    jit0, jit1 = refine.pose_jitter(w2c0), refine.pose_jitter(w2c)
    report: dict[str, Any] = {
        "format_version": TRACK_FORMAT_VERSION,
        "frames": n,
        "image_size": [info.width, info.height],
        "failed_frames": {"count": int(len(failed)), "fraction": float(len(failed) / n), "frames": format_frames(failed, 1000)},
        "camera": {
            "focal_px": float(cam.k[0, 0]),
            "focal_over_width": float(cam.k[0, 0] / info.width),
            "fov_deg": float(np.degrees(2 * np.arctan(info.width / (2 * cam.k[0, 0])))),
            "principal_point": [float(cam.k[0, 2]), float(cam.k[1, 2])],
            "fit_rms_px": cam.fit_error_px,
            "focal_search": [{"focal_px": float(f), "rms_px": float(e)} for f, e in zip(cam.focal_candidates, cam.focal_errors)],
            "focal_search_spread_px": float(cam.focal_errors.max() - cam.focal_errors.min()),
            "focal_weakly_determined": bool(cam.focal_errors.max() - cam.focal_errors.min() <= params.focal_flat_px),
            "head_distance_m": float(np.median(w2c[:, 2, 3])),
        },
        "rigid_landmarks": [int(v) for v in cam.rigid_idx],
        "reprojection_px": {
            "rigid_landmarks_initial": _stats(err0[detected]),
            "rigid_landmarks_refined": _stats(err1[detected]),
        },
        "jitter": {"initial": jit0, "refined": jit1},
        "head_roll_deg": roll,
        "warnings": warnings,
        "keypoints": {**tracks.stats, **(ba.stats if ba else {})},
        "conventions": "OpenCV camera (x right, y down, z forward); world_to_camera 4x4 X_cam = R X_world + t; "
        "world in metres, head static; K in pixels, continuous pixel coordinates (pixel centres at +0.5)",
        "params": dataclasses.asdict(params),
    }
    if ba is not None:
        report["reprojection_px"]["keypoints_initial"] = _stats(ba.keypoint_error_initial)
        report["reprojection_px"]["keypoints_refined"] = _stats(ba.keypoint_error)

    with atomic_dir(out_dir) as tmp:
        np.savez_compressed(
            tmp / "track.npz",
            format_version=np.int64(TRACK_FORMAT_VERSION),
            K=cam.k,
            image_size=np.array([info.width, info.height], np.int64),
            fps=np.float64(info.fps),
            world_to_camera=w2c,
            world_to_camera_initial=w2c0,
            landmarks=landmarks,
            detected=detected,
            canonical=cam.canonical.astype(np.float32),
            rigid_indices=cam.rigid_idx.astype(np.int64),
            z_scale=np.float64(params.z_scale),
            reproj_error=err1,
            reproj_error_initial=err0,
            keypoints=(ba.points if ba else np.zeros((0, 3))).astype(np.float32),
            keypoint_frame=(ba.tracks.frame if ba else tracks.frame),
            keypoint_track=(ba.tracks.track if ba else tracks.track),
            keypoint_uv=(ba.tracks.uv if ba else tracks.uv),
            focal_candidates=cam.focal_candidates,
            focal_errors=cam.focal_errors,
        )
        write_json(tmp / "report.json", report)
        _plot_report(tmp / "report.png", cam, w2c0, w2c, err0, err1, detected, ba, info.fps)
    timing = {
        "landmarks_and_flow_pass": round(t_pass, 2),
        "face_mesh": round(t_mesh, 2),
        "optical_flow": round(t_flow, 2),
        "camera_fit_and_pnp": round(t_fit, 2),
        "bundle_adjustment": ba.seconds if ba else 0.0,
        "pass_frames_per_s": round(n / max(t_pass, 1e-9), 1),
        "total": round(time.perf_counter() - t_start, 2),
    }
    if timings is not None:
        write_json(timings, {"frames": n, "timing_s": timing})
    report = {**report, "timing_s": timing}
    log.info(
        "%s: %d frames, %d failed; focal %.0f px; reprojection %.2f → %.2f px; angular jitter %.3f → %.3f deg/frame²; %.1f s",
        extract_dir, n, len(failed), cam.k[0, 0], report["reprojection_px"]["rigid_landmarks_initial"]["mean"],
        report["reprojection_px"]["rigid_landmarks_refined"]["mean"], jit0["angular_deg_mean"], jit1["angular_deg_mean"],
        report["timing_s"]["total"],
    )  # fmt: skip
    return report


def _plot_report(
    path: Path, cam: CameraFit, w2c0: np.ndarray, w2c1: np.ndarray, err0: np.ndarray, err1: np.ndarray,
    detected: np.ndarray, ba: refine.BAResult | None, fps: float,
) -> None:  # fmt: skip
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 9), dpi=90)
    axs = fig.subplots(2, 2)
    ax = axs[0, 0]
    ax.semilogx(cam.focal_candidates, cam.focal_errors, "o-")
    ax.axvline(cam.k[0, 0], color="r", ls="--", label=f"chosen {cam.k[0, 0]:.0f} px")
    ax.set(xlabel="focal (px)", ylabel="RMS reprojection (px)", title="focal search")
    ax.legend()
    t = np.arange(len(w2c0)) / fps
    ax = axs[0, 1]
    for w2c, ls, lab in ((w2c0, ":", "initial"), (w2c1, "-", "refined")):
        # head rotation in camera space (pitch, yaw, roll ~ x, y, z rotvec)
        rv = np.degrees(refine.matrix_to_rotvec_np(w2c[:, :3, :3]))
        for j, name in enumerate("xyz"):
            ax.plot(t, rv[:, j], ls, color=f"C{j}", lw=1, label=f"{lab} rot {name}" if lab == "refined" or j == 0 else None)
    ax.set(xlabel="time (s)", ylabel="degrees", title="head rotation (world→camera axis-angle)")
    ax.legend(fontsize=7)
    ax = axs[1, 0]
    a0, _ = refine.jitter_series(w2c0)
    a1, _ = refine.jitter_series(w2c1)
    ax.plot(t[1:-1], a0, lw=0.8, label=f"initial (mean {a0.mean():.3f})")
    ax.plot(t[1:-1], a1, lw=0.8, label=f"refined (mean {a1.mean():.3f})")
    ax.set(xlabel="time (s)", ylabel="deg / frame²", title="angular acceleration (pose jitter)")
    ax.legend()
    ax = axs[1, 1]
    ax.plot(t, err0, lw=0.8, label=f"landmarks initial (mean {err0[detected].mean():.2f})")
    ax.plot(t, err1, lw=0.8, label=f"landmarks refined (mean {err1[detected].mean():.2f})")
    if ba is not None:
        ax.plot(t, ba.keypoint_error_initial, lw=0.6, alpha=0.7, label="LK keypoints initial")
        ax.plot(t, ba.keypoint_error, lw=0.6, alpha=0.7, label="LK keypoints refined")
    for i in np.nonzero(~detected)[0]:
        ax.axvline(t[i], color="k", alpha=0.15, lw=0.5)
    ax.set(xlabel="time (s)", ylabel="px", title="reprojection error (grey: face mesh failed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
