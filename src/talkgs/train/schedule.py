"""Phases and learning-rate schedules.

Training is a sequence of phases (:class:`~talkgs.train.params.PhaseParams`) on one global step
counter; :func:`locate` maps a global step to ``(phase index, step within the phase)``.
Learning rates decay log-linearly within a phase (3DGS ``get_expon_lr_func``) after an optional
linear warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from talkgs.train.params import LRParams, PhaseParams

__all__ = ["locate", "phase_starts", "lr_at"]


def phase_starts(phases: Sequence[PhaseParams]) -> list[int]:
    """Global step at which each phase starts."""
    out, s = [], 0
    for p in phases:
        out.append(s)
        s += p.iterations
    return out


def locate(phases: Sequence[PhaseParams], step: int) -> tuple[int, int]:
    """``(phase index, local step)`` of global ``step`` (0-based). Phases with 0 iterations are skipped."""
    s = step
    for i, p in enumerate(phases):
        if s < p.iterations:
            return i, s
        s -= p.iterations
    raise ValueError(f"step {step} is past the last phase (total {sum(p.iterations for p in phases)} steps)")


def lr_at(lr: LRParams, local_step: int, iterations: int, extent: float = 1.0) -> float:
    """Learning rate at ``local_step`` of a phase of ``iterations`` steps."""
    start = lr.start * (extent if lr.relative_to_extent else 1.0)
    end = None if lr.end is None else lr.end * (extent if lr.relative_to_extent else 1.0)
    if end is None or iterations <= 1 or start <= 0 or end <= 0:
        value = start
    else:
        t = min(max(local_step / (iterations - 1), 0.0), 1.0)
        value = math.exp((1 - t) * math.log(start) + t * math.log(end))
    if lr.warmup > 0 and local_step < lr.warmup:
        value *= (local_step + 1) / lr.warmup
    return value
