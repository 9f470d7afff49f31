"""Canonical Gaussians: the head's mean shape and appearance, before any per-frame deformation.

A canonical component turns the per-Gaussian parameter dict (:class:`GaussianParams`) into the
raw attributes of every Gaussian (:class:`GaussianAttributes`) plus a per-Gaussian feature that
deformers consume. Interface (duck-typed; see :class:`TriplaneCanonical`):

- ``extra_tensors(means, rgb, log_scales) -> dict``: per-Gaussian tensors it needs in the
  parameter dict besides ``means`` (initialised from the point cloud), e.g. explicit colours.
- ``forward(gaussians) -> (features [N, F] | None, GaussianAttributes)``.
- ``feature_dim``: ``F`` (0 when it has no features).
- ``param_groups() -> dict[str, list[Parameter]]``: its non-per-Gaussian parameters by group
  name (the training phases give each group a learning rate).
- ``per_gaussian_groups() -> dict[str, list[str]]``: which parameter-dict keys form which group.

Registered: ``triplane_mlp`` (GaussianTalker: triplane features → shared MLP trunk → heads for
rotation, scale, SH, opacity) and ``explicit`` (vanilla 3DGS: every attribute stored per Gaussian).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from torch import Tensor, nn

from talkgs.configlib import NON_NEGATIVE, SH_DEGREE, WIDTH, Range
from talkgs.models.gaussians import GaussianAttributes, GaussianParams, inverse_sigmoid, num_sh_bases, rgb_to_sh
from talkgs.models.registry import ComponentConfig, build, register

__all__ = ["TriplaneCanonical", "ExplicitCanonical", "CanonicalConfig", "TriplaneMLPConfig", "ExplicitConfig", "mlp", "run_heads"]


@dataclass(frozen=True)
class CanonicalConfig(ComponentConfig):
    """Canonical Gaussians (registry kind ``canonical``; ``name`` picks the model, default
    ``triplane_mlp``)."""

    kind: ClassVar[str] = "canonical"
    default: ClassVar[str] = "triplane_mlp"
    sh_degree: Annotated[int, SH_DEGREE] = 3
    """Spherical-harmonics degree of the colours (3DGS: 3)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        num_sh_bases(self.sh_degree)  # validates 0..4


@dataclass(frozen=True)
class TriplaneMLPConfig(CanonicalConfig):
    """``canonical/triplane_mlp``: GaussianTalker's attributes from triplane features through MLPs."""

    name: str = "triplane_mlp"
    hidden: Annotated[int, WIDTH] = 64
    """Width of the shared trunk and the attribute heads."""
    trunk_layers: Annotated[int, Range(0, 16)] = 1
    """Hidden layers of the shared trunk phi_shared."""
    head_layers: Annotated[int, Range(0, 16)] = 1
    """Hidden layers of each attribute head (0 = linear)."""
    head_init_scale: Annotated[float, NON_NEGATIVE] = 0.1
    """The heads' last-layer weights are scaled by this at init (outputs start near the initial values)."""


