"""Readable pure-PyTorch reference renderer (tests and debugging; slow, O(H W N) memory).

It spells out gsplat 1.5.3's image formation with plain tensor ops and autograd, sharing no
code with the numba backend, so the two can be checked against each other:

- :func:`project_reference`: world -> camera -> EWA 2D covariance (+ ``eps2d`` dilation),
  gsplat's FoV clamp in the Jacobian, culling and opacity-aware radii.
- :func:`composite_reference`: every Gaussian at every pixel centre ``(j + 0.5, i + 0.5)``,
  sorted by depth, ``alpha = min(0.999, o exp(-sigma))``, contributions under 1/255 dropped,
  a pixel stops before the Gaussian that would bring its transmittance to ``<= 1e-4``.
- :func:`sh_to_color`: real spherical harmonics up to degree 4 with gsplat's basis
  ordering and signs (``_eval_sh_bases_fast``, Sloan 2013), including gsplat's
  ``clamp_min(rgb + 0.5, 0)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["project_reference", "composite_reference", "sh_to_color", "sh_basis", "render_reference"]

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_EPS = 1e-4


def _quat_to_rotmat(quats: Tensor) -> Tensor:
    """``[N, 4]`` wxyz (any norm) -> ``[N, 3, 3]``."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )  # fmt: skip
    return R.reshape(quats.shape[:-1] + (3, 3))


def project_reference(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as :func:`talkgs.render.cpu.project`: ``means2d [N,2], conics [N,3],
    depths [N], radii [N,2]`` (culled entries zeroed)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    means_c = means @ R.T + t  # [N, 3]
    Rq = _quat_to_rotmat(quats)
    M = Rq * scales[:, None, :]  # R diag(s)
    cov = M @ M.transpose(-1, -2)
    cov_c = R @ cov @ R.T  # [N, 3, 3]

    x, y, z = means_c.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2], -1).reshape(-1, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2) + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)

    det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    conics = torch.stack([cov2d[:, 1, 1], -0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 0, 0]], -1)
    conics = conics / det.clamp_min(1e-30)[:, None]

    with torch.no_grad():
        o = opacities.detach().clamp_min(1e-30)
        extend = torch.sqrt(2.0 * torch.log(o / ALPHA_THRESHOLD).clamp_min(0.0)).clamp_max(3.33)
        radius = torch.ceil(extend[:, None] * torch.sqrt(torch.stack([cov2d[:, 0, 0], cov2d[:, 1, 1]], -1).clamp_min(0)))
        valid = (z >= near_plane) & (z <= far_plane) & (det > 0) & (opacities >= ALPHA_THRESHOLD)
        valid &= (radius > 0).any(-1)
        m = means2d.detach()
        valid &= (m[:, 0] + radius[:, 0] > 0) & (m[:, 0] - radius[:, 0] < width)
        valid &= (m[:, 1] + radius[:, 1] > 0) & (m[:, 1] - radius[:, 1] < height)
        radii = torch.where(valid[:, None], radius, torch.zeros_like(radius)).to(torch.int32)
    keep = valid[:, None].to(means.dtype)
    return means2d * keep, conics * keep, z * valid.to(means.dtype), radii


