"""Variant configuration: the head, training phases, losses, samplers, presets.

``params.yaml`` (section ``train``, :class:`TrainParams`) holds the variants by name and the
hardware presets -- they are defined there and only there. A variant is a
:class:`VariantParams` whose defaults are GaussianTalker's paper settings (appendix A), so a
variant entry only says what differs::

    train:
      preset: cpu                       # applied on top of every variant (null: paper settings)
      variants:
        gaussiantalker: {}
        gaussiantalker_lite: {model: {deformer: {layers: 1}}}
        static: {model: {deformer: {name: identity}}, phases: [...]}

Every component section (``model``, its parts, ``losses.<name>``, ``sampler``, ``post``,
``callbacks``) is the config of a registered component, chosen by ``name`` and parsed strictly
(:mod:`talkgs.models.registry`). A variant is validated against its head when parsed: phase
learning rates must name the head's parameter groups, phase losses its own losses or registered
ones, ``head:`` phase options the head's options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from talkgs.configlib import (
    COUNT, FRACTION, GAUSSIANS, NON_NEGATIVE, PIXELS, POSITIVE, SEED, SH_DEGREE, STEPS, ConfigError, Range, closest_hint, from_dict,
)  # fmt: skip
from talkgs.models.contract import CallbackConfig, HeadConfig, LossConfig, PostConfig, PresetKnobs, SamplerConfig
from talkgs.models.heads.deformable import DeformableHeadConfig
from talkgs.models.registry import RegistryError, config_class, names, required_assets
from talkgs.train.samplers import UniformConfig

__all__ = [
    "LRParams",
    "DensifyParams",
    "PhaseParams",
    "RenderParams",
    "PretrainParams",
    "VariantParams",
    "PresetParams",
    "TrainParams",
    "variant_from_dict",
    "apply_preset",
    "default_phases",
    "PRETRAIN",
]

PRETRAIN = "pretrain"
"""``init_from: pretrain``: start from this variant's cross-subject ``pretrain@<V>`` model."""


@dataclass(frozen=True)
class LRParams:
    """Learning rate of one parameter group within a phase: log-linear decay from ``start`` to
    ``end`` over the phase (3DGS ``get_expon_lr_func``), after a linear warm-up."""

    start: Annotated[float, NON_NEGATIVE] = 1e-3
    """Initial learning rate."""
    end: Annotated[float | None, NON_NEGATIVE] = None
    """Final learning rate (None: constant ``start``)."""
    warmup: Annotated[int, STEPS] = 0
    """Steps of linear warm-up from 0 at the phase start."""
    relative_to_extent: bool = False
    """Multiply by the scene extent (radius of the initial point cloud), as 3DGS does for positions."""

    def __post_init__(self) -> None:
        if self.start < 0 or (self.end is not None and self.end < 0) or self.warmup < 0:
            raise ValueError(f"learning rates and warm-up must be >= 0 (start={self.start}, end={self.end}, warmup={self.warmup})")


@dataclass(frozen=True)
class DensifyParams:
    """Adaptive density control within a phase (the densification callback,
    :mod:`talkgs.train.density` over :mod:`talkgs.render.densify`: gsplat's ``DefaultStrategy``
    knobs; steps count from the phase start). Growth stops at each Gaussian set's cap."""

    enabled: bool = False
    """Densify in this phase."""
    sets: tuple[str, ...] | None = None
    """Gaussian sets to densify (None: every set the head rendered in the step)."""
    grow_grad2d: Annotated[float, POSITIVE] = 0.0002
    """Mean NDC gradient of the 2D mean above which a Gaussian is cloned or split."""
    grow_scale3d: Annotated[float, POSITIVE] = 0.01
    """Gaussians smaller than this x scene extent are cloned, larger ones split."""
    prune_opa: Annotated[float, FRACTION] = 0.005
    """Gaussians below this opacity are removed."""
    prune_opa_final: Annotated[float | None, FRACTION] = None
    """If set, the opacity threshold rises linearly from ``prune_opa`` to this by ``refine_stop``
    (TalkingGaussian: 0.05 → 0.3)."""
    prune_scale3d: Annotated[float, POSITIVE] = 0.1
    """After the first opacity reset, Gaussians larger than this x scene extent are removed."""
    refine_start: Annotated[int, STEPS] = 500
    """First refinement step."""
    refine_stop: Annotated[int, STEPS] = 15000
    """No refinement from this step on."""
    refine_every: Annotated[int, COUNT] = 100
    """Steps between refinements."""
    reset_every: Annotated[int, COUNT] = 1_000_000
    """Opacity reset period (GaussianTalker does not reset: a period past the phase)."""


