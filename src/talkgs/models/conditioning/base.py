"""What one frame provides to the condition encoders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from talkgs.models.registry import ComponentConfig

__all__ = ["FrameCondition", "ConditionConfig"]


@dataclass(frozen=True)
class ConditionConfig(ComponentConfig):
    """A per-frame condition token (registry kind ``condition``): ``audio``, ``eye``, ``view``,
    ``null``, ... Token components are built as ``factory(cfg, dim=D, ctx=BuildContext)``, may
    define ``fit(stats)`` (training statistics of the identity) and set ``group`` (the
    parameter group of their weights)."""

    kind: ClassVar[str] = "condition"
    default: ClassVar[str] = ""


@dataclass
class FrameCondition:
    """Per-frame driving signals (all on the model's device).

    Attributes:
        audio: ``[W, C]`` audio feature window centred on the frame (``W`` feature steps of
            ``C`` channels, as the features stage aligns them to 25 fps).
        au45: ``[]`` blink intensity, FACS AU45 scale 0 (open) .. 5 (closed).
        viewmat: ``[4, 4]`` world-to-camera head pose of the frame.
        expression: ``[E]`` upper-face expression signals (``frames.parquet`` ``expression``:
            brow raises, brow furrow, eye openness), or None.
        audio_seq: ``[S, W, C]`` the windows of frames ``i - S//2 .. i + S - S//2 - 1`` (zeros
            past the clip's ends) for heads that smooth audio over neighbouring frames
            (``HeadConfig.audio_frames() = S > 1``), else None.
    """

    audio: Tensor
    au45: Tensor
    viewmat: Tensor
    expression: Tensor | None = None
    audio_seq: Tensor | None = None
