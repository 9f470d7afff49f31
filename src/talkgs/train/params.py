"""Variant configuration: model components, training phases, losses, presets.

``params.yaml`` (section ``train``, :class:`TrainParams`) holds the variants by name and the
hardware presets; a variant is a :class:`VariantParams` whose defaults are GaussianTalker's
paper settings (appendix A), so a variant entry only says what differs::

    train:
      preset: cpu                       # applied on top of every variant (null: paper settings)
      variants:
        gaussiantalker: {}
        gaussiantalker_lite: {model: {deformer: {layers: 1}}}
        static: {model: {deformer: {name: identity}}, phases: [...]}

:data:`BUILTIN_VARIANTS` and :data:`BUILTIN_PRESETS` are those entries as plain YAML-able dicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from talkgs.models.params import ModelParams

__all__ = [
    "LRParams",
    "DensifyParams",
    "PhaseParams",
    "PerceptualParams",
    "RegionParams",
    "LossParams",
    "RenderParams",
    "VariantParams",
    "PresetParams",
    "TrainParams",
    "BUILTIN_VARIANTS",
    "BUILTIN_PRESETS",
    "variant_from_dict",
    "apply_preset",
    "builtin_variant",
    "default_phases",
]


@dataclass(frozen=True)
class LRParams:
    """Learning rate of one parameter group within a phase: log-linear decay from ``start`` to
    ``end`` over the phase (3DGS ``get_expon_lr_func``), after a linear warm-up."""

    start: float = 1e-3
    """Initial learning rate."""
    end: float | None = None
    """Final learning rate (None: constant ``start``)."""
    warmup: int = 0
    """Steps of linear warm-up from 0 at the phase start."""
    relative_to_extent: bool = False
    """Multiply by the scene extent (radius of the initial point cloud), as 3DGS does for positions."""

    def __post_init__(self) -> None:
        if self.start < 0 or (self.end is not None and self.end < 0) or self.warmup < 0:
            raise ValueError(f"learning rates and warm-up must be >= 0 (start={self.start}, end={self.end}, warmup={self.warmup})")


@dataclass(frozen=True)
class DensifyParams:
    """Adaptive density control within a phase (:mod:`talkgs.render.densify`, gsplat's
    ``DefaultStrategy`` knobs; steps count from the phase start). Growth stops at the model's
    ``init.max_gaussians``."""

    enabled: bool = False
    """Densify in this phase."""
    grow_grad2d: float = 0.0002
    """Mean NDC gradient of the 2D mean above which a Gaussian is cloned or split."""
    grow_scale3d: float = 0.01
    """Gaussians smaller than this x scene extent are cloned, larger ones split."""
    prune_opa: float = 0.005
    """Gaussians below this opacity are removed."""
    prune_scale3d: float = 0.1
    """After the first opacity reset, Gaussians larger than this x scene extent are removed."""
    refine_start: int = 500
    """First refinement step."""
    refine_stop: int = 15000
    """No refinement from this step on."""
    refine_every: int = 100
    """Steps between refinements."""
    reset_every: int = 1_000_000
    """Opacity reset period (GaussianTalker does not reset: a period past the phase)."""


@dataclass(frozen=True)
class PhaseParams:
    """One training phase (e.g. canonical → deformation)."""

    name: str = "train"
    """Phase name (progress bar, curves)."""
    iterations: int = 1000
    """Steps in this phase (one training frame per step)."""
    deform: bool = False
    """Apply the deformer (False: render the canonical Gaussians)."""
    lr: dict[str, LRParams] = field(default_factory=dict)
    """Learning rate per parameter group (``means``, ``gaussians``, ``spatial``, ``canonical``,
    ``audio``, ``conditions``, ``deformer``); groups not listed are frozen in this phase."""
    losses: dict[str, float] = field(default_factory=lambda: {"l1": 0.8, "dssim": 0.2, "lpips": 0.01})
    """Registered loss name → weight (see :mod:`talkgs.train.losses`); weight 0 = not computed."""
    densify: DensifyParams = field(default_factory=DensifyParams)

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"phase {self.name!r}: iterations must be >= 0, found {self.iterations}")
        from talkgs.models.head import PARAM_GROUPS

        bad = set(self.lr) - set(PARAM_GROUPS)
        if bad:
            raise ValueError(f"phase {self.name!r}: unknown parameter groups {sorted(bad)} in lr; valid: {list(PARAM_GROUPS)}")
        if self.densify.enabled and "means" not in self.lr:
            raise ValueError(f"phase {self.name!r}: densification needs trainable positions: give 'means' a learning rate or disable densify")


def default_phases() -> tuple[PhaseParams, ...]:
    """GaussianTalker's two stages (appendix A.2)."""
    canonical = PhaseParams(
        name="canonical",
        iterations=8000,
        deform=False,
        lr={
            "means": LRParams(start=1.6e-4, end=1.6e-6, relative_to_extent=True),
            "spatial": LRParams(start=1.6e-3, end=1.6e-4),
            "canonical": LRParams(start=1e-4, end=1e-5),
        },
        losses={"l1": 0.8, "dssim": 0.2, "lpips": 0.01},
        densify=DensifyParams(enabled=True, refine_start=500, refine_stop=6000, refine_every=100),
    )
    deformation = PhaseParams(
        name="deformation",
        iterations=8000,
        deform=True,
        lr={
            "spatial": LRParams(start=1e-4, end=1e-5),
            "canonical": LRParams(start=1e-4, end=1e-5),
            "audio": LRParams(start=1e-4, end=1e-5),
            "conditions": LRParams(start=1e-4, end=1e-5),
            "deformer": LRParams(start=1e-4, end=1e-5),
        },
        losses={"l1": 0.8, "dssim": 0.2, "lpips": 0.01, "lip": 0.8},
    )
    return (canonical, deformation)


