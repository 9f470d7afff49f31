"""GaussianTalker's spatial-audio attention deformer (§4.3, appendix A.1.3).

``z^0 = f(mu_c)``; for ``l = 1..L``: ``z = CA(z, {a, e, v, null}) + z``, ``z = FFN(z) + z``;
then MLP heads ``psi_mu, psi_r, psi_s, psi_SH, psi_alpha`` map ``z^L`` to the offsets
``Δmu, Δr, Δs, ΔSH, Δalpha`` added to the canonical raw attributes (eq. 9).

Queries are the ``N`` per-Gaussian features, keys/values the frame's ``T`` condition tokens
(``T = 4`` for GaussianTalker), so attention costs ``O(N T)``. Pre-layer-norm residual blocks.
The heads' last layers are zero-initialised: the deformer is exactly the identity at step 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar

import torch
from torch import Tensor, nn

from talkgs.configlib import NON_NEGATIVE, WIDTH, Range
from talkgs.models.canonical import mlp, run_heads
from talkgs.models.gaussians import ATTRIBUTES, GaussianAttributes
from talkgs.models.registry import ComponentConfig, register

__all__ = ["SpatialAudioAttention", "CrossAttention", "DeformerConfig", "SpatialAudioAttentionConfig"]


@dataclass(frozen=True)
class DeformerConfig(ComponentConfig):
    """A deformer (registry kind ``deformer``; default ``spatial_audio_attention``):
    per-Gaussian features + condition tokens → attribute offsets. Built as
    ``factory(cfg, feature_dim=F, token_dim=D, sh_bases=K, extent=r)``."""

    kind: ClassVar[str] = "deformer"
    default: ClassVar[str] = "spatial_audio_attention"


@dataclass(frozen=True)
class SpatialAudioAttentionConfig(DeformerConfig):
    """``deformer/spatial_audio_attention``: GaussianTalker's deformer (appendix A.1.3)."""

    name: str = "spatial_audio_attention"
    dim: Annotated[int, WIDTH] = 64
    """Attention width."""
    layers: Annotated[int, Range(0, 16)] = 2
    """Cross-attention + FFN blocks L (paper: 2; GaussianTalker* lite: 1)."""
    heads: Annotated[int, Range(1, 64)] = 4
    """Attention heads."""
    ffn_dim: Annotated[int, WIDTH] = 128
    """FFN hidden width."""
    head_hidden: Annotated[int, WIDTH] = 64
    """Hidden width of the offset heads psi_*."""
    head_layers: Annotated[int, Range(0, 16)] = 1
    """Hidden layers of each offset head."""
    attributes: tuple[str, ...] = ATTRIBUTES
    """Attributes that get offsets (means, quats, log_scales, opacity_logits, sh)."""
    offset_scales: dict[str, Annotated[float, NON_NEGATIVE]] = field(
        default_factory=lambda: {"means": 0.02, "quats": 0.1, "log_scales": 0.1, "opacity_logits": 0.5, "sh": 0.5}
    )
    """Factor on each offset head's output (``means``: x the scene extent, the initial cloud's
    radius), so head outputs are O(1) in any scene units and Adam's per-step changes stay small
    (GaussianTalker's code works in a normalised scene; talkgs' world is in metres)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = set(self.attributes) - set(ATTRIBUTES)
        if bad:
            raise ValueError(f"attributes: unknown {sorted(bad)}; valid: {list(ATTRIBUTES)}")
        bad = set(self.offset_scales) - set(ATTRIBUTES)
        if bad:
            raise ValueError(f"offset_scales for unknown attributes {sorted(bad)}; valid: {list(ATTRIBUTES)}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")


class CrossAttention(nn.Module):
    """Multi-head attention from ``N`` queries ``[N, dim]`` to ``T`` tokens ``[T, token_dim]``."""

    def __init__(self, dim: int, token_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"CrossAttention: dim={dim} is not divisible by heads={heads}")
        self.heads, self.dh = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(token_dim, 2 * dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the attended values ``[N, dim]`` and the attention weights ``[N, heads, T]``."""
        n, t, h = x.shape[0], tokens.shape[0], self.heads
        q = self.q(x)  # [N, h*dh]
        k, v = self.kv(tokens).view(t, 2, h, self.dh).unbind(1)  # [T, h, dh] each
        # per-head scores and mixing as two [N, h*dh] x block-diagonal products (the same sums as
        # einsum("nhd,thd->nht") and einsum("nht,thd->nhd"), without permuting the N-sized tensors)
        eye = torch.eye(h, dtype=x.dtype, device=x.device)
        k_bd = (k.permute(1, 2, 0)[:, :, None, :] * eye[:, None, :, None]).reshape(h * self.dh, h * t)
        v_bd = (v.permute(1, 0, 2)[:, :, None, :] * eye[:, None, :, None]).reshape(h * t, h * self.dh)
        att = (q @ k_bd * self.dh**-0.5).view(n, h, t).softmax(dim=-1)
        out = att.reshape(n, h * t) @ v_bd
        return self.o(out), att


