"""What one frame provides to the condition encoders."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["FrameCondition"]


@dataclass
class FrameCondition:
    """Per-frame driving signals (all on the model's device).

    Attributes:
        audio: ``[W, C]`` audio feature window centred on the frame (``W`` feature steps of
            ``C`` channels, as the features stage aligns them to 25 fps).
        au45: ``[]`` blink intensity, FACS AU45 scale 0 (open) .. 5 (closed).
        viewmat: ``[4, 4]`` world-to-camera head pose of the frame.
        expression: ``[E]`` optional extra expression signals (unused by GaussianTalker).
    """

    audio: Tensor
    au45: Tensor
    viewmat: Tensor
    expression: Tensor | None = None
