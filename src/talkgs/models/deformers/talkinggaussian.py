"""TalkingGaussian's motion networks (Li et al., ECCV 2024, §3.2-3.3; official ``motion_net.py``).

Both predict per-Gaussian offsets of *persistent* canonical Gaussians from their canonical
positions; colour and opacity are never deformed (the "structure-persistent" field).

**Face branch** (:class:`FaceMotionNet`): tri-plane hash-grid features ``f(μ)`` (36-d: three
2-D grids x 12 levels, concatenated), an audio feature ``a`` (per-frame window encoder +
attention smoothing over 8 neighbouring frames, 32-d) and the expression ``e`` (the upper-face
signals through a small MLP, with the blink AU45 appended). *Region attention*: per-Gaussian,
per-channel gates computed from the position features,

    a' = a ⊙ MLP_a(f)            e' = e ⊙ ReLU(MLP_e(f)),

so each region learns which condition channels move it (the mouth: audio; the eyes: blink).
``MLP_σ([f, a', e'])`` (bias-free, 3 layers) → Δμ, Δq, Δα (regularised only, not applied), Δs.

**Inside-mouth branch** (:class:`MouthMotionNet`): its own grids and audio encoder, audio only,
``MLP_σ([f, a])`` → Δμ, with the x and z components damped 5x (the teeth move mostly vertically).

Deviations (README, TalkingGaussian section): the audio window encoder is talkgs' log-mel
``window_conv`` (the official code uses DeepSpeech logits with ER-NeRF's AudioNet); the
expression is talkgs' six landmark-derived upper-face signals, standardised with the identity's
training statistics (the official code feeds raw OpenFace AU01/04/05/06/07); the last layer of
``MLP_σ`` starts at zero so the motion starts as the identity (the official one starts random
and small); Δμ is scaled by 0.1 x the scene extent (the official 1e-2 in its ±0.1 head cube).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from talkgs.configlib import NON_NEGATIVE, POSITIVE, WIDTH, Range
from talkgs.models.conditioning.audio import AudioEncoderConfig, WindowConvConfig, build_audio_encoder
from talkgs.models.encoders.hashgrid import TriplaneHashGrid, TriplaneHashGridConfig

__all__ = ["AudioAttention", "SmoothedAudio", "FaceMotionNet", "MouthMotionNet", "FaceMotionConfig", "MouthMotionConfig", "bias_free_mlp"]


def bias_free_mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    """``layers`` bias-free Linear layers with ReLU between (TalkingGaussian's ``MLP``)."""
    mods: list[nn.Module] = []
    d = in_dim
    for i in range(layers):
        last = i == layers - 1
        mods.append(nn.Linear(d, out_dim if last else hidden, bias=False))
        if not last:
            mods.append(nn.ReLU(inplace=True))
        d = hidden
    return nn.Sequential(*mods)


class AudioAttention(nn.Module):
    """ER-NeRF / TalkingGaussian ``AudioAttNet``: ``[S, D]`` per-frame audio features of ``S``
    neighbouring frames → attention weights over them (1-D convolutions over the sequence,
    then a linear layer and a softmax) → their weighted sum ``[D]``."""

    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        chans = [dim, 16, 8, 4, 2, 1]
        convs: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            convs += [nn.Conv1d(a, b, kernel_size=3, stride=1, padding=1, bias=True), nn.LeakyReLU(0.02, inplace=True)]
        self.convs = nn.Sequential(*convs)
        self.att = nn.Sequential(nn.Linear(seq_len, seq_len, bias=True), nn.Softmax(dim=-1))
        self.seq_len = seq_len

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[0] != self.seq_len:
            raise ValueError(f"AudioAttention: expected [S={self.seq_len}, D], found {list(x.shape)}")
        w = self.att(self.convs(x.t()[None]).view(1, self.seq_len))  # [1, S]
        return (w.view(self.seq_len, 1) * x).sum(0)


class SmoothedAudio(nn.Module):
    """The audio feature of a frame: each of its ``S`` neighbouring windows through the window
    encoder (any ``audio_encoder`` component), then :class:`AudioAttention` over them (the
    "Match-ATT" of SyncTalk / SyncGaussian). Parameter groups: ``encoder`` and ``att``.

    An encoder with ``forward_pair`` also gives the feature its output is tied to; both go through
    the same attention and :meth:`forward_aux` returns ``1 - cos`` of the two (SyncGaussian eq. 4,
    ``L_ah = 1 - cos(a, a_ave)``) beside the feature."""

    def __init__(self, encoder: AudioEncoderConfig, *, in_dim: int, window: int, dim: int, seq_len: int, ctx: Any = None) -> None:
        super().__init__()
        self.encoder = build_audio_encoder(encoder, in_dim=in_dim, window=window, dim=dim, ctx=ctx)
        self.att = AudioAttention(dim, seq_len)
        self.seq_len = seq_len

    def fit(self, audio: Tensor) -> None:
        if hasattr(self.encoder, "fit"):
            self.encoder.fit(audio)

    def forward(self, audio_seq: Tensor) -> Tensor:
        """``[S, W, C]`` → ``[D]``."""
        return self.forward_aux(audio_seq)[0]

    def forward_aux(self, audio_seq: Tensor) -> tuple[Tensor, Tensor | None]:
        """``[S, W, C]`` → (``[D]``, the encoder's similarity loss or None)."""
        pair = getattr(self.encoder, "forward_pair", None)
        if pair is None:
            return self.att(self.encoder(audio_seq)), None
        y, target = pair(audio_seq)
        a = self.att(y)
        if target is None:
            return a, None
        return a, 1.0 - F.cosine_similarity(a, self.att(target), dim=0)


@dataclass(frozen=True)
class FaceMotionConfig:
    """The face branch's motion network (TalkingGaussian ``MotionNetwork``)."""

    grid: TriplaneHashGridConfig = field(default_factory=TriplaneHashGridConfig)
    """Tri-plane hash grid (12 levels x 1 feature per plane, resolution 16 → 38.4)."""
    audio: AudioEncoderConfig = field(default_factory=WindowConvConfig)
    """Per-frame audio window encoder (registry kind ``audio_encoder``; SyncGaussian:
    ``sync_enhanced``)."""
    audio_dim: Annotated[int, WIDTH] = 32
    """Audio feature size (TalkingGaussian: 32)."""
    exp_hidden: Annotated[int, WIDTH] = 16
    """Hidden width of the expression encoder MLP (5 → 16 → 5 there; here E → 16 → E)."""
    audio_att_hidden: Annotated[int, WIDTH] = 32
    """Hidden width of the audio region-attention MLP (36 → 32 → 32)."""
    exp_att_hidden: Annotated[int, WIDTH] = 16
    """Hidden width of the expression region-attention MLP (36 → 16 → E+1)."""
    hidden: Annotated[int, WIDTH] = 64
    """Width of MLP_σ (74 → 64 → 64 → 11)."""
    layers: Annotated[int, Range(1, 16)] = 3
    """Layers of MLP_σ."""
    offset_scale: Annotated[float, NON_NEGATIVE] = 0.1
    """Δμ = output x offset_scale x scene extent."""
    blink_max: Annotated[float, POSITIVE] = 2.0
    """AU45 is clipped to [0, blink_max] (TalkingGaussian: 2) before it joins the expression."""


@dataclass(frozen=True)
class MouthMotionConfig:
    """The inside-mouth branch's motion network (TalkingGaussian ``MouthMotionNetwork``)."""

    grid: TriplaneHashGridConfig = field(default_factory=lambda: TriplaneHashGridConfig(base_resolution=64.0, max_resolution=57.6))
    """Tri-plane hash grid (TalkingGaussian: resolution 64 → 57.6, all levels dense)."""
    audio: AudioEncoderConfig = field(default_factory=WindowConvConfig)
    """Per-frame audio window encoder (registry kind ``audio_encoder``)."""
    audio_dim: Annotated[int, WIDTH] = 32
    hidden: Annotated[int, WIDTH] = 32
    """Width of MLP_σ (68 → 32 → 32 → 3)."""
    layers: Annotated[int, Range(1, 16)] = 3
    offset_scale: Annotated[float, NON_NEGATIVE] = 0.1
    """Δμ = output x offset_scale x scene extent."""
    xz_damping: Annotated[float, NON_NEGATIVE] = 0.2
    """Factor on the x and z components of Δμ (TalkingGaussian: 1/5)."""


class _MotionBase(nn.Module):
    def set_bounds(self, lo: Tensor, hi: Tensor) -> None:
        self.grid.set_bounds(lo, hi)  # type: ignore[attr-defined]

    def groups(self) -> dict[str, list[nn.Parameter]]:
        """``grid`` (hash tables), ``audio`` (window encoder), ``audio_att`` (attention over
        frames), ``net`` (the MLPs)."""
        grid = list(self.grid.parameters())  # type: ignore[attr-defined]
        audio = list(self.audio.encoder.parameters())  # type: ignore[attr-defined]
        att = list(self.audio.att.parameters())  # type: ignore[attr-defined]
        taken = {id(p) for p in (*grid, *audio, *att)}
        return {"grid": grid, "audio": audio, "audio_att": att, "net": [p for p in self.parameters() if id(p) not in taken]}


class FaceMotionNet(_MotionBase):
    """Face-branch offsets. ``forward(means [N, 3], audio_seq [S, W, C], expression [E + 1])``
    → ``{"means", "quats", "log_scales", "opacity_logits"}`` offsets, the per-Gaussian
    attention norms ``attention [N, 2]`` (‖a-gate‖, ‖e-gate‖) and, when its audio encoder ties
    its output to a target (``forward_pair``), that similarity loss ``audio_loss``."""

    def __init__(
        self, cfg: FaceMotionConfig, *, audio_window: int, audio_dim: int, expression_dim: int, seq_len: int, extent: float, ctx: Any = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = TriplaneHashGrid(cfg.grid)
        f = self.grid.out_dim
        self.audio = SmoothedAudio(cfg.audio, in_dim=audio_dim, window=audio_window, dim=cfg.audio_dim, seq_len=seq_len, ctx=ctx)
        e = expression_dim
        self.exp_encode = bias_free_mlp(e, cfg.exp_hidden, e, 2) if e > 0 else None
        self.audio_att = bias_free_mlp(f, cfg.audio_att_hidden, cfg.audio_dim, 2)
        self.exp_att = bias_free_mlp(f, cfg.exp_att_hidden, e + 1, 2)
        self.sigma = bias_free_mlp(f + cfg.audio_dim + e + 1, cfg.hidden, 11, cfg.layers)
        nn.init.zeros_(self.sigma[-1].weight)  # starts as the identity
        self.register_buffer("extent", torch.tensor(float(extent)))

    def forward(self, means: Tensor, audio_seq: Tensor, expression: Tensor) -> dict[str, Tensor]:
        n = means.shape[0]
        f = self.grid(means)
        a, audio_loss = self.audio.forward_aux(audio_seq)  # [D]
        e = expression
        if self.exp_encode is not None and e.shape[0] > 1:
            e = torch.cat([self.exp_encode(e[:-1]), e[-1:]])
        a_gate = self.audio_att(f)  # [N, D]
        e_gate = torch.relu(self.exp_att(f))  # [N, E+1]
        h = torch.cat([f, a[None].expand(n, -1) * a_gate, e[None].expand(n, -1) * e_gate], dim=-1)
        out = self.sigma(h)
        res = {
            "means": out[:, 0:3] * (self.cfg.offset_scale * self.extent),
            "quats": out[:, 3:7],
            "opacity_logits": out[:, 7],
            "log_scales": out[:, 8:11],
            "attention": torch.stack([a_gate.norm(dim=-1), e_gate.norm(dim=-1)], dim=-1),
            "raw_means": out[:, 0:3] * self.cfg.offset_scale,
        }
        if audio_loss is not None:
            res["audio_loss"] = audio_loss
        return res


class MouthMotionNet(_MotionBase):
    """Inside-mouth offsets: ``forward(means [N, 3], audio_seq [S, W, C])`` → ``{"means"}`` (and
    ``audio_loss`` as the face branch's)."""

    def __init__(self, cfg: MouthMotionConfig, *, audio_window: int, audio_dim: int, seq_len: int, extent: float, ctx: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = TriplaneHashGrid(cfg.grid)
        f = self.grid.out_dim
        self.audio = SmoothedAudio(cfg.audio, in_dim=audio_dim, window=audio_window, dim=cfg.audio_dim, seq_len=seq_len, ctx=ctx)
        self.sigma = bias_free_mlp(f + cfg.audio_dim, cfg.hidden, 3, cfg.layers)
        nn.init.zeros_(self.sigma[-1].weight)  # starts as the identity
        self.register_buffer("extent", torch.tensor(float(extent)))
        self.register_buffer("damping", torch.tensor([cfg.xz_damping, 1.0, cfg.xz_damping]))

    def forward(self, means: Tensor, audio_seq: Tensor) -> dict[str, Tensor]:
        n = means.shape[0]
        f = self.grid(means)
        a, audio_loss = self.audio.forward_aux(audio_seq)
        out = self.sigma(torch.cat([f, a[None].expand(n, -1)], dim=-1)) * self.damping
        res = {"means": out * (self.cfg.offset_scale * self.extent), "raw_means": out * self.cfg.offset_scale}
        if audio_loss is not None:
            res["audio_loss"] = audio_loss
        return res