DEFAULT_OFFSET_SCALES = {"means": 0.02, "quats": 0.1, "log_scales": 0.1, "opacity_logits": 0.5, "sh": 0.5}
"""Default output scales of the offset heads (``means`` x extent: 1 unit = 2% of the head radius)."""

OFFSET_DIMS = {"means": 3, "quats": 4, "log_scales": 3, "opacity_logits": 1}


@register("deformer", "spatial_audio_attention", SpatialAudioAttentionConfig)
class SpatialAudioAttention(nn.Module):
    """Cross-attention deformer.

    Args:
        cfg: sizes, attributes and offset scales (:class:`SpatialAudioAttentionConfig`); the
            offset scales put the heads' outputs in O(1) units whatever the scene units: with
            Adam every weight moves by ~lr per step, so an unscaled position head in metres
            jitters by centimetres per step and learns only a constant.
        feature_dim: per-Gaussian feature size ``F`` (the triplane's output).
        token_dim: condition token size ``D``.
        sh_bases: SH coefficients per channel ``K`` (for ΔSH).
        extent: scene size (radius of the initial point cloud) the position offsets scale with.
    """

    def __init__(self, cfg: SpatialAudioAttentionConfig, *, feature_dim: int, token_dim: int, sh_bases: int, extent: float = 1.0) -> None:
        super().__init__()
        dim, layers, heads, ffn_dim, head_hidden, head_layers = cfg.dim, cfg.layers, cfg.heads, cfg.ffn_dim, cfg.head_hidden, cfg.head_layers
        if feature_dim < 1:
            raise ValueError("spatial_audio_attention needs per-Gaussian features (a canonical model with a spatial encoder)")
        self.attributes = tuple(cfg.attributes)
        scales = dict(DEFAULT_OFFSET_SCALES)
        scales.update(cfg.offset_scales)
        self.offset_scales = {a: float(scales[a]) for a in ATTRIBUTES}
        self.register_buffer("extent", torch.tensor(float(extent)))  # saved: a loaded model keeps its scale
        self.sh_bases = sh_bases
        # features are normalised first: the triplane's products are ~0.01-0.1 in magnitude,
        # small next to the attention output, and would otherwise barely tell Gaussians apart
        self.inp = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, dim))
        self.norm_q = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.attn = nn.ModuleList([CrossAttention(dim, token_dim, heads) for _ in range(layers)])
        self.norm_f = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.ffn = nn.ModuleList(
            [nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim)) for _ in range(layers)]
        )
        self.token_norm = nn.LayerNorm(token_dim)
        self.heads = nn.ModuleDict()
        for a in self.attributes:
            out = OFFSET_DIMS.get(a, sh_bases * 3)
            head = mlp(dim, head_hidden, out, head_layers)
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
            self.heads[a] = head
        self.last_attention: list[Tensor] = []

    def forward(self, features: Tensor | None, tokens: Tensor | None, attrs: GaussianAttributes) -> dict[str, Tensor]:
        if features is None or tokens is None:
            raise ValueError("spatial_audio_attention: needs per-Gaussian features and condition tokens")
        if tokens.ndim != 2:
            raise ValueError(f"spatial_audio_attention: expected tokens [T, D], found {list(tokens.shape)}")
        z = self.inp(features)
        kv = self.token_norm(tokens)
        self.last_attention = []
        for nq, attn, nf, ffn in zip(self.norm_q, self.attn, self.norm_f, self.ffn):
            a, w = attn(nq(z), kv)
            self.last_attention.append(w.detach())
            z = z + a
            z = z + ffn(nf(z))
        n = z.shape[0]
        out: dict[str, Tensor] = {}
        for (a, _head), d in zip(self.heads.items(), run_heads(z, list(self.heads.values()))):
            if a == "opacity_logits":
                d = d[:, 0]
            elif a == "sh":
                d = d.view(n, self.sh_bases, 3)
            out[a] = d * (self.offset_scales[a] * self.extent if a == "means" else self.offset_scales[a])
        return out