@dataclass(frozen=True)
class PerceptualParams:
    """Weights of the LPIPS loss (:mod:`talkgs.models.perceptual`)."""

    net: Literal["alex"] = "alex"
    """Backbone (AlexNet, as GaussianTalker / the papers' metric)."""
    alexnet_weights: str | None = None
    """Path of torchvision's ``alexnet-owt-7be5be79.pth``; None: the torch hub cache
    ``~/.cache/torch/hub/checkpoints/``. Missing weights stop the run (with where to put them)
    unless the lpips weight is 0."""
    linear_weights: str | None = None
    """Path of the LPIPS linear heads; None: ``weights/v0.1/alex.pth`` of the lpips wheel."""


@dataclass(frozen=True)
class RegionParams:
    """Region crops for region losses (``lip``, ``face``), from the frame's landmarks."""

    margin: float = 0.25
    """The landmark box grows by this fraction of its size on every side."""
    min_size: int = 16
    """Crops are at least this many pixels wide and high (at the training resolution)."""


@dataclass(frozen=True)
class LossParams:
    """Loss options shared by all phases (the weights are per phase)."""

    ssim_window: int = 11
    """Gaussian window of SSIM (3DGS: 11, sigma 1.5)."""
    perceptual: PerceptualParams = field(default_factory=PerceptualParams)
    lip: RegionParams = field(default_factory=RegionParams)
    """Lip crop (GaussianTalker's lip loss: L1 on the lip patch)."""
    face: RegionParams = field(default_factory=lambda: RegionParams(margin=0.05, min_size=32))
    """Face crop (face-oval landmarks)."""


@dataclass(frozen=True)
class RenderParams:
    """How training frames are rendered."""

    resolution: int | None = None
    """Square training resolution (frames, torso plates and intrinsics are resized); None: the
    extracted resolution."""
    backend: Literal["auto", "gsplat", "cpu", "reference"] = "auto"
    """:func:`talkgs.render.rasterize` backend (auto: gsplat on CUDA, numba on CPU)."""
    eps2d: float = 0.3
    """Screen-space dilation (pixels², gsplat's ``eps2d``) at the training resolution; renders
    at another resolution scale it by (size ratio)² so the Gaussians keep the footprint they
    were trained with (no sparkle/gaps when a 128² model is rendered at 256²)."""
    background: Literal["torso", "plate"] = "torso"
    """What the head is splatted onto: the frame's torso image (background plate + torso with
    the head removed; GaussianTalker/TalkingGaussian) or the background plate alone."""


@dataclass(frozen=True)
class VariantParams:
    """One variant: model components + phases + losses. Defaults = GaussianTalker (paper)."""

    description: str = "GaussianTalker (Cho et al. 2024): triplane canonical head + spatial-audio cross-attention deformer"
    """Free text (shown in logs and reports)."""
    model: ModelParams = field(default_factory=ModelParams)
    phases: tuple[PhaseParams, ...] = field(default_factory=default_phases)
    """Training phases, run in order."""
    losses: LossParams = field(default_factory=LossParams)
    render: RenderParams = field(default_factory=RenderParams)
    log_every: int = 10
    """Steps between rows of ``curves.csv``."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints (also at every phase end)."""

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("a variant needs at least one phase")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, found {names}")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be >= 1")

    @property
    def total_iterations(self) -> int:
        return sum(p.iterations for p in self.phases)


