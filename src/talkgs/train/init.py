"""Initial canonical point cloud from the clip's own tracking (no 3DMM).

GaussianTalker initialises from BFM vertices; here (appendix-free substitute, documented in
:class:`~talkgs.models.params.InitParams`):

1. the tracked canonical landmarks (478 points, world metres);
2. the head pixels (face, hair, eyes, lips, mouth labels, and any pixel the torso image does
   not show: the head is cut out of it with a margin) of ``reference_frames`` training
   frames, lifted to 3D: inside the face-landmark hull the depth is interpolated from the
   canonical landmarks seen with that frame's pose; outside (hair, ears) rays hit an ellipsoid
   fitted to the landmarks (scaled by ``head_depth_scale``); rays that miss it stop at the
   ellipsoid centre's depth;
3. points are moved to the world frame, merged, voxel-thinned and subsampled to ``points``;
   colours from the pixels, scales from the nearest-neighbour distances.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from talkgs.models.contract import PointCloudSpec
from talkgs.train.data import SubjectData

log = logging.getLogger(__name__)

__all__ = ["initial_point_cloud", "head_ellipsoid", "scene_extent"]


def head_ellipsoid(canonical: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``[3]`` and semi-axes ``[3]`` (world axes: x subject's left, y down, z into the head)
    of an ellipsoid enclosing the head, from the canonical landmarks ``[478, 3]``."""
    lo, hi = canonical.min(0), canonical.max(0)
    width, height = hi[0] - lo[0], hi[1] - lo[1]
    rx = 0.5 * width * 1.05
    ry = 0.5 * height * 1.2  # skull above the forehead landmarks
    rz = 0.5 * max(width * 1.25, (hi[2] - lo[2]) * 1.2)
    centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2 - 0.1 * height, lo[2] + rz * 1.0])
    return centre, np.array([rx, ry, rz]) * scale


