"""FID (Heusel et al. 2017) on frames, as ``pytorch-fid`` computes it.

- Network: :class:`FIDInceptionV3`, torchvision's Inception-v3 with pytorch-fid's patches
  (``FIDInceptionA/C/E_1/E_2``: TensorFlow's average pooling without padded zeros, max pooling in
  the last block), 1008 classes, no aux head; defined here (no torchvision). It loads
  ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's port of TensorFlow's FID Inception,
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)
  from an explicit path or the torch hub cache ``$TORCH_HOME/hub/checkpoints/`` (where pytorch-fid
  downloads it); absent, :class:`InceptionWeightsMissing` (the protocols report FID unavailable).
- Features: RGB in [0, 1], bilinear resize to 299 x 299 (``align_corners=False``), scaled to
  [-1, 1], the 2048-d output of the final average pool (pool3).
- :func:`frechet_distance`: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` with ``S`` the
  ``np.cov(rowvar=False)`` covariances, pytorch-fid's ``calculate_frechet_distance`` (``1e-6``
  diagonal offset when the product's square root is singular, imaginary parts dropped when tiny).

FID needs many frames to be meaningful (2048-d covariances): on a test split of tens of frames the
estimate is strongly biased upwards; compare variants on the same frames only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkgs.eval.metrics import WeightsMissing, state_dict_mismatch

log = logging.getLogger(__name__)

__all__ = [
    "INCEPTION_FILE",
    "FIDInceptionV3",
    "InceptionWeightsMissing",
    "inception_weights_path",
    "load_fid_inception",
    "frechet_distance",
    "activation_stats",
    "frame_features",
    "fid_from_frames",
]

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE


class InceptionWeightsMissing(WeightsMissing):
    """The FID Inception weights are not on this machine; the message says where to put them."""


def inception_weights_path(path: str | os.PathLike[str] | None = None) -> Path:
    from talkgs.models.perceptual import torch_hub_checkpoints

    p = Path(path) if path else torch_hub_checkpoints() / INCEPTION_FILE
    if not p.is_file():
        raise InceptionWeightsMissing(
            f"FID Inception weights not found at {p}: FID needs pytorch-fid's {INCEPTION_FILE} ({INCEPTION_URL}). "
            f"Copy it to {torch_hub_checkpoints() / INCEPTION_FILE} or pass its path."
        )
    return p


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _tf_avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = m(bd)
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """``FIDInceptionE_1`` (``max_pool=False``: TF average pool) / ``FIDInceptionE_2`` (max pool)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``fid_inception_v3()`` (state-dict names as torchvision's ``Inception3`` with
    ``num_classes=1008, aux_logits=False``). ``forward(x [B, 3, H, W] in [0, 1]) -> [B, 2048]`` pool3."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # in the weight file; unused for FID

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3: expected [B, 3, H, W] in [0, 1], found {list(x.shape)}")
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def load_fid_inception(path: str | os.PathLike[str] | None = None, device: Any = "cpu") -> FIDInceptionV3:
    """:class:`FIDInceptionV3` with pytorch-fid's weights (strict; ``num_batches_tracked`` optional)."""
    p = inception_weights_path(path)
    state = torch.load(p, map_location="cpu", weights_only=True)
    net = FIDInceptionV3()
    own = net.state_dict()
    missing, unexpected, _ = state_dict_mismatch(own, state)
    if missing or unexpected:
        raise ValueError(f"{p}: not pytorch-fid's FID Inception weights (missing {missing[:6]}, unexpected {unexpected[:6]})")
    net.load_state_dict(state, strict=False)
    return net.to(device).eval()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance of ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (pytorch-fid's formula)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"frechet_distance: mismatched shapes {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        log.warning("fid: singular product of covariances; adding %g to the diagonals", eps)
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"fid: imaginary component {np.max(np.abs(covmean.imag))} in sqrt(S1 S2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def activation_stats(act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [D], sigma [D, D])`` of activations ``[N, D]`` (N >= 2)."""
    a = np.asarray(act, np.float64)
    if a.ndim != 2 or len(a) < 2:
        raise ValueError(f"activation_stats: need [N >= 2, D] activations, found {a.shape}")
    return a.mean(0), np.cov(a, rowvar=False)


@torch.no_grad()
def frame_features(net: nn.Module, frames: Iterable[np.ndarray], batch_size: int = 16, device: Any = "cpu") -> np.ndarray:
    """``net`` features ``[N, D]`` of ``uint8 [H, W, 3]`` RGB frames (given to ``net`` as [B, 3, H, W] in [0, 1])."""
    feats, batch = [], []

    def flush() -> None:
        x = torch.from_numpy(np.stack(batch)).float().div(255.0).permute(0, 3, 1, 2).to(device)
        feats.append(net(x).reshape(len(batch), -1).double().cpu().numpy())
        batch.clear()

    for f in frames:
        a = np.asarray(f)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"frame_features: expected uint8 [H, W, 3] RGB frames, found {a.dtype} {a.shape}")
        batch.append(a)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise ValueError("frame_features: no frames")
    return np.concatenate(feats)


def fid_from_frames(net: nn.Module, frames_a: Iterable[np.ndarray], frames_b: Iterable[np.ndarray], device: Any = "cpu") -> float:
    """FID between two sets of RGB frames with feature network ``net`` (:func:`load_fid_inception`)."""
    mu1, s1 = activation_stats(frame_features(net, frames_a, device=device))
    mu2, s2 = activation_stats(frame_features(net, frames_b, device=device))
    return frechet_distance(mu1, s1, mu2, s2)