@dataclass(frozen=True)
class PhaseParams:
    """One training phase (e.g. canonical → deformation). Steps of all phases share one counter."""

    name: str = "train"
    """Phase name (progress bar, curves, preset factors)."""
    iterations: Annotated[int, STEPS] = 1000
    """Steps in this phase."""
    head: dict[str, Any] = field(default_factory=dict)
    """The head's per-phase options (e.g. ``{deform: false}`` for ``head/deformable``; the
    head's options dataclass says which keys exist)."""
    lr: dict[str, LRParams] = field(default_factory=dict)
    """Learning rate per parameter group (the head's groups and ``post.<name>``); groups not
    listed are frozen in this phase."""
    losses: dict[str, Annotated[float, NON_NEGATIVE]] = field(default_factory=lambda: {"l1": 0.8, "dssim": 0.2, "lpips": 0.01})
    """Loss name → weight: the head's own losses, the variant's ``losses`` entries, or registered
    losses with their default config; weight 0 = not computed."""
    densify: DensifyParams = field(default_factory=DensifyParams)
    sampler: SamplerConfig = field(default_factory=UniformConfig)
    """Which frames each step trains on (registry kind ``sampler``: ``uniform``, ``incremental``)."""
    frames_per_step: Annotated[int, Range(1, 256)] = 1
    """Frames rendered per step (``K``); losses average over them."""
    render: bool = True
    """False: a phase that does not render (e.g. pretraining an audio encoder); its losses read
    the batch and the head directly."""
    post: tuple[str, ...] | None = None
    """Post-render modules that run in this phase (names from the variant's ``post``; None: all)."""
    callbacks: tuple[CallbackConfig, ...] = ()
    """More training callbacks (registry kind ``callback``), after densification."""

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"phase {self.name!r}: iterations must be >= 0, found {self.iterations}")
        if self.frames_per_step < 1:
            raise ValueError(f"phase {self.name!r}: frames_per_step must be >= 1, found {self.frames_per_step}")
        if self.densify.enabled and not any(g.split(".")[-1] == "means" for g in self.lr):
            raise ValueError(f"phase {self.name!r}: densification needs trainable positions: give a 'means' group a learning rate or disable densify")
        if self.densify.enabled and not self.render:
            raise ValueError(f"phase {self.name!r}: densification needs renders; a phase with render: false cannot densify")


