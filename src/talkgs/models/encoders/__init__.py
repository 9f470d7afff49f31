"""Spatial encoders: canonical position ``[N, 3]`` → per-Gaussian feature ``[N, F]``."""

from talkgs.models.encoders.triplane import Triplane

__all__ = ["Triplane"]
