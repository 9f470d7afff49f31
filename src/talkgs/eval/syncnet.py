"""SyncNet lip-sync scores LSE-C / LSE-D, following the official ``syncnet_python`` evaluation
(Chung & Zisserman 2016; the procedure Wav2Lip's ``calculate_scores_real_videos`` and the papers use).

The official procedure, step by step, and what this module does for each:

1. ``run_pipeline.py``: S3FD face detection per frame, a face track, the box centre and size
   median-filtered over the track (kernel 13), then per frame the crop
   ``[cy - s, cy + s(1 + 2cs)] x [cx - s(1 + cs), cx + s(1 + cs)]`` (``s`` = half the larger box
   side, crop scale ``cs = 0.4``, the frame padded with grey 110) resized to 224 x 224 (BGR).
   **Here**: the same smoothing, padding and crop, but the face box is the bounding box of the
   MediaPipe mesh landmarks (S3FD needs its own weights; :func:`face_boxes`), or boxes you pass.
   The official pipeline also re-encodes the video (ffmpeg ``-qscale 2`` avi, XVID crops, JPEG
   frames); frames are used as decoded here.
2. ``SyncNetInstance.evaluate``: video as float BGR 0..255 ``[1, 3, T, 224, 224]`` (no
   normalisation); audio 16 kHz mono **int16 values** → ``python_speech_features.mfcc`` (13
   coefficients, 100 Hz; re-implemented exactly in :func:`mfcc`); ``min_length = min(T,
   floor(samples / 640))``; for every start frame ``v < min_length - 5``: lip embedding of frames
   ``v..v+4`` (:meth:`SyncNet.forward_lip`) and audio embedding of MFCC columns ``4v..4v+19``
   (:meth:`SyncNet.forward_aud`), 1024-d each.
3. ``calc_pdist``: for each video embedding the Euclidean distances to the audio embeddings at
   offsets ``-vshift..+vshift`` (``vshift = 15``; audio zero-padded at the ends); ``mdist`` = mean
   over frames per offset; ``minval = min(mdist)``, ``offset = vshift - argmin``, ``conf =
   median(mdist) - minval``.

**LSE-D = minval, LSE-C = conf** (Wav2Lip's ``SyncNetInstance_calc_scores``), per video; a
dataset's score is the mean over its videos. (There is no lower-half crop in this procedure: the
lower half at 96 px belongs to Wav2Lip's own expert discriminator, a different network.)

Weights: the official ``syncnet_v2.model`` (a state dict of ``SyncNetModel.S``; download with
``syncnet_python/download_model.sh``) from an explicit path, ``$TALKGS_SYNCNET``, or the torch hub
cache folder ``$TORCH_HOME/hub/checkpoints/syncnet_v2.model``. :class:`SyncNet` defines the same
layers with the same names, so the file loads as is (:func:`load_syncnet`); absent, it raises
:class:`SyncNetWeightsMissing` and the protocols report LSE as unavailable.
"""

from __future__ import annotations

import decimal
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from talkgs.eval.metrics import WeightsMissing, state_dict_mismatch

log = logging.getLogger(__name__)

__all__ = [
    "SYNCNET_FILE",
    "SYNCNET_URL",
    "SyncNet",
    "SyncNetWeightsMissing",
    "syncnet_weights_path",
    "load_syncnet",
    "mfcc",
    "face_boxes",
    "face_track_crops",
    "offset_search",
    "lse",
]

SYNCNET_FILE = "syncnet_v2.model"
SYNCNET_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
CROP_SIZE = 224
CROP_SCALE = 0.40
MEDIAN_KERNEL = 13
PAD_VALUE = 110
VSHIFT = 15


class SyncNetWeightsMissing(WeightsMissing):
    """``syncnet_v2.model`` is not on this machine; the message says where to put it."""


