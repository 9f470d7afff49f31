"""Eye-blink condition: AU45 with a sinusoidal encoding (GaussianTalker §4.3.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor, nn

from talkgs.configlib import POSITIVE, Range
from talkgs.models.conditioning.base import ConditionConfig, FrameCondition
from talkgs.models.registry import register

__all__ = ["sinusoidal_encoding", "EyeCondition", "EyeConfig"]


@dataclass(frozen=True)
class EyeConfig(ConditionConfig):
    """``condition/eye``: AU45 blink token."""

    name: str = "eye"
    num_freqs: Annotated[int, Range(0, 32)] = 4
    """Sinusoidal frequencies of the AU45 encoding."""
    max_au: Annotated[float, POSITIVE] = 5.0
    """AU45 scale maximum (FACS 0-5)."""


def sinusoidal_encoding(x: Tensor, num_freqs: int) -> Tensor:
    """NeRF positional encoding of a scalar signal.

    ``x [...]`` → ``[..., 1 + 2 * num_freqs]``: ``x, sin(2^k pi x), cos(2^k pi x)`` for
    ``k = 0 .. num_freqs - 1``.
    """
    freqs = (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)) * math.pi
    ang = x[..., None] * freqs
    return torch.cat([x[..., None], torch.sin(ang), torch.cos(ang)], dim=-1)


@register("condition", "eye", EyeConfig)
class EyeCondition(nn.Module):
    """AU45 (0-5) → ``au45 / max_au`` → sinusoidal encoding → linear → token ``[dim]``."""

    group = "conditions"

    def __init__(self, cfg: EyeConfig, *, dim: int, ctx: object = None) -> None:
        super().__init__()
        self.num_freqs, self.max_au = cfg.num_freqs, cfg.max_au
        num_freqs = cfg.num_freqs
        self.proj = nn.Linear(1 + 2 * num_freqs, dim)

    def forward(self, cond: FrameCondition) -> Tensor:
        x = (cond.au45.to(self.proj.weight.dtype) / self.max_au).clamp(0.0, 1.0)
        return self.proj(sinusoidal_encoding(x.reshape(()), self.num_freqs))
