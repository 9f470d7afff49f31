"""The audio-visual sync expert's networks and their checkpoint format.

Two architectures share one interface (``embed_audio``, ``embed_video``, ``sync_probability``,
``spec``: what inputs they take, see :mod:`talkgs.sync.data`):

- ``talkgs`` (:class:`SyncExpertNet`, trained by the ``sync_expert`` stage): a small two-tower
  CNN. Video: ``frames`` consecutive mouth crops (grayscale or RGB, ``crop_height x crop_width``)
  stacked along the channels as SyncNet / Wav2Lip do; 4 stride-2 conv + BN + ReLU blocks, global
  average pooling, a linear layer. Audio: the mel window of the centre frame (``[C mel bands, W
  columns]`` from ``features/audio_mel.parquet``, standardised per band with the training clips'
  statistics, kept as buffers), 4 conv blocks (3 of stride 2), pooling, a linear layer. Both embeddings are
  L2-normalised; ``p_sync = sigmoid(w * cos + b)`` with a learned scale ``w`` (init 5) and bias
  ``b`` (init 0): Wav2Lip's cosine-similarity BCE with a learned temperature.
- ``wav2lip`` (:class:`talkgs.sync.wav2lip.Wav2LipSyncNet`): Wav2Lip's expert, for its official
  weights; ``p_sync = cos`` as in Wav2Lip (its embeddings are non-negative).

Checkpoint (``models/sync_expert/checkpoint.pt``, :data:`FORMAT_VERSION`)::

    format_version, kind "talkgs.sync_expert", arch, net (constructor kwargs), spec (inputs),
    state_dict, config (sync_expert params), config_hash, step, finished, source
    ("trained" or the weights file it was loaded from), optimizer / rng / timing (while unfinished:
    resume; None once finished)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from talkgs.configlib import ConfigError
from talkgs.eval.metrics import state_dict_mismatch
from talkgs.sync.wav2lip import Wav2LipSyncNet

__all__ = [
    "FORMAT_VERSION", "KIND", "SyncExpertNet", "Wav2LipSyncNet", "SyncWeightsError", "build_net", "talkgs_spec",
    "WAV2LIP_SPEC", "load_expert", "save_expert", "sync_probability",
]  # fmt: skip

FORMAT_VERSION = 1
KIND = "talkgs.sync_expert"

WAV2LIP_SPEC = {"crop": "lower_face", "height": 48, "width": 96, "color": "bgr", "frames": 5, "audio": "wav2lip_mel", "audio_shape": [80, 16]}
"""Inputs of Wav2Lip's expert (see :mod:`talkgs.sync.wav2lip`)."""


class SyncWeightsError(ConfigError):
    """``sync_expert.weights`` names a missing file or not a sync-expert state dict."""


def talkgs_spec(*, height: int, width: int, color: str, frames: int, crop_scale: float, audio_shape: tuple[int, int]) -> dict[str, Any]:
    """Inputs of a :class:`SyncExpertNet`: ``crop`` ``lips`` (box ``crop_scale x`` the face width,
    centred on the lips), size, ``gray``/``rgb``, frames per stack, audio ``mel_window`` ``[C, W]``."""
    return {"crop": "lips", "height": int(height), "width": int(width), "color": color, "frames": int(frames),
            "crop_scale": float(crop_scale), "audio": "mel_window", "audio_shape": [int(audio_shape[0]), int(audio_shape[1])]}  # fmt: skip


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())


