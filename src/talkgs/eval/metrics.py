"""Evaluation metrics, each a library function tested on known cases.

Image metrics (this module), on ``uint8`` or ``float`` ``[H, W, 3]`` RGB frames (floats in [0, 1]):

- :func:`psnr` -- ``10 log10(1 / MSE)`` over the whole image or the pixels of a mask; ``inf`` for
  identical images. Per-clip values are the mean of the per-frame PSNRs (as ER-NeRF /
  GaussianTalker's ``PSNRMeter``).
- :func:`ssim` -- Wang et al. 2004 SSIM exactly as ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``:
  11-tap Gaussian window, C1 = 0.01², C2 = 0.03², mean over the "valid" region (5 px border
  dropped) and the channels. (3DGS's training SSIM zero-pads instead; it differs at the border.)
- :class:`LPIPSMetric` -- LPIPS v0.1 AlexNet, the project's implementation
  (:mod:`talkgs.models.perceptual`, also used by the training loss); unavailable without weights.
- face region: :func:`face_box` / :func:`face_mask` from the ``segment`` stage's label map of the
  ground-truth frame: classes face skin + eyes/brows + lips + mouth interior (:data:`FACE_CLASSES`;
  not hair, torso, background). "face" metrics use the label map's **bounding box** (a crop, as the
  papers crop the face) for PSNR, SSIM and LPIPS; ``psnr_face_mask`` uses the mask's pixels alone.

Other metrics live in submodules and are re-exported here:

- :mod:`talkgs.eval.landmarks` -- LMD (mouth / face), landmark action-unit proxies and AUE-L/U,
  mouth-opening correlations (the lip-sync measure that needs no weights), speech envelope.
- :mod:`talkgs.eval.identity` -- CSIM (cosine of dlib face descriptors) and the 68-point mouth
  LMD-68 (dlib's shape predictor), with the registry-installed dlib models (a hard dependency).
- :mod:`talkgs.eval.syncnet` -- SyncNet LSE-C / LSE-D (official ``syncnet_python`` procedure).
- :mod:`talkgs.eval.fid` -- FID (pytorch-fid's Inception-v3 pool3 features + Fréchet distance).
- :func:`efficiency_metrics` -- training time (the run's timings file) and render FPS.

A metric whose weights are missing is reported as :func:`unavailable` ``{"status":
"unavailable", "reason": ...}``, never as a number.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FACE_CLASSES",
    "Box",
    "WeightsMissing",
    "unavailable",
    "state_dict_mismatch",
    "is_unavailable",
    "to_float01",
    "psnr",
    "ssim",
    "face_mask",
    "face_box",
    "crop",
    "LPIPSMetric",
    "efficiency_metrics",
]

Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)`` half-open pixel box."""

FACE_CLASSES = (2, 4, 5, 6)
"""Segment label ids of the face region: face skin, eyes (+brows), lips, mouth interior
(:data:`talkgs.preprocess.segment.LABELS`)."""


class WeightsMissing(FileNotFoundError):
    """A metric's network weights are not on this machine; the message says where to put them."""


def state_dict_mismatch(own: Mapping[str, Any], state: Mapping[str, Any]) -> tuple[list[str], list[str], list[tuple[str, Any, list[int]]]]:
    """How a weights file's state dict ``state`` differs from a network's own ``own``:
    ``(missing, unexpected, shapes)``: keys of ``own`` absent from ``state`` (``num_batches_tracked``
    buffers, absent from files saved by old PyTorch versions, may be missing), keys of ``state``
    the network lacks, and ``(key, found shape or type name, expected shape)`` of the shared keys
    whose value is not a tensor of the network's shape. Empty lists: the file fits."""
    import torch

    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__, list(own[k].shape))
        for k, v in state.items()
        if k in own and not (isinstance(v, torch.Tensor) and v.shape == own[k].shape)
    ]
    return missing, unexpected, shapes


def unavailable(reason: str) -> dict[str, str]:
    """The value written for a metric that cannot be computed here (never a number)."""
    return {"status": "unavailable", "reason": str(reason)}


def is_unavailable(value: Any) -> bool:
    return isinstance(value, dict) and value.get("status") == "unavailable"


