"""Deformers: per-Gaussian features + per-frame condition tokens → attribute offsets.

Interface (duck-typed): ``forward(features [N, F] | None, tokens [T, D] | None, attrs) ->
dict[str, Tensor]`` of offsets keyed by :data:`talkgs.models.gaussians.ATTRIBUTES` (a subset;
missing keys mean no offset). Every deformer starts as the identity (zero-initialised output
layers), so training a deformation phase starts from the canonical head.

- ``identity``: no offsets (the static-head floor).
- ``spatial_audio_attention``: GaussianTalker's spatial-audio cross-attention + MLP heads.
"""

from talkgs.models.deformers.gaussiantalker import SpatialAudioAttention
from talkgs.models.deformers.identity import IdentityDeformer

__all__ = ["IdentityDeformer", "SpatialAudioAttention"]