def default_phases() -> tuple[PhaseParams, ...]:
    """GaussianTalker's two stages (appendix A.2)."""
    canonical = PhaseParams(
        name="canonical",
        iterations=8000,
        head={"deform": False},
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
class RenderParams:
    """How training frames are rendered."""

    resolution: Annotated[int | None, PIXELS] = None
    """Square training resolution (frames, torso plates and intrinsics are resized); None: the
    extracted resolution."""
    backend: Literal["auto", "gsplat", "cpu", "reference"] = "auto"
    """:func:`talkgs.render.rasterize` backend (auto: gsplat on CUDA, numba on CPU)."""
    eps2d: Annotated[float, Range(0, 100)] = 0.3
    """Screen-space dilation (pixels², gsplat's ``eps2d``) at the training resolution; renders
    at another resolution scale it by (size ratio)² so the Gaussians keep the footprint they
    were trained with (no sparkle/gaps when a 128² model is rendered at 256²)."""
    background: Literal["torso", "plate"] = "torso"
    """What the head is splatted onto: the frame's torso image (background plate + torso with
    the head removed; GaussianTalker/TalkingGaussian) or the background plate alone."""


@dataclass(frozen=True)
class PretrainParams:
    """Cross-subject pretraining of a variant (stage ``pretrain@<V>``, D3-Talker / InsTaG style):
    the variant's head trained on several subjects at once (one identity each, shared networks),
    saved to ``models/pretrain/<V>/``; ``init_from: pretrain`` starts every ``train@<S>-<V>``
    from its shared part."""

    subjects: tuple[str, ...] = ()
    """Enabled subjects to pretrain on (empty: no pretraining)."""
    phases: tuple[PhaseParams, ...] | None = None
    """Phases of the pretraining run (None: the variant's own phases)."""


@dataclass(frozen=True)
class VariantParams:
    """One variant: a head + phases + losses. Defaults = GaussianTalker (paper)."""

    description: str = "GaussianTalker (Cho et al. 2024): triplane canonical head + spatial-audio cross-attention deformer"
    """Free text (shown in logs and reports)."""
    model: HeadConfig = field(default_factory=DeformableHeadConfig)
    """The head (registry kind ``head``, chosen by ``name``; default ``deformable``)."""
    audio_feature: str = "mel"
    """Audio feature table read from the features stage (``audio_<feature>.parquet``)."""
    phases: tuple[PhaseParams, ...] = field(default_factory=default_phases)
    """Training phases, run in order."""
    losses: dict[str, Any] = field(default_factory=dict)
    """Loss configs by the name phases weight them with, e.g. ``{lip: {margin: 0.3}}`` or
    ``{lip_wide: {name: lip, margin: 0.5}}``; a name not listed uses the registered loss of
    that name with its default config."""
    post: tuple[PostConfig, ...] = ()
    """Post-render modules (registry kind ``post``), in order; group ``post.<name>`` each."""
    render: RenderParams = field(default_factory=RenderParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    init_from: str | None = None
    """Start from a trained model: ``pretrain`` (this variant's ``pretrain@<V>`` model) or a
    checkpoint path. Its shared (identity-independent) parameters are loaded; the subject's own
    Gaussians are initialised from its clip."""
    freeze: tuple[str, ...] = ()
    """Parameter groups kept frozen in every phase of the per-subject training (e.g. the
    pretrained audio encoder)."""
    log_every: Annotated[int, COUNT] = 10
    """Steps between rows of ``curves.csv``."""
    checkpoint_every: Annotated[int, COUNT] = 500
    """Steps between resumable checkpoints (also at every phase end)."""

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("a variant needs at least one phase")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be >= 1")
        object.__setattr__(self, "losses", {k: _loss_config(k, v) for k, v in self.losses.items()})
        post_names = [p.name for p in self.post]
        if len(set(post_names)) != len(post_names):
            raise ValueError(f"post: each module once, found {post_names}")
        groups = self.groups()
        for where, phases in (("phases", self.phases), ("pretrain.phases", self.pretrain.phases or ())):
            names_ = [p.name for p in phases]
            if len(set(names_)) != len(names_):
                raise ValueError(f"{where}: phase names must be unique, found {names_}")
            for i, ph in enumerate(phases):
                at = f"{where}[{i}] ({ph.name})"
                self.model.parse_options(ph.head, f"{at}.head")
                _check_names(list(ph.lr), groups, f"{at}.lr", "parameter group")
                for n in ph.losses:
                    self.loss_config(n, f"{at}.losses")
                if ph.post is not None:
                    _check_names(list(ph.post), post_names, f"{at}.post", "post-render module")
        _check_names(list(self.freeze), groups, "freeze", "parameter group")
        if self.init_from == PRETRAIN and not self.pretrain.subjects:
            raise ValueError("init_from: pretrain needs pretrain.subjects (the subjects of the pretrain@<V> stage)")

    def groups(self) -> list[str]:
        """Parameter groups phases may train: the head's and ``post.<name>`` per post module."""
        return [*self.model.groups, *(f"post.{p.name}" for p in self.post)]

    def loss_config(self, name: str, where: str = "losses") -> LossConfig | None:
        """The config of loss ``name`` (None: a loss the head computes itself)."""
        if name in self.model.loss_names:
            return None
        if name in self.losses:
            return self.losses[name]
        try:
            return config_class("loss", name)()
        except RegistryError:
            valid = [*self.model.loss_names, *self.losses, *names("loss")]
            raise ValueError(
                f"{where}: no loss {name!r}.{closest_hint(name, valid)} Head {self.model.name!r} losses: "
                f"{list(self.model.loss_names) or 'none'}; registered: {', '.join(names('loss'))}"
            ) from None

    @property
    def total_iterations(self) -> int:
        return sum(p.iterations for p in self.phases)

    def required_assets(self) -> tuple[str, ...]:
        """Pipeline assets (:data:`talkgs.models.registry.ASSETS`) the head, the losses of every
        phase and the post modules are built from."""
        losses = [self.loss_config(n) for ph in (*self.phases, *(self.pretrain.phases or ())) for n in ph.losses]
        return required_assets([self.model, list(self.post), [c for c in losses if c is not None]])

    def pretraining(self) -> VariantParams:
        """This variant as its cross-subject pretraining run (its ``pretrain.phases``)."""
        phases = self.pretrain.phases or self.phases
        return dataclasses.replace(self, phases=phases, init_from=None, freeze=())


def _check_names(given: list[str], valid: list[str], where: str, what: str) -> None:
    for g in given:
        if g not in valid:
            raise ValueError(f"{where}: no {what} {g!r}.{closest_hint(g, valid)} Valid: {', '.join(valid) or '(none)'}")


def _loss_config(key: str, value: Any) -> LossConfig:
    if isinstance(value, LossConfig):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"losses.{key}: expected a mapping (the loss's options), found {type(value).__name__}")
    name = value.get("name", key)
    try:
        cls = config_class("loss", name)
    except RegistryError as e:
        raise ConfigError(f"losses.{key}.name: {e}") from None
    return from_dict(cls, {**value, "name": name}, f"losses.{key}")


@dataclass(frozen=True)
class PresetParams:
    """A hardware preset applied on top of any variant (e.g. ``cpu``: small and fast)."""

    description: str = ""
    """What the preset is for and what it changes."""
    resolution: Annotated[int | None, PIXELS] = None
    """Training resolution (``render.resolution``)."""
    init_points: Annotated[int | None, GAUSSIANS] = None
    """Initial Gaussians (the head maps it onto its sets; ``deformable``: ``model.init.points``)."""
    max_gaussians: Annotated[int | None, GAUSSIANS] = None
    """Gaussian cap (``deformable``: ``model.init.max_gaussians``)."""
    iteration_scale: Annotated[float, Range(0, 1000, lo_open=True)] = 1.0
    """Every phase's iterations (and its densification schedule) are multiplied by this."""
    phase_iteration_scale: dict[str, Annotated[float, Range(0, 1000, lo_open=True)]] = field(default_factory=dict)
    """Phase name → a further factor on that phase's iterations (and its densification
    schedule), e.g. ``{deformation: 3.0}``: a short schedule that still gives the audio-driven
    deformation enough steps. Phases of other names are unaffected."""
    lr_scale: dict[str, Annotated[float, NON_NEGATIVE]] = field(default_factory=dict)
    """Parameter group → factor on its learning rates in every phase (short schedules need larger steps)."""
    loss_weights: dict[str, Annotated[float, NON_NEGATIVE]] = field(default_factory=dict)
    """Loss name → weight, replacing that loss's weight in every phase that uses it."""
    sh_degree: Annotated[int | None, SH_DEGREE] = None
    """SH degree of the canonical colours."""
    triplane_resolution: Annotated[int | None, Range(1, 1024)] = None
    """Spatial grid resolution (``deformable``: ``model.spatial.resolution``)."""
    head_layers: Annotated[int | None, Range(0, 16)] = None
    """Hidden layers of the heads' attribute/offset MLP heads (0 = linear heads)."""
    checkpoint_every: Annotated[int | None, COUNT] = None
    """``checkpoint_every``."""

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.phase_iteration_scale.items() if not v > 0}
        if bad or not self.iteration_scale > 0:
            raise ValueError(f"preset: iteration scales must be > 0, found iteration_scale={self.iteration_scale}, phase_iteration_scale={bad}")

    @property
    def knobs(self) -> PresetKnobs:
        return PresetKnobs(
            init_points=self.init_points, max_gaussians=self.max_gaussians, sh_degree=self.sh_degree,
            grid_resolution=self.triplane_resolution, head_layers=self.head_layers,
        )  # fmt: skip


