"""Heads (registry kind ``head``): the whole talking-head model of a variant
(:class:`talkgs.models.contract.Head`).

- ``deformable``: one canonical Gaussian field + condition tokens + a deformer (GaussianTalker;
  the static floor with the identity deformer).
- ``talkinggaussian``: persistent face + inside-mouth Gaussians, tri-plane hash-grid motion
  networks, fused by alpha (TalkingGaussian); one face/mouth set per identity.
"""
