"""Viewpoint embedding of the camera pose, and the learned null token (GaussianTalker §4.3.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from talkgs.configlib import WIDTH
from talkgs.models.conditioning.base import ConditionConfig, FrameCondition
from talkgs.models.registry import register

__all__ = ["ViewEmbedding", "NullToken", "ViewConfig", "NullConfig"]


@dataclass(frozen=True)
class ViewConfig(ConditionConfig):
    """``condition/view``: the viewpoint token."""

    name: str = "view"
    hidden: Annotated[int, WIDTH] = 64
    """Hidden width of the pose MLP."""


@dataclass(frozen=True)
class NullConfig(ConditionConfig):
    """``condition/null``: one learned token."""

    name: str = "null"


@register("condition", "view", ViewConfig)
class ViewEmbedding(nn.Module):
    """World-to-camera pose ``[4, 4]`` → rotation (9) + standardised translation (3) → MLP → ``[dim]``.

    The translation is standardised with the training poses' mean/std (buffers set by
    :meth:`fit`, saved in checkpoints), so the embedding sees comparable inputs for any scene scale.
    """

    group = "conditions"

    def __init__(self, cfg: ViewConfig, *, dim: int, ctx: object = None) -> None:
        super().__init__()
        hidden = cfg.hidden
        self.mlp = nn.Sequential(nn.Linear(12, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.register_buffer("t_mean", torch.zeros(3))
        self.register_buffer("t_std", torch.ones(3))

    def fit(self, stats: Any) -> None:
        """Set the translation statistics from the training poses (``stats.viewmats [T, 4, 4]``,
        :class:`~talkgs.models.contract.IdentityStats`)."""
        t = stats.viewmats[:, :3, 3].to(self.t_mean)
        self.t_mean.copy_(t.mean(0))
        self.t_std.copy_(t.std(0, unbiased=False).clamp(min=1e-3 * t.norm(dim=-1).mean().clamp(min=1e-6)))

    def forward(self, cond: FrameCondition) -> Tensor:
        v = cond.viewmat.to(self.t_mean)
        x = torch.cat([v[:3, :3].reshape(9), (v[:3, 3] - self.t_mean) / self.t_std])
        return self.mlp(x)


@register("condition", "null", NullConfig)
class NullToken(nn.Module):
    """One learned vector for every frame (a global, frame-independent key/value)."""

    group = "conditions"

    def __init__(self, cfg: NullConfig, *, dim: int, ctx: object = None) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(dim) * 0.1)

    def forward(self, cond: FrameCondition) -> Tensor:
        return self.token