@dataclass(frozen=True)
class TrainParams:
    """``params.yaml: train``: variants by name and the preset applied to all of them."""

    variants: dict[str, VariantParams] = field(default_factory=dict)
    """Variant name → configuration (what differs from the GaussianTalker defaults)."""
    presets: dict[str, PresetParams] = field(default_factory=dict)
    """Preset name → overrides."""
    preset: str | None = None
    """Preset applied to every variant (e.g. ``cpu``); None: the variants as written."""
    device: str = "cpu"
    """Torch device for training (``cpu`` or ``cuda``)."""
    seed: Annotated[int, SEED] = 0
    """Random seed (initialisation, frame order, densification samples)."""

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in self.presets:
            raise ValueError(f"train.preset: {self.preset!r} is not one of the presets {sorted(self.presets)}")
        phases = sorted({ph.name for v in self.variants.values() for ph in (*v.phases, *(v.pretrain.phases or ()))})
        for name, p in self.presets.items():
            for k in p.phase_iteration_scale:
                if k not in phases:
                    raise ValueError(
                        f"train.presets.{name}.phase_iteration_scale: no variant has a phase {k!r}.{closest_hint(k, phases)} Phases: {phases}"
                    )

    def variant(self, name: str) -> VariantParams:
        """The variant ``name`` with :attr:`preset` applied."""
        if name not in self.variants:
            raise KeyError(f"unknown variant {name!r}.{closest_hint(name, list(self.variants))} Variants: {', '.join(sorted(self.variants))}")
        v = self.variants[name]
        return v if self.preset is None else apply_preset(v, self.presets[self.preset])


