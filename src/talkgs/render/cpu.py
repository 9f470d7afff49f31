"""CPU rasterizer: numba kernels reproducing gsplat 1.5.3's image formation, with gradients.

gsplat cannot render on CPU (its torch reference still calls a CUDA kernel), so this module
re-implements the two stages gsplat runs for ``rasterization(..., rasterize_mode="classic")``:

1. **Projection** (``ProjectionEWA3DGSFused.cu`` + ``Utils.cuh``): world-to-camera, EWA
   perspective Jacobian with gsplat's 1.3x-FoV clamp of ``x/z`` and ``y/z``, 2D covariance
   ``J W Sigma W^T J^T`` plus the ``eps2d = 0.3`` px screen-space dilation, conic (inverse
   covariance), depth = camera-space z, culling (near/far plane, ``det <= 0``, opacity
   ``< 1/255``, off-screen) and the opacity-aware radius ``ceil(min(3.33,
   sqrt(2 ln(255 o))) * sqrt(cov2d_ii))`` per axis.
2. **Compositing** (``RasterizeToPixels3DGSFwd/Bwd.cu``): pixel centres at ``+0.5``,
   ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` with ``d = mean2d - pixel``,
   ``alpha = min(0.999, o exp(-sigma))``, Gaussians with ``sigma < 0`` or ``alpha < 1/255``
   skipped, front to back in depth order, a pixel stops *before* the Gaussian that would
   bring its transmittance to ``<= 1e-4``; the backward pass walks back to front from each
   pixel's last contributor exactly like gsplat's (same ``v_alpha`` formula, no
   conic/mean/opacity gradient where alpha was clamped to 0.999).

How it runs fast on 2 cores: Gaussians are binned into 16x16 tiles (counting sort in depth
order; a Gaussian goes only into tiles its ``alpha >= 1/255`` ellipse touches), tiles run in
parallel (``prange`` over per-core tile lists balanced by cost), and inside a tile each Gaussian visits only the pixels inside its
ellipse (row by row, solving the quadratic for the column span). The ellipse
``sigma <= ln(255 o)`` (plus a 1e-5 slack) contains every pixel where ``alpha >= 1/255`` and
the per-pixel test is still applied, so visiting only it changes nothing: the result equals a
dense evaluation of every Gaussian at every pixel (tested against
:mod:`talkgs.render.reference`). gsplat's tile lists come from axis-aligned boxes that contain
the same ellipse (its opacity-aware radius), so gsplat's result is that dense result too.

The falloff ``exp(-sigma)`` is the costliest per-pixel term; along a row it is evaluated
by an exact two-multiply recurrence (two exps per row span instead of one per pixel, see
:func:`_row_falloff_start`).

Precision: kernels compute in float64 internally for any input dtype (including the
transmittance and its ``T / (1 - alpha)`` recovery in backward) and write outputs in the
input dtype, so the float64 gradcheck exercises the same code that renders float32.

Backward writes per-(tile, Gaussian) partial gradients into a buffer indexed by the
intersection, then reduces them per Gaussian: deterministic, no atomics.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import numba
from numba import njit, prange
from torch import Tensor

__all__ = ["project", "rasterize_pixels", "TILE_SIZE", "ALPHA_THRESHOLD", "MAX_ALPHA", "TRANSMITTANCE_EPS"]

TILE_SIZE = 16
ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat ALPHA_THRESHOLD: contributions below are skipped
MAX_ALPHA = 0.999  # gsplat 1.5.3 clamp (the original 3DGS code used 0.99)
TRANSMITTANCE_EPS = 1e-4  # a pixel is done before T would fall to <= this
_RADIUS_EXTEND = 3.33  # gsplat's cap on the radius in standard deviations
_FOV_CLAMP = 0.3  # gsplat clamps x/z, y/z to the FoV extended by 30 % when computing J
_EPS_RANGE = 1e-5  # slack (sigma units / pixels) of the ellipse -> index ranges; covers float32 exp rounding

_JIT = dict(cache=True, fastmath=False, nogil=True)


# --------------------------------------------------------------------------------------
# small fixed-size linear algebra on tuples (no heap allocation inside prange loops)
# --------------------------------------------------------------------------------------


@njit(**_JIT)
def _quat_to_rotmat(w, x, y, z):
    """Row-major 3x3 rotation of the normalised quaternion (w, x, y, z) (gsplat's formula)."""
    inv = 1.0 / math.sqrt(w * w + x * x + y * y + z * z)
    w *= inv
    x *= inv
    y *= inv
    z *= inv
    return (
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    )  # fmt: skip


@njit(**_JIT)
def _mm(A, B):
    """A @ B for row-major 3x3 tuples."""
    return (
        A[0] * B[0] + A[1] * B[3] + A[2] * B[6], A[0] * B[1] + A[1] * B[4] + A[2] * B[7],
        A[0] * B[2] + A[1] * B[5] + A[2] * B[8],
        A[3] * B[0] + A[4] * B[3] + A[5] * B[6], A[3] * B[1] + A[4] * B[4] + A[5] * B[7],
        A[3] * B[2] + A[4] * B[5] + A[5] * B[8],
        A[6] * B[0] + A[7] * B[3] + A[8] * B[6], A[6] * B[1] + A[7] * B[4] + A[8] * B[7],
        A[6] * B[2] + A[7] * B[5] + A[8] * B[8],
    )  # fmt: skip


@njit(**_JIT)
def _t(A):
    return (A[0], A[3], A[6], A[1], A[4], A[7], A[2], A[5], A[8])


@njit(**_JIT)
def _add(A, B):
    return (A[0] + B[0], A[1] + B[1], A[2] + B[2], A[3] + B[3], A[4] + B[4], A[5] + B[5],
            A[6] + B[6], A[7] + B[7], A[8] + B[8])  # fmt: skip


@njit(**_JIT)
def _world_cov(q, s):
    """Rq, M = Rq diag(s) and Sigma = M M^T for quaternion ``q`` (4 floats) and scale ``s``."""
    Rq = _quat_to_rotmat(q[0], q[1], q[2], q[3])
    M = (Rq[0] * s[0], Rq[1] * s[1], Rq[2] * s[2],
         Rq[3] * s[0], Rq[4] * s[1], Rq[5] * s[2],
         Rq[6] * s[0], Rq[7] * s[1], Rq[8] * s[2])  # fmt: skip
    return Rq, M, _mm(M, _t(M))


@njit(**_JIT)
def _fov_limits(K, width, height):
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + _FOV_CLAMP * tan_fovx
    lim_x_neg = cx / fx + _FOV_CLAMP * tan_fovx
    lim_y_pos = (height - cy) / fy + _FOV_CLAMP * tan_fovy
    lim_y_neg = cy / fy + _FOV_CLAMP * tan_fovy
    return fx, fy, cx, cy, lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg


@njit(**_JIT)
def _viewmat_parts(viewmat):
    Rv = (float(viewmat[0, 0]), float(viewmat[0, 1]), float(viewmat[0, 2]),
          float(viewmat[1, 0]), float(viewmat[1, 1]), float(viewmat[1, 2]),
          float(viewmat[2, 0]), float(viewmat[2, 1]), float(viewmat[2, 2]))  # fmt: skip
    tv = (float(viewmat[0, 3]), float(viewmat[1, 3]), float(viewmat[2, 3]))
    return Rv, tv


# --------------------------------------------------------------------------------------
# projection
# --------------------------------------------------------------------------------------


@njit(parallel=True, **_JIT)
def _project_fwd_kernel(means, quats, scales, opacities, viewmat, K, width, height, eps2d, near, far,
                        means2d, conics, depths, radii):  # fmt: skip
    n = means.shape[0]
    Rv, tv = _viewmat_parts(viewmat)
    fx, fy, cx, cy, lxp, lxn, lyp, lyn = _fov_limits(K, width, height)
    for i in prange(n):
        means2d[i, 0] = 0.0
        means2d[i, 1] = 0.0
        conics[i, 0] = 0.0
        conics[i, 1] = 0.0
        conics[i, 2] = 0.0
        depths[i] = 0.0
        radii[i, 0] = 0
        radii[i, 1] = 0
        px, py, pz = float(means[i, 0]), float(means[i, 1]), float(means[i, 2])
        xc = Rv[0] * px + Rv[1] * py + Rv[2] * pz + tv[0]
        yc = Rv[3] * px + Rv[4] * py + Rv[5] * pz + tv[1]
        zc = Rv[6] * px + Rv[7] * py + Rv[8] * pz + tv[2]
        if zc < near or zc > far:
            continue
        q = (float(quats[i, 0]), float(quats[i, 1]), float(quats[i, 2]), float(quats[i, 3]))
        s = (float(scales[i, 0]), float(scales[i, 1]), float(scales[i, 2]))
        _, _, Sig = _world_cov(q, s)
        Sc = _mm(_mm(Rv, Sig), _t(Rv))
        rz = 1.0 / zc
        rz2 = rz * rz
        tx = zc * min(lxp, max(-lxn, xc * rz))
        ty = zc * min(lyp, max(-lyn, yc * rz))
        J00 = fx * rz
        J02 = -fx * tx * rz2
        J11 = fy * rz
        J12 = -fy * ty * rz2
        # cov2d = J Sc J^T with J = [[J00, 0, J02], [0, J11, J12]]
        c00 = J00 * J00 * Sc[0] + 2.0 * J00 * J02 * Sc[2] + J02 * J02 * Sc[8]
        c01 = J00 * J11 * Sc[1] + J00 * J12 * Sc[2] + J02 * J11 * Sc[7] + J02 * J12 * Sc[8]
        c11 = J11 * J11 * Sc[4] + 2.0 * J11 * J12 * Sc[5] + J12 * J12 * Sc[8]
        c00 += eps2d
        c11 += eps2d
        det = c00 * c11 - c01 * c01
        if det <= 0.0:
            continue
        op = float(opacities[i])
        if op < ALPHA_THRESHOLD:
            continue
        extend = min(_RADIUS_EXTEND, math.sqrt(2.0 * math.log(op / ALPHA_THRESHOLD)))
        rx = math.ceil(extend * math.sqrt(c00))
        ry = math.ceil(extend * math.sqrt(c11))
        if rx <= 0.0 and ry <= 0.0:  # gsplat's radius_clip = 0
            continue
        mx = fx * xc * rz + cx
        my = fy * yc * rz + cy
        if mx + rx <= 0.0 or mx - rx >= width or my + ry <= 0.0 or my - ry >= height:
            continue
        means2d[i, 0] = mx
        means2d[i, 1] = my
        conics[i, 0] = c11 / det
        conics[i, 1] = -c01 / det
        conics[i, 2] = c00 / det
        depths[i] = zc
        radii[i, 0] = int(rx)
        radii[i, 1] = int(ry)


@njit(parallel=True, **_JIT)
def _project_bwd_kernel(means, quats, scales, viewmat, K, width, height, eps2d, radii, conics,
                        v_means2d, v_conics, v_depths, v_means, v_quats, v_scales, v_view, want_view):  # fmt: skip
    """VJP of the projection (gsplat ``projection_ewa_3dgs_fused_bwd_kernel``, pinhole, classic).

    ``v_view[i]`` receives Gaussian i's contribution to dL/dviewmat[:3, :4] (row-major 12).
    """
    n = means.shape[0]
    Rv, tv = _viewmat_parts(viewmat)
    fx, fy, cx, cy, lxp, lxn, lyp, lyn = _fov_limits(K, width, height)
    for i in prange(n):
        for k in range(3):
            v_means[i, k] = 0.0
            v_scales[i, k] = 0.0
        for k in range(4):
            v_quats[i, k] = 0.0
        if want_view:
            for k in range(12):
                v_view[i, k] = 0.0
        if radii[i, 0] <= 0 or radii[i, 1] <= 0:
            continue
        # --- conic -> cov2d:  d(inv M) = -inv V inv, V symmetric with the off-diagonal halved
        a, b, c = float(conics[i, 0]), float(conics[i, 1]), float(conics[i, 2])
        V00, V01, V11 = float(v_conics[i, 0]), 0.5 * float(v_conics[i, 1]), float(v_conics[i, 2])
        P00 = a * V00 + b * V01
        P01 = a * V01 + b * V11
        P10 = b * V00 + c * V01
        P11 = b * V01 + c * V11
        G00 = -(P00 * a + P01 * b)
        G01 = -(P00 * b + P01 * c)
        G10 = -(P10 * a + P11 * b)
        G11 = -(P10 * b + P11 * c)
        # --- recompute forward quantities
        px, py, pz = float(means[i, 0]), float(means[i, 1]), float(means[i, 2])
        xc = Rv[0] * px + Rv[1] * py + Rv[2] * pz + tv[0]
        yc = Rv[3] * px + Rv[4] * py + Rv[5] * pz + tv[1]
        zc = Rv[6] * px + Rv[7] * py + Rv[8] * pz + tv[2]
        q = (float(quats[i, 0]), float(quats[i, 1]), float(quats[i, 2]), float(quats[i, 3]))
        s = (float(scales[i, 0]), float(scales[i, 1]), float(scales[i, 2]))
        Rq, M, Sig = _world_cov(q, s)
        RvSig = _mm(Rv, Sig)
        Sc = _mm(RvSig, _t(Rv))
        rz = 1.0 / zc
        rz2 = rz * rz
        rz3 = rz2 * rz
        tx = zc * min(lxp, max(-lxn, xc * rz))
        ty = zc * min(lyp, max(-lyn, yc * rz))
        J = (fx * rz, 0.0, -fx * tx * rz2, 0.0, fy * rz, -fy * ty * rz2)  # 2x3 row-major
        # --- v_Sc = J^T G J
        GJ = (G00 * J[0] + G01 * J[3], G00 * J[1] + G01 * J[4], G00 * J[2] + G01 * J[5],
              G10 * J[0] + G11 * J[3], G10 * J[1] + G11 * J[4], G10 * J[2] + G11 * J[5])  # fmt: skip
        vSc = (
            J[0] * GJ[0] + J[3] * GJ[3], J[0] * GJ[1] + J[3] * GJ[4], J[0] * GJ[2] + J[3] * GJ[5],
            J[1] * GJ[0] + J[4] * GJ[3], J[1] * GJ[1] + J[4] * GJ[4], J[1] * GJ[2] + J[4] * GJ[5],
            J[2] * GJ[0] + J[5] * GJ[3], J[2] * GJ[1] + J[5] * GJ[4], J[2] * GJ[2] + J[5] * GJ[5],
        )  # fmt: skip
        # --- mean2d = (fx x/z + cx, fy y/z + cy)
        vm0, vm1 = float(v_means2d[i, 0]), float(v_means2d[i, 1])
        vx = fx * rz * vm0
        vy = fy * rz * vm1
        vz = -(fx * xc * vm0 + fy * yc * vm1) * rz2
        # --- v_J = (G + G^T) J Sc  (only the non-constant entries J00, J02, J11, J12 matter)
        H00 = (2.0 * G00) * J[0] + (G01 + G10) * J[3]
        H02 = (2.0 * G00) * J[2] + (G01 + G10) * J[5]
        H10 = (G10 + G01) * J[0] + (2.0 * G11) * J[3]
        H11 = (G10 + G01) * J[1] + (2.0 * G11) * J[4]
        H12 = (G10 + G01) * J[2] + (2.0 * G11) * J[5]
        H01 = (2.0 * G00) * J[1] + (G01 + G10) * J[4]
        vJ00 = H00 * Sc[0] + H01 * Sc[3] + H02 * Sc[6]
        vJ02 = H00 * Sc[2] + H01 * Sc[5] + H02 * Sc[8]
        vJ11 = H10 * Sc[1] + H11 * Sc[4] + H12 * Sc[7]
        vJ12 = H10 * Sc[2] + H11 * Sc[5] + H12 * Sc[8]
        if xc * rz <= lxp and xc * rz >= -lxn:
            vx += -fx * rz2 * vJ02
        else:
            vz += -fx * rz3 * vJ02 * tx
        if yc * rz <= lyp and yc * rz >= -lyn:
            vy += -fy * rz2 * vJ12
        else:
            vz += -fy * rz3 * vJ12 * ty
        vz += -fx * rz2 * vJ00 - fy * rz2 * vJ11 + 2.0 * fx * tx * rz3 * vJ02 + 2.0 * fy * ty * rz3 * vJ12
        vz += float(v_depths[i])
        # --- camera space -> world: p_c = Rv p + t ; Sc = Rv Sig Rv^T
        v_means[i, 0] = Rv[0] * vx + Rv[3] * vy + Rv[6] * vz
        v_means[i, 1] = Rv[1] * vx + Rv[4] * vy + Rv[7] * vz
        v_means[i, 2] = Rv[2] * vx + Rv[5] * vy + Rv[8] * vz
        vSig = _mm(_mm(_t(Rv), vSc), Rv)
        if want_view:
            # dL/dRv = v_pc p^T + (vSc + vSc^T) Rv Sig ;  dL/dt = v_pc
            W = _mm(_add(vSc, _t(vSc)), RvSig)
            vpc = (vx, vy, vz)
            pw = (px, py, pz)
            for r in range(3):
                for col in range(3):
                    v_view[i, 4 * r + col] = vpc[r] * pw[col] + W[3 * r + col]
                v_view[i, 4 * r + 3] = vpc[r]
        # --- Sigma = M M^T, M = Rq diag(s)
        vM = _mm(_add(vSig, _t(vSig)), M)
        for col in range(3):
            v_scales[i, col] = Rq[col] * vM[col] + Rq[3 + col] * vM[3 + col] + Rq[6 + col] * vM[6 + col]
        G = (vM[0] * s[0], vM[1] * s[1], vM[2] * s[2],
             vM[3] * s[0], vM[4] * s[1], vM[5] * s[2],
             vM[6] * s[0], vM[7] * s[1], vM[8] * s[2])  # fmt: skip  (dL/dRq)
        inv = 1.0 / math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
        w, x, y, z = q[0] * inv, q[1] * inv, q[2] * inv, q[3] * inv
        gw = 2.0 * (-z * G[1] + y * G[2] + z * G[3] - x * G[5] - y * G[6] + x * G[7])
        gx = 2.0 * (y * G[1] + z * G[2] + y * G[3] - 2.0 * x * G[4] - w * G[5] + z * G[6] + w * G[7] - 2.0 * x * G[8])
        gy = 2.0 * (-2.0 * y * G[0] + x * G[1] + w * G[2] + x * G[3] + z * G[5] - w * G[6] + z * G[7] - 2.0 * y * G[8])
        gz = 2.0 * (-2.0 * z * G[0] - w * G[1] + x * G[2] + w * G[3] - 2.0 * z * G[4] + y * G[5] + x * G[6] + y * G[7])
        dot = gw * w + gx * x + gy * y + gz * z
        v_quats[i, 0] = (gw - dot * w) * inv
        v_quats[i, 1] = (gx - dot * x) * inv
        v_quats[i, 2] = (gy - dot * y) * inv
        v_quats[i, 3] = (gz - dot * z) * inv


# --------------------------------------------------------------------------------------
# binning: Gaussians -> 16x16 tiles, depth-ordered
# --------------------------------------------------------------------------------------


@njit(**_JIT)
def _sigma_min_on_rect(mx, my, a, b, c, x_lo, x_hi, y_lo, y_hi):
    """Minimum over pixel-centre positions p in [x_lo, x_hi] x [y_lo, y_hi] of
    sigma(p) = 0.5 (a dx^2 + c dy^2) + b dx dy, d = m - p (a convex quadratic)."""
    if x_lo <= mx <= x_hi and y_lo <= my <= y_hi:
        return 0.0
    best = np.inf
    # vertical edges: dx fixed, minimise over dy in [my - y_hi, my - y_lo]
    for xe in (x_lo, x_hi):
        dx = mx - xe
        dy = min(max(-b * dx / c, my - y_hi), my - y_lo)
        best = min(best, 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy)
    for ye in (y_lo, y_hi):
        dy = my - ye
        dx = min(max(-b * dy / a, mx - x_hi), mx - x_lo)
        best = min(best, 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy)
    return best


@njit(parallel=True, **_JIT)
def _tile_boxes_kernel(order, means2d, radii, tile_size, n_tx, n_ty, boxes, box_counts):
    """gsplat's isect_tiles box: tiles [floor((m - r)/ts), ceil((m + r)/ts)) clamped."""
    for p in prange(order.shape[0]):
        g = order[p]
        mx, my = float(means2d[g, 0]), float(means2d[g, 1])
        rx, ry = float(radii[g, 0]), float(radii[g, 1])
        x0 = min(max(0, int(math.floor((mx - rx) / tile_size))), n_tx)
        y0 = min(max(0, int(math.floor((my - ry) / tile_size))), n_ty)
        x1 = min(max(0, int(math.ceil((mx + rx) / tile_size))), n_tx)
        y1 = min(max(0, int(math.ceil((my + ry) / tile_size))), n_ty)
        boxes[p, 0] = x0
        boxes[p, 1] = y0
        boxes[p, 2] = x1
        boxes[p, 3] = y1
        box_counts[p] = (x1 - x0) * (y1 - y0)


@njit(parallel=True, **_JIT)
def _tile_touch_kernel(order, means2d, conics, thr, boxes, box_offsets, tile_size, width, height, n_tx, touch):
    """touch[box_offsets[p] + k] = whether Gaussian order[p]'s alpha >= 1/255 ellipse reaches
    any pixel centre of the k-th tile of its box."""
    for p in prange(order.shape[0]):
        g = order[p]
        mx, my = float(means2d[g, 0]), float(means2d[g, 1])
        a, b, c = float(conics[g, 0]), float(conics[g, 1]), float(conics[g, 2])
        t = thr[g] + _EPS_RANGE
        k = box_offsets[p]
        for ty in range(boxes[p, 1], boxes[p, 3]):
            y_lo = ty * tile_size + 0.5
            y_hi = min((ty + 1) * tile_size, height) - 0.5
            for tx in range(boxes[p, 0], boxes[p, 2]):
                x_lo = tx * tile_size + 0.5
                x_hi = min((tx + 1) * tile_size, width) - 0.5
                touch[k] = _sigma_min_on_rect(mx, my, a, b, c, x_lo, x_hi, y_lo, y_hi) <= t
                k += 1


@njit(**_JIT)
def _tile_fill_kernel(order, boxes, box_offsets, touch, n_tx, n_tiles):
    """Counting sort: per-tile lists of Gaussian ids, each list in ``order`` (depth) order."""
    counts = np.zeros(n_tiles + 1, np.int64)
    n = order.shape[0]
    for p in range(n):
        k = box_offsets[p]
        for ty in range(boxes[p, 1], boxes[p, 3]):
            for tx in range(boxes[p, 0], boxes[p, 2]):
                if touch[k]:
                    counts[ty * n_tx + tx + 1] += 1
                k += 1
    for t in range(n_tiles):
        counts[t + 1] += counts[t]
    offsets = counts.copy()
    cursor = counts[:n_tiles].copy()
    gids = np.empty(offsets[n_tiles], np.int32)
    for p in range(n):
        k = box_offsets[p]
        g = order[p]
        for ty in range(boxes[p, 1], boxes[p, 3]):
            for tx in range(boxes[p, 0], boxes[p, 2]):
                if touch[k]:
                    tile = ty * n_tx + tx
                    gids[cursor[tile]] = g
                    cursor[tile] += 1
                k += 1
    return offsets, gids


def bin_gaussians(
    means2d: np.ndarray, conics: np.ndarray, thr: np.ndarray, depths: np.ndarray, radii: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile Gaussian lists in front-to-back order.

    Returns ``(tile_offsets [n_tiles + 1] int64, tile_gids [n_isects] int32)``: tile ``t``
    (row-major over ``ceil(H/16) x ceil(W/16)``) holds ``tile_gids[tile_offsets[t]:
    tile_offsets[t + 1]]``. Depth ties keep Gaussian-index order, as gsplat's stable radix sort.
    """
    n_tx = (width + TILE_SIZE - 1) // TILE_SIZE
    n_ty = (height + TILE_SIZE - 1) // TILE_SIZE
    visible = np.flatnonzero((radii[:, 0] > 0) & (radii[:, 1] > 0))
    order = visible[np.argsort(depths[visible], kind="stable")].astype(np.int64)
    boxes = np.empty((order.shape[0], 4), np.int64)
    box_counts = np.empty(order.shape[0], np.int64)
    _tile_boxes_kernel(order, means2d, radii, TILE_SIZE, n_tx, n_ty, boxes, box_counts)
    box_offsets = np.zeros(order.shape[0] + 1, np.int64)
    np.cumsum(box_counts, out=box_offsets[1:])
    touch = np.empty(int(box_offsets[-1]), np.bool_)
    _tile_touch_kernel(order, means2d, conics, thr, boxes, box_offsets, TILE_SIZE, width, height, n_tx, touch)
    return _tile_fill_kernel(order, boxes, box_offsets, touch, n_tx, n_tx * n_ty)


@njit(**_JIT)
def _balanced_work_lists(tile_offsets, n_workers):
    """Split the tiles into ``n_workers`` lists of about equal cost (greedy LPT).

    The parallel kernels run one list per ``prange`` iteration, so the balance does not depend
    on numba's scheduler (its OpenMP layer splits a ``prange`` into equal contiguous blocks,
    even with ``parallel_chunksize``, measured: a scene concentrated in one half of the image
    would leave the other core idle).
    Cost of a tile ~ its number of Gaussians + a fixed overhead. Returns ``(work_offsets
    [n_workers + 1], work_tiles [n_tiles])``; each list keeps row-major tile order.
    """
    n_tiles = tile_offsets.shape[0] - 1
    cost = np.empty(n_tiles, np.int64)
    for t in range(n_tiles):
        cost[t] = tile_offsets[t + 1] - tile_offsets[t] + 8
    owner = np.empty(n_tiles, np.int64)
    load = np.zeros(n_workers, np.int64)
    for t in np.argsort(-cost, kind="mergesort"):
        w = np.argmin(load)
        owner[t] = w
        load[w] += cost[t]
    work_offsets = np.zeros(n_workers + 1, np.int64)
    for t in range(n_tiles):
        work_offsets[owner[t] + 1] += 1
    for w in range(n_workers):
        work_offsets[w + 1] += work_offsets[w]
    cursor = work_offsets[:n_workers].copy()
    work_tiles = np.empty(n_tiles, np.int64)
    for t in range(n_tiles):
        work_tiles[cursor[owner[t]]] = t
        cursor[owner[t]] += 1
    return work_offsets, work_tiles


# --------------------------------------------------------------------------------------
# compositing
# --------------------------------------------------------------------------------------


@njit(**_JIT)
def _row_span(mx, my, a, b, c, t, tile_y0, tile_y1):
    """Rows i in [tile_y0, tile_y1) whose pixel centre row can hold sigma <= t (ellipse y-extent)."""
    det = a * c - b * b
    hy = math.sqrt(2.0 * t * a / det)
    i_lo = max(tile_y0, int(math.ceil(my - hy - 0.5 - _EPS_RANGE)))
    i_hi = min(tile_y1 - 1, int(math.floor(my + hy - 0.5 + _EPS_RANGE)))
    return i_lo, i_hi


@njit(**_JIT)
def _col_span(mx, dy, a, b, c, t, tile_x0, tile_x1):
    """Columns j in [tile_x0, tile_x1) with sigma <= t on the row at offset dy = my - py."""
    disc = (b * b - a * c) * dy * dy + 2.0 * a * t
    if disc < 0.0:
        return 1, 0
    sq = math.sqrt(disc)
    # dx = mx - px in [(-b dy - sq) / a, (-b dy + sq) / a]
    px_lo = mx - (-b * dy + sq) / a
    px_hi = mx - (-b * dy - sq) / a
    j_lo = max(tile_x0, int(math.ceil(px_lo - 0.5 - _EPS_RANGE)))
    j_hi = min(tile_x1 - 1, int(math.floor(px_hi - 0.5 + _EPS_RANGE)))
    return j_lo, j_hi


@njit(**_JIT)
def _row_falloff_start(mx, dy, a, b, c, j_lo):
    """``exp(-sigma)`` at the first pixel of a row span, and the ratio to the next pixel.

    Along a row ``dx`` drops by 1 per pixel, so ``sigma_{j+1} - sigma_j = -(a dx_j + b dy) + a/2``:
    ``e_{j+1} = e_j r_j`` and ``r_{j+1} = r_j exp(-a)``. Two exps per row instead of one per
    pixel; in float64 the recurrence drifts by ~1e-15 relative over a 16-pixel span. Forward
    and backward run the identical recurrence, so their alphas (and every threshold decision)
    agree bit for bit.
    """
    dx = mx - (j_lo + 0.5)
    e = math.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
    r = math.exp(a * dx + b * dy - 0.5 * a)
    return e, r


@njit(parallel=True, **_JIT)
def _raster_fwd_kernel(means2d, conics, colors, opacities, thr, tile_offsets, tile_gids, work_offsets, work_tiles,
                       width, height, n_tx, out_color, out_T, out_last):  # fmt: skip
    D = colors.shape[1]
    for worker in prange(work_offsets.shape[0] - 1):
        for p in range(work_offsets[worker], work_offsets[worker + 1]):
            tile = work_tiles[p]
            ty = tile // n_tx
            tx = tile - ty * n_tx
            x0 = tx * TILE_SIZE
            y0 = ty * TILE_SIZE
            x1 = min(x0 + TILE_SIZE, width)
            y1 = min(y0 + TILE_SIZE, height)
            th = y1 - y0
            tw = x1 - x0
            T = np.ones((th, tw))
            acc = np.zeros((th, tw, D))
            last = np.full((th, tw), -1, np.int64)
            done = np.zeros((th, tw), np.bool_)
            col = np.empty(D)
            n_active = th * tw
            for k in range(tile_offsets[tile], tile_offsets[tile + 1]):
                g = tile_gids[k]
                mx, my = float(means2d[g, 0]), float(means2d[g, 1])
                a, b, c = float(conics[g, 0]), float(conics[g, 1]), float(conics[g, 2])
                op = float(opacities[g])
                t = thr[g] + _EPS_RANGE
                for d in range(D):
                    col[d] = colors[g, d]
                q = math.exp(-a)
                i_lo, i_hi = _row_span(mx, my, a, b, c, t, y0, y1)
                for i in range(i_lo, i_hi + 1):
                    dy = my - (i + 0.5)
                    j_lo, j_hi = _col_span(mx, dy, a, b, c, t, x0, x1)
                    if j_lo > j_hi:
                        continue
                    li = i - y0
                    e, r = _row_falloff_start(mx, dy, a, b, c, j_lo)
                    for j in range(j_lo, j_hi + 1):
                        vis = e  # exp(-sigma) at pixel j
                        e *= r
                        r *= q
                        lj = j - x0
                        if done[li, lj]:
                            continue
                        dx = mx - (j + 0.5)
                        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                        if sigma < 0.0:
                            continue
                        alpha = min(MAX_ALPHA, op * vis)
                        if alpha < ALPHA_THRESHOLD:
                            continue
                        T_old = T[li, lj]
                        T_new = T_old * (1.0 - alpha)
                        if T_new <= TRANSMITTANCE_EPS:
                            done[li, lj] = True
                            n_active -= 1
                            continue
                        weight = alpha * T_old
                        for d in range(D):
                            acc[li, lj, d] += col[d] * weight
                        T[li, lj] = T_new
                        last[li, lj] = k
                if n_active == 0:
                    break
            for li in range(th):
                for lj in range(tw):
                    out_T[y0 + li, x0 + lj] = T[li, lj]
                    out_last[y0 + li, x0 + lj] = last[li, lj]
                    for d in range(D):
                        out_color[y0 + li, x0 + lj, d] = acc[li, lj, d]


@njit(parallel=True, **_JIT)
def _raster_bwd_kernel(means2d, conics, colors, opacities, thr, tile_offsets, tile_gids, work_offsets, work_tiles,
                       width, height, n_tx, T_final, last_ids, v_color, v_alpha, g_isect):  # fmt: skip
    """Back-to-front VJP per tile (gsplat ``rasterize_to_pixels_3dgs_bwd_kernel``).

    ``g_isect[k]`` receives the tile's summed gradient for intersection ``k``:
    ``[v_mean2d_x, v_mean2d_y, v_conic_a, v_conic_b, v_conic_c, v_opacity, v_color_0..D-1]``.
    """
    D = colors.shape[1]
    for worker in prange(work_offsets.shape[0] - 1):
        for p in range(work_offsets[worker], work_offsets[worker + 1]):
            tile = work_tiles[p]
            start = tile_offsets[tile]
            if tile_offsets[tile + 1] == start:
                continue
            ty = tile // n_tx
            tx = tile - ty * n_tx
            x0 = tx * TILE_SIZE
            y0 = ty * TILE_SIZE
            x1 = min(x0 + TILE_SIZE, width)
            y1 = min(y0 + TILE_SIZE, height)
            th = y1 - y0
            tw = x1 - x0
            # tile-local copies: running transmittance, colour behind, upstream gradients
            T = np.empty((th, tw))
            Tf = np.empty((th, tw))
            last = np.empty((th, tw), np.int64)
            va_pix = np.empty((th, tw))
            vc_pix = np.empty((th, tw, D))
            buf = np.zeros((th, tw, D))
            col = np.empty(D)
            gcol = np.empty(D)
            k_max = start - 1
            for li in range(th):
                for lj in range(tw):
                    Tf[li, lj] = T_final[y0 + li, x0 + lj]
                    T[li, lj] = Tf[li, lj]
                    last[li, lj] = last_ids[y0 + li, x0 + lj]
                    k_max = max(k_max, last[li, lj])
                    va_pix[li, lj] = v_alpha[y0 + li, x0 + lj]
                    for d in range(D):
                        vc_pix[li, lj, d] = v_color[y0 + li, x0 + lj, d]
            for k in range(k_max, start - 1, -1):
                g = tile_gids[k]
                mx, my = float(means2d[g, 0]), float(means2d[g, 1])
                a, b, c = float(conics[g, 0]), float(conics[g, 1]), float(conics[g, 2])
                op = float(opacities[g])
                t = thr[g] + _EPS_RANGE
                for d in range(D):
                    col[d] = colors[g, d]
                    gcol[d] = 0.0
                gmx = 0.0
                gmy = 0.0
                ga = 0.0
                gb = 0.0
                gc = 0.0
                gop = 0.0
                q = math.exp(-a)
                i_lo, i_hi = _row_span(mx, my, a, b, c, t, y0, y1)
                for i in range(i_lo, i_hi + 1):
                    dy = my - (i + 0.5)
                    j_lo, j_hi = _col_span(mx, dy, a, b, c, t, x0, x1)
                    if j_lo > j_hi:
                        continue
                    li = i - y0
                    e, r = _row_falloff_start(mx, dy, a, b, c, j_lo)
                    for j in range(j_lo, j_hi + 1):
                        vis = e  # exp(-sigma) at pixel j, same recurrence as the forward pass
                        e *= r
                        r *= q
                        lj = j - x0
                        if k > last[li, lj]:
                            continue
                        dx = mx - (j + 0.5)
                        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                        if sigma < 0.0:
                            continue
                        alpha = min(MAX_ALPHA, op * vis)
                        if alpha < ALPHA_THRESHOLD:
                            continue
                        ra = 1.0 / (1.0 - alpha)
                        T_pix = T[li, lj] * ra  # transmittance in front of this Gaussian
                        T[li, lj] = T_pix
                        fac = alpha * T_pix
                        va = 0.0
                        for d in range(D):
                            vc = vc_pix[li, lj, d]
                            gcol[d] += fac * vc
                            va += (col[d] * T_pix - buf[li, lj, d] * ra) * vc
                            buf[li, lj, d] += col[d] * fac
                        va += Tf[li, lj] * ra * va_pix[li, lj]
                        if op * vis <= MAX_ALPHA:
                            v_sigma = -op * vis * va
                            ga += 0.5 * v_sigma * dx * dx
                            gb += v_sigma * dx * dy
                            gc += 0.5 * v_sigma * dy * dy
                            gmx += v_sigma * (a * dx + b * dy)
                            gmy += v_sigma * (b * dx + c * dy)
                            gop += vis * va
                g_isect[k, 0] = gmx
                g_isect[k, 1] = gmy
                g_isect[k, 2] = ga
                g_isect[k, 3] = gb
                g_isect[k, 4] = gc
                g_isect[k, 5] = gop
                for d in range(D):
                    g_isect[k, 6 + d] = gcol[d]


@njit(**_JIT)
def _reduce_isect_kernel(tile_gids, g_isect, v_means2d, v_conics, v_opacities, v_colors):
    D = v_colors.shape[1]
    for k in range(tile_gids.shape[0]):
        g = tile_gids[k]
        v_means2d[g, 0] += g_isect[k, 0]
        v_means2d[g, 1] += g_isect[k, 1]
        v_conics[g, 0] += g_isect[k, 2]
        v_conics[g, 1] += g_isect[k, 3]
        v_conics[g, 2] += g_isect[k, 4]
        v_opacities[g] += g_isect[k, 5]
        for d in range(D):
            v_colors[g, d] += g_isect[k, 6 + d]


# --------------------------------------------------------------------------------------
# torch autograd wrappers
# --------------------------------------------------------------------------------------


def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmat, K, width, height, eps2d, near, far):  # type: ignore[override]
        n = means.shape[0]
        dt = means.dtype
        means2d = torch.empty((n, 2), dtype=dt)
        conics = torch.empty((n, 3), dtype=dt)
        depths = torch.empty((n,), dtype=dt)
        radii = torch.empty((n, 2), dtype=torch.int32)
        _project_fwd_kernel(
            _np(means), _np(quats), _np(scales), _np(opacities), _np(viewmat), _np(K), width, height,
            float(eps2d), float(near), float(far),
            means2d.numpy(), conics.numpy(), depths.numpy(), radii.numpy(),
        )  # fmt: skip
        ctx.save_for_backward(means, quats, scales, viewmat, K, radii, conics)
        ctx.config = (width, height, float(eps2d))
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):  # type: ignore[override]
        means, quats, scales, viewmat, K, radii, conics = ctx.saved_tensors
        width, height, eps2d = ctx.config
        n = means.shape[0]
        dt = means.dtype
        want_view = bool(ctx.needs_input_grad[4])
        v_means = torch.empty((n, 3), dtype=dt)
        v_quats = torch.empty((n, 4), dtype=dt)
        v_scales = torch.empty((n, 3), dtype=dt)
        v_view_parts = np.empty((n if want_view else 0, 12), np.float64)
        _project_bwd_kernel(
            _np(means), _np(quats), _np(scales), _np(viewmat), _np(K), width, height, eps2d, radii.numpy(),
            conics.numpy(), _np(v_means2d), _np(v_conics), _np(v_depths),
            v_means.numpy(), v_quats.numpy(), v_scales.numpy(), v_view_parts, want_view,
        )  # fmt: skip
        v_viewmat = None
        if want_view:
            v_viewmat = torch.zeros((4, 4), dtype=viewmat.dtype)
            v_viewmat[:3, :] = torch.from_numpy(v_view_parts.sum(axis=0).reshape(3, 4)).to(viewmat.dtype)
        return v_means, v_quats, v_scales, None, v_viewmat, None, None, None, None, None, None


class _RasterizePixels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, radii, width, height):  # type: ignore[override]
        dt = colors.dtype
        m2d, con, col, opa = _np(means2d), _np(conics), _np(colors), _np(opacities)
        # alpha >= 1/255  <=>  sigma <= ln(255 o): the ellipse every Gaussian is evaluated in
        with np.errstate(divide="ignore", invalid="ignore"):
            thr = np.log(np.maximum(opa.astype(np.float64), 1e-30) / ALPHA_THRESHOLD)
        offsets, gids = bin_gaussians(m2d, con, thr, _np(depths), _np(radii), width, height)
        work = _balanced_work_lists(offsets, numba.get_num_threads())
        n_tx = (width + TILE_SIZE - 1) // TILE_SIZE
        out_color = torch.empty((height, width, col.shape[1]), dtype=dt)
        T_final = np.empty((height, width), np.float64)
        last = np.empty((height, width), np.int64)
        _raster_fwd_kernel(m2d, con, col, opa, thr, offsets, gids, *work, width, height, n_tx, out_color.numpy(), T_final, last)
        alpha = torch.from_numpy(1.0 - T_final).to(dt).unsqueeze(-1)
        ctx.save_for_backward(means2d, conics, colors, opacities)
        ctx.cpu_state = (thr, offsets, gids, work, T_final, last, width, height, n_tx)
        return out_color, alpha

    @staticmethod
    def backward(ctx, v_color, v_alpha):  # type: ignore[override]
        means2d, conics, colors, opacities = ctx.saved_tensors
        thr, offsets, gids, work, T_final, last, width, height, n_tx = ctx.cpu_state
        n, D = colors.shape
        # every row that a tile's walk does not reach (behind all its pixels' last contributor)
        # keeps zeros
        g_isect = np.zeros((gids.shape[0], 6 + D), np.float64)
        _raster_bwd_kernel(
            _np(means2d), _np(conics), _np(colors), _np(opacities), thr, offsets, gids, *work, width, height, n_tx,
            T_final, last, _np(v_color), _np(v_alpha)[..., 0], g_isect,
        )  # fmt: skip
        v_means2d = np.zeros((n, 2), np.float64)
        v_conics = np.zeros((n, 3), np.float64)
        v_opacities = np.zeros((n,), np.float64)
        v_colors = np.zeros((n, D), np.float64)
        _reduce_isect_kernel(gids, g_isect, v_means2d, v_conics, v_opacities, v_colors)
        dt = colors.dtype

        def out(x: np.ndarray) -> Tensor:
            return torch.from_numpy(x).to(dt)

        return out(v_means2d), out(v_conics), out(v_colors), out(v_opacities), None, None, None, None


# --------------------------------------------------------------------------------------
# public functions of this module
# --------------------------------------------------------------------------------------


def project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of 3D Gaussians, as gsplat's ``fully_fused_projection`` (pinhole, classic).

    Args:
        means: ``[N, 3]`` world positions.
        quats: ``[N, 4]`` rotations, wxyz, normalised inside.
        scales: ``[N, 3]`` standard deviations (activated).
        opacities: ``[N]`` in (0, 1], only used for the opacity-aware radius and culling.
        viewmat: ``[4, 4]`` world-to-camera; K: ``[3, 3]``.

    Returns:
        ``means2d [N, 2]`` pixel coordinates, ``conics [N, 3]`` (a, b, c) of the inverse
        dilated 2D covariance ``[[a, b], [b, c]]``, ``depths [N]`` camera-space z and
        ``radii [N, 2]`` int32 (0 where culled; culled entries of the other outputs are 0).
        Differentiable w.r.t. means, quats, scales and viewmat.
    """
    return _Project.apply(means, quats, scales, opacities, viewmat, K, width, height, eps2d, near_plane, far_plane)


def rasterize_pixels(
    means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, depths: Tensor, radii: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of projected Gaussians, as gsplat's ``rasterize_to_pixels``.

    Args:
        means2d: ``[N, 2]``; conics: ``[N, 3]``; colors: ``[N, D]`` any channel count;
        opacities: ``[N]``; depths: ``[N]`` (sort key only, not differentiated here);
        radii: ``[N, 2]`` int (Gaussians with a zero radius are skipped).

    Returns:
        ``color [H, W, D]`` (premultiplied, no background) and ``alpha [H, W, 1]``.
        Differentiable w.r.t. means2d, conics, colors and opacities.
    """
    return _RasterizePixels.apply(means2d, conics, colors, opacities, depths.detach(), radii, width, height)
