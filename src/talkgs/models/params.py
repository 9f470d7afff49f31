"""Model configuration: which registered components a variant uses, and their sizes.

``params.yaml: train.variants.<name>.model``. Defaults are GaussianTalker's (appendix A).
Every component section has a ``name`` (a registered component of its kind, see
:mod:`talkgs.models.registry`); the other fields are passed to it as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from talkgs.models.gaussians import ATTRIBUTES

__all__ = [
    "InitParams",
    "SpatialEncoderParams",
    "CanonicalParams",
    "AudioEncoderParams",
    "EyeParams",
    "ViewParams",
    "ConditionParams",
    "DeformerParams",
    "ModelParams",
]


@dataclass(frozen=True)
class InitParams:
    """Initial point cloud of the canonical head, built from the clip's own tracking.

    Points: the tracked face landmarks (in the canonical head frame) plus head pixels (face,
    hair, ears, lips, eyes, mouth labels) of a few training frames, lifted to 3D with a depth
    interpolated from the landmarks inside the face and from an ellipsoid fitted to the
    landmarks outside it (hair, ears, back of the head), then merged across frames and
    subsampled to ``points``.
    """

    points: int = 20000
    """Initial number of Gaussians (the paper's BFM mesh has ~35k vertices)."""
    max_gaussians: int = 50000
    """Cap on the number of Gaussians: densification never grows past it (paper: 50,000)."""
    reference_frames: int = 8
    """Training frames whose head pixels are lifted to 3D (spread evenly over the split)."""
    head_depth_scale: float = 1.15
    """The head ellipsoid (for pixels outside the landmark hull) is the landmark ellipsoid
    scaled by this; >1 reaches hair and ears that stick out of the face."""
    init_opacity: float = 0.1
    """Opacity every Gaussian starts with."""
    cutout_threshold: float = 12.0
    """Pixels whose frame and torso image differ by more than this (mean abs, 0-255) are head
    pixels too (the torso frames cut the head out with a margin that the head must cover)."""
    scale_neighbors: int = 3
    """Initial scale = mean distance to this many nearest neighbours."""
    margin: float = 0.15
    """The spatial encoder's box is the initial cloud's box grown by this fraction per side."""


@dataclass(frozen=True)
class SpatialEncoderParams:
    """Spatial encoder (registry kind ``spatial_encoder``): canonical position → feature."""

    name: str = "triplane"
    """Registered spatial encoder."""
    channels: int = 32
    """Triplane: channels per plane and resolution (feature size = channels x len(multires))."""
    resolution: int = 64
    """Triplane: base resolution R (paper: 64)."""
    multires: tuple[int, ...] = (1, 2)
    """Triplane: resolution multipliers (paper: R upsampled x2 → (1, 2))."""
    init_low: float = 0.1
    """Triplane: planes start uniform in [init_low, init_high] (K-planes)."""
    init_high: float = 0.5


@dataclass(frozen=True)
class CanonicalParams:
    """Canonical Gaussians (registry kind ``canonical``)."""

    name: str = "triplane_mlp"
    """``triplane_mlp`` (GaussianTalker: attributes from triplane features through MLPs) or
    ``explicit`` (vanilla 3DGS attributes stored per Gaussian)."""
    hidden: int = 64
    """Width of the shared trunk and the attribute heads."""
    trunk_layers: int = 1
    """Hidden layers of the shared trunk phi_shared."""
    head_layers: int = 1
    """Hidden layers of each attribute head (0 = linear)."""
    sh_degree: int = 3
    """Spherical-harmonics degree of the colours (3DGS: 3)."""
    head_init_scale: float = 0.1
    """The heads' last-layer weights are scaled by this at init (outputs start near the initial values)."""


@dataclass(frozen=True)
class AudioEncoderParams:
    """Audio window encoder (registry kind ``audio_encoder``)."""

    name: str = "window_conv"
    """Registered audio encoder."""
    feature: str = "mel"
    """Audio feature table read from the features stage (``audio_<feature>.parquet``)."""
    hidden: int = 64
    """Channels of the encoder."""


@dataclass(frozen=True)
class EyeParams:
    """Eye-blink token (``condition/eye``)."""

    num_freqs: int = 4
    """Sinusoidal frequencies of the AU45 encoding."""
    max_au: float = 5.0
    """AU45 scale maximum (FACS 0-5)."""


@dataclass(frozen=True)
class ViewParams:
    """Viewpoint token (``condition/view``)."""

    hidden: int = 64
    """Hidden width of the pose MLP."""


@dataclass(frozen=True)
class ConditionParams:
    """Per-frame condition tokens the deformer attends to."""

    tokens: tuple[str, ...] = ("audio", "eye", "view", "null")
    """Tokens, in order: ``audio`` (the audio encoder) and registered ``condition`` components."""
    dim: int = 64
    """Token size D."""
    eye: EyeParams = field(default_factory=EyeParams)
    view: ViewParams = field(default_factory=ViewParams)


@dataclass(frozen=True)
class DeformerParams:
    """Deformer (registry kind ``deformer``): per-Gaussian features + tokens → attribute offsets."""

    name: str = "spatial_audio_attention"
    """``spatial_audio_attention`` (GaussianTalker) or ``identity`` (static head)."""
    dim: int = 64
    """Attention width."""
    layers: int = 2
    """Cross-attention + FFN blocks L (paper: 2; GaussianTalker* lite: 1)."""
    heads: int = 4
    """Attention heads."""
    ffn_dim: int = 128
    """FFN hidden width."""
    head_hidden: int = 64
    """Hidden width of the offset heads psi_*."""
    head_layers: int = 1
    """Hidden layers of each offset head."""
    attributes: tuple[str, ...] = ATTRIBUTES
    """Attributes that get offsets (means, quats, log_scales, opacity_logits, sh)."""
    offset_scales: dict[str, float] = field(
        default_factory=lambda: {"means": 0.02, "quats": 0.1, "log_scales": 0.1, "opacity_logits": 0.5, "sh": 0.5}
    )
    """Factor on each offset head's output (``means``: x the scene extent, the initial cloud's
    radius), so head outputs are O(1) in any scene units and Adam's per-step changes stay small
    (GaussianTalker's code works in a normalised scene; talkgs' world is in metres)."""


@dataclass(frozen=True)
class ModelParams:
    """The talking-head model of a variant."""

    init: InitParams = field(default_factory=InitParams)
    spatial: SpatialEncoderParams = field(default_factory=SpatialEncoderParams)
    canonical: CanonicalParams = field(default_factory=CanonicalParams)
    audio: AudioEncoderParams = field(default_factory=AudioEncoderParams)
    conditions: ConditionParams = field(default_factory=ConditionParams)
    deformer: DeformerParams = field(default_factory=DeformerParams)

    def __post_init__(self) -> None:
        bad = set(self.deformer.attributes) - set(ATTRIBUTES)
        if bad:
            raise ValueError(f"deformer.attributes: unknown {sorted(bad)}; valid: {list(ATTRIBUTES)}")
        if self.init.points > self.init.max_gaussians:
            raise ValueError(f"init.points ({self.init.points}) > init.max_gaussians ({self.init.max_gaussians})")
