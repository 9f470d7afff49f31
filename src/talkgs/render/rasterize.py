"""The one render function of talkgs, and the one place gsplat is called.

:func:`rasterize` turns Gaussians + one :class:`~talkgs.render.camera.Camera` + a background
into RGB, alpha and expected depth. Backends:

- ``"gsplat"``: ``gsplat.rasterization`` (CUDA only; gsplat 1.5.3 has no CPU render path).
- ``"cpu"``: :mod:`talkgs.render.cpu`, numba kernels reproducing gsplat's image formation.
- ``"reference"``: :mod:`talkgs.render.reference`, dense pure PyTorch (tests, tiny scenes).
- ``"auto"`` (default): ``"gsplat"`` for CUDA tensors, ``"cpu"`` otherwise. The backend follows
  the device of the inputs; nothing is ever moved between devices here.

All backends share the conventions of gsplat's ``rasterization(..., render_mode="RGB+ED",
rasterize_mode="classic", packed=False)``; the background is composited here, identically
for every backend: ``rgb = color + (1 - alpha) * background``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from talkgs.render import cpu, reference
from talkgs.render.camera import Camera

__all__ = ["rasterize", "RenderOutput", "Backend", "BACKENDS"]

Backend = Literal["auto", "gsplat", "cpu", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "gsplat", "cpu", "reference")


@dataclass
class RenderOutput:
    """What :func:`rasterize` returns.

    Attributes:
        rgb: ``[H, W, 3]`` colour composited over the background.
        alpha: ``[H, W, 1]`` accumulated opacity ``1 - T_final``.
        depth: ``[H, W, 1]`` expected camera-space z (gsplat "ED"):
            ``sum_i w_i z_i / max(alpha, 1e-10)``; 0 where nothing was drawn.
        means2d: the backend's projected 2D means (pixels), the tensor the compositor
            consumed; ``[N, 2]`` for cpu/reference, ``[1, N, 2]`` for gsplat. It retains its
            gradient; use :meth:`grad2d` for a backend-independent ``[N, 2]`` view of it.
        radii: ``[N, 2]`` int32 screen-space half extents in pixels; 0 means the Gaussian was
            culled (behind the near plane, off-screen, opacity < 1/255, degenerate).
        width, height: image size.
        backend: the backend that actually rendered (``"gsplat"``, ``"cpu"``, ``"reference"``).
        extras: ``[H, W, E]`` the ``extras`` channels composited like colours (premultiplied,
            no background), or None when none were given.
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    means2d: Tensor
    radii: Tensor
    width: int
    height: int
    backend: str
    extras: Tensor | None = None

    @property
    def visible(self) -> Tensor:
        """``[N]`` bool: drawn in this image (both radii > 0)."""
        return (self.radii > 0).all(dim=-1)

    def grad2d(self) -> Tensor:
        """``[N, 2]`` dL/d(means2d) in pixels after ``backward()`` (the densification signal).

        Raises:
            RuntimeError: if no gradient reached the 2D means (no backward yet, or the render
                was done without grad).
        """
        if self.means2d.grad is None:
            raise RuntimeError(
                "RenderOutput.grad2d(): means2d has no gradient; call loss.backward() on a loss "
                "built from this render (rendered with grad enabled) first"
            )
        return self.means2d.grad.reshape(-1, 2)


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    camera: Camera,
    background: Tensor | None = None,
    *,
    sh_degree: int | None = None,
    backend: Backend = "auto",
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    extras: Tensor | None = None,
) -> RenderOutput:
    """Render ``N`` 3D Gaussians for one camera.

    Args:
        means: ``[N, 3]`` world positions.
        quats: ``[N, 4]`` rotations as wxyz quaternions (any norm; normalised inside).
        scales: ``[N, 3]`` standard deviations along the local axes (already activated, > 0).
        opacities: ``[N]`` opacities in [0, 1] (already activated).
        colors: ``[N, 3]`` RGB, or ``[N, K, 3]`` SH coefficients when ``sh_degree`` is given
            (``K >= (sh_degree + 1)^2``; evaluated as gsplat: direction from the camera centre,
            ``clamp_min(sh + 0.5, 0)``).
        camera: the :class:`Camera` (``viewmat`` may require grad).
        background: ``[3]`` colour, ``[H, W, 3]`` image, or ``None`` (black).
        sh_degree: SH degree to evaluate (0..4), or ``None`` for plain RGB colours.
        backend: ``"auto"``, ``"gsplat"``, ``"cpu"`` or ``"reference"`` (see module doc).
        eps2d: screen-space dilation added to the 2D covariance diagonal (pixels^2).
        near_plane, far_plane: Gaussians with camera z outside ``[near, far]`` are culled.
        extras: ``[N, E]`` more per-Gaussian channels to composite in the same pass (as gsplat's
            ``colors [..., N, D]``), e.g. a region label or attention weights; returned as
            ``RenderOutput.extras [H, W, E]`` (premultiplied, no background).

    Returns:
        :class:`RenderOutput` with ``rgb [H, W, 3]``, ``alpha [H, W, 1]``, ``depth [H, W, 1]``,
        2D means (for densification) and radii. Differentiable w.r.t. means, quats, scales,
        opacities, colors, background and ``camera.viewmat``.

    Raises:
        ValueError: on a wrong shape, dtype, device, or backend/device mismatch.
    """
    n = _check_inputs(means, quats, scales, opacities, colors, camera, background, sh_degree)
    name = _resolve_backend(backend, means.device)
    W, H = camera.width, camera.height
    n_extra = 0
    if extras is not None:
        if extras.ndim != 2 or extras.shape[0] != n:
            raise ValueError(f"rasterize: extras: expected [N={n}, E], found {list(extras.shape)}")
        if extras.device != means.device or extras.dtype != means.dtype:
            raise ValueError(f"rasterize: extras must be on {means.device} as {means.dtype}, found {extras.device} {extras.dtype}")
        n_extra = int(extras.shape[1])

    extra_out = None
    if name == "gsplat":
        if means.dtype != torch.float32:
            raise ValueError(f"rasterize: backend 'gsplat' renders float32 only, found {means.dtype}; use .float()")
        if extras is not None:  # colours evaluated here (gsplat's SH convention), extras as more channels
            rgb_in = colors if sh_degree is None else reference.sh_to_color(sh_degree, colors, means, camera.viewmat)
            color, alpha, depth, means2d, radii = _render_gsplat(
                means, quats, scales, opacities, torch.cat([rgb_in, extras], dim=-1), camera, None, eps2d, near_plane, far_plane
            )
            color, extra_out = color[..., :3], color[..., 3:]
        else:
            color, alpha, depth, means2d, radii = _render_gsplat(
                means, quats, scales, opacities, colors, camera, sh_degree, eps2d, near_plane, far_plane
            )
    else:
        if sh_degree is not None:
            rgb_in = reference.sh_to_color(sh_degree, colors, means, camera.viewmat)
        else:
            rgb_in = colors
        if name == "cpu":
            means2d, conics, depths, radii = cpu.project(
                means, quats, scales, opacities, camera.viewmat, camera.K, W, H, eps2d, near_plane, far_plane
            )
            feats = torch.cat([rgb_in, depths[:, None]] if extras is None else [rgb_in, extras, depths[:, None]], dim=-1)
            out, alpha = cpu.rasterize_pixels(means2d, conics, feats, opacities, depths, radii, W, H)
        else:
            means2d, conics, depths, radii = reference.project_reference(
                means, quats, scales, opacities, camera.viewmat, camera.K, W, H, eps2d, near_plane, far_plane
            )
            feats = torch.cat([rgb_in, depths[:, None]] if extras is None else [rgb_in, extras, depths[:, None]], dim=-1)
            out, alpha = reference.composite_reference(means2d, conics, feats, opacities, depths, radii, W, H)
        color = out[..., :3]
        if n_extra:
            extra_out = out[..., 3 : 3 + n_extra]
        depth = out[..., 3 + n_extra : 4 + n_extra] / alpha.clamp(min=1e-10)  # gsplat "ED" normalisation

    if means2d.requires_grad:
        means2d.retain_grad()
    if background is None:
        rgb = color
    else:
        rgb = color + (1.0 - alpha) * background
    assert rgb.shape == (H, W, 3) and alpha.shape == (H, W, 1) and depth.shape == (H, W, 1)
    assert radii.shape == (n, 2)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii, width=W, height=H, backend=name, extras=extra_out)


