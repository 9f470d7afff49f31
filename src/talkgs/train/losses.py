"""Training losses, registered by name (registry kind ``loss``); a phase weights them by name.

Every loss factory takes the variant's :class:`~talkgs.train.params.LossParams` and returns a
callable ``loss(ctx: LossContext) -> Tensor`` (a scalar). Built-ins:

- ``l1``: mean absolute error over the full image.
- ``dssim``: ``1 - SSIM`` (11x11 Gaussian window, sigma 1.5, as 3DGS) over the full image.
- ``lpips``: LPIPS (AlexNet + linear heads, :mod:`talkgs.models.perceptual`) over the full image.
  Building it loads real weights; when they are missing it raises
  :class:`~talkgs.models.perceptual.LPIPSWeightsMissing` saying where to put them (the loop
  builds only losses with a non-zero weight in some phase: presets that set ``lpips: 0`` run
  without them, and say so).
- ``lip``: L1 on the lip crop (GaussianTalker's lip loss), from the frame's lip landmarks.
- ``face``: L1 on the face crop (face-oval landmarks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from talkgs.models.registry import register
from talkgs.train.params import LossParams

__all__ = ["LossContext", "l1", "ssim", "dssim", "crop", "build_losses", "LossFn"]

Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)`` half-open pixel box."""


@dataclass
class LossContext:
    """What a loss sees for one training frame.

    Attributes:
        pred: ``[H, W, 3]`` rendered image (head composited on the background) in [0, 1].
        target: ``[H, W, 3]`` ground-truth frame.
        boxes: region name (``lip``, ``face``) → ``(y0, y1, x0, x1)`` crop at this resolution.
        extras: anything else a loss may need (e.g. deformation offsets for regularisers).
    """

    pred: Tensor
    target: Tensor
    boxes: dict[str, Box] = field(default_factory=dict)
    extras: dict[str, object] = field(default_factory=dict)


LossFn = Callable[[LossContext], Tensor]


def l1(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).abs().mean()


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w = g[:, None] * g[None, :]
    return w.expand(channels, 1, size, size).contiguous()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two ``[H, W, C]`` images in [0, 1] (3DGS's implementation: Gaussian window,
    zero padding, C1 = 0.01², C2 = 0.03²)."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim: expected two [H, W, C] images of one shape, found {list(a.shape)} and {list(b.shape)}")
    c = a.shape[-1]
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    w = _gaussian_window(window, sigma, c, x)
    pad = window // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=c)
    mu_y = F.conv2d(y, w, padding=pad, groups=c)
    sxx = F.conv2d(x * x, w, padding=pad, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, padding=pad, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def dssim(a: Tensor, b: Tensor, window: int = 11) -> Tensor:
    return 1.0 - ssim(a, b, window)


def crop(img: Tensor, box: Box) -> Tensor:
    y0, y1, x0, x1 = box
    return img[y0:y1, x0:x1]


@register("loss", "l1")
def _make_l1(params: LossParams) -> LossFn:
    return lambda ctx: l1(ctx.pred, ctx.target)


@register("loss", "dssim")
def _make_dssim(params: LossParams) -> LossFn:
    return lambda ctx: dssim(ctx.pred, ctx.target, params.ssim_window)


@register("loss", "lpips")
def _make_lpips(params: LossParams) -> LossFn:
    from talkgs.models.perceptual import LPIPS

    net = LPIPS(params.perceptual.alexnet_weights, params.perceptual.linear_weights)

    def loss(ctx: LossContext) -> Tensor:
        x = ctx.pred.permute(2, 0, 1)[None]
        y = ctx.target.permute(2, 0, 1)[None]
        if min(x.shape[-2:]) < 64:  # AlexNet's pooling needs ~32+ px; upsample tiny crops/images
            s = 64 / min(x.shape[-2:])
            x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            y = F.interpolate(y, scale_factor=s, mode="bilinear", align_corners=False)
        return net.to(x.device)(x, y, normalize=True).mean()

    return loss


def _region_l1(region: str) -> Callable[[LossParams], LossFn]:
    def make(params: LossParams) -> LossFn:
        def loss(ctx: LossContext) -> Tensor:
            box = ctx.boxes.get(region)
            if box is None:
                raise ValueError(f"loss {region!r}: the frame has no {region} box (landmarks missing?)")
            return l1(crop(ctx.pred, box), crop(ctx.target, box))

        return loss

    return make


register("loss", "lip")(_region_l1("lip"))
register("loss", "face")(_region_l1("face"))


def region_box(points: Tensor | "object", margin: float, min_size: int, width: int, height: int) -> Box:
    """Crop box around landmark ``points [K, 2]`` (pixels): their bounding box grown by
    ``margin`` x its size per side, at least ``min_size`` wide/high, clamped to the image."""
    import numpy as np

    p = np.asarray(points, dtype=np.float64)
    x0, y0 = p.min(0)
    x1, y1 = p.max(0)
    w, h = x1 - x0, y1 - y0
    x0, x1 = x0 - margin * w, x1 + margin * w
    y0, y1 = y0 - margin * h, y1 + margin * h
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w = max(x1 - x0, min_size)
    h = max(y1 - y0, min_size)
    w, h = min(w, width), min(h, height)
    xa = int(math.floor(min(max(cx - w / 2, 0), width - w)))
    ya = int(math.floor(min(max(cy - h / 2, 0), height - h)))
    return (ya, min(height, ya + int(math.ceil(h))), xa, min(width, xa + int(math.ceil(w))))


def build_losses(names: set[str], params: LossParams) -> dict[str, LossFn]:
    """Build the named losses (those with a non-zero weight in some phase)."""
    from talkgs.models.registry import build

    return {n: build("loss", n, params=params) for n in sorted(names)}