def syncnet_weights_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The SyncNet weights: ``path``, else ``$TALKGS_SYNCNET``, else the torch hub cache file."""
    from talkgs.models.perceptual import torch_hub_checkpoints

    p = Path(path) if path else Path(os.environ["TALKGS_SYNCNET"]) if os.environ.get("TALKGS_SYNCNET") else torch_hub_checkpoints() / SYNCNET_FILE
    if not p.is_file():
        raise SyncNetWeightsMissing(
            f"SyncNet weights not found at {p}: LSE-C/LSE-D need the official {SYNCNET_FILE} "
            f"(syncnet_python's download_model.sh: {SYNCNET_URL}). Copy it to "
            f"{torch_hub_checkpoints() / SYNCNET_FILE}, or set TALKGS_SYNCNET / pass its path."
        )
    return p


class SyncNet(nn.Module):
    """``SyncNetModel.S`` of syncnet_python (same layers, same state-dict names).

    ``forward_lip(x [B, 3, 5, 224, 224])`` (float BGR 0..255) → ``[B, 1024]``;
    ``forward_aud(x [B, 1, 13, 20])`` (MFCC) → ``[B, 1024]``.
    """

    def __init__(self, num_layers_in_fc_layers: int = 1024) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, num_layers_in_fc_layers))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, num_layers_in_fc_layers))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(96),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
            nn.BatchNorm3d(512),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, x: Tensor) -> Tensor:
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.view(mid.size(0), -1))

    def forward_lip(self, x: Tensor) -> Tensor:
        mid = self.netcnnlip(x)
        return self.netfclip(mid.view(mid.size(0), -1))


def load_syncnet(path: str | os.PathLike[str] | None = None, device: Any = "cpu") -> SyncNet:
    """The SyncNet with the official weights (see :func:`syncnet_weights_path`), in eval mode.

    The file is a state dict of ``SyncNetModel.S``; ``num_batches_tracked`` buffers (absent from
    files saved by old PyTorch versions) may be missing, anything else must match exactly.
    Raises :class:`SyncNetWeightsMissing` when absent, ``ValueError`` when it is another network.
    """
    p = syncnet_weights_path(path)
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    net = SyncNet()
    own = net.state_dict()
    missing, unexpected, shapes = state_dict_mismatch(own, state)
    if missing or unexpected:
        raise ValueError(
            f"{p}: not a syncnet_python SyncNetModel.S state dict (missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''})"
        )
    if shapes:
        k, found, expected = shapes[0]
        raise ValueError(f"{p}: {k} has shape {found}, SyncNetModel.S has {expected}")
    for k, v in state.items():
        own[k].copy_(v)
    return net.to(device).eval()


# ----------------------------------------------------------------------------------------------
# audio: python_speech_features.mfcc (v0.6), re-implemented


def _round_half_up(x: float) -> int:
    return int(decimal.Decimal(x).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _hz2mel(hz: Any) -> Any:
    return 2595 * np.log10(1 + hz / 700.0)


def _mel2hz(mel: Any) -> Any:
    return 700 * (10 ** (mel / 2595.0) - 1)


def _filterbanks(nfilt: int, nfft: int, samplerate: int) -> np.ndarray:
    melpoints = np.linspace(_hz2mel(0), _hz2mel(samplerate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(melpoints) / samplerate)
    fb = np.zeros([nfilt, nfft // 2 + 1])
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fb


def mfcc(signal: np.ndarray, samplerate: int = 16000, winlen: float = 0.025, winstep: float = 0.01, numcep: int = 13,
         nfilt: int = 26, nfft: int = 512, preemph: float = 0.97, ceplifter: int = 22) -> np.ndarray:  # fmt: skip
    """``python_speech_features.mfcc`` (0.6, defaults, ``appendEnergy=True``): ``[N, numcep]``.

    ``signal`` as the official pipeline reads it: the int16 sample values (``scipy.io.wavfile``),
    not floats in [-1, 1] (the log energies depend on the scale).
    """
    from scipy.fft import dct

    sig = np.asarray(signal, np.float64).reshape(-1)
    sig = np.append(sig[0], sig[1:] - preemph * sig[:-1])
    flen, fstep = _round_half_up(winlen * samplerate), _round_half_up(winstep * samplerate)
    n = 1 if len(sig) <= flen else 1 + int(math.ceil((1.0 * len(sig) - flen) / fstep))
    padded = np.concatenate([sig, np.zeros(int((n - 1) * fstep + flen) - len(sig))])
    idx = np.arange(flen)[None, :] + (np.arange(n) * fstep)[:, None]
    frames = padded[idx]
    pspec = np.square(np.abs(np.fft.rfft(frames, nfft))) / nfft
    energy = pspec.sum(1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    feat = pspec @ _filterbanks(nfilt, nfft, samplerate).T
    feat = np.where(feat == 0, np.finfo(float).eps, feat)
    feat = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    lift = 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
    feat = feat * lift
    feat[:, 0] = np.log(energy)
    return feat


# ----------------------------------------------------------------------------------------------
# video: face-track crops


def face_boxes(landmarks: np.ndarray) -> np.ndarray:
    """Face boxes ``[T, 4]`` (x0, y0, x1, y1) from MediaPipe landmarks ``[T, 478, >=2]``: the
    bounding box of the 468 mesh points (stands in for S3FD's box). Frames without a face (NaN)
    take the nearest detected frame's box; raises ``ValueError`` if no frame has a face."""
    lm = np.asarray(landmarks, np.float64)[:, :468, :2]
    ok = np.isfinite(lm.reshape(len(lm), -1)).all(1)
    if not ok.any():
        raise ValueError("face_boxes: no frame has a detected face")
    boxes = np.full((len(lm), 4), np.nan)
    boxes[ok] = np.concatenate([lm[ok].min(1), lm[ok].max(1)], 1)
    good = np.nonzero(ok)[0]
    for i in np.nonzero(~ok)[0]:
        boxes[i] = boxes[good[np.argmin(np.abs(good - i))]]
    return boxes


def face_track_crops(frames: Sequence[np.ndarray], boxes: np.ndarray, crop_scale: float = CROP_SCALE, size: int = CROP_SIZE) -> np.ndarray:
    """``run_pipeline.crop_video``: ``uint8 [T, size, size, 3]`` **BGR** crops of RGB ``frames`` around
    ``boxes [T, 4]`` (x0, y0, x1, y1), median-filtered over time (kernel 13, zero-padded at the ends,
    as the official ``scipy.signal.medfilt`` call). Clips shorter than 13 frames (the official
    pipeline needs face tracks of 100+) use the largest odd kernel that fits, so that the zero
    padding cannot dominate the median."""
    import cv2
    from scipy.signal import medfilt

    b = np.asarray(boxes, np.float64)
    if b.ndim != 2 or b.shape != (len(frames), 4):
        raise ValueError(f"face_track_crops: expected boxes [{len(frames)}, 4], found {b.shape}")
    k = min(MEDIAN_KERNEL, len(b) if len(b) % 2 else len(b) - 1)
    if k < 1:
        raise ValueError("face_track_crops: no frames")
    s = medfilt(np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2, kernel_size=k)
    cy = medfilt((b[:, 1] + b[:, 3]) / 2, kernel_size=k)
    cx = medfilt((b[:, 0] + b[:, 2]) / 2, kernel_size=k)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    cs = crop_scale
    for i, f in enumerate(frames):
        bs = s[i]
        bsi = int(bs * (1 + 2 * cs))
        img = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2BGR)
        pad = np.pad(img, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(PAD_VALUE, PAD_VALUE))
        my, mx = cy[i] + bsi, cx[i] + bsi
        face = pad[int(my - bs) : int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)) : int(mx + bs * (1 + cs))]
        out[i] = cv2.resize(face, (size, size))
    return out


