"""The identity deformer: canonical Gaussians for every frame (the static-head variant)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from talkgs.models.deformers.gaussiantalker import DeformerConfig
from talkgs.models.gaussians import GaussianAttributes
from talkgs.models.registry import register

__all__ = ["IdentityDeformer", "IdentityConfig"]


@dataclass(frozen=True)
class IdentityConfig(DeformerConfig):
    """``deformer/identity``: no offsets (no options)."""

    name: str = "identity"


@register("deformer", "identity", IdentityConfig)
class IdentityDeformer(nn.Module):
    """Returns no offsets; has no parameters. A head with it renders its canonical Gaussians
    for every frame and needs no condition tokens."""

    is_identity = True

    def __init__(self, cfg: IdentityConfig, *, feature_dim: int = 0, token_dim: int = 0, sh_bases: int = 1, extent: float = 1.0) -> None:
        super().__init__()

    def forward(self, features: Tensor | None, tokens: Tensor | None, attrs: GaussianAttributes) -> dict[str, Tensor]:
        return {}
