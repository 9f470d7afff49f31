"""Per-frame condition tokens for deformers.

Every condition maps one frame's :class:`~talkgs.models.conditioning.base.FrameCondition` to a
token ``[D]``; the deformer cross-attends from every Gaussian to the frame's tokens.

- ``condition/audio``: the audio feature window ``[W, C]`` around the frame through an audio
  encoder (``audio_encoder/window_conv``: AD-NeRF / ER-NeRF AudioNet, strided 1-D convolutions
  over time, then a linear layer).
- ``condition/eye``: AU45 blink intensity (0-5) through a sinusoidal encoding and a linear layer.
- ``condition/view``: the frame's world-to-camera pose through a small MLP (GaussianTalker's
  facial viewpoint embedding).
- ``condition/null``: one learned vector shared by all frames (GaussianTalker's null token).
"""

from talkgs.models.conditioning.audio import AudioToken, AudioWindowEncoder
from talkgs.models.conditioning.base import ConditionConfig, FrameCondition
from talkgs.models.conditioning.eye import EyeCondition, sinusoidal_encoding
from talkgs.models.conditioning.view import NullToken, ViewEmbedding

__all__ = ["FrameCondition", "ConditionConfig", "AudioToken", "AudioWindowEncoder", "EyeCondition", "sinusoidal_encoding", "ViewEmbedding", "NullToken"]
