"""Densification as a training callback, for every head and every Gaussian set.

:mod:`talkgs.render.densify` works on gsplat's parameter layout (``means, scales, quats,
opacities`` in one dict). Explicit canonical models store exactly that; triplane models store
only ``means`` and *predict* the rest. :class:`SetDensifier` builds the dict the strategy sees:
the set's per-Gaussian parameters plus, for predicted attributes, the current predictions
(detached, not trainable, so they are resized along and then dropped), runs the strategy, and
writes the resized parameters back into the set. Growth is capped at the set's
``max_gaussians`` (GaussianTalker: 50,000): when more Gaussians qualify than the cap allows,
only those with the largest gradients grow.

:class:`Densify` is the callback a phase's ``densify`` section configures: one
:class:`SetDensifier` per Gaussian set the head renders (``Outputs.renders``), or per set named
in ``densify.sets``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from talkgs.models.contract import Callback, GaussianSet, Outputs
from talkgs.models.gaussians import GaussianAttributes
from talkgs.render.densify import DensifyConfig, DensifyStrategy, duplicate, split
from talkgs.render.rasterize import RenderOutput
from talkgs.train.params import DensifyParams

__all__ = ["Densify", "SetDensifier", "CappedStrategy", "densify_config"]


class CappedStrategy(DensifyStrategy):
    """gsplat's default strategy with a cap on the number of Gaussians."""

    def __init__(self, config: DensifyConfig, scene_scale: float, generator: torch.Generator, max_gaussians: int) -> None:
        super().__init__(config, scene_scale=scene_scale, generator=generator)
        self.max_gaussians = int(max_gaussians)

    @torch.no_grad()
    def _grow(self, params, optimizers, step):  # type: ignore[no-untyped-def,override]
        cfg = self.config
        assert self.grad2d is not None and self.count is not None
        n = params["means"].shape[0]
        grads = self.grad2d / self.count.clamp_min(1)
        is_grad_high = grads > cfg.grow_grad2d
        is_small = torch.exp(params["scales"]).max(dim=-1).values <= cfg.grow_scale3d * self.scene_scale
        # budget: a duplicate adds 1, a split adds 1 (two replace one)
        budget = max(0, self.max_gaussians - n)
        if int(is_grad_high.sum()) > budget:
            keep = torch.zeros_like(is_grad_high)
            if budget > 0:
                cand = torch.where(is_grad_high)[0]
                top = cand[torch.argsort(grads[cand], descending=True, stable=True)[:budget]]
                keep[top] = True
            is_grad_high = keep
        is_dupli = is_grad_high & is_small
        is_split = is_grad_high & ~is_small
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        if n_dupli > 0:
            self._set_stats(duplicate(params, optimizers, is_dupli, stats=self._stats()))
        is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=is_split.device)])
        if n_split > 0:
            self._set_stats(split(params, optimizers, is_split, stats=self._stats(), revised_opacity=cfg.revised_opacity, generator=self.generator))
        return n_dupli, n_split


def densify_config(p: DensifyParams) -> DensifyConfig:
    return DensifyConfig(
        prune_opa=p.prune_opa,
        grow_grad2d=p.grow_grad2d,
        grow_scale3d=p.grow_scale3d,
        prune_scale3d=p.prune_scale3d,
        refine_start_iter=p.refine_start,
        refine_stop_iter=p.refine_stop,
        refine_every=p.refine_every,
        reset_every=p.reset_every,
    )


class SetDensifier:
    """Runs :class:`CappedStrategy` on one Gaussian set of a head."""

    LAYOUT = {"scales": "log_scales", "quats": "quats", "opacities": "opacity_logits"}

    def __init__(self, params: DensifyParams, gset: GaussianSet, generator: torch.Generator, scene_scale: float | None = None) -> None:
        self.params = params
        self.strategy = CappedStrategy(densify_config(params), gset.extent if scene_scale is None else scene_scale, generator, gset.max_gaussians)

    def step(self, gset: GaussianSet, optimizer: torch.optim.Optimizer, local_step: int, renders: list[tuple[RenderOutput, GaussianAttributes]]) -> dict[str, int]:
        """Call after ``backward`` and before ``optimizer.step()``."""
        p = self.params
        if p.prune_opa_final is not None:  # linearly rising opacity threshold (TalkingGaussian)
            t = min(max(local_step / max(p.refine_stop, 1), 0.0), 1.0)
            self.strategy.config = dataclasses.replace(self.strategy.config, prune_opa=p.prune_opa + t * (p.prune_opa_final - p.prune_opa))
        stored = dict(gset.params.params.items())
        view: dict[str, Tensor] = dict(stored)
        attrs = renders[0][1]
        for key, attr in self.LAYOUT.items():
            if key not in view:
                view[key] = getattr(attrs, attr).detach()
        outs = [r for r, _ in renders]
        info = self.strategy.step_post_backward(view, optimizer, local_step, outs[0] if len(outs) == 1 else outs)  # type: ignore[arg-type]
        if any(view[k] is not stored[k] for k in stored):
            gset.params.replace({k: view[k] for k in stored})
        return info

    def state_dict(self) -> dict[str, object]:
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.strategy.load_state_dict(state)


class Densify(Callback):
    """The densification callback of a phase (its ``densify`` section).

    Args:
        params: the phase's densification settings.
        generator: RNG of the split samples (saved with the run).
        scene_scale: the 3D thresholds' scale (the head's scene extent; None: each set's extent).
    """

    def __init__(self, params: DensifyParams, generator: torch.Generator, scene_scale: float | None = None) -> None:
        self.params = params
        self.generator = generator
        self.scene_scale = scene_scale
        self.sets: dict[str, SetDensifier] = {}
        self._pending: dict[str, Any] = {}

    def post_backward(self, model: Any, optimizer: torch.optim.Optimizer, local_step: int, outputs: Outputs) -> dict[str, int]:
        head = model.head
        gsets = head.gaussian_sets()
        info: dict[str, int] = {}
        for name, renders in outputs.renders.items():
            if self.params.sets is not None and name not in self.params.sets:
                continue
            if name not in gsets:
                raise ValueError(f"densify: the head rendered Gaussian set {name!r} but declares only {sorted(gsets)}")
            d = self.sets.get(name)
            if d is None:
                d = self.sets[name] = SetDensifier(self.params, gsets[name], self.generator, self.scene_scale)
                if name in self._pending:
                    d.load_state_dict(self._pending.pop(name))
            for k, v in d.step(gsets[name], optimizer, local_step, renders).items():
                info[k] = info.get(k, 0) + int(v)
        return info

    def state_dict(self) -> dict[str, Any]:
        return {"sets": {k: d.state_dict() for k, d in self.sets.items()}, "pending": dict(self._pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sets = {}
        self._pending = {**state.get("pending", {}), **state["sets"]}