def _ray_ellipsoid(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Distance along rays ``o + t d`` (``d [M, 3]``) to the first hit of the ellipsoid, or to
    the point closest to its centre when missed."""
    oc = (o - c) / r
    dd = d / r
    a = (dd * dd).sum(-1)
    b = 2 * (dd * oc).sum(-1)
    cc = (oc * oc).sum() - 1.0
    disc = b * b - 4 * a * cc
    t_hit = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    t_closest = -b / (2 * a)
    return np.where(disc > 0, t_hit, t_closest)


def initial_point_cloud(data: SubjectData, p: PointCloudSpec, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``means [N, 3]``, ``rgb [N, 3]`` (0-1) and ``log_scales [N, 3]`` of the initial Gaussians
    of a set (:class:`~talkgs.models.contract.PointCloudSpec`: which label classes, how many points)."""
    from scipy.interpolate import LinearNDInterpolator
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    canon = data.canonical_landmarks.numpy().astype(np.float64)
    centre, radii = head_ellipsoid(canon, p.head_depth_scale)
    K = data.K.numpy().astype(np.float64)
    Kinv = np.linalg.inv(K)
    train = data.train_idx.numpy()
    nref = max(1, min(p.reference_frames, len(train)))
    if p.select == "mouth_open" and data.info.get("mouth_open") is not None:
        mo = np.asarray(data.info["mouth_open"], np.float64)[train]
        refs = np.sort(train[np.argsort(-mo, kind="stable")[:nref]])
    else:
        refs = train[np.linspace(0, len(train) - 1, nref).round().astype(int)]
    pts, cols = [], []
    per_frame = max(200, int(math.ceil(3 * p.points / nref)))
    for f in refs:
        vm = data.viewmats[f].numpy().astype(np.float64)
        R, t = vm[:3, :3], vm[:3, 3]
        img = data.images[f].numpy()
        if data.labels is not None:
            mask = np.isin(data.labels[f].numpy(), p.classes)
            if p.cutout:
                # plus whatever the torso frame lacks (the head is cut out of it with a margin): the
                # Gaussians must cover every pixel the background image does not show
                diff = np.abs(img.astype(np.int16) - data.backgrounds[f].numpy().astype(np.int16)).mean(-1)
                mask |= diff > p.cutout_threshold
        else:  # no labels: pixels inside the projected head ellipsoid's box
            mask = np.zeros(img.shape[:2], bool)
            lm = data.landmarks[f].numpy()
            x0, y0 = np.floor(lm.min(0)).astype(int)
            x1, y1 = np.ceil(lm.max(0)).astype(int)
            mask[max(0, y0) : y1, max(0, x0) : x1] = True
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        take = rng.choice(len(ys), size=min(per_frame, len(ys)), replace=False)
        ys, xs = ys[take], xs[take]
        uv1 = np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs, dtype=np.float64)], -1)
        rays_cam = uv1 @ Kinv.T  # z = 1
        # landmark depth inside the face hull
        lm_cam = canon @ R.T + t
        lm_uv = lm_cam[:, :2] / lm_cam[:, 2:3] * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]
        z = LinearNDInterpolator(lm_uv, lm_cam[:, 2])(np.stack([xs + 0.5, ys + 0.5], -1))
        # ellipsoid depth elsewhere (in camera space: transform the ellipsoid centre; axes rotate)
        o_w = -R.T @ t
        d_w = rays_cam @ R  # R^T applied to each row
        t_e = _ray_ellipsoid(o_w, d_w, centre, radii)
        z = np.where(np.isfinite(z), z, t_e)  # rays have z_cam = 1, so t == camera depth
        if p.depth_offset:
            z = z + p.depth_offset * float(radii.max())
        x_cam = rays_cam * z[:, None]
        x_w = (x_cam - t) @ R  # R^T (x - t)
        pts.append(x_w)
        cols.append(img[ys, xs].astype(np.float64) / 255.0)
    if p.landmarks:  # the landmarks themselves, coloured from the first reference frame
        f0 = refs[0]
        vm = data.viewmats[f0].numpy().astype(np.float64)
        sub = canon if p.landmark_subset is None else canon[list(p.landmark_subset)]
        if p.depth_offset:
            sub = sub + np.array([0.0, 0.0, p.depth_offset * float(radii.max())])
        lm_cam = sub @ vm[:3, :3].T + vm[:3, 3]
        lm_uv = lm_cam[:, :2] / lm_cam[:, 2:3] * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]
        ij = np.clip(np.floor(lm_uv).astype(int), 0, [data.width - 1, data.height - 1])
        pts.append(sub)
        cols.append(data.images[f0].numpy()[ij[:, 1], ij[:, 0]].astype(np.float64) / 255.0)
    if not pts:
        raise ValueError(
            f"{data.name}: no pixels of label classes {list(p.classes)} in the reference frames and no landmarks: "
            "cannot initialise this Gaussian set (check the segment stage's labels)"
        )
    P = np.concatenate(pts)
    C = np.concatenate(cols)
    # voxel thinning: one point per cell of ~1/200 of the head size, then subsample
    cell = float(radii.max()) / 100.0
    keys = np.floor(P / cell).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    first.sort()
    P, C = P[first], C[first]
    if len(P) > p.points:
        sel = np.sort(rng.choice(len(P), size=p.points, replace=False))
        P, C = P[sel], C[sel]
    k = min(p.scale_neighbors + 1, len(P))
    dist, _ = cKDTree(P).query(P, k=k)
    d = dist[:, 1:].mean(1) if k > 1 else np.full(len(P), cell)
    d = np.clip(d, 1e-2 * np.median(d) + 1e-9, None)
    log_scales = np.log(d)[:, None].repeat(3, 1)
    log.info("initial point cloud: %d points (head ellipsoid semi-axes %s m)", len(P), np.round(radii, 3).tolist())
    return (
        torch.from_numpy(P.astype(np.float32)),
        torch.from_numpy(C.astype(np.float32)),
        torch.from_numpy(log_scales.astype(np.float32)),
    )


def scene_extent(means: Tensor) -> float:
    """Radius of a point cloud: max distance from its centroid (3DGS's scene scale analogue)."""
    return float((means - means.mean(0)).norm(dim=-1).max())