def composite_reference(
    means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, depths: Tensor, radii: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Dense front-to-back compositing: ``color [H, W, D]`` (premultiplied) and ``alpha [H, W, 1]``."""
    visible = torch.nonzero((radii > 0).all(-1)).squeeze(-1)
    order = visible[torch.argsort(depths.detach()[visible], stable=True)]
    mean, con, col, opa = means2d[order], conics[order], colors[order], opacities[order]
    dt, dev = means2d.dtype, means2d.device
    ii, jj = torch.meshgrid(torch.arange(height, dtype=dt, device=dev), torch.arange(width, dtype=dt, device=dev), indexing="ij")
    pix = torch.stack([jj + 0.5, ii + 0.5], -1).reshape(-1, 1, 2)  # [P, 1, 2] pixel centres
    d = mean[None] - pix  # [P, G, 2]
    a, b, c = con[:, 0], con[:, 1], con[:, 2]
    sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
    alpha = torch.clamp_max(opa * torch.exp(-sigma), MAX_ALPHA)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    # transmittance after each Gaussian, accumulated sequentially like the kernels
    T_after = torch.cumprod(1.0 - alpha, dim=1)
    # a pixel ends before the first Gaussian whose T_after <= 1e-4; T_after never increases,
    # so "included" is exactly T_after > 1e-4
    included = (T_after > TRANSMITTANCE_EPS).detach()
    alpha = alpha * included
    T_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), dim=1)
    weights = alpha * T_before  # [P, G]
    out = (weights @ col).reshape(height, width, -1)
    T_final = torch.prod(1.0 - alpha, dim=1)
    return out, (1.0 - T_final).reshape(height, width, 1)


_SH_C0 = 0.2820947917738781


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis ``[..., (degree + 1)^2]`` at unit ``dirs [..., 3]`` (gsplat's ordering)."""
    if not 0 <= degree <= 4:
        raise ValueError(f"sh_degree must be in 0..4 (as gsplat), found {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _SH_C0)]
    if degree >= 1:
        out += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    if degree >= 2:
        z2 = z * z
        fC1, fS1 = x * x - y * y, 2 * x * y
        out += [
            0.5462742152960395 * fS1,
            -1.092548430592079 * z * y,
            0.9461746957575601 * z2 - 0.3153915652525201,
            -1.092548430592079 * z * x,
            0.5462742152960395 * fC1,
        ]
    if degree >= 3:
        fC2, fS2 = x * fC1 - y * fS1, x * fS1 + y * fC1
        fTmpC = -2.285228997322329 * z2 + 0.4570457994644658
        out += [
            -0.5900435899266435 * fS2,
            1.445305721320277 * z * fS1,
            fTmpC * y,
            z * (1.865881662950577 * z2 - 1.119528997770346),
            fTmpC * x,
            1.445305721320277 * z * fC1,
            -0.5900435899266435 * fC2,
        ]
    if degree >= 4:
        fC3, fS3 = x * fC2 - y * fS2, x * fS2 + y * fC2
        fTmpD = z * (-4.683325804901025 * z2 + 2.007139630671868)
        fTmpC4 = 3.31161143515146 * z2 - 0.47308734787878
        out += [
            0.6258357354491763 * fS3,
            -1.770130769779931 * z * fS2,
            fTmpC4 * fS1,
            fTmpD * y,
            1.984313483298443 * z2 * (1.865881662950577 * z2 - 1.119528997770346)
            - 1.006230589874905 * (0.9461746957575601 * z2 - 0.3153915652525201),
            fTmpD * x,
            fTmpC4 * fC1,
            -1.770130769779931 * z * fC2,
            0.6258357354491763 * fC3,
        ]
    return torch.stack(out, -1)


def sh_to_color(sh_degree: int, coeffs: Tensor, means: Tensor, viewmat: Tensor) -> Tensor:
    """View-dependent RGB ``[N, 3]`` from SH ``coeffs [N, K, 3]`` as gsplat evaluates it.

    The direction is ``means - campos`` (normalised) with ``campos = inverse(viewmat)[:3, 3]``;
    only the first ``(sh_degree + 1)^2`` coefficients are used; the result is
    ``clamp_min(sum_k basis_k c_k + 0.5, 0)``.
    """
    campos = torch.linalg.inv(viewmat)[:3, 3]
    dirs = F.normalize(means - campos, dim=-1)
    n_basis = (sh_degree + 1) ** 2
    basis = sh_basis(sh_degree, dirs)  # [N, n_basis]
    rgb = (basis[..., None] * coeffs[:, :n_basis, :]).sum(dim=-2)
    return torch.clamp_min(rgb + 0.5, 0.0)


def render_reference(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Projection + compositing of RGB ``colors [N, 3]`` with a depth channel.

    Returns ``(color [H, W, 3] premultiplied, alpha [H, W, 1], depth_sum [H, W, 1]
    (alpha-weighted z, not normalised), means2d [N, 2], radii [N, 2])``.
    """
    means2d, conics, depths, radii = project_reference(
        means, quats, scales, opacities, viewmat, K, width, height, eps2d, near_plane, far_plane
    )
    feats = torch.cat([colors, depths[:, None]], dim=-1)
    out, alpha = composite_reference(means2d, conics, feats, opacities, depths, radii, width, height)
    return out[..., :3], alpha, out[..., 3:4], means2d, radii