# ----------------------------------------------------------------------------------------------
# presets


def _scale_steps(n: int, s: float) -> int:
    return max(1, int(round(n * s))) if n > 0 else 0


def _scale_phases(phases: tuple[PhaseParams, ...], p: PresetParams) -> tuple[PhaseParams, ...]:
    r = dataclasses.replace
    out = []
    for ph in phases:
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
        out.append(r(ph, iterations=_scale_steps(ph.iterations, s), densify=d, lr=lr, losses=losses))
    return tuple(out)


def apply_preset(v: VariantParams, p: PresetParams) -> VariantParams:
    """``v`` with the preset's overrides."""
    r = dataclasses.replace
    model = v.model.with_preset(p.knobs)
    phases = _scale_phases(v.phases, p)
    pretrain = v.pretrain if v.pretrain.phases is None else r(v.pretrain, phases=_scale_phases(v.pretrain.phases, p))
    render = v.render if p.resolution is None else r(v.render, resolution=p.resolution)
    ck = v.checkpoint_every if p.checkpoint_every is None else p.checkpoint_every
    desc = v.description + (f" [preset: {p.description}]" if p.description else "")
    return r(v, model=model, phases=phases, pretrain=pretrain, render=render, checkpoint_every=ck, description=desc)


def variant_from_dict(d: dict[str, Any], where: str = "variant") -> VariantParams:
    """Strictly parse a variant entry (``talkgs.configlib.from_dict``)."""
    return from_dict(VariantParams, d, where)