@dataclass(frozen=True)
class PresetParams:
    """A hardware preset applied on top of any variant (e.g. ``cpu``: small and fast)."""

    description: str = ""
    """What the preset is for and what it changes."""
    resolution: int | None = None
    """Training resolution (``render.resolution``)."""
    init_points: int | None = None
    """``model.init.points``."""
    max_gaussians: int | None = None
    """``model.init.max_gaussians``."""
    iteration_scale: float = 1.0
    """Every phase's iterations (and its densification schedule) are multiplied by this."""
    phase_iteration_scale: dict[str, float] = field(default_factory=dict)
    """Phase name → a further factor on that phase's iterations (and its densification
    schedule), e.g. ``{deformation: 3.0}``: a short schedule that still gives the audio-driven
    deformation enough steps. Phases of other names are unaffected."""
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Parameter group → factor on its learning rates in every phase (short schedules need larger steps)."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """Loss name → weight, replacing that loss's weight in every phase that uses it."""
    sh_degree: int | None = None
    """``model.canonical.sh_degree``."""
    triplane_resolution: int | None = None
    """``model.spatial.resolution``."""
    head_layers: int | None = None
    """Hidden layers of the canonical attribute heads and the deformer's offset heads
    (``model.canonical.head_layers``, ``model.deformer.head_layers``; 0 = linear heads)."""
    checkpoint_every: int | None = None
    """``checkpoint_every``."""

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.phase_iteration_scale.items() if not v > 0}
        if bad or not self.iteration_scale > 0:
            raise ValueError(f"preset: iteration scales must be > 0, found iteration_scale={self.iteration_scale}, phase_iteration_scale={bad}")


@dataclass(frozen=True)
class TrainParams:
    """``params.yaml: train``: variants by name and the preset applied to all of them."""

    variants: dict[str, VariantParams] = field(default_factory=lambda: {k: variant_from_dict(v) for k, v in BUILTIN_VARIANTS.items()})
    """Variant name → configuration (what differs from the GaussianTalker defaults)."""
    presets: dict[str, PresetParams] = field(default_factory=lambda: {k: _preset_from_dict(v) for k, v in BUILTIN_PRESETS.items()})
    """Preset name → overrides."""
    preset: str | None = None
    """Preset applied to every variant (e.g. ``cpu``); None: the variants as written."""
    device: str = "cpu"
    """Torch device for training (``cpu`` or ``cuda``)."""
    seed: int = 0
    """Random seed (initialisation, frame order, densification samples)."""

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in self.presets:
            raise ValueError(f"train.preset: {self.preset!r} is not one of the presets {sorted(self.presets)}")
        from talkgs.config import closest_hint

        phases = sorted({ph.name for v in self.variants.values() for ph in v.phases})
        for name, p in self.presets.items():
            for k in p.phase_iteration_scale:
                if k not in phases:
                    raise ValueError(
                        f"train.presets.{name}.phase_iteration_scale: no variant has a phase {k!r}.{closest_hint(k, phases)} Phases: {phases}"
                    )

    def variant(self, name: str) -> VariantParams:
        """The variant ``name`` with :attr:`preset` applied."""
        if name not in self.variants:
            from talkgs.config import closest_hint

            raise KeyError(f"unknown variant {name!r}.{closest_hint(name, list(self.variants))} Variants: {', '.join(sorted(self.variants))}")
        v = self.variants[name]
        return v if self.preset is None else apply_preset(v, self.presets[self.preset])


# ----------------------------------------------------------------------------------------------
# presets


def _scale_steps(n: int, s: float) -> int:
    return max(1, int(round(n * s))) if n > 0 else 0