@dataclass(frozen=True)
class ExplicitConfig(CanonicalConfig):
    """``canonical/explicit``: vanilla 3DGS attributes stored per Gaussian."""

    name: str = "explicit"


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int, *, final_act: bool = False) -> nn.Sequential:
    """``layers`` hidden Linear+ReLU blocks of width ``hidden`` then a Linear to ``out_dim``
    (``layers = 0``: one Linear)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    if final_act:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


def run_heads(x: Tensor, heads: list[nn.Sequential]) -> list[Tensor]:
    """``[head(x) for head in heads]``, as two matrix products when every head is
    ``Linear → ReLU → Linear`` (one hidden layer; the hidden layers concatenated, the output
    layers block-diagonal): the same sums, 2 products instead of 2 per head, which on CPU is
    most of the cost of many small heads over thousands of Gaussians."""
    def simple(h: nn.Module) -> bool:
        return isinstance(h, nn.Sequential) and len(h) == 3 and isinstance(h[0], nn.Linear) and isinstance(h[1], nn.ReLU) and isinstance(h[2], nn.Linear)

    if len(heads) < 2 or not all(simple(h) for h in heads):
        return [h(x) for h in heads]
    w1 = torch.cat([h[0].weight for h in heads])
    b1 = torch.cat([h[0].bias for h in heads])
    w2 = torch.block_diag(*[h[2].weight for h in heads])
    b2 = torch.cat([h[2].bias for h in heads])
    hidden = torch.relu(torch.addmm(b1, x, w1.t()))
    out = torch.addmm(b2, hidden, w2.t())
    return [o.contiguous() for o in out.split([h[2].out_features for h in heads], dim=-1)]


def _init_head(head: nn.Sequential, bias: Tensor, weight_scale: float) -> None:
    last = head[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        last.weight.mul_(weight_scale)
        last.bias.copy_(bias)


@register("canonical", "triplane_mlp", TriplaneMLPConfig)
class TriplaneCanonical(nn.Module):
    """GaussianTalker's canonical model: ``kappa = phi_shared(f(mu))``, ``r, s, SH, alpha = phi_*(kappa)``.

    Only ``means`` is stored per Gaussian; the other attributes are predicted from the spatial
    encoder's features. Heads start at the initial values (``init_*``: the bias of the last
    layer, with its weights scaled by ``head_init_scale``) so training starts from a sensible
    point cloud.

    Args:
        cfg: sizes (:class:`TriplaneMLPConfig`).
        encoder: the spatial encoder's config (registry kind ``spatial_encoder``).
        init_opacity: opacity every Gaussian starts with.
        init_log_scale: log scale every Gaussian starts with (set from the point spacing).
        init_rgb: colour every Gaussian starts with (the mean head colour).
    """

    def __init__(
        self,
        cfg: TriplaneMLPConfig,
        *,
        encoder: ComponentConfig,
        init_opacity: float = 0.1,
        init_log_scale: float = -4.0,
        init_rgb: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__()
        hidden, trunk_layers, head_layers, sh_degree, head_init_scale = cfg.hidden, cfg.trunk_layers, cfg.head_layers, cfg.sh_degree, cfg.head_init_scale
        self.encoder = build("spatial_encoder", encoder)
        f = self.encoder.out_dim
        self.sh_degree = sh_degree
        self.k = num_sh_bases(sh_degree)
        self.trunk = mlp(f, hidden, hidden, trunk_layers, final_act=True)
        self.rotation = mlp(hidden, hidden, 4, head_layers)
        self.scale = mlp(hidden, hidden, 3, head_layers)
        self.color = mlp(hidden, hidden, self.k * 3, head_layers)
        self.opacity = mlp(hidden, hidden, 1, head_layers)
        sh_bias = torch.zeros(self.k, 3)
        sh_bias[0] = rgb_to_sh(torch.tensor(init_rgb, dtype=torch.float32))
        _init_head(self.rotation, torch.tensor([1.0, 0.0, 0.0, 0.0]), head_init_scale)
        _init_head(self.scale, torch.full((3,), float(init_log_scale)), head_init_scale)
        _init_head(self.color, sh_bias.reshape(-1), head_init_scale)
        _init_head(self.opacity, torch.tensor([float(inverse_sigmoid(init_opacity))]), head_init_scale)

    @property
    def feature_dim(self) -> int:
        return self.encoder.out_dim

    def extra_tensors(self, means: Tensor, rgb: Tensor, log_scales: Tensor) -> dict[str, Tensor]:
        return {}

    def fit_bounds(self, means: Tensor, margin: float) -> None:
        lo, hi = means.min(0).values, means.max(0).values
        pad = (hi - lo) * margin
        self.encoder.set_bounds(lo - pad, hi + pad)

    def forward(self, gaussians: GaussianParams) -> tuple[Tensor, GaussianAttributes]:
        means = gaussians["means"]
        f = self.encoder(means)
        kappa = self.trunk(f)
        n = means.shape[0]
        quats, log_scales, opacity, color = run_heads(kappa, [self.rotation, self.scale, self.opacity, self.color])
        attrs = GaussianAttributes(
            means=means,
            quats=quats,
            log_scales=log_scales,
            opacity_logits=opacity[:, 0],
            sh=color.reshape(n, self.k, 3),
        )
        return f, attrs

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        net = [p for name, p in self.named_parameters() if not name.startswith("encoder.")]
        return {"spatial": list(self.encoder.parameters()), "canonical": net}

    def per_gaussian_groups(self) -> dict[str, list[str]]:
        return {"means": ["means"]}


@register("canonical", "explicit", ExplicitConfig)
class ExplicitCanonical(nn.Module):
    """Vanilla 3DGS: quats, log-scales, opacity logits and SH stored per Gaussian (parameter-dict
    keys ``quats, scales, opacities, sh`` in gsplat's raw layout: log scales, opacity logits).

    With ``encoder`` (a spatial encoder config) it also provides features of the canonical
    positions for deformers (TalkingGaussian-style hash grid / triplane deformation fields).
    """

    def __init__(
        self,
        cfg: ExplicitConfig,
        *,
        encoder: ComponentConfig | None = None,
        init_opacity: float = 0.1,
        init_log_scale: float = -4.0,
        init_rgb: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        # init_log_scale / init_rgb: the per-Gaussian values come from extra_tensors instead
        super().__init__()
        self.sh_degree = cfg.sh_degree
        self.k = num_sh_bases(cfg.sh_degree)
        self.init_opacity = init_opacity
        self.encoder = None if encoder is None else build("spatial_encoder", encoder)

    @property
    def feature_dim(self) -> int:
        return 0 if self.encoder is None else self.encoder.out_dim

    def extra_tensors(self, means: Tensor, rgb: Tensor, log_scales: Tensor) -> dict[str, Tensor]:
        n = means.shape[0]
        sh = torch.zeros(n, self.k, 3, dtype=means.dtype, device=means.device)
        sh[:, 0] = rgb_to_sh(rgb)
        quats = torch.zeros(n, 4, dtype=means.dtype, device=means.device)
        quats[:, 0] = 1.0
        # gsplat / talkgs.render.densify layout: "scales" are log scales, "opacities" logits
        return {
            "quats": quats,
            "scales": log_scales,
            "opacities": torch.full((n,), float(inverse_sigmoid(self.init_opacity)), dtype=means.dtype, device=means.device),
            "sh": sh,
        }

    def fit_bounds(self, means: Tensor, margin: float) -> None:
        if self.encoder is not None:
            lo, hi = means.min(0).values, means.max(0).values
            pad = (hi - lo) * margin
            self.encoder.set_bounds(lo - pad, hi + pad)

    def forward(self, gaussians: GaussianParams) -> tuple[Tensor | None, GaussianAttributes]:
        means = gaussians["means"]
        f = None if self.encoder is None else self.encoder(means)
        attrs = GaussianAttributes(
            means=means,
            quats=gaussians["quats"],
            log_scales=gaussians["scales"],
            opacity_logits=gaussians["opacities"],
            sh=gaussians["sh"],
        )
        return f, attrs

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"spatial": [] if self.encoder is None else list(self.encoder.parameters())}

    def per_gaussian_groups(self) -> dict[str, list[str]]:
        return {"means": ["means"], "gaussians": ["quats", "scales", "opacities", "sh"]}
