"""Multi-resolution hash grids in pure PyTorch, and TalkingGaussian's tri-plane hash grid.

:class:`HashGrid2D` is Instant-NGP's multi-resolution hash encoding in 2-D (as torch-ngp's
``GridEncoder`` with ``input_dim=2``): ``L`` levels of ``F`` features; level ``l`` has
resolution ``S_l = base * b^l`` with ``b = (max / base)^(1 / (L - 1))``; a level whose grid
fits in the table (``(ceil(S_l) + 1)² <= 2^log2_size``) is indexed densely, larger ones by
the spatial hash ``(x * 1) XOR (y * 2654435761) mod T``; features are bilinearly
interpolated. Inputs are in ``[0, 1]²``; points outside get zero features (torch-ngp's kernel
does the same), so with bias-free MLPs on top they get zero output.

:class:`TriplaneHashGrid` (``spatial_encoder/triplane_hashgrid``; TalkingGaussian §3.2, its
``MotionNetwork.encode_x``): three 2-D grids on the xy, yz and xz projections of the position
(normalised into a box), **concatenated** -- 3 x L x F features (TalkingGaussian: 12 levels x 1
feature, log2 table size 17, base resolution 16, finest 38.4 across the box for the face
branch; 64 → 57.6 for the inside-mouth branch: every level is dense there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor, nn

from talkgs.configlib import NON_NEGATIVE, Range
from talkgs.models.encoders.triplane import SpatialEncoderConfig
from talkgs.models.registry import register

__all__ = ["HashGrid2D", "TriplaneHashGrid", "TriplaneHashGridConfig"]

PRIME_Y = 2654435761
"""Instant-NGP's hash prime for the second coordinate (the first is 1)."""


class HashGrid2D(nn.Module):
    """Multi-resolution 2-D hash grid: ``u [N, 2]`` in [0, 1] → ``[N, levels * features]``.

    Args:
        levels: ``L`` resolution levels.
        features: ``F`` features per level.
        log2_size: ``log2`` of the table size ``T`` per level.
        base_resolution, max_resolution: resolutions of the coarsest and finest level (the
            finest may be below the coarsest: the levels then shrink, as TalkingGaussian's mouth
            grid does).
        init_scale: tables start uniform in ``[-init_scale, init_scale]`` (Instant-NGP: 1e-4).
    """

    def __init__(
        self, *, levels: int = 12, features: int = 1, log2_size: int = 17, base_resolution: float = 16.0,
        max_resolution: float = 38.4, init_scale: float = 1e-4,
    ) -> None:  # fmt: skip
        super().__init__()
        if levels < 1 or features < 1 or not 4 <= log2_size <= 24 or base_resolution < 2 or max_resolution < 2:
            raise ValueError(
                f"HashGrid2D: invalid sizes levels={levels} features={features} log2_size={log2_size} "
                f"base_resolution={base_resolution} max_resolution={max_resolution}"
            )
        self.levels, self.features = levels, features
        growth = math.exp(math.log(max_resolution / base_resolution) / (levels - 1)) if levels > 1 else 1.0
        size = 2**log2_size
        scales, res, dense = [], [], []
        for lvl in range(levels):
            scale = base_resolution * growth**lvl - 1.0
            r = int(math.ceil(scale)) + 1
            scales.append(scale)
            res.append(r)
            dense.append(r * r <= size)
        self.resolutions = res
        self.dense = dense
        self.scales = scales
        # dense levels are images sampled with grid_sample (fast on CPU and GPU); hashed levels
        # share one table indexed with a single gather
        self.dense_tables = nn.ParameterList(
            [nn.Parameter(torch.empty(1, features, r, r).uniform_(-init_scale, init_scale)) for r, d in zip(res, dense) if d]
        )
        hashed = [lvl for lvl in range(levels) if not dense[lvl]]
        self.hashed_levels = hashed
        self.register_buffer("_h_scales", torch.tensor([scales[lvl] for lvl in hashed], dtype=torch.float32), persistent=False)
        self.register_buffer("_h_res", torch.tensor([res[lvl] for lvl in hashed], dtype=torch.int64), persistent=False)
        self.register_buffer("_h_offsets", torch.arange(len(hashed), dtype=torch.int64) * size, persistent=False)
        self.size = size
        self.hash_table = nn.Parameter(torch.empty(len(hashed) * size, features).uniform_(-init_scale, init_scale))

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def forward(self, u: Tensor) -> Tensor:
        if u.ndim != 2 or u.shape[1] != 2:
            raise ValueError(f"HashGrid2D: expected coordinates [N, 2], found {list(u.shape)}")
        n = u.shape[0]
        inside = ((u >= 0) & (u <= 1)).all(dim=-1, keepdim=True).to(u.dtype)
        uc = u.clamp(0.0, 1.0)
        out: list[Tensor | None] = [None] * self.levels
        k = 0
        for lvl in range(self.levels):
            if not self.dense[lvl]:
                continue
            r = self.resolutions[lvl]
            # grid vertex j sits at pos = u * scale + 0.5 = j (torch-ngp); grid_sample with
            # align_corners puts vertex j at (2 j / (r - 1) - 1)
            g = (uc * self.scales[lvl] + 0.5) * (2.0 / max(r - 1, 1)) - 1.0
            s = torch.nn.functional.grid_sample(
                self.dense_tables[k].to(u.dtype), g[None, None], mode="bilinear", padding_mode="border", align_corners=True
            )  # [1, F, 1, N]
            out[lvl] = s[0, :, 0].t()
            k += 1
        if self.hashed_levels:
            pos = uc[:, None, :] * self._h_scales.to(u.dtype)[None, :, None] + 0.5  # [N, Lh, 2]
            g0 = torch.floor(pos)
            w1 = pos - g0
            w0 = 1.0 - w1
            hi = (self._h_res - 1)[None, :, None]
            i0 = torch.minimum(g0.long().clamp(min=0), hi)
            i1 = torch.minimum(i0 + 1, hi)
            cx = torch.stack([i0[..., 0], i1[..., 0], i0[..., 0], i1[..., 0]], dim=-1)  # [N, Lh, 4]
            cy = torch.stack([i0[..., 1], i0[..., 1], i1[..., 1], i1[..., 1]], dim=-1)
            w = torch.stack([w0[..., 0] * w0[..., 1], w1[..., 0] * w0[..., 1], w0[..., 0] * w1[..., 1], w1[..., 0] * w1[..., 1]], dim=-1)
            idx = torch.bitwise_xor(cx, cy * PRIME_Y) % self.size + self._h_offsets[None, :, None]
            f = self.hash_table.index_select(0, idx.reshape(-1)).view(n, len(self.hashed_levels), 4, self.features)
            hf = (f * w[..., None].to(f.dtype)).sum(dim=2)
            for j, lvl in enumerate(self.hashed_levels):
                out[lvl] = hf[:, j]
        return torch.cat(out, dim=-1) * inside  # type: ignore[arg-type]


