"""Shared head config parts: the initial point cloud of a Gaussian set.

Component configs live next to their components (e.g.
:class:`talkgs.models.encoders.triplane.TriplaneConfig`); a head config
(:class:`talkgs.models.contract.HeadConfig`) composes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from talkgs.configlib import GAUSSIANS, NON_NEGATIVE, POSITIVE, PROBABILITY, Range
from talkgs.models.contract import PointCloudSpec

__all__ = ["InitParams"]


@dataclass(frozen=True)
class InitParams:
    """Initial point cloud of a set of canonical Gaussians, built from the clip's own tracking.

    Points: the tracked face landmarks (in the canonical head frame) plus head pixels (face,
    hair, ears, lips, eyes, mouth labels) of a few training frames, lifted to 3D with a depth
    interpolated from the landmarks inside the face and from an ellipsoid fitted to the
    landmarks outside it (hair, ears, back of the head), then merged across frames and
    subsampled to ``points``.
    """

    points: Annotated[int, GAUSSIANS] = 20000
    """Initial number of Gaussians (the paper's BFM mesh has ~35k vertices)."""
    max_gaussians: Annotated[int, GAUSSIANS] = 50000
    """Cap on the number of Gaussians: densification never grows past it (paper: 50,000)."""
    reference_frames: Annotated[int, Range(1, 1000)] = 8
    """Training frames whose head pixels are lifted to 3D (spread evenly over the split)."""
    head_depth_scale: Annotated[float, POSITIVE] = 1.15
    """The head ellipsoid (for pixels outside the landmark hull) is the landmark ellipsoid
    scaled by this; >1 reaches hair and ears that stick out of the face."""
    init_opacity: Annotated[float, PROBABILITY] = 0.1
    """Opacity every Gaussian starts with."""
    cutout_threshold: Annotated[float, NON_NEGATIVE] = 12.0
    """Pixels whose frame and torso image differ by more than this (mean abs, 0-255) are head
    pixels too (the torso frames cut the head out with a margin that the head must cover)."""
    scale_neighbors: Annotated[int, Range(1, 64)] = 3
    """Initial scale = mean distance to this many nearest neighbours."""
    margin: Annotated[float, NON_NEGATIVE] = 0.15
    """The spatial encoder's box is the initial cloud's box grown by this fraction per side."""

    def __post_init__(self) -> None:
        if self.points > self.max_gaussians:
            raise ValueError(f"init.points ({self.points}) > init.max_gaussians ({self.max_gaussians})")

    def spec(self, **changes: object) -> PointCloudSpec:
        """The :class:`PointCloudSpec` of this cloud (``changes``: e.g. other label classes)."""
        base = dict(
            points=self.points, reference_frames=self.reference_frames, head_depth_scale=self.head_depth_scale,
            cutout_threshold=self.cutout_threshold, scale_neighbors=self.scale_neighbors,
        )  # fmt: skip
        base.update(changes)
        return PointCloudSpec(**base)  # type: ignore[arg-type]

    def with_budget(self, points: int | None, max_gaussians: int | None) -> InitParams:
        """A preset's Gaussian budget (``points`` is capped at ``max_gaussians``)."""
        import dataclasses

        mg = self.max_gaussians if max_gaussians is None else max_gaussians
        pts = self.points if points is None else points
        return dataclasses.replace(self, points=min(pts, mg), max_gaussians=mg)