# ----------------------------------------------------------------------------------------------
# the evaluation


def offset_search(im_feat: Tensor, cc_feat: Tensor, vshift: int = VSHIFT) -> dict[str, Any]:
    """``calc_pdist`` + the offset/confidence of ``SyncNetInstance.evaluate``.

    ``im_feat, cc_feat [N, D]`` video / audio embeddings of the same windows. Returns ``offset``
    (frames; positive: the video lags the audio), ``min_dist`` (LSE-D), ``conf`` (LSE-C) and
    ``mdist [2 vshift + 1]``, the mean distance per tested offset.
    """
    if im_feat.shape != cc_feat.shape or im_feat.ndim != 2:
        raise ValueError(f"offset_search: expected two [N, D] tensors of one shape, found {list(im_feat.shape)} and {list(cc_feat.shape)}")
    win = vshift * 2 + 1
    cc_p = torch.nn.functional.pad(cc_feat, (0, 0, vshift, vshift))
    dists = torch.stack([torch.nn.functional.pairwise_distance(im_feat[[i], :].repeat(win, 1), cc_p[i : i + win, :]) for i in range(len(im_feat))], 1)
    mdist = dists.mean(1)
    minval, minidx = torch.min(mdist, 0)
    return {
        "offset": int(vshift - int(minidx)),
        "min_dist": float(minval),
        "conf": float(torch.median(mdist) - minval),
        "mdist": mdist.numpy(),
    }


