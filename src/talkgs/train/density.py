"""Densification for every canonical model, on top of :mod:`talkgs.render.densify`.

:mod:`talkgs.render.densify` works on gsplat's parameter layout (``means, scales, quats,
opacities`` in one dict). Explicit models store exactly that; triplane models store only
``means`` and *predict* the rest. :class:`ModelDensifier` builds the dict the strategy sees:
the model's per-Gaussian parameters plus, for predicted attributes, the current predictions
(detached, not trainable, so they are resized along and then dropped), runs the strategy, and
writes the resized parameters back into the model. Growth is capped at ``max_gaussians``
(GaussianTalker: 50,000): when more Gaussians qualify than the cap allows, only those with the
largest gradients grow.
"""

from __future__ import annotations

import torch
from torch import Tensor

from talkgs.models.gaussians import GaussianAttributes
from talkgs.models.head import TalkingHead
from talkgs.render.densify import DensifyConfig, DensifyStrategy, duplicate, split
from talkgs.render.rasterize import RenderOutput
from talkgs.train.params import DensifyParams

__all__ = ["ModelDensifier", "CappedStrategy"]


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


class ModelDensifier:
    """Runs :class:`CappedStrategy` on a :class:`TalkingHead`'s per-Gaussian parameters."""

    LAYOUT = {"scales": "log_scales", "quats": "quats", "opacities": "opacity_logits"}

    def __init__(self, params: DensifyParams, scene_scale: float, generator: torch.Generator, max_gaussians: int) -> None:
        self.strategy = CappedStrategy(densify_config(params), scene_scale, generator, max_gaussians)

    def step(self, model: TalkingHead, optimizer: torch.optim.Optimizer, local_step: int, render: RenderOutput, attrs: GaussianAttributes) -> dict[str, int]:
        """Call after ``backward`` and before ``optimizer.step()``."""
        stored = dict(model.gaussians.params.items())
        view: dict[str, Tensor] = dict(stored)
        for key, attr in self.LAYOUT.items():
            if key not in view:
                view[key] = getattr(attrs, attr).detach()
        info = self.strategy.step_post_backward(view, optimizer, local_step, render)  # type: ignore[arg-type]
        if any(view[k] is not stored[k] for k in stored):
            model.gaussians.replace({k: view[k] for k in stored})
        return info

    def state_dict(self) -> dict[str, object]:
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.strategy.load_state_dict(state)
