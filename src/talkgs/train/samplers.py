"""Frame samplers (registry kind ``sampler``): which training frames each step uses.

A phase names its sampler (``phases[i].sampler: {name: ...}``; default ``uniform``) and how many
frames a step renders (``frames_per_step``). Samplers are pure functions of the seed and the
step, so a resumed run draws the same frames as an uninterrupted one.

- ``uniform``: a fresh random permutation of all training frames (of every identity) per epoch.
- ``incremental``: TalkingGaussian's incremental sampling (Li et al. 2024 §3.4, also SyncGaussian
  §3.4): on every ``every``-th step, a frame whose motion metric lies in a window that slides
  with training progress (from little to much motion), so large deformations are learned after
  small ones; the other steps are uniform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch

from talkgs.configlib import COUNT, FRACTION, Range
from talkgs.models.contract import FramePool, Sampler, SamplerConfig
from talkgs.models.registry import register

__all__ = ["frame_order", "UniformConfig", "UniformSampler", "IncrementalConfig", "IncrementalSampler"]


def frame_order(n: int, seed: int, step: int) -> int:
    """Position in ``range(n)`` of the frame used at draw ``step``: a fresh permutation per epoch."""
    epoch, k = divmod(step, n)
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + 17) % (2**63))
    return int(torch.randperm(n, generator=g)[k])


@dataclass(frozen=True)
class UniformConfig(SamplerConfig):
    """``sampler/uniform``: every training frame once per epoch, in a random order."""

    name: str = "uniform"


@register("sampler", "uniform", UniformConfig)
class UniformSampler(Sampler):
    """Draw ``j`` of step ``s`` with ``K`` frames per step is position ``frame_order(n, seed,
    s*K + j)`` of the pool (all identities' training frames, concatenated)."""

    def sample(self, step: int, local_step: int, k: int) -> list[tuple[int, int]]:
        n = self.pool.total
        return [self.pool.position(frame_order(n, self.seed, step * k + j)) for j in range(k)]


WINDOW = Range(-1, 2)
"""Sampling-window bounds on the [0, 1]-normalised metric (beyond -1..2 a window holds every frame or none)."""


@dataclass(frozen=True)
class IncrementalConfig(SamplerConfig):
    """``sampler/incremental``: frames chosen by a motion metric inside a sliding window.

    The metric (a per-frame signal: ``mouth_open`` -- inner-lip gap / mouth width, the
    landmark analogue of AU25 --, ``blink`` -- AU45 0-5 --) is normalised per identity to
    [0, 1] (``normalize``). At progress ``t = local_step / (until * iterations)`` the window is
    ``[low + t (low_end - low), high + t (high_end - high)]``; from ``t >= 1`` on, steps are uniform.

    TalkingGaussian's settings (train_face/train_mouth): the face branch samples by blink,
    ``clip(AU45, 0, 2) / 2`` in ``[t - 0.15, t + 0.3]`` every 15th step; the mouth branch by
    AU25 clipped to its 25th..95th percentile, in ``[1 - t, 1]`` every 7th step, and only the
    widest-open frames (``[1, 1]``) during its static warm-up.
    """

    name: str = "incremental"
    metric: str = "mouth_open"
    """Per-frame signal the window applies to."""
    normalize: Literal["percentile", "clip"] = "percentile"
    """``percentile``: ``(v - P_lo) / (P_hi - P_lo)`` clipped to [0, 1] with the identity's
    ``percentiles``; ``clip``: ``(clip(v, a, b) - a) / (b - a)`` with ``clip_range``."""
    percentiles: tuple[Annotated[float, Range(0, 100)], Annotated[float, Range(0, 100)]] = (25.0, 95.0)
    clip_range: tuple[Annotated[float, Range(-100, 100)], Annotated[float, Range(-100, 100)]] = (0.0, 2.0)
    low: Annotated[float, WINDOW] = 1.0
    """Window lower bound at t = 0."""
    high: Annotated[float, WINDOW] = 1.0
    """Window upper bound at t = 0."""
    low_end: Annotated[float, WINDOW] = 0.0
    """Window lower bound at t = 1."""
    high_end: Annotated[float, WINDOW] = 1.0
    """Window upper bound at t = 1."""
    every: Annotated[int, COUNT] = 1
    """The window applies on steps with ``local_step % every == 0`` (others are uniform)."""
    until: Annotated[float, FRACTION] = 1.0
    """Fraction of the phase over which the window slides; afterwards all steps are uniform."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.every < 1 or not 0 < self.until <= 1:
            raise ValueError(f"incremental: every must be >= 1 and until in (0, 1], found every={self.every}, until={self.until}")
        a, b = self.percentiles if self.normalize == "percentile" else self.clip_range
        if not b > a:
            raise ValueError(f"incremental: the normalisation range must be increasing, found {[a, b]}")


@register("sampler", "incremental", IncrementalConfig)
class IncrementalSampler(Sampler):
    def __init__(self, cfg: IncrementalConfig, *, pool: FramePool, seed: int, iterations: int) -> None:
        super().__init__(cfg, pool=pool, seed=seed, iterations=iterations)
        self.uniform = UniformSampler(UniformConfig(), pool=pool, seed=seed, iterations=iterations)
        values = []
        for ident, frames in enumerate(pool.frames):
            v = np.asarray(pool.signals[ident].get(cfg.metric, np.zeros(0)), np.float64)
            if cfg.metric not in pool.signals[ident]:
                raise ValueError(f"sampler incremental: no per-frame signal {cfg.metric!r}; have {sorted(pool.signals[ident])}")
            v = v[frames]
            if cfg.normalize == "percentile":
                a, b = np.percentile(v, cfg.percentiles) if len(v) else (0.0, 1.0)
            else:
                a, b = cfg.clip_range
            values.append(np.clip((v - a) / max(b - a, 1e-12), 0.0, 1.0))
        self.metric = np.concatenate(values) if values else np.zeros(0)
        """``[pool.total]``: the normalised metric of every pool frame."""

    def window(self, local_step: int) -> tuple[float, float] | None:
        """The metric window at ``local_step`` (None: a uniform step)."""
        c = self.config
        span = c.until * max(self.iterations, 1)
        t = local_step / span
        if t >= 1.0 or local_step % c.every:
            return None
        return c.low + t * (c.low_end - c.low), c.high + t * (c.high_end - c.high)

    def sample(self, step: int, local_step: int, k: int) -> list[tuple[int, int]]:
        w = self.window(local_step)
        if w is None:
            return self.uniform.sample(step, local_step, k)
        lo, hi = w
        cand = np.nonzero((self.metric >= lo - 1e-9) & (self.metric <= hi + 1e-9))[0]
        if len(cand) == 0:  # no frame in the window: the ones closest to it
            d = np.maximum(lo - self.metric, 0) + np.maximum(self.metric - hi, 0)
            cand = np.nonzero(d <= d.min() + 1e-9)[0]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step * 7919 + 29) % (2**63))
        picks = torch.randint(len(cand), (k,), generator=g).tolist()
        return [self.pool.position(int(cand[j])) for j in picks]