@torch.no_grad()
def lse(
    net: SyncNet,
    frames: Sequence[np.ndarray],
    audio: np.ndarray,
    *,
    sample_rate: int = 16000,
    fps: float = 25.0,
    boxes: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    vshift: int = VSHIFT,
    batch_size: int = 20,
    device: Any = "cpu",
) -> dict[str, Any]:
    """LSE-C / LSE-D of one talking-face clip (see the module docstring).

    Args:
        net: :func:`load_syncnet`.
        frames: ``uint8 [H, W, 3]`` RGB frames at 25 fps (the official model's rate).
        audio: mono float samples in [-1, 1] at 16 kHz, aligned with ``frames`` (sample 0 at the
            start of frame 0).
        boxes: face boxes ``[T, 4]`` (x0, y0, x1, y1); else from ``landmarks [T, 478, >=2]``; else
            detected with MediaPipe.

    Returns:
        ``{"lse_c", "lse_d", "offset", "windows", "mdist"}``.
    """
    if sample_rate != 16000 or abs(fps - 25.0) > 1e-6:
        raise ValueError(f"SyncNet works on 16 kHz audio and 25 fps video, found {sample_rate} Hz / {fps} fps; resample first")
    frames = list(frames)
    if min(len(frames), len(audio) // 640) < 6:
        raise ValueError(f"SyncNet needs at least 6 frames of video and audio, found {len(frames)} frames and {len(audio) / sample_rate:.2f} s")
    if boxes is None:
        if landmarks is None:
            from talkgs.eval.landmarks import detect_landmarks

            landmarks = detect_landmarks(frames)
        boxes = face_boxes(landmarks)
    crops = face_track_crops(frames, boxes)
    samples = np.round(np.clip(np.asarray(audio, np.float64), -1.0, 32767 / 32768) * 32768.0)  # the int16 values
    cc = mfcc(samples, sample_rate).T  # [13, M]
    min_length = min(len(crops), int(math.floor(len(samples) / 640)))
    last = min_length - 5
    if last < 1:
        raise ValueError(f"SyncNet needs at least 6 frames of video and audio, found {len(crops)} frames and {len(samples) / sample_rate:.2f} s")
    imtv = torch.from_numpy(crops).float().permute(3, 0, 1, 2)[None]  # [1, 3, T, 224, 224] BGR 0..255
    cct = torch.from_numpy(cc).float()[None, None]  # [1, 1, 13, M]
    im_feat, cc_feat = [], []
    for i in range(0, last, batch_size):
        rng = range(i, min(last, i + batch_size))
        im_in = torch.cat([imtv[:, :, v : v + 5] for v in rng], 0).to(device)
        im_feat.append(net.forward_lip(im_in).cpu())
        cc_in = torch.cat([cct[:, :, :, v * 4 : v * 4 + 20] for v in rng], 0).to(device)
        cc_feat.append(net.forward_aud(cc_in).cpu())
    res = offset_search(torch.cat(im_feat), torch.cat(cc_feat), vshift)
    return {"lse_c": res["conf"], "lse_d": res["min_dist"], "offset": res["offset"], "windows": last, "mdist": res["mdist"]}
