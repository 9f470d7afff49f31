"""``head/deformable``: one set of canonical Gaussians + per-frame condition tokens + a deformer.

The head of GaussianTalker (triplane canonical field, spatial-audio cross-attention deformer
over [audio, eye, view, null] tokens) and of the static floor (the same canonical field with
the identity deformer). Which canonical model, spatial encoder, tokens and deformer it uses is
configuration (registered components, :class:`DeformableHeadConfig`)::

    model:                        # params.yaml: train.variants.<V>.model
      name: deformable            # the default head
      canonical: {name: triplane_mlp, sh_degree: 3}
      spatial: {name: triplane, resolution: 64}
      conditions: {tokens: [audio, eye, view, null], dim: 64}
      deformer: {name: spatial_audio_attention, layers: 2}

Per phase (``phases[i].head``): ``deform`` — apply the deformer (False: render the canonical
Gaussians, GaussianTalker's first stage).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn

from talkgs.configlib import WIDTH
from talkgs.models.canonical import CanonicalConfig, TriplaneMLPConfig
from talkgs.models.conditioning.audio import AudioTokenConfig
from talkgs.models.conditioning.base import ConditionConfig, FrameCondition
from talkgs.models.conditioning.eye import EyeConfig
from talkgs.models.conditioning.view import NullConfig, ViewConfig
from talkgs.models.contract import (
    Batch,
    BuildContext,
    GaussianSet,
    Head,
    HeadConfig,
    Outputs,
    PresetKnobs,
    RenderSettings,
    replace_config,
)
from talkgs.models.deformers.gaussiantalker import DeformerConfig, SpatialAudioAttentionConfig
from talkgs.models.encoders.triplane import SpatialEncoderConfig, TriplaneConfig
from talkgs.models.gaussians import GaussianAttributes, GaussianParams
from talkgs.models.params import InitParams
from talkgs.models.registry import build, get, register
from talkgs.render import rasterize

__all__ = ["DeformableHead", "DeformableHeadConfig", "DeformableOptions", "ConditionParams"]

GROUPS = ("means", "gaussians", "spatial", "canonical", "audio", "conditions", "deformer")


@dataclass(frozen=True)
class ConditionParams:
    """Per-frame condition tokens the deformer attends to."""

    tokens: tuple[ConditionConfig, ...] = (AudioTokenConfig(), EyeConfig(), ViewConfig(), NullConfig())
    """Tokens, in order (registered ``condition`` components, by name or ``{name: ..., options}``):
    ``audio`` (the audio window encoder), ``eye`` (AU45), ``view`` (head pose), ``null``."""
    dim: Annotated[int, WIDTH] = 64
    """Token size D."""

    def __post_init__(self) -> None:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError(f"conditions.tokens: each token once, found {names}")


@dataclass(frozen=True)
class DeformableOptions:
    """Per-phase options of ``head/deformable`` (a phase's ``head:`` mapping)."""

    deform: bool = True
    """Apply the deformer (False: render the canonical Gaussians)."""


@dataclass(frozen=True)
class DeformableHeadConfig(HeadConfig):
    """``head/deformable``. Defaults: GaussianTalker's paper settings (appendix A)."""

    name: str = "deformable"
    groups: ClassVar[tuple[str, ...]] = GROUPS
    options: ClassVar[type] = DeformableOptions
    init: InitParams = field(default_factory=InitParams)
    spatial: SpatialEncoderConfig = field(default_factory=TriplaneConfig)
    """Position → feature (registry kind ``spatial_encoder``)."""
    canonical: CanonicalConfig = field(default_factory=TriplaneMLPConfig)
    """``triplane_mlp`` (GaussianTalker: attributes from triplane features through MLPs) or
    ``explicit`` (vanilla 3DGS attributes stored per Gaussian)."""
    conditions: ConditionParams = field(default_factory=ConditionParams)
    deformer: DeformerConfig = field(default_factory=SpatialAudioAttentionConfig)
    """``spatial_audio_attention`` (GaussianTalker) or ``identity`` (static head)."""

    def with_preset(self, knobs: PresetKnobs) -> DeformableHeadConfig:
        init = self.init.with_budget(knobs.init_points, knobs.max_gaussians)
        canonical = replace_config(self.canonical, sh_degree=knobs.sh_degree)
        deformer = self.deformer
        if knobs.head_layers is not None:
            if hasattr(canonical, "head_layers"):
                canonical = replace_config(canonical, head_layers=knobs.head_layers)
            if hasattr(deformer, "head_layers"):
                deformer = replace_config(deformer, head_layers=knobs.head_layers)
        spatial = self.spatial
        if knobs.grid_resolution is not None and hasattr(spatial, "resolution"):
            spatial = replace_config(spatial, resolution=knobs.grid_resolution)
        return dataclasses.replace(self, init=init, canonical=canonical, deformer=deformer, spatial=spatial)


def _extent(means: Tensor) -> float:
    """Radius of a point cloud: max distance from its centroid (3DGS's scene scale analogue)."""
    return float((means - means.mean(0)).norm(dim=-1).max()) if means.shape[0] > 0 else 1.0


@register("head", "deformable", DeformableHeadConfig)
class DeformableHead(Head):
    """Canonical Gaussians (set ``head``), per-frame condition tokens and a deformer.

    Parameter groups: ``means`` (positions), ``gaussians`` (other per-Gaussian attributes of
    explicit canonical models), ``spatial`` (spatial encoder, e.g. the triplane planes),
    ``canonical`` (canonical MLPs), ``audio`` (audio token), ``conditions`` (eye/view/null
    tokens), ``deformer``.
    """

    config: DeformableHeadConfig

    def __init__(self, cfg: DeformableHeadConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if ctx.n_identities != 1:
            raise ValueError(
                f"head 'deformable' models one identity (its canonical field is the subject's own head); "
                f"it cannot be trained across {ctx.n_identities} subjects. Use a head with per-identity Gaussians "
                f"(e.g. talkinggaussian) for cross-subject pretraining."
            )
        means, rgb, log_scales = ctx.initial_points(0, cfg.init.spec(), "head")
        means = means.float()
        self.scene_extent = _extent(means)
        c = cfg.canonical
        self.canonical = build(
            "canonical", c, encoder=cfg.spatial, init_opacity=cfg.init.init_opacity,
            init_log_scale=float(log_scales.median()), init_rgb=tuple(float(v) for v in rgb.mean(0)),
        )  # fmt: skip
        self.canonical.fit_bounds(means, cfg.init.margin)
        self.gaussians = GaussianParams({"means": means, **self.canonical.extra_tensors(means, rgb.float(), log_scales.float())})
        self.sh_degree = int(c.sh_degree)
        deformer_cls = get("deformer", cfg.deformer.name)
        self.is_static = bool(getattr(deformer_cls, "is_identity", False))
        self.uses_tokens = not self.is_static and len(cfg.conditions.tokens) > 0
        dim = cfg.conditions.dim
        self.tokens = nn.ModuleDict()
        if self.uses_tokens:
            for t in cfg.conditions.tokens:
                self.tokens[t.name] = build("condition", t, dim=dim, ctx=ctx)
        self.deformer = build(
            "deformer", cfg.deformer, feature_dim=self.canonical.feature_dim, token_dim=dim,
            sh_bases=(self.sh_degree + 1) ** 2, extent=max(self.scene_extent, 1e-6),
        )  # fmt: skip
        if ctx.stats is not None:
            self.fit_conditions(ctx.stats[0])

    # ------------------------------------------------------------------------------------------
    def fit_conditions(self, stats: Any) -> None:
        """The condition tokens' input statistics from the training frames (``IdentityStats``)."""
        for m in self.tokens.values():
            if hasattr(m, "fit"):
                m.fit(stats)

    def gaussian_sets(self) -> dict[str, GaussianSet]:
        return {"head": GaussianSet(self.gaussians, self.config.init.max_gaussians, self.scene_extent)}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
        for g, keys in self.canonical.per_gaussian_groups().items():
            groups[g] += [self.gaussians[k] for k in keys]
        for g, ps in self.canonical.param_groups().items():
            groups[g] += ps
        for m in self.tokens.values():
            groups[getattr(m, "group", "conditions")] += list(m.parameters())
        groups["deformer"] += list(self.deformer.parameters())
        return groups

    @property
    def deforms(self) -> bool:
        """Whether this head has a non-identity deformer."""
        return not self.is_static

    def canonical_attributes(self) -> tuple[Tensor | None, GaussianAttributes]:
        """Per-Gaussian features ``[N, F]`` (or None) and the canonical raw attributes."""
        return self.canonical(self.gaussians)

    def condition_tokens(self, cond: FrameCondition) -> Tensor:
        """The frame's tokens ``[T, D]`` (in config order)."""
        return torch.stack([m(cond) for m in self.tokens.values()])

    def attributes(self, cond: FrameCondition | None, *, deform: bool = True) -> GaussianAttributes:
        """Raw attributes of all Gaussians for one frame (canonical ones when ``deform`` is
        False or the deformer is the identity)."""
        feats, attrs = self._cache if self._cache is not None else self.canonical_attributes()
        if not deform or not self.deforms:
            return attrs
        if cond is None:
            raise ValueError("head 'deformable': a deforming forward needs the frame's conditions")
        tokens = self.condition_tokens(cond) if self.uses_tokens else None
        deltas = self.deformer(feats, tokens, attrs)
        return attrs.plus(deltas) if deltas else attrs

    def deform_offsets(self, cond: FrameCondition) -> dict[str, Tensor]:
        """The deformer's offsets for one frame (for tests and analysis)."""
        feats, attrs = self.canonical_attributes()
        tokens = self.condition_tokens(cond) if self.uses_tokens else None
        return self.deformer(feats, tokens, attrs)

    def prepare(self) -> None:
        """Inference: the canonical attributes do not change between frames; compute them once."""
        self._cache = self.canonical_attributes()

    def render(self, batch: Batch, options: DeformableOptions | None, settings: RenderSettings) -> Outputs:
        deform = True if options is None else options.deform
        rgbs, alphas, renders = [], [], []
        for view in batch.views:
            attrs = self.attributes(view.cond, deform=deform)
            out = rasterize(
                **attrs.activated(), camera=view.camera, background=view.background, sh_degree=self.sh_degree,
                backend=settings.backend, eps2d=settings.eps2d,  # type: ignore[arg-type]
            )  # fmt: skip
            rgbs.append(out.rgb)
            alphas.append(out.alpha)
            renders.append((out, attrs))
        return Outputs(images={"rgb": torch.stack(rgbs), "alpha": torch.stack(alphas)}, renders={"head": renders})

    def describe(self) -> dict[str, Any]:
        """Sizes for logs: Gaussians and parameters per group."""
        return {"gaussians": self.n, "parameters": {g: int(sum(p.numel() for p in ps)) for g, ps in self.param_groups().items() if ps}}

