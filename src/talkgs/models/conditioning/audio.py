"""Audio window encoder: ``[W, C]`` feature window → one token ``[D]``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn

from talkgs.configlib import WIDTH
from talkgs.models.conditioning.base import ConditionConfig, FrameCondition
from talkgs.models.registry import ComponentConfig, build, register

__all__ = ["AudioWindowEncoder", "AudioEncoderConfig", "WindowConvConfig", "AudioToken", "AudioTokenConfig", "build_audio_encoder"]


@dataclass(frozen=True)
class AudioEncoderConfig(ComponentConfig):
    """An audio window encoder (registry kind ``audio_encoder``; default ``window_conv``).

    An encoder is ``factory(cfg, *, in_dim, window, dim)`` (plus ``ctx``, the head's
    :class:`~talkgs.models.contract.BuildContext`, when its config ``requires`` pipeline assets)
    with ``forward(x [B, W, C]) -> [B, D]`` and optionally ``fit(audio [T, W, C])`` (input
    statistics) and ``forward_pair(x) -> (y [B, D], target [B, D] | None)``: its output and the
    feature the output is tied to by a similarity loss (SyncGaussian's ``L_ah``; see
    :class:`talkgs.models.deformers.talkinggaussian.SmoothedAudio`).
    """

    kind: ClassVar[str] = "audio_encoder"
    default: ClassVar[str] = "window_conv"


def build_audio_encoder(cfg: AudioEncoderConfig, *, in_dim: int, window: int, dim: int, ctx: Any = None) -> nn.Module:
    """Build an audio encoder; the head's build context goes to those that require assets."""
    extra = {"ctx": ctx} if cfg.requires else {}
    return build("audio_encoder", cfg, in_dim=in_dim, window=window, dim=dim, **extra)


@dataclass(frozen=True)
class WindowConvConfig(AudioEncoderConfig):
    """``audio_encoder/window_conv`` (AD-NeRF / ER-NeRF AudioNet)."""

    name: str = "window_conv"
    hidden: Annotated[int, WIDTH] = 64
    """Channels of the convolutions and the MLP."""


@register("audio_encoder", "window_conv", WindowConvConfig)
class AudioWindowEncoder(nn.Module):
    """AD-NeRF / ER-NeRF ``AudioNet``: strided 1-D convolutions over the window, then a linear map.

    ``ceil(log2(W))`` convolutions (kernel 3, stride 2, LeakyReLU 0.02) halve the time axis down to
    one step; an MLP maps the result to ``dim``. Inputs are standardised per channel with the
    training audio's statistics (buffers set by :meth:`fit`, saved in checkpoints): raw log-mel
    or transformer features have arbitrary offsets and scales.

    Args:
        cfg: :class:`WindowConvConfig` (``hidden``: channels of the convolutions).
        in_dim: feature channels ``C`` per time step (e.g. 80 mel bands, 29 DeepSpeech logits,
            1024 HuBERT features).
        window: time steps ``W`` per frame window.
        dim: output token size ``D``.
    """

    def __init__(self, cfg: WindowConvConfig | None = None, *, in_dim: int, window: int, dim: int = 64) -> None:
        super().__init__()
        hidden = (cfg or WindowConvConfig()).hidden
        if in_dim < 1 or window < 1:
            raise ValueError(f"AudioWindowEncoder: in_dim and window must be >= 1, found {in_dim}, {window}")
        self.in_dim, self.window = in_dim, window
        convs: list[nn.Module] = []
        c, w = in_dim, window
        for _ in range(max(0, math.ceil(math.log2(window)))):
            convs += [nn.Conv1d(c, hidden, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.02, inplace=True)]
            c, w = hidden, (w + 1) // 2
        self.convs = nn.Sequential(*convs)
        self.out = nn.Sequential(nn.Linear(c * w, hidden), nn.LeakyReLU(0.02, inplace=True), nn.Linear(hidden, dim))
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    def fit(self, audio: Tensor) -> None:
        """Per-channel mean/std from the training windows ``[T, W, C]``."""
        if audio.ndim != 3 or audio.shape[-1] != self.in_dim:
            raise ValueError(f"AudioWindowEncoder.fit: expected [T, W, C={self.in_dim}], found {list(audio.shape)}")
        x = audio.reshape(-1, self.in_dim).to(self.mean)
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0, unbiased=False).clamp(min=1e-4))

    def forward(self, x: Tensor) -> Tensor:
        """``x [W, C]`` or ``[B, W, C]`` → ``[D]`` or ``[B, D]``."""
        single = x.ndim == 2
        if single:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.window, self.in_dim):
            raise ValueError(f"AudioWindowEncoder: expected [B, W={self.window}, C={self.in_dim}], found {list(x.shape)}")
        x = (x - self.mean) / self.std
        h = self.convs(x.transpose(1, 2))  # [B, hidden, 1]
        y = self.out(h.flatten(1))
        return y[0] if single else y


@dataclass(frozen=True)
class AudioTokenConfig(ConditionConfig):
    """``condition/audio``: the frame's audio window through an audio encoder."""

    name: str = "audio"
    encoder: AudioEncoderConfig = field(default_factory=WindowConvConfig)
    """The audio window encoder (registry kind ``audio_encoder``)."""


@register("condition", "audio", AudioTokenConfig)
class AudioToken(nn.Module):
    """The audio token: ``encoder(cond.audio)``. Its parameters are the group ``audio``.

    Args:
        cfg: :class:`AudioTokenConfig`.
        dim: token size ``D``.
        ctx: the head's build context (audio window ``W`` and channels ``C``).
    """

    group = "audio"

    def __init__(self, cfg: AudioTokenConfig, *, dim: int, ctx: Any) -> None:
        super().__init__()
        self.encoder = build_audio_encoder(cfg.encoder, in_dim=ctx.audio_dim, window=ctx.audio_window, dim=dim, ctx=ctx)

    def fit(self, stats: Any) -> None:
        """Input statistics from the training windows (``stats.audio [T, W, C]``)."""
        if hasattr(self.encoder, "fit"):
            self.encoder.fit(stats.audio)

    def forward(self, cond: FrameCondition) -> Tensor:
        return self.encoder(cond.audio)
