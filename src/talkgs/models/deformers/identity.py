"""The identity deformer: canonical Gaussians for every frame (the static-head variant)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from talkgs.models.gaussians import GaussianAttributes
from talkgs.models.registry import register

__all__ = ["IdentityDeformer"]


@register("deformer", "identity")
class IdentityDeformer(nn.Module):
    """Returns no offsets. Accepts (and ignores) any size arguments, so variants can switch
    deformers without editing the rest of their config."""

    needs_tokens = False

    def __init__(self, **_unused: Any) -> None:
        super().__init__()

    def forward(self, features: Tensor | None, tokens: Tensor | None, attrs: GaussianAttributes) -> dict[str, Tensor]:
        return {}
