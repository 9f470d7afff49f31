"""Head-pose refinement with optical-flow keypoints (the SyncGaussian §3.3 / SyncTalk "stable head").

Three parts, used by :func:`talkgs.preprocess.track.track`:

- :class:`KeypointTracker` -- OpenCV pyramidal Lucas-Kanade tracking of textured points on the
  rigid part of the face (forehead, temples, nose, upper cheeks: the face oval minus eyes, brows
  and everything below the nose), with a forward-backward check. Points are seeded with
  Shi-Tomasi corners (``cv2.goodFeaturesToTrack``) inside that region and re-seeded whenever
  fewer than ``reseed_fraction`` of ``keypoints`` survive. The paper selects keypoints with a
  Laplacian filter on a learned optical flow; here the region is rigid by construction and the
  per-track residual after the first BA stage removes points that slide or deform (see
  :func:`bundle_adjust`).
- :func:`bundle_adjust` -- PyTorch bundle adjustment in two stages as in the paper (adapted from
  AD-NeRF's tracker): (1) the 3D keypoints alone, initialised on the canonical face surface,
  with the poses fixed; (2) keypoints and per-frame poses jointly, with the rigid-landmark
  reprojection term (anchors the gauge and the absolute pose) and a temporal smoothness term
  (second differences of head points in camera space, in pixels).
- Pose helpers and the quality metrics reported by the track stage: :func:`pose_jitter`
  (frame-to-frame angular and translational acceleration) and :func:`reprojection_errors`.

Conventions (shared with the renderer): OpenCV camera (x right, y down, z forward); poses are
4x4 world-to-camera matrices ``X_cam = R X_world + t``; pinhole intrinsics in pixels of the
extracted frames; pixel coordinates are continuous with pixel ``(i, j)`` covering
``[i, i+1) x [j, j+1)`` (gsplat's convention: the centre of the top-left pixel is (0.5, 0.5)).
OpenCV's optical flow uses integer pixel centres, so LK positions are shifted by +0.5 here.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np
import torch

from talkgs.preprocess import facemesh as fm

R = TypeVar("R")

if TYPE_CHECKING:
    from talkgs.preprocess.track import TrackParams

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# rotation helpers


def rotvec_to_matrix(r: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle ``[..., 3]`` → rotation matrices ``[..., 3, 3]`` (differentiable at 0)."""
    th2 = (r * r).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = th2 < 1e-8
    th2s = th2.clamp_min(1e-8)
    th = th2s.sqrt()
    a = torch.where(small, 1.0 - th2 / 6.0, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24.0, (1.0 - torch.cos(th)) / th2s)
    x, y, z = r[..., 0], r[..., 1], r[..., 2]
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*r.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_rotvec_np(rot: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` → axis-angle ``[..., 3]`` (numpy, via scipy)."""
    from scipy.spatial.transform import Rotation

    shape = rot.shape[:-2]
    return Rotation.from_matrix(rot.reshape(-1, 3, 3)).as_rotvec().reshape(*shape, 3)


def rotvec_to_matrix_np(r: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    shape = r.shape[:-1]
    return Rotation.from_rotvec(r.reshape(-1, 3)).as_matrix().reshape(*shape, 3, 3)


def make_w2c(rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``R [T, 3, 3]``, ``t [T, 3]`` → world-to-camera ``[T, 4, 4]``."""
    out = np.zeros((*rot.shape[:-2], 4, 4), dtype=np.float64)
    out[..., :3, :3] = rot
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def project_np(k: np.ndarray, x_cam: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-space points ``[..., 3]`` with ``K [3, 3]`` → pixels ``[..., 2]``."""
    z = np.maximum(x_cam[..., 2:3], 1e-9)
    uv = x_cam[..., :2] / z
    return uv * np.array([k[0, 0], k[1, 1]]) + np.array([k[0, 2], k[1, 2]])


def transform_np(w2c: np.ndarray, x_world: np.ndarray) -> np.ndarray:
    """``w2c [T, 4, 4]``, ``x_world [N, 3]`` → camera-space ``[T, N, 3]``."""
    return np.einsum("tij,nj->tni", w2c[:, :3, :3], x_world) + w2c[:, None, :3, 3]


# ----------------------------------------------------------------------------------------------
# metrics


def pose_jitter(w2c: np.ndarray) -> dict[str, float]:
    """Frame-to-frame acceleration of a pose sequence ``w2c [T, 4, 4]``.

    Angular: ``|ω_{t+1} - ω_t|`` with ``ω_t = log(R_{t+1} R_t^T)`` (degrees / frame²).
    Translational: ``|c_{t+1} - 2 c_t + c_{t-1}|`` of the head origin in camera space
    (``c_t = t_t``; millimetres / frame², world units being metres). Mean, median and 95th
    percentile; zeros for fewer than 3 frames.
    """
    if len(w2c) < 3:
        return {k: 0.0 for k in ("angular_deg_mean", "angular_deg_median", "angular_deg_p95",
                                 "translational_mm_mean", "translational_mm_median", "translational_mm_p95")}  # fmt: skip
    ang, trans = jitter_series(w2c)
    return {
        "angular_deg_mean": float(ang.mean()),
        "angular_deg_median": float(np.median(ang)),
        "angular_deg_p95": float(np.percentile(ang, 95)),
        "translational_mm_mean": float(trans.mean()),
        "translational_mm_median": float(np.median(trans)),
        "translational_mm_p95": float(np.percentile(trans, 95)),
    }


def jitter_series(w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame angular (deg/frame², ``[T-2]``) and translational (mm/frame², ``[T-2]``) acceleration."""
    rot = w2c[:, :3, :3]
    rel = rot[1:] @ np.swapaxes(rot[:-1], -1, -2)
    omega = np.degrees(matrix_to_rotvec_np(rel))  # [T-1, 3]
    ang = np.linalg.norm(np.diff(omega, axis=0), axis=-1)
    t = w2c[:, :3, 3]
    trans = 1000.0 * np.linalg.norm(t[2:] - 2 * t[1:-1] + t[:-2], axis=-1)
    return ang, trans


def reprojection_errors(k: np.ndarray, w2c: np.ndarray, points: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Per-frame mean pixel distance ``[T]`` between ``points [N, 3]`` projected with ``w2c [T, 4, 4]``
    and observations ``uv [T, N, 2]``."""
    proj = project_np(k, transform_np(w2c, points))
    return np.linalg.norm(proj - uv, axis=-1).mean(-1)


# ----------------------------------------------------------------------------------------------
# keypoint tracking


def rigid_region_mask(
    lm: np.ndarray, shape: tuple[int, int], offset: tuple[int, int] = (0, 0), *, oval_shrink: float = 0.1,
    eye_margin: float = 0.12,
) -> np.ndarray:  # fmt: skip
    """``uint8 [h, w]`` mask (255 inside) of the rigid face region of one frame.

    ``lm`` is ``[478, >=2]`` landmarks in continuous pixels; ``offset`` (x0, y0) is the top-left
    of the crop the mask covers, ``shape`` its (h, w). Region: the face oval shrunk by
    ``oval_shrink`` towards its centre (keeps points off the silhouette), minus eyes and brows
    grown by ``eye_margin`` x the outer-eye-corner distance, minus everything below the base of
    the nose (lips, jaw, nasolabial folds).
    """
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    p = lm[:, :2].astype(np.float64) - 0.5 - np.asarray(offset, np.float64)  # OpenCV pixel centres
    oval = p[list(fm.FACE_OVAL)]
    c = oval.mean(0)
    oval = c + (1.0 - oval_shrink) * (oval - c)
    cv2.fillPoly(mask, [np.round(oval).astype(np.int32)], 255)
    eye_dist = float(np.linalg.norm(p[fm.LEFT_EYE_CORNERS[1]] - p[fm.RIGHT_EYE_CORNERS[0]]))
    thick = max(1, int(round(2 * eye_margin * eye_dist)))
    for g in (fm.RIGHT_EYE, fm.LEFT_EYE, fm.RIGHT_BROW, fm.LEFT_BROW):
        poly = np.round(p[list(g)]).astype(np.int32)
        cv2.fillPoly(mask, [poly], 0)
        cv2.polylines(mask, [poly], True, 0, thickness=thick)
    # below the nose base: half-plane under the line through landmark 2, perpendicular to chin→forehead
    up = p[fm.FOREHEAD_TOP] - p[fm.CHIN]
    up /= max(np.linalg.norm(up), 1e-9)
    side = np.array([-up[1], up[0]])
    base = p[2]
    big = 4.0 * max(h, w)
    quad = np.array([base - big * side, base + big * side, base + big * side - big * up, base - big * side - big * up])
    cv2.fillPoly(mask, [np.round(quad).astype(np.int32)], 0)
    return mask


@dataclass
class KeypointTracks:
    """Observations of LK keypoint tracks over a clip (continuous pixel coordinates)."""

    frame: np.ndarray
    """``int32 [M]`` frame index of each observation."""
    track: np.ndarray
    """``int32 [M]`` track id of each observation (0..n_tracks-1)."""
    uv: np.ndarray
    """``float32 [M, 2]`` observed position."""
    n_tracks: int
    stats: dict[str, Any] = field(default_factory=dict)

    def subset(self, keep_obs: np.ndarray) -> KeypointTracks:
        """Observations where ``keep_obs`` is true, track ids renumbered densely."""
        trk = self.track[keep_obs]
        ids, dense = np.unique(trk, return_inverse=True)
        return KeypointTracks(self.frame[keep_obs], dense.astype(np.int32), self.uv[keep_obs], len(ids), dict(self.stats))


class KeypointTracker:
    """Pyramidal Lucas-Kanade tracking of rigid-face keypoints, one :meth:`step` per frame.

    ``step(i, gray, lm)`` takes frame ``i`` (consecutive), its ``uint8 [H, W]`` grayscale image and
    its landmarks ``[478, >=2]`` (``None`` where the face mesh failed: points are still tracked,
    but neither checked against the rigid region nor re-seeded). LK runs on a crop around the face.
    """

    def __init__(self, params: TrackParams) -> None:
        self.p = params
        self.prev: np.ndarray | None = None
        self.last_lm: np.ndarray | None = None
        self.active_ids = np.zeros(0, np.int32)
        self.active_pts = np.zeros((0, 2), np.float32)  # OpenCV coordinates (integer pixel centres)
        self.next_id = 0
        self._frames: list[np.ndarray] = []
        self._tracks: list[np.ndarray] = []
        self._uv: list[np.ndarray] = []
        self.n_fb_rejected = 0
        self.n_region_rejected = 0
        self.n_lost = 0
        self.n_seeded = 0

    def _crop(self, lm: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
        oval = lm[list(fm.FACE_OVAL), :2]
        lo, hi = oval.min(0), oval.max(0)
        pad = 0.15 * (hi - lo) + self.p.lk_window
        x0, y0 = np.floor(lo - pad).astype(int)
        x1, y1 = np.ceil(hi + pad).astype(int)
        return max(0, x0), max(0, y0), min(w, x1), min(h, y1)

    def _record(self, i: int, ids: np.ndarray, pts: np.ndarray) -> None:
        if len(ids):
            self._frames.append(np.full(len(ids), i, np.int32))
            self._tracks.append(ids.astype(np.int32))
            self._uv.append((pts + 0.5).astype(np.float32))

    def step(self, i: int, gray: np.ndarray, lm: np.ndarray | None) -> None:
        h, w = gray.shape
        ref_lm = lm if lm is not None else self.last_lm
        if ref_lm is None:  # no face seen yet: nothing to track or seed
            self.prev = gray
            return
        x0, y0, x1, y1 = self._crop(ref_lm, h, w)
        win = (self.p.lk_window, self.p.lk_window)
        region = rigid_region_mask(lm, (y1 - y0, x1 - x0), (x0, y0)) if lm is not None else None
        if self.prev is not None and len(self.active_ids):
            a = self.prev[y0:y1, x0:x1]
            b = gray[y0:y1, x0:x1]
            p0 = (self.active_pts - np.array([x0, y0], np.float32)).reshape(-1, 1, 2)
            crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(a, b, p0, None, winSize=win, maxLevel=self.p.lk_levels, criteria=crit)
            p0b, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, p1, None, winSize=win, maxLevel=self.p.lk_levels, criteria=crit)
            p1, p0b = p1.reshape(-1, 2), p0b.reshape(-1, 2)
            ok = (st1.ravel() == 1) & (st2.ravel() == 1)
            fb = np.linalg.norm(p0b - p0.reshape(-1, 2), axis=1)
            fb_ok = fb < self.p.fb_threshold
            self.n_fb_rejected += int((ok & ~fb_ok).sum())
            ok &= fb_ok
            ix = np.round(p1[:, 0]).astype(int)
            iy = np.round(p1[:, 1]).astype(int)
            inside = (ix >= 0) & (iy >= 0) & (ix < x1 - x0) & (iy < y1 - y0)
            ok &= inside
            if region is not None:
                in_region = np.zeros_like(ok)
                in_region[inside] = region[iy[inside], ix[inside]] > 0
                self.n_region_rejected += int((ok & ~in_region).sum())
                ok &= in_region
            self.n_lost += int((~ok).sum())
            self.active_ids = self.active_ids[ok]
            self.active_pts = p1[ok] + np.array([x0, y0], np.float32)
            self._record(i, self.active_ids, self.active_pts)
        if lm is not None and len(self.active_ids) < self.p.reseed_fraction * self.p.keypoints:
            seed = region.copy()
            md = self.p.keypoint_min_distance
            for x, y in self.active_pts - np.array([x0, y0], np.float32):
                cv2.circle(seed, (int(round(x)), int(round(y))), md, 0, -1)
            want = self.p.keypoints - len(self.active_ids)
            pts = cv2.goodFeaturesToTrack(
                gray[y0:y1, x0:x1], maxCorners=want, qualityLevel=self.p.keypoint_quality, minDistance=md,
                mask=seed, blockSize=7,
            )  # fmt: skip
            if pts is not None and len(pts):
                pts = pts.reshape(-1, 2).astype(np.float32) + np.array([x0, y0], np.float32)
                ids = np.arange(self.next_id, self.next_id + len(pts), dtype=np.int32)
                self.next_id += len(pts)
                self.n_seeded += len(pts)
                self._record(i, ids, pts)
                self.active_ids = np.concatenate([self.active_ids, ids])
                self.active_pts = np.concatenate([self.active_pts, pts])
        if lm is not None:
            self.last_lm = lm
        self.prev = gray

    def result(self) -> KeypointTracks:
        if self._frames:
            frame = np.concatenate(self._frames)
            track = np.concatenate(self._tracks)
            uv = np.concatenate(self._uv)
        else:
            frame, track, uv = np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 2), np.float32)
        stats = {
            "tracks_seeded": int(self.n_seeded),
            "observations": int(len(frame)),
            "fb_rejected": int(self.n_fb_rejected),
            "left_rigid_region": int(self.n_region_rejected),
        }
        return KeypointTracks(frame, track, uv, int(self.next_id), stats)


# ----------------------------------------------------------------------------------------------
# bundle adjustment


def _pseudo_huber(r2: torch.Tensor, delta: float) -> torch.Tensor:
    """Smooth robust cost of squared residuals: ≈ r² near 0, ≈ 2δ|r| far out."""
    d2 = delta * delta
    return 2.0 * d2 * (torch.sqrt(1.0 + r2 / d2) - 1.0)


@dataclass
class BAResult:
    w2c: np.ndarray
    """``float64 [T, 4, 4]`` refined world-to-camera poses."""
    points: np.ndarray
    """``float64 [P, 3]`` 3D keypoints (world, metres) of the kept tracks."""
    tracks: KeypointTracks
    """The kept tracks' observations (ids index ``points``)."""
    keypoint_error_initial: np.ndarray
    """``float32 [T]`` mean keypoint reprojection error per frame with the initial poses (after the
    points-only stage); NaN where a frame has no keypoint."""
    keypoint_error: np.ndarray
    """``float32 [T]`` the same with the refined poses."""
    stats: dict[str, Any]
    seconds: float = 0.0
    """Wall-clock time of the adjustment (kept out of ``stats``, which goes into the track report)."""


def init_keypoints(
    k: np.ndarray, w2c: np.ndarray, surface: np.ndarray, tracks: KeypointTracks
) -> tuple[np.ndarray, np.ndarray]:
    """3D start position of each track on the face surface: the track's first observation,
    expressed in barycentric coordinates of the triangle of the projected ``surface [N, 3]``
    (triangulated once, by Delaunay in the frontal x-y plane of the canonical shape) that
    contains it; where several projected triangles contain it, the one nearest the camera.

    Returns ``points [n_tracks, 3]`` and ``ok [n_tracks]`` (False: first observation outside the
    projected surface).
    """
    from scipy.spatial import Delaunay

    tris = Delaunay(surface[:, :2]).simplices  # [F, 3]
    pts = np.zeros((tracks.n_tracks, 3))
    ok = np.zeros(tracks.n_tracks, bool)
    if tracks.n_tracks == 0:
        return pts, ok
    first = np.full(tracks.n_tracks, -1, np.int64)
    order = np.arange(len(tracks.track))[::-1]  # last write wins → first observation
    first[tracks.track[order]] = order
    birth = tracks.frame[first]
    by_frame = np.argsort(birth, kind="stable")
    frames, starts = np.unique(birth[by_frame], return_index=True)
    ends = np.append(starts[1:], len(by_frame))
    for f, s, e in zip(frames, starts, ends):
        sel = by_frame[s:e]
        xc = transform_np(w2c[f : f + 1], surface)[0]
        proj = project_np(k, xc)
        v0, v1, v2 = proj[tris[:, 0]], proj[tris[:, 1]], proj[tris[:, 2]]
        m = np.stack([v1 - v0, v2 - v0], -1)  # [F, 2, 2]
        det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
        valid = np.abs(det) > 1e-9
        inv = np.zeros_like(m)
        inv[valid] = np.linalg.inv(m[valid])
        q = tracks.uv[first[sel]].astype(np.float64)  # [n, 2]
        b = np.einsum("fij,nfj->nfi", inv, q[:, None] - v0[None])  # [n, F, 2]
        inside = (b >= -1e-9).all(-1) & (b.sum(-1) <= 1 + 1e-9) & valid[None]
        if not inside.any():
            continue
        depth = xc[tris, 2].mean(-1)  # [F]
        cost = np.where(inside, depth[None], np.inf)
        best = cost.argmin(1)
        hit = np.isfinite(cost[np.arange(len(sel)), best])
        bb = b[np.arange(len(sel)), best]  # [n, 2]
        bary = np.stack([1 - bb.sum(-1), bb[:, 0], bb[:, 1]], -1)
        p3 = np.einsum("nk,nkd->nd", bary, surface[tris[best]])
        pts[sel[hit]] = p3[hit]
        ok[sel[hit]] = True
    return pts, ok


def _torch_deterministic(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` run with PyTorch's deterministic algorithms on; the previous mode is restored."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.use_deterministic_algorithms(was)

    return wrapper


@_torch_deterministic
def bundle_adjust(
    k: np.ndarray,
    w2c0: np.ndarray,
    canonical: np.ndarray,
    lm_uv: np.ndarray,
    lm_valid: np.ndarray,
    tracks: KeypointTracks,
    params: TrackParams,
    *,
    surface: np.ndarray | None = None,
    progress: bool = True,
) -> BAResult:
    """Jointly refine 3D keypoints and per-frame poses (two stages, PyTorch L-BFGS).

    Args:
        k: ``[3, 3]`` intrinsics (fixed).
        w2c0: ``[T, 4, 4]`` initial world-to-camera poses (per-frame PnP).
        canonical: ``[K, 3]`` rigid canonical landmarks (world, metres), fixed.
        lm_uv: ``[T, K, 2]`` their detections (pixels).
        lm_valid: ``[T]`` frames whose detections are real (not interpolated).
        tracks: LK keypoint observations.
        surface: ``[N, 3]`` landmarks (world) whose projected Delaunay triangulation places the
            keypoints on the face at their first observation (default: ``canonical``); the track
            stage passes the whole canonical mesh, which covers the seeding region.

    Cost per frame (summed over frames, divided by T)::

        Σ_obs ρ(|π(R_t P_k + t_t) - u|²) + landmark_weight Σ_j ρ(|π(R_t S_j + t_t) - l_tj|²)
        + smoothness_weight Σ_a |f/z̄ (X^a_{t+1} - 2 X^a_t + X^a_{t-1})|²

    ρ is a pseudo-Huber cost with ``ba_huber_px``; ``X^a`` are 16 rigid head points in camera
    space, so the smoothness term is an acceleration in pixels. Stage 1 optimises the points
    alone; tracks whose median residual then exceeds ``ba_track_outlier_px`` (sliding or
    deforming skin) are dropped before stage 2 optimises points and poses together.

    Deterministic: the same inputs give bitwise the same poses (PyTorch's deterministic
    algorithms are on for the call: the scatter-add behind the keypoint gather otherwise sums in
    a thread-dependent order, and L-BFGS amplified that to ~5e-4 in pose between runs).
    """
    p = params
    t_start = time.perf_counter()
    n_frames = len(w2c0)
    dtype = torch.float32  # float64 is ~2x slower; pixel residuals need no more
    fx, fy, cx, cy = float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])
    f = 0.5 * (fx + fy)
    z_mean = float(np.median(w2c0[:, 2, 3]))
    px_to_m = z_mean / f  # metres per pixel at the head's depth
    head_r = float(np.linalg.norm(canonical - canonical.mean(0), axis=1).mean())
    px_to_rad = px_to_m / max(head_r, 1e-6)  # a rotation of this moves head points by ~1 px

    # keypoint initialisation on the canonical surface
    pts0, ok = init_keypoints(k, w2c0, canonical if surface is None else surface, tracks)
    counts = np.bincount(tracks.track, minlength=tracks.n_tracks)
    ok &= counts >= p.min_track_length
    keep = ok[tracks.track]
    tr = tracks.subset(keep)
    pts0 = pts0[ok]
    stats: dict[str, Any] = {"tracks_initialised": int(ok.sum()), "tracks_total": int(tracks.n_tracks)}

    rot0 = torch.as_tensor(w2c0[:, :3, :3], dtype=dtype)
    t0 = torch.as_tensor(w2c0[:, :3, 3], dtype=dtype)
    can = torch.as_tensor(canonical, dtype=dtype)
    lm_t = torch.as_tensor(lm_uv, dtype=dtype)
    lm_w = torch.as_tensor(lm_valid, dtype=dtype)
    anchors = can[np.linspace(0, len(canonical) - 1, min(16, len(canonical))).round().astype(int)]
    kk = torch.tensor([fx, fy], dtype=dtype)
    cc = torch.tensor([cx, cy], dtype=dtype)

    def project(x: torch.Tensor) -> torch.Tensor:
        return x[..., :2] / x[..., 2:3].clamp_min(1e-6) * kk + cc

    def poses(dr: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rot = rotvec_to_matrix(dr * px_to_rad) @ rot0
        return rot, t0 + dt * px_to_m

    def kp_cost(rot: torch.Tensor, t: torch.Tensor, pts: torch.Tensor, obs: _DenseObs) -> tuple[torch.Tensor, torch.Tensor]:
        x = pts[obs.idx] @ rot.transpose(1, 2) + t[:, None]  # [T, Kmax, 3]
        r2 = ((project(x) - obs.uv) ** 2).sum(-1) * obs.mask
        return _pseudo_huber(r2, p.ba_huber_px).mul(obs.mask).sum(), r2[obs.frame, obs.slot]

    def run_lbfgs(params_: list[torch.Tensor], closure_fn, iters: int, label: str, bar, task) -> None:  # noqa: ANN001
        opt = torch.optim.LBFGS(
            params_, lr=p.ba_lr, max_iter=10, history_size=20, line_search_fn="strong_wolfe",
            tolerance_grad=1e-10, tolerance_change=1e-12,
        )  # fmt: skip

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = closure_fn()
            loss.backward()
            return loss

        done = 0
        last = math.inf
        while done < iters:
            loss = float(opt.step(closure).detach())
            done += 10
            if bar is not None:
                bar.update(task, advance=10, loss=loss, phase=label)
            if abs(last - loss) <= 1e-9 * max(1.0, abs(loss)):
                break
            last = loss
        if bar is not None:
            bar.update(task, completed=bar.tasks[task].completed + max(0, iters - done))

    from talkgs.progress import progress_bar

    with progress_bar(progress, "iterations", fields="{phase}, loss {loss:.4g}", rate=False) as bar:
        task = bar.add_task("bundle adjustment", total=p.ba_point_iterations + p.ba_iterations, loss=float("nan"), phase="points")
        # stage 1: points only
        rot_init, t_init = poses(torch.zeros(n_frames, 3, dtype=dtype), torch.zeros(n_frames, 3, dtype=dtype))
        dp = torch.zeros(len(pts0), 3, dtype=dtype, requires_grad=True)
        p0 = torch.as_tensor(pts0, dtype=dtype)
        if len(pts0):
            obs1 = _DenseObs(tr, n_frames, dtype)
            run_lbfgs([dp], lambda: kp_cost(rot_init, t_init, p0 + dp * px_to_m, obs1)[0] / n_frames,
                      p.ba_point_iterations, "points", bar, task)  # fmt: skip
        with torch.no_grad():
            r2 = kp_cost(rot_init, t_init, p0 + dp * px_to_m, obs1)[1].numpy() if len(pts0) else np.zeros(0)
        # drop tracks that do not behave like points on a rigid head
        res = np.sqrt(r2)
        med = np.zeros(tr.n_tracks)
        if len(res):
            order = np.argsort(tr.track, kind="stable")
            starts = np.searchsorted(tr.track[order], np.arange(tr.n_tracks))
            ends = np.append(starts[1:], len(order))
            med = np.array([np.median(res[order[s:e]]) for s, e in zip(starts, ends)])
        good_track = med <= p.ba_track_outlier_px
        stats["tracks_outliers"] = int((~good_track).sum())
        keep_obs = good_track[tr.track] if len(res) else np.zeros(0, bool)
        tr2 = tr.subset(keep_obs)
        err_init = _per_frame_mean(tr2.frame, res[keep_obs], n_frames)
        pts1 = (p0 + dp.detach() * px_to_m)[torch.as_tensor(good_track)]
        stats["tracks_used"] = int(tr2.n_tracks)
        stats["observations_used"] = int(len(tr2.frame))

        # stage 2: points + poses, landmark anchor, smoothness
        dr = torch.zeros(n_frames, 3, dtype=dtype, requires_grad=True)
        dt = torch.zeros(n_frames, 3, dtype=dtype, requires_grad=True)
        dp2 = torch.zeros(len(pts1), 3, dtype=dtype, requires_grad=True)
        obs2 = _DenseObs(tr2, n_frames, dtype)

        def full_cost() -> torch.Tensor:
            rot, t = poses(dr, dt)
            loss = kp_cost(rot, t, pts1 + dp2 * px_to_m, obs2)[0] if len(pts1) else torch.zeros((), dtype=dtype)
            xl = can @ rot.transpose(1, 2) + t[:, None]  # [T, K, 3]
            r2l = ((project(xl) - lm_t) ** 2).sum(-1)
            loss = loss + p.landmark_weight * (_pseudo_huber(r2l, p.ba_huber_px).sum(-1) * lm_w).sum()
            if n_frames >= 3:
                xa = anchors @ rot.transpose(1, 2) + t[:, None]
                acc = (xa[2:] - 2 * xa[1:-1] + xa[:-2]) / px_to_m
                loss = loss + p.smoothness_weight * (acc**2).sum()
            return loss / n_frames

        bar.update(task, phase="poses+points")
        run_lbfgs([dr, dt, dp2], full_cost, p.ba_iterations, "poses+points", bar, task)
        with torch.no_grad():
            rot, t = poses(dr, dt)
            pts_final = pts1 + dp2 * px_to_m
            r2f = kp_cost(rot, t, pts_final, obs2)[1].numpy() if len(pts1) else np.zeros(0)
    w2c = make_w2c(rot.double().numpy(), t.double().numpy())
    seconds = round(time.perf_counter() - t_start, 2)
    return BAResult(
        w2c=w2c,
        points=pts_final.numpy(),
        tracks=tr2,
        keypoint_error_initial=err_init,
        keypoint_error=_per_frame_mean(tr2.frame, np.sqrt(r2f), n_frames),
        stats=stats,
        seconds=seconds,
    )


class _DenseObs:
    """Keypoint observations laid out per frame, ``[T, Kmax]`` (padding masked out), so that the
    projection is one batched matmul per frame instead of a rotation gathered per observation."""

    def __init__(self, trk: KeypointTracks, n_frames: int, dtype: torch.dtype) -> None:
        order = np.argsort(trk.frame, kind="stable")
        counts = np.bincount(trk.frame, minlength=n_frames)
        kmax = max(1, int(counts.max()) if len(counts) else 1)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot_sorted = np.arange(len(order)) - np.repeat(starts, counts)
        slot = np.empty(len(order), np.int64)
        slot[order] = slot_sorted
        idx = np.zeros((n_frames, kmax), np.int64)
        uv = np.zeros((n_frames, kmax, 2), np.float64)
        mask = np.zeros((n_frames, kmax), np.float64)
        idx[trk.frame, slot] = trk.track
        uv[trk.frame, slot] = trk.uv
        mask[trk.frame, slot] = 1.0
        self.idx = torch.as_tensor(idx)
        self.uv = torch.as_tensor(uv, dtype=dtype)
        self.mask = torch.as_tensor(mask, dtype=dtype)
        self.frame = torch.as_tensor(trk.frame.astype(np.int64))
        self.slot = torch.as_tensor(slot)


def _per_frame_mean(frame: np.ndarray, values: np.ndarray, n_frames: int) -> np.ndarray:
    s = np.bincount(frame, weights=values, minlength=n_frames)
    c = np.bincount(frame, minlength=n_frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s / c).astype(np.float32)