def apply_preset(v: VariantParams, p: PresetParams) -> VariantParams:
    """``v`` with the preset's overrides."""
    r = dataclasses.replace
    m = v.model
    init = r(
        m.init,
        points=p.init_points if p.init_points is not None else m.init.points,
        max_gaussians=p.max_gaussians if p.max_gaussians is not None else m.init.max_gaussians,
    )
    if init.points > init.max_gaussians:
        init = r(init, points=init.max_gaussians)
    canonical = m.canonical if p.sh_degree is None else r(m.canonical, sh_degree=p.sh_degree)
    deformer = m.deformer
    if p.head_layers is not None:
        canonical = r(canonical, head_layers=p.head_layers)
        deformer = r(deformer, head_layers=p.head_layers)
    spatial = m.spatial if p.triplane_resolution is None else r(m.spatial, resolution=p.triplane_resolution)
    model = r(m, init=init, canonical=canonical, spatial=spatial, deformer=deformer)
    phases = []
    for ph in v.phases:
        s = p.iteration_scale * p.phase_iteration_scale.get(ph.name, 1.0)
        d = ph.densify
        d = r(
            d,
            refine_start=_scale_steps(d.refine_start, s),
            refine_stop=_scale_steps(d.refine_stop, s),
            refine_every=_scale_steps(d.refine_every, s),
            reset_every=_scale_steps(d.reset_every, s),
        )
        lr = {g: (r(x, start=x.start * p.lr_scale[g], end=None if x.end is None else x.end * p.lr_scale[g]) if g in p.lr_scale else x) for g, x in ph.lr.items()}
        losses = {k: (p.loss_weights[k] if k in p.loss_weights else w) for k, w in ph.losses.items()}
        phases.append(r(ph, iterations=_scale_steps(ph.iterations, s), densify=d, lr=lr, losses=losses))
    render = v.render if p.resolution is None else r(v.render, resolution=p.resolution)
    ck = v.checkpoint_every if p.checkpoint_every is None else p.checkpoint_every
    desc = v.description + (f" [preset: {p.description}]" if p.description else "")
    return r(v, model=model, phases=tuple(phases), render=render, checkpoint_every=ck, description=desc)


# ----------------------------------------------------------------------------------------------
# built-in variants and presets (what params.yaml holds)

_CANONICAL_STATIC = {
    "name": "static",
    "iterations": 16000,
    "deform": False,
    "lr": {
        "means": {"start": 1.6e-4, "end": 1.6e-6, "relative_to_extent": True},
        "spatial": {"start": 1.6e-3, "end": 1.6e-4},
        "canonical": {"start": 1e-4, "end": 1e-5},
    },
    "losses": {"l1": 0.8, "dssim": 0.2, "lpips": 0.01},
    "densify": {"enabled": True, "refine_start": 500, "refine_stop": 6000, "refine_every": 100},
}

BUILTIN_VARIANTS: dict[str, dict[str, Any]] = {
    "static": {
        "description": "static head: GaussianTalker's canonical Gaussians, no deformation (the floor "
        "every variant must beat); one canonical phase as long as GaussianTalker's two",
        "model": {"deformer": {"name": "identity"}, "conditions": {"tokens": []}},
        "phases": [_CANONICAL_STATIC],
    },
    "gaussiantalker": {
        "description": "GaussianTalker (Cho et al. 2024): triplane canonical head + spatial-audio "
        "cross-attention deformer (L=2) over [audio, eye, view, null] tokens",
    },
    "gaussiantalker_lite": {
        "description": "GaussianTalker* (lite): one cross-attention layer",
        "model": {"deformer": {"layers": 1}},
    },
}
"""Built-in variants as ``params.yaml`` entries (differences from :class:`VariantParams` defaults)."""

BUILTIN_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "description": "CPU: 128x128 training renders, 6k Gaussians, 1/8 of the iterations (3/8 for the "
        "deformation phase, and the static floor as long as both) with larger learning rates, SH degree 1, "
        "LPIPS weight 0 (the AlexNet weights are not on CPU machines)",
        "resolution": 128,
        "init_points": 4000,
        "max_gaussians": 6000,
        "iteration_scale": 0.125,
        "phase_iteration_scale": {"deformation": 3.0, "static": 2.0},
        "lr_scale": {"means": 3.0, "spatial": 3.0, "canonical": 10.0, "audio": 10.0, "conditions": 10.0, "deformer": 10.0},
        "loss_weights": {"lpips": 0.0},
        "sh_degree": 1,
        "triplane_resolution": 64,
        "checkpoint_every": 250,
    },
}
"""Built-in presets as ``params.yaml`` entries."""


def variant_from_dict(d: dict[str, Any], where: str = "variant") -> VariantParams:
    """Strictly parse a variant entry (``talkgs.config.from_dict``)."""
    from talkgs.config import from_dict

    return from_dict(VariantParams, d, where)


def _preset_from_dict(d: dict[str, Any]) -> PresetParams:
    from talkgs.config import from_dict

    return from_dict(PresetParams, d, "preset")


def builtin_variant(name: str, preset: str | None = None) -> VariantParams:
    """A built-in variant, optionally with a built-in preset applied."""
    if name not in BUILTIN_VARIANTS:
        raise KeyError(f"unknown built-in variant {name!r}; built-ins: {sorted(BUILTIN_VARIANTS)}")
    v = variant_from_dict(BUILTIN_VARIANTS[name], f"variants.{name}")
    if preset is not None:
        v = apply_preset(v, _preset_from_dict(BUILTIN_PRESETS[preset]))
    return v