class SyncExpertNet(nn.Module):
    """The small two-tower expert (see the module docstring).

    ``forward(audio [B, 1, C, W], video [B, frames * channels, H, W])`` → ``(audio_emb, video_emb)``
    ``[B, embed_dim]``, L2-normalised.
    """

    arch = "talkgs"

    def __init__(self, spec: dict[str, Any], width: int = 32, embed_dim: int = 128) -> None:
        super().__init__()
        self.spec = dict(spec)
        ch = 1 if spec["color"] == "gray" else 3
        self.video_in = int(spec["frames"]) * ch
        c_a, _ = spec["audio_shape"]
        w = width
        self.video = nn.Sequential(
            _block(self.video_in, w, 2), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2), _block(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, embed_dim),
        )  # fmt: skip
        self.audio = nn.Sequential(
            _block(1, w, 1), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2), _block(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, embed_dim),
        )  # fmt: skip
        self.register_buffer("audio_mean", torch.zeros(c_a))
        self.register_buffer("audio_std", torch.ones(c_a))
        self.logit_scale = nn.Parameter(torch.tensor(5.0))
        self.logit_bias = nn.Parameter(torch.tensor(0.0))

    def _check(self, audio: Tensor | None, video: Tensor | None) -> None:
        c_a, w_a = self.spec["audio_shape"]
        if audio is not None and (audio.ndim != 4 or tuple(audio.shape[1:]) != (1, c_a, w_a)):
            raise ValueError(f"SyncExpertNet: expected audio [B, 1, {c_a}, {w_a}], found {list(audio.shape)}")
        h, w = self.spec["height"], self.spec["width"]
        if video is not None and (video.ndim != 4 or tuple(video.shape[1:]) != (self.video_in, h, w)):
            raise ValueError(f"SyncExpertNet: expected video [B, {self.video_in}, {h}, {w}], found {list(video.shape)}")

    def embed_audio(self, audio: Tensor) -> Tensor:
        self._check(audio, None)
        x = (audio - self.audio_mean[None, None, :, None]) / self.audio_std[None, None, :, None]
        return F.normalize(self.audio(x), dim=1)

    def embed_video(self, video: Tensor) -> Tensor:
        self._check(None, video)
        return F.normalize(self.video(video), dim=1)

    def forward(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
        return self.embed_audio(audio), self.embed_video(video)

    def probability(self, a: Tensor, v: Tensor) -> Tensor:
        return torch.sigmoid(self.logit_scale * (a * v).sum(1) + self.logit_bias)


def _wav2lip_probability(self: Wav2LipSyncNet, a: Tensor, v: Tensor) -> Tensor:
    return (a * v).sum(1).clamp(1e-7, 1 - 1e-7)


Wav2LipSyncNet.spec = WAV2LIP_SPEC  # type: ignore[attr-defined]
Wav2LipSyncNet.probability = _wav2lip_probability  # type: ignore[attr-defined]


def sync_probability(net: nn.Module, audio: Tensor, video: Tensor) -> Tensor:
    """``[B]`` probability that each (audio window, mouth stack) pair is in sync."""
    a, v = net(audio, video)
    return net.probability(a, v)  # type: ignore[operator]


def build_net(arch: str, net_kwargs: dict[str, Any]) -> nn.Module:
    if arch == "talkgs":
        return SyncExpertNet(**net_kwargs)
    if arch == "wav2lip":
        return Wav2LipSyncNet()
    raise ValueError(f"unknown sync expert architecture {arch!r}: use 'talkgs' or 'wav2lip'")


def save_expert(path: str | os.PathLike[str], ckpt: dict[str, Any]) -> None:
    """Write a sync-expert checkpoint (plus format version and kind) atomically."""
    from talkgs.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, "kind": KIND, **ckpt}, f)


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix ``nn.DataParallel`` adds (Wav2Lip's trainer may save it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_expert(path: str | os.PathLike[str], device: str | torch.device = "cpu", *, where: str = "sync_expert.weights") -> tuple[nn.Module, dict[str, Any]]:
    """Load a sync expert, in eval mode, and its checkpoint dict (``state_dict`` left out).

    Accepted: a talkgs ``checkpoint.pt`` of the ``sync_expert`` stage (either architecture); Wav2Lip's
    ``lipsync_expert.pth`` (a dict with ``state_dict``, as its trainer saves it, ``module.`` prefixes
    allowed) or a bare ``SyncNet_color`` state dict. ``num_batches_tracked`` buffers may be missing;
    every other tensor must be there with its shape.

    Raises:
        SyncWeightsError: the file is missing, unreadable, or not one of those (the message names it).
    """
    p = Path(path)
    if not p.is_file():
        raise SyncWeightsError(
            f"{where}: {p} not found. Give the path of a sync expert: Wav2Lip's lipsync_expert.pth, or a talkgs "
            "models/sync_expert/checkpoint.pt; or set it to null to train one (`dvc repro sync_expert`)."
        )
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged or foreign files
        raise SyncWeightsError(f"{where}: {p} cannot be read as PyTorch weights ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise SyncWeightsError(f"{where}: {p} holds a {type(data).__name__}, not a state dict or checkpoint dict")
    if data.get("kind") == KIND:
        if data.get("format_version") != FORMAT_VERSION:
            raise SyncWeightsError(f"{where}: {p} is sync-expert format {data.get('format_version')}, this talkgs reads {FORMAT_VERSION}; retrain it")
        arch, kwargs, state = data["arch"], dict(data.get("net") or {}), data["state_dict"]
        info = {k: v for k, v in data.items() if k not in ("state_dict", "optimizer", "rng")}
    else:
        state = data["state_dict"] if isinstance(data.get("state_dict"), dict) else data
        state = _strip_module(state)
        if not any(k.startswith("face_encoder.") for k in state):
            keys = list(state)[:4]
            raise SyncWeightsError(
                f"{where}: {p} is not a sync expert: expected Wav2Lip's SyncNet_color state dict (face_encoder.*, "
                f"audio_encoder.*) or a talkgs sync_expert checkpoint, found keys {keys}{' ...' if len(state) > 4 else ''}"
            )
        arch, kwargs = "wav2lip", {}
        info = {"arch": arch, "source": str(p), "global_step": data.get("global_step")}
    net = build_net(arch, kwargs)
    missing, unexpected, shapes = state_dict_mismatch(net.state_dict(), state)
    if missing or unexpected:
        raise SyncWeightsError(
            f"{where}: {p} does not match the {arch} sync expert: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    if shapes:
        k, found, expected = shapes[0]
        raise SyncWeightsError(f"{where}: {p}: {k} has shape {found}, the {arch} sync expert has {expected}")
    net.load_state_dict(state, strict=False)
    return net.to(device).eval(), info
