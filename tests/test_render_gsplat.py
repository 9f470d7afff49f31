"""Parity of the CPU backend with gsplat on CUDA (skipped without a GPU).

The CPU backend computes in float64, gsplat in float32 with ``__expf``; a pixel where a
Gaussian sits exactly at the 1/255 cut-off or the 1e-4 transmittance stop can flip between the
two. Forward parity is therefore checked as: 99.9 % of values within 1e-4, all within 5e-3
(one flipped contribution is at most ~1/255 * T). Gradients are compared by relative L2 error.
"""

from __future__ import annotations

import talkgs  # noqa: F401  (sets OMP_WAIT_POLICY before torch starts)
import pytest
import torch

from talkgs.render import Camera, rasterize
from talkgs.render.densify import DensifyConfig, DensifyStrategy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: gsplat 1.5.3 renders only on GPU"),
]

CUDA = torch.device("cuda")


def scene(n: int = 600, W: int = 72, H: int = 56, seed: int = 0, sh_degree: int | None = None):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.6, 0.5, 0.3]) + torch.tensor([0.0, 0.0, 3.0])
    quats = torch.randn(n, 4, generator=g)
    scales = 0.01 + 0.1 * torch.rand(n, 3, generator=g)
    opacities = 0.05 + 0.94 * torch.rand(n, generator=g)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = 0.3 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g)
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.2, -0.1, -0.3])
    cam = Camera.from_fov(45.0, W, H, torch.linalg.inv(c2w), device="cpu")
    bg = torch.rand(H, W, 3, generator=g)
    return [means, quats, scales, opacities, colors], cam, bg


def render_both(tensors, cam, bg, sh_degree=None, requires_grad=False):
    outs, leaves = {}, {}
    for backend, device in (("cpu", torch.device("cpu")), ("gsplat", CUDA)):
        xs = [t.detach().to(device).clone().requires_grad_(requires_grad) for t in [*tensors, cam.viewmat, bg]]
        camera = Camera(xs[5], cam.K.to(device), cam.width, cam.height)
        outs[backend] = rasterize(*xs[:5], camera, xs[6], sh_degree=sh_degree, backend=backend)
        leaves[backend] = xs
    return outs, leaves


