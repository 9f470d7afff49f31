"""The talking-head model: canonical Gaussians + condition tokens + deformer, built from config.

:class:`TalkingHead` is the one model class of every variant; what differs between variants is
which registered components :class:`~talkgs.models.params.ModelParams` names.

    head = TalkingHead(params, means=pts, rgb=colors, audio_window=16, audio_dim=80)
    attrs = head(cond, deform=True)            # GaussianAttributes of one frame
    out = rasterize(**attrs.activated(), camera=cam, background=bg, sh_degree=head.sh_degree)
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from talkgs.models.conditioning.base import FrameCondition
from talkgs.models.gaussians import GaussianAttributes, GaussianParams
from talkgs.models.params import ModelParams
from talkgs.models.registry import build

__all__ = ["TalkingHead", "PARAM_GROUPS"]

PARAM_GROUPS: tuple[str, ...] = ("means", "gaussians", "spatial", "canonical", "audio", "conditions", "deformer")
"""Parameter groups a training phase can give a learning rate (others stay frozen):
``means`` (per-Gaussian positions), ``gaussians`` (other per-Gaussian attributes of explicit
models), ``spatial`` (spatial encoder, e.g. triplane planes), ``canonical`` (canonical MLPs),
``audio`` (audio encoder), ``conditions`` (eye/view/null tokens), ``deformer``."""


def _kwargs(section: Any, drop: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    return {k: v for k, v in asdict(section).items() if k not in drop}


class TalkingHead(nn.Module):
    """Canonical Gaussians, per-frame condition tokens and a deformer.

    Args:
        params: the variant's model config.
        means: ``[N, 3]`` initial canonical positions.
        rgb: ``[N, 3]`` initial colours in [0, 1] (used by explicit models; the mean initialises
            the triplane model's colour head).
        log_scales: ``[N, 3]`` initial log scales (None: ``log(0.01 * extent)``).
        audio_window, audio_dim: shape ``[W, C]`` of one frame's audio feature window.
    """

    def __init__(
        self,
        params: ModelParams,
        *,
        means: Tensor,
        rgb: Tensor | None = None,
        log_scales: Tensor | None = None,
        audio_window: int,
        audio_dim: int,
    ) -> None:
        super().__init__()
        if means.ndim != 2 or means.shape[1] != 3:
            raise ValueError(f"TalkingHead: means must be [N, 3], found {list(means.shape)}")
        n = means.shape[0]
        means = means.float()
        extent = float((means - means.mean(0)).norm(dim=-1).max().clamp(min=1e-6)) if n > 0 else 1.0
        if rgb is None:
            rgb = torch.full((n, 3), 0.5)
        if log_scales is None:
            log_scales = torch.full((n, 3), math.log(0.01 * extent))
        self.params = params
        self.audio_window, self.audio_dim = int(audio_window), int(audio_dim)
        c = params.canonical
        canon_kwargs = _kwargs(c)
        canon_kwargs["encoder"] = {"name": params.spatial.name, **_kwargs(params.spatial)}
        canon_kwargs["init_opacity"] = params.init.init_opacity
        if c.name == "triplane_mlp":
            canon_kwargs["init_log_scale"] = float(log_scales.median())
            canon_kwargs["init_rgb"] = tuple(float(v) for v in rgb.mean(0))
        self.canonical = build("canonical", c.name, **canon_kwargs)
        self.canonical.fit_bounds(means, params.init.margin)
        self.gaussians = GaussianParams({"means": means, **self.canonical.extra_tensors(means, rgb.float(), log_scales.float())})
        self.sh_degree = int(c.sh_degree)

        d = params.deformer
        self.uses_tokens = d.name != "identity" and len(params.conditions.tokens) > 0
        dim = params.conditions.dim
        self.tokens = nn.ModuleDict()
        if self.uses_tokens:
            for t in params.conditions.tokens:
                if t == "audio":
                    a = params.audio
                    self.tokens[t] = build("audio_encoder", a.name, in_dim=audio_dim, window=audio_window, dim=dim, hidden=a.hidden)
                else:
                    sub = getattr(params.conditions, t, None)
                    self.tokens[t] = build("condition", t, dim=dim, **(asdict(sub) if sub is not None else {}))
        self.deformer = build(
            "deformer",
            d.name,
            feature_dim=self.canonical.feature_dim,
            token_dim=dim,
            sh_bases=(self.sh_degree + 1) ** 2,
            extent=extent,
            **_kwargs(d),
        )

    # ------------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.gaussians.n

    @property
    def deforms(self) -> bool:
        """Whether this model has a non-identity deformer."""
        return self.params.deformer.name != "identity"

    def fit_conditions(self, viewmats: Tensor, audio: Tensor | None = None) -> None:
        """Set the condition encoders' input statistics from the training frames: poses
        ``[T, 4, 4]`` (viewpoint) and audio windows ``[T, W, C]`` (audio encoder)."""
        for name, m in self.tokens.items():
            if not hasattr(m, "fit"):
                continue
            if name == "audio":
                if audio is not None:
                    m.fit(audio)
            else:
                m.fit(viewmats)

    def canonical_attributes(self) -> tuple[Tensor | None, GaussianAttributes]:
        """Per-Gaussian features ``[N, F]`` (or None) and the canonical raw attributes."""
        return self.canonical(self.gaussians)

    def condition_tokens(self, cond: FrameCondition) -> Tensor:
        """The frame's tokens ``[T, D]`` (in :attr:`ConditionParams.tokens` order)."""
        toks = []
        for name, m in self.tokens.items():
            toks.append(m(cond.audio) if name == "audio" else m(cond))
        return torch.stack(toks)

    def forward(
        self,
        cond: FrameCondition | None,
        *,
        deform: bool = True,
        canonical: tuple[Tensor | None, GaussianAttributes] | None = None,
    ) -> GaussianAttributes:
        """Raw attributes of all Gaussians for one frame (canonical ones when ``deform`` is False
        or the deformer is the identity). ``canonical``: precomputed
        :meth:`canonical_attributes` (inference: they do not change between frames)."""
        feats, attrs = self.canonical_attributes() if canonical is None else canonical
        if not deform or not self.deforms:
            return attrs
        if cond is None:
            raise ValueError("TalkingHead: a deforming forward needs the frame's conditions")
        tokens = self.condition_tokens(cond) if self.uses_tokens else None
        deltas = self.deformer(feats, tokens, attrs)
        return attrs.plus(deltas) if deltas else attrs

    def deform_offsets(self, cond: FrameCondition) -> dict[str, Tensor]:
        """The deformer's offsets for one frame (for tests and analysis)."""
        feats, attrs = self.canonical_attributes()
        tokens = self.condition_tokens(cond) if self.uses_tokens else None
        return self.deformer(feats, tokens, attrs)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group name (see :data:`PARAM_GROUPS`). Per-Gaussian tensors
        are listed one per group entry; the optimizer gives each its own param-group."""
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in PARAM_GROUPS}
        for g, keys in self.canonical.per_gaussian_groups().items():
            groups[g] += [self.gaussians[k] for k in keys]
        for g, ps in self.canonical.param_groups().items():
            groups[g] += ps
        for name, m in self.tokens.items():
            groups["audio" if name == "audio" else "conditions"] += list(m.parameters())
        groups["deformer"] += list(self.deformer.parameters())
        return groups

    def per_gaussian_keys(self) -> set[str]:
        return set(self.gaussians.keys())

    def describe(self) -> dict[str, Any]:
        """Sizes for logs: Gaussians and parameters per group."""
        return {
            "gaussians": self.n,
            "parameters": {g: int(sum(p.numel() for p in ps)) for g, ps in self.param_groups().items() if ps},
        }