def _render_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    camera: Camera,
    sh_degree: int | None,
    eps2d: float,
    near_plane: float,
    far_plane: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The single call site of gsplat in talkgs (CUDA tensors only)."""
    import gsplat  # imported lazily: it is only usable (and only needed) with CUDA

    render, alpha, meta = gsplat.rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        camera.viewmat[None],
        camera.K[None],
        camera.width,
        camera.height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=False,
        tile_size=16,
        backgrounds=None,
        render_mode="RGB+ED",
        rasterize_mode="classic",
        camera_model="pinhole",
    )
    return render[0, ..., :3], alpha[0], render[0, ..., 3:4], meta["means2d"], meta["radii"][0]


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"rasterize: unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "cpu"
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError(
            f"rasterize: backend='gsplat' needs CUDA tensors but the Gaussians are on {device} "
            "(gsplat 1.5.3 cannot render on CPU); use backend='cpu' or 'auto', or move the tensors to CUDA"
        )
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(
            f"rasterize: backend='cpu' needs CPU tensors but the Gaussians are on {device}; "
            "use backend='auto' (gsplat on CUDA) or move the tensors to the CPU"
        )
    return backend


def _check_inputs(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    camera: Camera,
    background: Tensor | None,
    sh_degree: int | None,
) -> int:
    if not isinstance(camera, Camera):
        raise ValueError(f"rasterize: camera must be a talkgs.render.Camera, found {type(camera).__name__}")
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"rasterize: means: expected [N, 3], found {list(means.shape)}")
    n = means.shape[0]
    expected = {"quats": (quats, (n, 4)), "scales": (scales, (n, 3)), "opacities": (opacities, (n,))}
    if sh_degree is None:
        if tuple(colors.shape) != (n, 3):
            hint = " (SH coefficients need sh_degree=...)" if colors.ndim == 3 else ""
            raise ValueError(f"rasterize: colors: expected [N, 3] = {[n, 3]}, found {list(colors.shape)}{hint}")
    else:
        if not isinstance(sh_degree, int) or not 0 <= sh_degree <= 4:
            raise ValueError(f"rasterize: sh_degree must be an int in 0..4, found {sh_degree!r}")
        k = (sh_degree + 1) ** 2
        if colors.ndim != 3 or colors.shape[0] != n or colors.shape[1] < k or colors.shape[2] != 3:
            raise ValueError(
                f"rasterize: colors: expected SH coefficients [N, K, 3] with N={n}, K>={k} for "
                f"sh_degree={sh_degree}, found {list(colors.shape)}"
            )
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"rasterize: {name}: expected {list(shape)}, found {list(t.shape)}")
    H, W = camera.height, camera.width
    if background is not None and tuple(background.shape) not in ((3,), (H, W, 3)):
        raise ValueError(f"rasterize: background: expected [3] or [H, W, 3] = {[H, W, 3]}, found {list(background.shape)}")
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "camera.viewmat": camera.viewmat, "camera.K": camera.K}  # fmt: skip
    if background is not None:
        tensors["background"] = background
    for name, t in tensors.items():
        if t.device != means.device:
            raise ValueError(f"rasterize: {name} is on {t.device} but means are on {means.device}; pass all on one device")
        if t.dtype != means.dtype:
            raise ValueError(f"rasterize: {name} has dtype {t.dtype} but means have {means.dtype}; use one float dtype")
    if means.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"rasterize: expected float32 or float64 tensors, found {means.dtype}")
    return n