def to_float01(img: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` image as float64 in [0, 1] (``uint8`` is divided by 255)."""
    a = np.asarray(img)
    if a.ndim != 3:
        raise ValueError(f"expected an [H, W, C] image, found shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected uint8 or float in [0, 1], found {a.dtype}")
    return a.astype(np.float64)


def _pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_float01(a), to_float01(b)
    if x.shape != y.shape:
        raise ValueError(f"{what}: images differ in shape: {x.shape} vs {y.shape}")
    return x, y


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of two ``[H, W, C]`` images (data range 1), over ``mask [H, W]`` (bool) if given.

    Returns ``inf`` for identical images (or regions); raises ``ValueError`` on an empty mask.
    """
    x, y = _pair(a, b, "psnr")
    d2 = (x - y) ** 2
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != x.shape[:2]:
            raise ValueError(f"psnr: mask is {m.shape}, images are {x.shape[:2]}")
        if not m.any():
            raise ValueError("psnr: the mask is empty")
        d2 = d2[m]
    mse = float(d2.mean())
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def _gauss_kernel(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    r = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's radius
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation of ``[H, W, C]`` with ``g`` keeping only the valid region."""
    k = len(g)
    h, w = img.shape[:2]
    out = np.zeros((h - k + 1, w, img.shape[2]))
    for i in range(k):
        out += g[i] * img[i : i + h - k + 1]
    res = np.zeros((h - k + 1, w - k + 1, img.shape[2]))
    for i in range(k):
        res += g[i] * out[:, i : i + w - k + 1]
    return res


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two ``[H, W, C]`` images (data range 1); see the module docstring.

    Equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0, channel_axis=-1)``. Images must be at least
    11 x 11 pixels. Identical images give 1.
    """
    x, y = _pair(a, b, "ssim")
    g = _gauss_kernel()
    if min(x.shape[:2]) < len(g):
        raise ValueError(f"ssim: images of {x.shape[:2]} are smaller than the {len(g)}x{len(g)} window")
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def face_mask(labels: np.ndarray, classes: Sequence[int] = FACE_CLASSES) -> np.ndarray:
    """Boolean ``[H, W]`` face region of a segment label map ``uint8 [H, W]``."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"expected a [H, W] label map, found shape {lab.shape}")
    return np.isin(lab, np.asarray(classes))


def face_box(labels: np.ndarray, classes: Sequence[int] = FACE_CLASSES, min_size: int = 16) -> Box | None:
    """Bounding box ``(y0, y1, x0, x1)`` of the face classes in ``labels [H, W]`` (None when the
    face is absent), grown symmetrically to at least ``min_size`` per side, clamped to the image."""
    m = face_mask(labels, classes)
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        return None
    h, w = m.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1

    def grow(a0: int, a1: int, size: int) -> tuple[int, int]:
        need = min(min_size, size) - (a1 - a0)
        if need > 0:
            a0 -= need // 2
            a1 += need - need // 2
            shift = max(0, -a0) - max(0, a1 - size)
            a0, a1 = a0 + shift, a1 + shift
        return a0, a1

    y0, y1 = grow(y0, y1, h)
    x0, x1 = grow(x0, x1, w)
    return (y0, y1, x0, x1)


def crop(img: np.ndarray, box: Box) -> np.ndarray:
    y0, y1, x0, x1 = box
    return img[y0:y1, x0:x1]


class LPIPSMetric:
    """LPIPS (v0.1, AlexNet) as a metric: ``metric(a, b) -> float`` on two ``[H, W, 3]`` images.

    Wraps :class:`talkgs.models.perceptual.LPIPS` (the training loss's network). Inputs in [0, 1]
    (``normalize=True``); crops smaller than 64 px on a side are bilinearly upsampled to 64 (as the
    training loss does; AlexNet's pooling needs ~32 px).

    Raises:
        talkgs.models.perceptual.LPIPSWeightsMissing: a weight file is missing (the protocols turn
        it into :func:`unavailable` with its message).
    """

    def __init__(self, alexnet_weights: str | os.PathLike[str] | None = None, linear_weights: str | os.PathLike[str] | None = None, device: Any = "cpu") -> None:
        from talkgs.models.perceptual import LPIPS

        self.device = device
        self.net = LPIPS(alexnet_weights, linear_weights).to(device)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        import torch
        import torch.nn.functional as F

        x, y = _pair(a, b, "lpips")
        tx = torch.from_numpy(x).float().permute(2, 0, 1)[None].to(self.device)
        ty = torch.from_numpy(y).float().permute(2, 0, 1)[None].to(self.device)
        if min(tx.shape[-2:]) < 64:
            s = 64 / min(tx.shape[-2:])
            tx = F.interpolate(tx, scale_factor=s, mode="bilinear", align_corners=False)
            ty = F.interpolate(ty, scale_factor=s, mode="bilinear", align_corners=False)
        with torch.no_grad():
            return float(self.net(tx, ty, normalize=True)[0])


def efficiency_metrics(
    train_timings: str | os.PathLike[str] | dict[str, Any] | None = None,
    timing_json: str | os.PathLike[str] | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Training time and render speed.

    Args:
        train_timings: the training run's timings (a dict or the json file
            :func:`talkgs.train.loop.train` writes, ``metrics/timings/train/<S>/<V>.json`` in the
            pipeline): ``elapsed_s`` is the optimisation time summed over resumed runs, without
            start-up and checkpoint writing; ``steps`` the steps trained.
        timing_json: the render timing, a dict or a json file holding ``fps`` (frames/s of model
            forward (deformation) + rasterisation, no decoding/encoding: what
            :func:`talkgs.synthesize.render_test` returns) and optionally ``device``/``resolution``.

    Returns:
        ``{"train.time_s", "train.steps", "render.fps", "render.device", "render.resolution"}``
        (keys present for what was given; a missing file → :func:`unavailable` with the reason).
    """
    out: dict[str, Any] = {}
    if train_timings is not None:
        t, where = (train_timings, "the training timings") if isinstance(train_timings, dict) else (None, Path(train_timings))
        if t is None:
            if not where.is_file():
                out["train.time_s"] = unavailable(f"{where} not found (train the variant first)")
            else:
                t = json.loads(where.read_text())
        if t is not None:
            if t.get("elapsed_s") is None:
                out["train.time_s"] = unavailable(f"{where}: {t.get('reason') or 'no elapsed_s recorded'}")
            else:
                out["train.time_s"] = round(float(t["elapsed_s"]), 2)
            if t.get("steps") is not None:
                out["train.steps"] = int(t["steps"])
    if timing_json is not None:
        if isinstance(timing_json, dict):
            t = timing_json
        else:
            p = Path(timing_json)
            if not p.is_file():
                out["render.fps"] = unavailable(f"{p} not found (render the test split first)")
                return out
            t = json.loads(p.read_text())
        if "fps" not in t:
            raise ValueError(f"render timing {timing_json}: no 'fps' key (found {sorted(t)})")
        out["render.fps"] = float(t["fps"])
        for k in ("device", "resolution"):
            if k in t:
                out[f"render.{k}"] = t[k]
    return out


# Re-exports of the submodules' public metrics (imported lazily by name to keep this module light).
_LAZY = {
    "lmd": "talkgs.eval.landmarks",
    "lmd_per_frame": "talkgs.eval.landmarks",
    "au_reference": "talkgs.eval.landmarks",
    "detect_landmarks": "talkgs.eval.landmarks",
    "action_units": "talkgs.eval.landmarks",
    "aue": "talkgs.eval.landmarks",
    "lagged_correlation": "talkgs.eval.landmarks",
    "speech_envelope": "talkgs.eval.landmarks",
    "mouth_opening": "talkgs.eval.landmarks",
    "SyncNet": "talkgs.eval.syncnet",
    "load_syncnet": "talkgs.eval.syncnet",
    "lse": "talkgs.eval.syncnet",
    "frechet_distance": "talkgs.eval.fid",
    "FIDInceptionV3": "talkgs.eval.fid",
    "load_fid_inception": "talkgs.eval.fid",
    "fid_from_frames": "talkgs.eval.fid",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)
