"""Adaptive density control (clone / split / prune / opacity reset), backend independent.

The rules are gsplat 1.5.3's ``DefaultStrategy`` (the original 3DGS heuristics), re-implemented
on top of :class:`~talkgs.render.rasterize.RenderOutput` so that the same code runs with the
gsplat backend on CUDA and the numba backend on CPU (both fill ``RenderOutput.means2d.grad``):

- statistics: after each backward, for every Gaussian visible in a render, accumulate the norm
  of dL/d(means2d) scaled to NDC (``x * W/2 * n_cameras``, ``y * H/2 * n_cameras``) and a
  visibility count (and, if ``refine_scale2d_stop_iter > 0``, the max screen radius / max(W, H));
- every ``refine_every`` steps in ``(refine_start_iter, refine_stop_iter)``: Gaussians whose mean
  NDC gradient exceeds ``grow_grad2d`` are duplicated when small
  (``max(exp(scales)) <= grow_scale3d * scene_scale``) and split in two otherwise (new means
  sampled from the Gaussian, scales / 1.6); then Gaussians with ``sigmoid(opacity) < prune_opa``
  (and, after the first reset, too-large ones) are removed; statistics restart;
- every ``reset_every`` steps: opacities are clamped to ``2 * prune_opa``.

One deliberate difference: gsplat 1.5.3 writes the reset condition as
``step % self.reset_every == 0 & step > 0``, which Python parses as a chained comparison ending
in ``0 > 0``, so gsplat never resets opacities. Here the documented rule is implemented
(``step % reset_every == 0 and step > 0``); set ``reset_every`` past ``refine_stop_iter`` to
reproduce gsplat's effective behaviour.

Parameters follow gsplat's layout: one dict (``name -> nn.Parameter``) of per-Gaussian tensors
with first dimension ``N``; ``means [N, 3]``, ``scales [N, 3]`` (log), ``quats [N, 4]`` and
``opacities [N]`` (logit) are required, any other entries (colours, SH, features) are carried
along. Each trainable tensor has its own optimizer param-group holding only that tensor: either
one optimizer with one group per tensor, or a dict ``name -> optimizer`` (gsplat's style).
Every operation replaces the tensors in the dict *and* in the optimizer, carrying the optimizer
state (Adam moments) along row by row; new rows start with zero moments, like gsplat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from talkgs.render.rasterize import RenderOutput

__all__ = ["DensifyConfig", "DensifyStrategy", "duplicate", "split", "remove", "reset_opacity", "check_params"]

Params = MutableMapping[str, torch.nn.Parameter]
Optimizers = torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer]
REQUIRED = ("means", "scales", "quats", "opacities")


@dataclass(frozen=True)
class DensifyConfig:
    """gsplat ``DefaultStrategy`` knobs (same names and defaults)."""

    prune_opa: float = 0.005
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    grow_scale2d: float = 0.05
    prune_scale3d: float = 0.1
    prune_scale2d: float = 0.15
    refine_scale2d_stop_iter: int = 0
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    reset_every: int = 3000
    refine_every: int = 100
    pause_refine_after_reset: int = 0
    revised_opacity: bool = False


class DensifyStrategy:
    """Running statistics + the grow / prune / reset schedule.

    Usage (one or several renders per step)::

        out = rasterize(...)
        loss(out).backward()
        strategy.step_post_backward(params, optimizer, step, out)
        optimizer.step(); optimizer.zero_grad()

    Args:
        config: the thresholds and schedule.
        scene_scale: the 3D scale thresholds are multiplied by this (scene extent).
        generator: RNG for the split samples (``None``: torch's global RNG).
    """

    def __init__(self, config: DensifyConfig | None = None, scene_scale: float = 1.0, generator: torch.Generator | None = None):
        self.config = config or DensifyConfig()
        self.scene_scale = float(scene_scale)
        self.generator = generator
        self.grad2d: Tensor | None = None  # [N] sum of NDC gradient norms
        self.count: Tensor | None = None  # [N] number of renders in which the Gaussian was visible
        self.radii: Tensor | None = None  # [N] max normalised screen radius (only if scale2d rules are on)

    # -- state ---------------------------------------------------------------------------------
    def _stats(self) -> dict[str, Tensor]:
        out = {"grad2d": self.grad2d, "count": self.count, "radii": self.radii}
        return {k: v for k, v in out.items() if v is not None}

    def _set_stats(self, stats: Mapping[str, Tensor]) -> None:
        for k, v in stats.items():
            setattr(self, k, v)

    def reset_stats(self) -> None:
        """Forget the accumulated statistics (e.g. after resizing params by other means)."""
        self.grad2d = self.count = self.radii = None

    def state_dict(self) -> dict[str, object]:
        return {"config": asdict(self.config), "scene_scale": self.scene_scale, **self._stats()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.config = DensifyConfig(**state["config"])  # type: ignore[arg-type]
        self.scene_scale = float(state["scene_scale"])  # type: ignore[arg-type]
        for k in ("grad2d", "count", "radii"):
            setattr(self, k, state.get(k))

    # -- per step --------------------------------------------------------------------------------
    @torch.no_grad()
    def update_stats(self, render: RenderOutput, n: int, n_cameras: int = 1) -> None:
        """Accumulate one render's 2D-gradient statistics (call after ``backward``).

        ``n`` is the current number of Gaussians; ``n_cameras`` the number of renders whose
        losses were averaged in this step (gsplat multiplies the gradient by it).
        """
        grads = render.grad2d().clone()
        if grads.shape[0] != n:
            raise ValueError(f"DensifyStrategy: render has {grads.shape[0]} Gaussians but params have {n}")
        grads[:, 0] *= render.width / 2.0 * n_cameras
        grads[:, 1] *= render.height / 2.0 * n_cameras
        if self.grad2d is None:
            self.grad2d = torch.zeros(n, device=grads.device, dtype=torch.float32)
            self.count = torch.zeros(n, device=grads.device, dtype=torch.float32)
        elif self.grad2d.shape[0] != n:
            raise RuntimeError(
                f"DensifyStrategy: statistics cover {self.grad2d.shape[0]} Gaussians but params have {n}; "
                "resize params only through this module's operations (or call reset_stats())"
            )
        if self.config.refine_scale2d_stop_iter > 0 and self.radii is None:
            self.radii = torch.zeros(n, device=grads.device, dtype=torch.float32)
        sel = render.visible
        self.grad2d[sel] += grads[sel].norm(dim=-1).to(torch.float32)
        self.count[sel] += 1.0
        if self.radii is not None:
            r = render.radii[sel].max(dim=-1).values.to(torch.float32) / float(max(render.width, render.height))
            self.radii[sel] = torch.maximum(self.radii[sel], r)

    def step_post_backward(
        self, params: Params, optimizers: Optimizers, step: int, renders: RenderOutput | Sequence[RenderOutput]
    ) -> dict[str, int]:
        """Update statistics with this step's render(s), then grow / prune / reset on schedule.

        Returns counts ``{"duplicated", "split", "pruned", "reset"}`` for logging.
        """
        cfg = self.config
        info = {"duplicated": 0, "split": 0, "pruned": 0, "reset": 0}
        if step >= cfg.refine_stop_iter:
            return info
        renders = [renders] if isinstance(renders, RenderOutput) else list(renders)
        n = check_params(params, optimizers)
        for r in renders:
            self.update_stats(r, n, n_cameras=len(renders))
        refine = step > cfg.refine_start_iter and step % cfg.refine_every == 0
        if refine and step % cfg.reset_every >= cfg.pause_refine_after_reset:
            info["duplicated"], info["split"] = self._grow(params, optimizers, step)
            info["pruned"] = self._prune(params, optimizers, step)
            for v in self._stats().values():
                v.zero_()
        if step % cfg.reset_every == 0 and step > 0:
            reset_opacity(params, optimizers, value=cfg.prune_opa * 2.0)
            info["reset"] = 1
        return info

    @torch.no_grad()
    def _grow(self, params: Params, optimizers: Optimizers, step: int) -> tuple[int, int]:
        cfg = self.config
        assert self.grad2d is not None and self.count is not None
        grads = self.grad2d / self.count.clamp_min(1)
        is_grad_high = grads > cfg.grow_grad2d
        is_small = torch.exp(params["scales"]).max(dim=-1).values <= cfg.grow_scale3d * self.scene_scale
        is_dupli = is_grad_high & is_small
        is_split = is_grad_high & ~is_small
        if step < cfg.refine_scale2d_stop_iter:
            assert self.radii is not None
            is_split |= self.radii > cfg.grow_scale2d
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        if n_dupli > 0:
            self._set_stats(duplicate(params, optimizers, is_dupli, stats=self._stats()))
        # Gaussians added by duplication are not split
        is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=is_split.device)])
        if n_split > 0:
            self._set_stats(
                split(params, optimizers, is_split, stats=self._stats(), revised_opacity=cfg.revised_opacity,
                      generator=self.generator)  # fmt: skip
            )
        return n_dupli, n_split

    @torch.no_grad()
    def _prune(self, params: Params, optimizers: Optimizers, step: int) -> int:
        cfg = self.config
        is_prune = torch.sigmoid(params["opacities"].flatten()) < cfg.prune_opa
        if step > cfg.reset_every:
            is_too_big = torch.exp(params["scales"]).max(dim=-1).values > cfg.prune_scale3d * self.scene_scale
            if step < cfg.refine_scale2d_stop_iter:
                assert self.radii is not None
                is_too_big |= self.radii > cfg.prune_scale2d
            is_prune |= is_too_big
        n_prune = int(is_prune.sum())
        if n_prune > 0:
            self._set_stats(remove(params, optimizers, is_prune, stats=self._stats()))
        return n_prune


# ----------------------------------------------------------------------------------------------
# operations on (params, optimizer state) that keep every per-Gaussian tensor aligned
# ----------------------------------------------------------------------------------------------


def check_params(params: Mapping[str, Tensor], optimizers: Optimizers) -> int:
    """Validate the layout; return ``N``.

    Raises:
        ValueError: a required tensor is missing, first dimensions differ, or a trainable
            tensor is not alone in exactly one optimizer param-group.
    """
    missing = [k for k in REQUIRED if k not in params]
    if missing:
        raise ValueError(f"densify: params lack {missing}; expected at least {list(REQUIRED)} (log scales, logit opacities)")
    n = params["means"].shape[0]
    bad = {k: list(p.shape) for k, p in params.items() if p.ndim == 0 or p.shape[0] != n}
    if bad:
        raise ValueError(f"densify: every per-Gaussian tensor needs first dimension N={n}; found {bad}")
    for name, p in params.items():
        if p.requires_grad:
            _find_group(optimizers, name, p)
    return n


def _find_group(optimizers: Optimizers, name: str, p: Tensor) -> tuple[torch.optim.Optimizer, dict] | None:
    """The optimizer and param-group holding ``p`` (alone), or None for a frozen tensor."""
    if isinstance(optimizers, Mapping):
        candidates = [optimizers[name]] if name in optimizers else []
    else:
        candidates = [optimizers]
    for opt in candidates:
        for group in opt.param_groups:
            if any(q is p for q in group["params"]):
                if len(group["params"]) != 1:
                    raise ValueError(
                        f"densify: params[{name!r}] shares an optimizer param-group with {len(group['params']) - 1} "
                        "other tensors; give every per-Gaussian tensor its own group"
                    )
                return opt, group
    if p.requires_grad:
        raise ValueError(
            f"densify: trainable params[{name!r}] is in no optimizer param-group; add it (its own group) "
            "or set requires_grad=False"
        )
    return None


@torch.no_grad()
def _update(
    params: Params,
    optimizers: Optimizers,
    param_fn: Callable[[str, Tensor], Tensor],
    state_fn: Callable[[str, Tensor], Tensor],
    names: Sequence[str] | None = None,
) -> None:
    """Replace ``params[name]`` by ``param_fn(name, p)`` and each per-row optimizer state tensor
    ``v`` by ``state_fn(key, v)``; scalar state (Adam's ``step``) is kept."""
    for name in list(params.keys()) if names is None else names:
        old = params[name]
        found = _find_group(optimizers, name, old)
        new = torch.nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        params[name] = new
        if found is None:
            continue
        opt, group = found
        group["params"] = [new]
        state = opt.state.pop(old, None)
        if state is not None:
            opt.state[new] = {
                k: (state_fn(k, v) if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == old.shape[0] else v)
                for k, v in state.items()
            }


def _zeros_rows(v: Tensor, n: int) -> Tensor:
    return torch.zeros((n, *v.shape[1:]), dtype=v.dtype, device=v.device)


@torch.no_grad()
def duplicate(
    params: Params, optimizers: Optimizers, mask: Tensor, stats: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Append a copy of every Gaussian in ``mask [N]``; returns the statistics resized likewise."""
    sel = torch.where(mask)[0]
    _update(params, optimizers, lambda _, p: torch.cat([p, p[sel]]), lambda _, v: torch.cat([v, _zeros_rows(v, len(sel))]))
    return {k: torch.cat([v, v[sel]]) for k, v in (stats or {}).items()}


@torch.no_grad()
def split(
    params: Params,
    optimizers: Optimizers,
    mask: Tensor,
    stats: Mapping[str, Tensor] | None = None,
    revised_opacity: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Replace every Gaussian in ``mask [N]`` by two, sampled from it, scales divided by 1.6.

    The kept Gaussians come first, then the ``2 * mask.sum()`` new ones (gsplat's order).
    ``revised_opacity``: new opacity ``1 - sqrt(1 - o)`` (arXiv:2404.06109).
    """
    sel = torch.where(mask)[0]
    rest = torch.where(~mask)[0]
    scales = torch.exp(params["scales"][sel])
    quats = F.normalize(params["quats"][sel], dim=-1)
    w, x, y, z = quats.unbind(-1)
    R = torch.stack(
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
         2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
         2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1
    ).reshape(-1, 3, 3)  # fmt: skip
    noise = torch.randn((2, len(sel), 3), generator=generator, dtype=scales.dtype, device=scales.device)
    samples = torch.einsum("nij,nj,bnj->bni", R, scales, noise)  # [2, S, 3]

    def param_fn(name: str, p: Tensor) -> Tensor:
        repeats = [2] + [1] * (p.dim() - 1)
        if name == "means":
            p_split = (p[sel] + samples).reshape(-1, 3)
        elif name == "scales":
            p_split = torch.log(scales / 1.6).repeat(2, 1)
        elif name == "opacities" and revised_opacity:
            p_split = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(p[sel]))).repeat(repeats)
        else:
            p_split = p[sel].repeat(repeats)
        return torch.cat([p[rest], p_split])

    _update(params, optimizers, param_fn, lambda _, v: torch.cat([v[rest], _zeros_rows(v, 2 * len(sel))]))
    return {k: torch.cat([v[rest], v[sel].repeat([2] + [1] * (v.dim() - 1))]) for k, v in (stats or {}).items()}


@torch.no_grad()
def remove(
    params: Params, optimizers: Optimizers, mask: Tensor, stats: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Delete every Gaussian in ``mask [N]``."""
    keep = torch.where(~mask)[0]
    _update(params, optimizers, lambda _, p: p[keep], lambda _, v: v[keep])
    return {k: v[keep] for k, v in (stats or {}).items()}


@torch.no_grad()
def reset_opacity(params: Params, optimizers: Optimizers, value: float) -> None:
    """Clamp opacities to at most ``value`` (post-sigmoid) and zero their optimizer moments."""
    max_logit = math.log(value / (1.0 - value))
    _update(
        params, optimizers, lambda _, p: torch.clamp(p, max=max_logit), lambda _, v: torch.zeros_like(v), names=["opacities"]
    )
