"""Eye-blink condition: AU45 with a sinusoidal encoding (GaussianTalker §4.3.2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from talkgs.models.conditioning.base import FrameCondition
from talkgs.models.registry import register

__all__ = ["sinusoidal_encoding", "EyeCondition"]


def sinusoidal_encoding(x: Tensor, num_freqs: int) -> Tensor:
    """NeRF positional encoding of a scalar signal.

    ``x [...]`` → ``[..., 1 + 2 * num_freqs]``: ``x, sin(2^k pi x), cos(2^k pi x)`` for
    ``k = 0 .. num_freqs - 1``.
    """
    freqs = (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)) * math.pi
    ang = x[..., None] * freqs
    return torch.cat([x[..., None], torch.sin(ang), torch.cos(ang)], dim=-1)


@register("condition", "eye")
class EyeCondition(nn.Module):
    """AU45 (0-5) → ``au45 / max_au`` → sinusoidal encoding → linear → token ``[dim]``."""

    def __init__(self, *, dim: int, num_freqs: int = 4, max_au: float = 5.0) -> None:
        super().__init__()
        self.num_freqs, self.max_au = num_freqs, max_au
        self.proj = nn.Linear(1 + 2 * num_freqs, dim)

    def forward(self, cond: FrameCondition) -> Tensor:
        x = (cond.au45.to(self.proj.weight.dtype) / self.max_au).clamp(0.0, 1.0)
        return self.proj(sinusoidal_encoding(x.reshape(()), self.num_freqs))