def assert_forward_close(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    diff = (a.detach().cpu().double() - b.detach().cpu().double()).abs()
    frac = (diff > 1e-4).double().mean().item()
    assert frac <= 1e-3, f"{name}: {frac:.2%} of values differ by more than 1e-4 (max {diff.max():.2e})"
    assert diff.max().item() <= 5e-3, f"{name}: max difference {diff.max():.2e}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("sh_degree", [None, 3])
def test_forward_parity(sh_degree) -> None:
    tensors, cam, bg = scene(sh_degree=sh_degree)
    outs, _ = render_both(tensors, cam, bg, sh_degree=sh_degree)
    cpu_out, gs_out = outs["cpu"], outs["gsplat"]
    assert gs_out.backend == "gsplat"
    assert_forward_close(cpu_out.rgb, gs_out.rgb, "rgb")
    assert_forward_close(cpu_out.alpha, gs_out.alpha, "alpha")
    zmax = float(tensors[0][:, 2].max())
    assert_forward_close(cpu_out.depth * cpu_out.alpha / zmax, gs_out.depth * gs_out.alpha / zmax, "depth * alpha")
    same_vis = (cpu_out.visible == gs_out.visible.cpu()).double().mean().item()
    assert same_vis >= 0.999
    both = cpu_out.visible & gs_out.visible.cpu()
    radii_diff = (cpu_out.radii[both] - gs_out.radii.cpu()[both]).abs()
    assert radii_diff.max() <= 1 and (radii_diff == 0).double().mean() >= 0.99
    m2d = gs_out.means2d.detach().cpu().reshape(-1, 2)
    torch.testing.assert_close(cpu_out.means2d.detach()[both], m2d[both], atol=1e-3, rtol=0)


@pytest.mark.parametrize("sh_degree", [None, 2])
def test_gradient_parity(sh_degree) -> None:
    tensors, cam, bg = scene(n=400, sh_degree=sh_degree, seed=1)
    outs, leaves = render_both(tensors, cam, bg, sh_degree=sh_degree, requires_grad=True)
    g = torch.Generator().manual_seed(3)
    H, W = cam.height, cam.width
    w = [torch.randn(H, W, c, generator=g) for c in (3, 1, 1)]
    for backend, out in outs.items():
        dev = out.rgb.device
        loss = (out.rgb * w[0].to(dev)).sum() + (out.alpha * w[1].to(dev)).sum() + 0.1 * (out.depth * w[2].to(dev)).sum()
        loss.backward()
    names = ["means", "quats", "scales", "opacities", "colors", "viewmat", "background"]
    for i, name in enumerate(names):
        err = rel_err(leaves["cpu"][i].grad, leaves["gsplat"][i].grad)
        assert err < 1e-2, f"{name}: relative L2 gradient difference {err:.2e}"
    err = rel_err(outs["cpu"].grad2d(), outs["gsplat"].grad2d())
    assert err < 1e-2, f"means2d: relative L2 gradient difference {err:.2e}"


@pytest.mark.parametrize("sh_degree", [None, 2])
def test_extra_channels_parity(sh_degree) -> None:
    """Extra channels (TalkingGaussian's attention maps) through gsplat equal the CPU backend's."""
    tensors, cam, bg = scene(n=300, sh_degree=sh_degree, seed=4)
    g = torch.Generator().manual_seed(5)
    extras = torch.rand(tensors[0].shape[0], 2, generator=g)
    cpu_out = rasterize(*tensors, cam, bg, sh_degree=sh_degree, backend="cpu", extras=extras)
    gs_out = rasterize(*[t.to(CUDA) for t in tensors], cam.to(CUDA), bg.to(CUDA), sh_degree=sh_degree, extras=extras.to(CUDA))
    assert gs_out.backend == "gsplat" and gs_out.extras is not None
    assert_forward_close(cpu_out.rgb, gs_out.rgb, "rgb")
    assert_forward_close(cpu_out.extras, gs_out.extras, "extras")


def test_auto_backend_uses_gsplat_for_cuda_tensors() -> None:
    tensors, cam, bg = scene(n=50)
    out = rasterize(*[t.to(CUDA) for t in tensors], cam.to(CUDA), bg.to(CUDA))
    assert out.backend == "gsplat" and out.rgb.device.type == "cuda"
    with pytest.raises(ValueError, match="CPU tensors"):
        rasterize(*[t.to(CUDA) for t in tensors], cam.to(CUDA), backend="cpu")


def test_densify_runs_on_gsplat_renders() -> None:
    tensors, cam, bg = scene(n=200, seed=2)
    means, quats, scales, opacities, colors = [t.to(CUDA) for t in tensors]
    params = torch.nn.ParameterDict(
        {"means": means, "quats": quats, "scales": torch.log(scales), "opacities": torch.logit(opacities), "colors": colors}
    )
    opt = torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k} for k, p in params.items()])
    strategy = DensifyStrategy(DensifyConfig(refine_start_iter=0, refine_every=2, grow_grad2d=1e-5))
    target = torch.rand(cam.height, cam.width, 3, device=CUDA)
    camera = cam.to(CUDA)
    grown = 0
    for step in range(1, 5):
        out = rasterize(params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
                        params["colors"], camera, bg.to(CUDA))  # fmt: skip
        (out.rgb - target).abs().mean().backward()
        info = strategy.step_post_backward(params, opt, step, out)
        grown += info["duplicated"] + info["split"]
        opt.step()
        opt.zero_grad()
        for p in params.values():
            assert opt.state[p]["exp_avg"].shape == p.shape
    assert grown > 0
