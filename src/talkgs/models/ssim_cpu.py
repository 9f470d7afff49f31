"""SSIM with an analytic gradient as two fused numba passes (the training loss on CPU).

The training loss ``1 - SSIM`` (3DGS's form: 11x11 Gaussian window, sigma 1.5, zero padding,
C1 = 0.01², C2 = 0.03²) written with torch ops is about 35 elementwise ops and five depthwise
11x11 convolutions forward, twice that backward: ~20 ms of every 128² step on 2 cores, more than
the rasterizer (measured by ``benchmarks/train.py``). Here the window is applied as two 1-D
passes (it is separable: ``w = g gᵀ``), and forward and backward are one kernel each:

- forward: blur the five maps ``x, y, x², y², xy``, then per pixel
  ``S = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))`` and the partials
  ``∂S/∂μx, ∂S/∂E[x²], ∂S/∂E[xy]`` (saved for backward);
- backward: ``∂L/∂x = Bᵀ(g ∂S/∂μx) + 2x Bᵀ(g ∂S/∂E[x²]) + y Bᵀ(g ∂S/∂E[xy])`` with ``B`` the
  zero-padded blur, which is self-adjoint for a symmetric window (so ``Bᵀ = B``).

Only the prediction gets a gradient (the target is data). Matches the torch formulation
(:func:`talkgs.models.losses.ssim_reference`) to float32 rounding (tested, with gradcheck in
float64). Accumulates in float32 like the convolutions it replaces.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

__all__ = ["ssim_fused", "gaussian_1d"]

_JIT = dict(cache=True, fastmath=False, nogil=True)
C1 = 0.01**2
C2 = 0.03**2


def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


@njit(parallel=True, **_JIT)
def _blur(src: np.ndarray, g: np.ndarray, tmp: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - numba
    """Zero-padded separable blur of ``src [M, H, W]`` with the 1-D window ``g`` into ``out``."""
    m_, h, w = src.shape
    k = g.shape[0]
    p = k // 2
    for mr in prange(m_ * h):
        m = mr // h
        r = mr % h
        for c in range(w):
            acc = 0.0
            lo = max(0, p - c)
            hi = min(k, w - c + p)
            for t in range(lo, hi):
                acc += g[t] * src[m, r, c + t - p]
            tmp[m, r, c] = acc
    for mr in prange(m_ * h):
        m = mr // h
        r = mr % h
        for c in range(w):
            out[m, r, c] = 0.0
        lo = max(0, p - r)
        hi = min(k, h - r + p)
        for t in range(lo, hi):
            gt = g[t]
            rr = r + t - p
            for c in range(w):
                out[m, r, c] += gt * tmp[m, rr, c]


@njit(parallel=True, **_JIT)
def _forward(x: np.ndarray, y: np.ndarray, g: np.ndarray, partials: np.ndarray) -> float:  # pragma: no cover - numba
    """Mean SSIM of ``x, y [C, H, W]``; writes ``∂S/∂μx, ∂S/∂E[x²], ∂S/∂E[xy]`` into ``partials [3C, H, W]``."""
    c_, h, w = x.shape
    maps = np.empty((5 * c_, h, w), dtype=x.dtype)
    for ci in prange(c_):
        for r in range(h):
            for c in range(w):
                a = x[ci, r, c]
                b = y[ci, r, c]
                maps[ci, r, c] = a
                maps[c_ + ci, r, c] = b
                maps[2 * c_ + ci, r, c] = a * a
                maps[3 * c_ + ci, r, c] = b * b
                maps[4 * c_ + ci, r, c] = a * b
    tmp = np.empty_like(maps)
    bl = np.empty_like(maps)
    _blur(maps, g, tmp, bl)
    rows = np.zeros(c_ * h, dtype=np.float64)
    for cr in prange(c_ * h):
        ci = cr // h
        r = cr % h
        acc = 0.0
        for c in range(w):
            mx = bl[ci, r, c]
            my = bl[c_ + ci, r, c]
            sxx = bl[2 * c_ + ci, r, c] - mx * mx
            syy = bl[3 * c_ + ci, r, c] - my * my
            sxy = bl[4 * c_ + ci, r, c] - mx * my
            a1 = 2.0 * mx * my + C1
            a2 = 2.0 * sxy + C2
            b1 = mx * mx + my * my + C1
            b2 = sxx + syy + C2
            s = (a1 * a2) / (b1 * b2)
            acc += s
            d_a1 = a2 / (b1 * b2)
            d_a2 = a1 / (b1 * b2)
            d_b1 = -s / b1
            d_b2 = -s / b2
            # S(mu_x, E[x^2], E[xy]): a1 = 2 mu_x mu_y, a2 = 2 (E[xy] - mu_x mu_y), b1 = mu_x^2 + .., b2 = E[x^2] - mu_x^2 + ..
            partials[ci, r, c] = d_a1 * 2.0 * my - d_a2 * 2.0 * my + d_b1 * 2.0 * mx - d_b2 * 2.0 * mx
            partials[c_ + ci, r, c] = d_b2
            partials[2 * c_ + ci, r, c] = 2.0 * d_a2
        rows[cr] = acc
    return rows.sum() / (c_ * h * w)


@njit(parallel=True, **_JIT)
def _backward(x: np.ndarray, y: np.ndarray, g: np.ndarray, partials: np.ndarray, scale: float, grad: np.ndarray) -> None:  # pragma: no cover - numba
    """``grad [C, H, W] = scale * (B(∂S/∂μx) + 2x B(∂S/∂E[x²]) + y B(∂S/∂E[xy]))``."""
    c_, h, w = x.shape
    tmp = np.empty_like(partials)
    bl = np.empty_like(partials)
    _blur(partials, g, tmp, bl)
    for cr in prange(c_ * h):
        ci = cr // h
        r = cr % h
        for c in range(w):
            grad[ci, r, c] = scale * (bl[ci, r, c] + 2.0 * x[ci, r, c] * bl[c_ + ci, r, c] + y[ci, r, c] * bl[2 * c_ + ci, r, c])


class _SSIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred: Tensor, target: Tensor, window: int, sigma: float) -> Tensor:  # noqa: ANN001
        dt = np.float32 if pred.dtype == torch.float32 else np.float64
        x = np.ascontiguousarray(pred.detach().permute(2, 0, 1).numpy(), dtype=dt)
        y = np.ascontiguousarray(target.detach().permute(2, 0, 1).numpy(), dtype=dt)
        g = gaussian_1d(window, sigma).astype(dt)
        partials = np.empty((3 * x.shape[0], *x.shape[1:]), dtype=dt)
        s = _forward(x, y, g, partials)
        ctx.saved = (x, y, g, partials)
        return torch.tensor(s, dtype=pred.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # noqa: ANN001, ANN205
        x, y, g, partials = ctx.saved
        grad = np.empty_like(x)
        _backward(x, y, g, partials, float(grad_out) / x.size, grad)
        return torch.from_numpy(grad).permute(1, 2, 0), None, None, None


def ssim_fused(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two ``[H, W, C]`` CPU images (float32 or float64); differentiable in ``pred``."""
    if target.requires_grad:
        raise ValueError("ssim_fused: the target must not require a gradient (only the prediction gets one)")
    return _SSIM.apply(pred, target, int(window), float(sigma))