@dataclass(frozen=True)
class TriplaneHashGridConfig(SpatialEncoderConfig):
    """``spatial_encoder/triplane_hashgrid``: three 2-D hash grids (xy, yz, xz), concatenated."""

    name: str = "triplane_hashgrid"
    levels: Annotated[int, Range(1, 32)] = 12
    """Resolution levels per plane (TalkingGaussian: 12)."""
    features: Annotated[int, Range(1, 64)] = 1
    """Features per level (TalkingGaussian: 1)."""
    log2_size: Annotated[int, Range(4, 26)] = 17
    """log2 of the table size per level (TalkingGaussian: 17)."""
    base_resolution: Annotated[float, Range(1, 8192)] = 16.0
    """Coarsest resolution across the box (TalkingGaussian face: 16; inside-mouth: 64)."""
    max_resolution: Annotated[float, Range(1, 8192)] = 38.4
    """Finest resolution across the box (TalkingGaussian face: 256 x bound 0.15 = 38.4; inside-mouth: 57.6)."""
    init_scale: Annotated[float, NON_NEGATIVE] = 1e-4
    """Tables start uniform in [-init_scale, init_scale]."""


PLANES: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (0, 2))
"""xy, yz, xz (TalkingGaussian's order)."""


@register("spatial_encoder", "triplane_hashgrid", TriplaneHashGridConfig)
class TriplaneHashGrid(nn.Module):
    """Tri-plane hash grid: ``x [N, 3]`` → ``[N, 3 * levels * features]``.

    Positions are normalised into the box ``bounds`` (a buffer, saved in checkpoints; set from
    the initial point cloud with :meth:`set_bounds`) and projected onto the three planes.
    Points outside the box get zero features (TalkingGaussian: outside its ±0.15 bound).
    """

    def __init__(self, cfg: TriplaneHashGridConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TriplaneHashGridConfig()
        self.config = cfg
        self.grids = nn.ModuleList(
            [
                HashGrid2D(
                    levels=cfg.levels, features=cfg.features, log2_size=cfg.log2_size, base_resolution=cfg.base_resolution,
                    max_resolution=cfg.max_resolution, init_scale=cfg.init_scale,
                )  # fmt: skip
                for _ in PLANES
            ]
        )
        self.register_buffer("bounds", torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))

    @property
    def out_dim(self) -> int:
        return 3 * self.grids[0].out_dim

    def set_bounds(self, lo: Tensor, hi: Tensor) -> None:
        """Set the box mapped to ``[0, 1]^3``."""
        self.bounds.copy_(torch.stack([lo, hi]).to(self.bounds))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"TriplaneHashGrid: expected positions [N, 3], found {list(x.shape)}")
        lo, hi = self.bounds[0], self.bounds[1]
        u = (x - lo) / (hi - lo).clamp(min=1e-8)
        return torch.cat([g(u[:, list(p)]) for g, p in zip(self.grids, PLANES)], dim=-1)
