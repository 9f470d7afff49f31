"""Generic image losses, registered by name (registry kind ``loss``); a phase weights them by
name (``phases[i].losses: {l1: 0.8, dssim: 0.2, ...}``), a variant may configure them
(``losses: {lip: {margin: 0.3}}``). Each sees the batch's final image ``outputs["rgb"]
[K, H, W, 3]`` and its targets, and averages over the ``K`` frames.

- ``l1``: mean absolute error over the full image.
- ``dssim``: ``1 - SSIM`` (11x11 Gaussian window, sigma 1.5, as 3DGS) over the full image.
- ``lpips``: LPIPS (AlexNet + linear heads, :mod:`talkgs.models.perceptual`) over the full image.
  Building it loads real weights; when they are missing it raises
  :class:`~talkgs.models.perceptual.LPIPSWeightsMissing` saying where to put them (the trainer
  builds only losses with a non-zero weight in some phase: presets that set ``lpips: 0`` run
  without them, and say so).
- ``lip``: L1 on the lip crop (GaussianTalker's lip loss), from the frame's lip landmarks.
- ``face``: L1 on the face crop (face-oval landmarks).

Heads add their own named losses (:meth:`talkgs.models.contract.Head.loss_terms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from talkgs.configlib import MAX_PIXELS, Range
from talkgs.models.contract import Box, Loss, LossConfig, LossContext
from talkgs.models.registry import register

__all__ = ["l1", "ssim", "ssim_reference", "dssim", "crop", "per_frame", "L1Config", "DSSIMConfig", "LPIPSConfig", "RegionL1Config", "FaceL1Config"]


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
    zero padding, C1 = 0.01², C2 = 0.03²). On CPU, when only ``a`` needs a gradient (a training
    loss), the fused numba kernels of :mod:`talkgs.models.ssim_cpu` (4x faster at 128²);
    otherwise :func:`ssim_reference`."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim: expected two [H, W, C] images of one shape, found {list(a.shape)} and {list(b.shape)}")
    if a.device.type == "cpu" and b.device.type == "cpu" and not b.requires_grad and a.dtype in (torch.float32, torch.float64) and b.dtype == a.dtype:
        from talkgs.models.ssim_cpu import ssim_fused

        return ssim_fused(a, b, window, sigma)
    return ssim_reference(a, b, window, sigma)


def ssim_reference(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """:func:`ssim` in torch ops (depthwise 2-D convolutions): any device, gradients in both inputs."""
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


def per_frame(ctx: LossContext, fn) -> Tensor:  # noqa: ANN001 - fn(k, pred [H,W,3], target [H,W,3]) -> scalar
    """Mean over the batch's frames of ``fn(k, pred_k, target_k)``."""
    pred, target = ctx.pred, ctx.target
    terms = [fn(k, pred[k], target[k]) for k in range(pred.shape[0])]
    return terms[0] if len(terms) == 1 else torch.stack(terms).mean()


@dataclass(frozen=True)
class L1Config(LossConfig):
    """``loss/l1``: mean absolute error over the full image."""

    name: str = "l1"


@register("loss", "l1", L1Config)
class L1Loss(Loss):
    def forward(self, ctx: LossContext) -> Tensor:
        return per_frame(ctx, lambda k, p, t: l1(p, t))


@dataclass(frozen=True)
class DSSIMConfig(LossConfig):
    """``loss/dssim``: 1 - SSIM over the full image."""

    name: str = "dssim"
    window: Annotated[int, Range(3, 63)] = 11
    """Gaussian window of SSIM (3DGS: 11, sigma 1.5)."""


@register("loss", "dssim", DSSIMConfig)
class DSSIMLoss(Loss):
    def forward(self, ctx: LossContext) -> Tensor:
        w = self.config.window
        return per_frame(ctx, lambda k, p, t: dssim(p, t, w))


@dataclass(frozen=True)
class LPIPSConfig(LossConfig):
    """``loss/lpips``: LPIPS (AlexNet backbone + the linear heads of the lpips wheel)."""

    name: str = "lpips"
    alexnet_weights: str | None = None
    """Path of torchvision's ``alexnet-owt-7be5be79.pth``; None: the torch hub cache
    ``~/.cache/torch/hub/checkpoints/``. Missing weights stop the run (with where to put them)
    unless the lpips weight is 0 in every phase."""
    linear_weights: str | None = None
    """Path of the LPIPS linear heads; None: ``weights/v0.1/alex.pth`` of the lpips wheel."""


@register("loss", "lpips", LPIPSConfig)
class LPIPSLoss(Loss):
    """LPIPS over the full image; its network is fixed (pretrained), not trained."""

    def __init__(self, cfg: LPIPSConfig) -> None:
        super().__init__(cfg)
        from talkgs.models.perceptual import LPIPS

        net = LPIPS(cfg.alexnet_weights, cfg.linear_weights)
        for p in net.parameters():
            p.requires_grad_(False)
        self._net = [net]  # not a submodule: not trained, not checkpointed

    def forward(self, ctx: LossContext) -> Tensor:
        net = self._net[0].to(ctx.pred.device)

        def one(k: int, p: Tensor, t: Tensor) -> Tensor:
            x, y = p.permute(2, 0, 1)[None], t.permute(2, 0, 1)[None]
            if min(x.shape[-2:]) < 64:  # AlexNet's pooling needs ~32+ px; upsample tiny crops/images
                s = 64 / min(x.shape[-2:])
                x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                y = F.interpolate(y, scale_factor=s, mode="bilinear", align_corners=False)
            return net(x, y, normalize=True).mean()

        return per_frame(ctx, one)


@dataclass(frozen=True)
class RegionL1Config(LossConfig):
    """``loss/lip``: L1 on the lip crop (GaussianTalker's lip loss)."""

    name: str = "lip"
    margin: Annotated[float, Range(0, 1)] = 0.25
    """The landmark box grows by this fraction of its size on every side."""
    min_size: Annotated[int, Range(1, MAX_PIXELS)] = 16
    """Crops are at least this many pixels wide and high (at the training resolution)."""


@dataclass(frozen=True)
class FaceL1Config(RegionL1Config):
    """``loss/face``: L1 on the face crop (face-oval landmarks)."""

    name: str = "face"
    margin: Annotated[float, Range(0, 1)] = 0.05
    min_size: Annotated[int, Range(1, MAX_PIXELS)] = 32


class RegionL1(Loss):
    """L1 on the crop of the config's region (its ``name``: ``lip`` or ``face``) around each
    frame's landmarks."""

    region = ""

    def forward(self, ctx: LossContext) -> Tensor:
        c = self.config

        def one(k: int, p: Tensor, t: Tensor) -> Tensor:
            box = ctx.batch.box(k, self.region, c.margin, c.min_size)
            return l1(crop(p, box), crop(t, box))

        return per_frame(ctx, one)


@register("loss", "lip", RegionL1Config)
class LipL1(RegionL1):
    region = "lip"


@register("loss", "face", FaceL1Config)
class FaceL1(RegionL1):
    region = "face"
