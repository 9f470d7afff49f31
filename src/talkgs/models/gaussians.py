"""Per-Gaussian parameters and their activations.

Two representations:

- :class:`GaussianParams`: the ONE parameter dict of per-Gaussian tensors (``nn.ParameterDict``,
  first dimension ``N``), the only tensors densification resizes (with their optimizer state).
  It always holds ``means [N, 3]``; explicit canonical models also hold the raw attributes below.
  Networks and feature planes live outside it, with their own parameter groups.
- :class:`GaussianAttributes`: the raw (pre-activation) attributes of one frame's Gaussians,
  to which deformers add offsets (as GaussianTalker, eq. 9: ``r_c + Δr``, ``s_c + Δs``, ...):

  ========================  ===========  =====================================
  name                      shape        activation for the rasterizer
  ========================  ===========  =====================================
  ``means``                 ``[N, 3]``   none (world/canonical positions)
  ``quats``                 ``[N, 4]``   normalised (wxyz; normalised inside rasterize)
  ``log_scales``            ``[N, 3]``   ``exp``
  ``opacity_logits``        ``[N]``      ``sigmoid``
  ``sh``                    ``[N, K, 3]`` none (``K = (sh_degree + 1)^2`` SH coefficients)
  ========================  ===========  =====================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

__all__ = [
    "ATTRIBUTES",
    "SH_C0",
    "GaussianAttributes",
    "GaussianParams",
    "num_sh_bases",
    "rgb_to_sh",
    "sh_to_rgb",
    "inverse_sigmoid",
]

SH_C0 = 0.28209479177387814
"""Degree-0 SH basis constant: colour = ``SH_C0 * sh_dc + 0.5`` (gsplat / 3DGS convention)."""

ATTRIBUTES: tuple[str, ...] = ("means", "quats", "log_scales", "opacity_logits", "sh")
"""Raw attribute names, in the order deformers and configs use."""


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree`` (0..4)."""
    if not 0 <= degree <= 4:
        raise ValueError(f"sh_degree must be in 0..4, found {degree}")
    return (degree + 1) ** 2


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC SH coefficient giving colour ``rgb`` (in [0, 1])."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: Tensor) -> Tensor:
    return sh_dc * SH_C0 + 0.5


def inverse_sigmoid(x: float | Tensor) -> float | Tensor:
    if isinstance(x, Tensor):
        return torch.log(x / (1 - x))
    return math.log(x / (1 - x))


@dataclass
class GaussianAttributes:
    """Raw attributes of ``N`` Gaussians for one frame (see module doc for shapes)."""

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expect = {
            "means": (n, 3),
            "quats": (n, 4),
            "log_scales": (n, 3),
            "opacity_logits": (n,),
        }
        for name, shape in expect.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"GaussianAttributes.{name}: expected shape {list(shape)}, found {list(getattr(self, name).shape)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"GaussianAttributes.sh: expected [N={n}, K, 3], found {list(self.sh.shape)}")

    @property
    def n(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh.shape[1]))) - 1

    def plus(self, deltas: dict[str, Tensor]) -> GaussianAttributes:
        """These attributes with ``deltas`` (a subset of :data:`ATTRIBUTES`) added."""
        unknown = set(deltas) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"unknown attribute offsets {sorted(unknown)}; valid: {ATTRIBUTES}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, d in deltas.items():
            values[k] = values[k] + d
        return GaussianAttributes(**values)

    def activated(self) -> dict[str, Tensor]:
        """Render-ready tensors: ``means, quats, scales, opacities, colors`` (keyword names of
        :func:`talkgs.render.rasterize`; ``colors`` are SH coefficients ``[N, K, 3]``)."""
        return {
            "means": self.means,
            "quats": self.quats,
            "scales": torch.exp(self.log_scales),
            "opacities": torch.sigmoid(self.opacity_logits),
            "colors": self.sh,
        }

    def detach(self) -> GaussianAttributes:
        return GaussianAttributes(**{f.name: getattr(self, f.name).detach() for f in fields(self)})


class GaussianParams(nn.Module):
    """The per-Gaussian parameter dict (``self.params``), resized by densification.

    Every tensor in it has first dimension ``N``. ``means`` is always present.
    """

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        super().__init__()
        if "means" not in tensors:
            raise ValueError("GaussianParams needs a 'means' [N, 3] tensor")
        n = tensors["means"].shape[0]
        for k, v in tensors.items():
            if v.shape[0] != n:
                raise ValueError(f"GaussianParams[{k!r}]: expected first dimension N={n}, found {list(v.shape)}")
        self.params = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in tensors.items()})

    @property
    def n(self) -> int:
        return int(self.params["means"].shape[0])

    def __getitem__(self, key: str) -> nn.Parameter:
        return self.params[key]

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def keys(self) -> list[str]:
        return list(self.params.keys())

    def replace(self, tensors: dict[str, Tensor]) -> None:
        """Swap in new tensors (same keys, any common ``N``), e.g. after densification or when
        loading a checkpoint whose ``N`` differs from the freshly initialised model."""
        if set(tensors) != set(self.params.keys()):
            raise ValueError(f"GaussianParams.replace: keys {sorted(tensors)} != {sorted(self.params.keys())}")
        for k, v in tensors.items():
            self.params[k] = v if isinstance(v, nn.Parameter) else nn.Parameter(v.detach().clone())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        # runs before the child ParameterDict loads: resize to the checkpoint's N first
        # (densification changes it), so loading a densified checkpoint into a fresh model works
        sub = prefix + "params."
        tensors = {k[len(sub):]: v for k, v in state_dict.items() if k.startswith(sub)}
        if set(tensors) == set(self.params.keys()):
            self.replace({k: v.to(self.params[k].device, self.params[k].dtype) for k, v in tensors.items()})
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
