"""CPU rasterizer (numba) against the dense PyTorch reference, closed forms, gsplat's own
pure-torch projection (which runs on CPU) and gradchecks.

Gradients are checked three ways, all in float64 (the kernels compute in float64 for every
input dtype, so this is the same code path that renders float32):
- ``torch.autograd.gradcheck`` (analytic VJP vs central finite differences) of the full
  ``rasterize`` on tiny scenes, every input including ``viewmat`` and the background, and of
  the projection alone including the FoV-clamped Jacobian branch;
- equality (1e-9) with autograd through the independent dense reference renderer;
- equality (1e-9) of the projection gradients with autograd through gsplat's
  ``_fully_fused_projection``.
"""

from __future__ import annotations

import math

import talkgs  # noqa: F401  (sets OMP_WAIT_POLICY before torch starts)
import numpy as np
import pytest
import torch

from talkgs.render import Camera, RenderOutput, rasterize
from talkgs.render import cpu
from talkgs.render.reference import composite_reference, project_reference, sh_to_color

F64 = torch.float64


def random_scene(n: int, W: int, H: int, seed: int, dtype=F64, sh_degree: int | None = None, opacity=(0.05, 0.95)):
    """``n`` random Gaussians ~3 units in front of a 40-degree camera."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=F64) * torch.tensor([0.5, 0.4, 0.3], dtype=F64)
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=F64)
    scales = 0.02 + 0.12 * torch.rand(n, 3, generator=g, dtype=F64)
    lo, hi = opacity
    opacities = lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g, dtype=F64)
    else:
        colors = 0.3 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=F64)
    cam = Camera.from_fov(40.0, W, H, device="cpu", dtype=F64)
    tensors = [t.to(dtype) for t in (means, quats, scales, opacities, colors)]
    return tensors, cam.to("cpu", dtype)


def opaque_stack_scene(W=24, H=20):
    """Overlapping, nearly opaque Gaussians: pixels hit the 0.999 clamp and stop early."""
    (means, quats, scales, _, colors), cam = random_scene(40, W, H, seed=3)
    means[:, :2] *= 0.3
    scales = scales + 0.1
    opacities = torch.full((40,), 0.97, dtype=F64)
    # fully opaque Gaussians centred exactly on pixel centres: alpha clamps to 0.999 there
    opacities[::3] = 1.0
    fx, cx, cy = cam.K[0, 0], cam.K[0, 2], cam.K[1, 2]
    g = torch.Generator().manual_seed(4)
    cols = torch.randint(W // 4, W - W // 4, (14,), generator=g)
    rows = torch.randint(H // 4, H - H // 4, (14,), generator=g)
    pix = torch.stack([cols, rows], -1)
    z = means[::3, 2]
    means[::3, 0] = (pix[:, 0] + 0.5 - cx) / fx * z
    means[::3, 1] = (pix[:, 1] + 0.5 - cy) / fx * z
    return [means, quats, scales, opacities, colors], cam


def edge_case_scene(W=40, H=30):
    """Culling and clamping corner cases mixed with ordinary Gaussians."""
    (means, quats, scales, opacities, colors), cam = random_scene(30, W, H, seed=5)
    tan_x = (W / 2) / cam.K[0, 0].item()
    extra = torch.tensor(
        [
            [0.0, 0.0, -1.0],  # behind the camera
            [0.0, 0.0, 0.005],  # in front of the camera but before the near plane (0.01)
            [50.0, 0.0, 3.0],  # far off-screen
            [1.6 * tan_x * 3.0, 0.1, 3.0],  # outside 1.3x FoV (Jacobian clamped) but large: overlaps the image
            [0.1, -0.1, 2.0],  # opacity below 1/255: culled
            [-0.2, 0.1, 2.5],  # needle: tiny in two axes
        ],
        dtype=F64,
    )
    extra_scales = torch.tensor(
        [[0.1] * 3, [0.1] * 3, [0.1] * 3, [1.2, 0.9, 0.5], [0.1] * 3, [0.001, 0.3, 0.001]], dtype=F64
    )
    extra_opac = torch.tensor([0.9, 0.9, 0.9, 0.6, 0.003, 0.9], dtype=F64)
    g = torch.Generator().manual_seed(9)
    means = torch.cat([means, extra])
    quats = torch.cat([quats, torch.randn(6, 4, generator=g, dtype=F64)])
    scales = torch.cat([scales, extra_scales])
    opacities = torch.cat([opacities, extra_opac])
    colors = torch.cat([colors, torch.rand(6, 3, generator=g, dtype=F64)])
    return [means, quats, scales, opacities, colors], cam


SCENES = {
    "random": lambda: random_scene(120, 32, 32, seed=0),
    "odd_size": lambda: random_scene(80, 37, 29, seed=1),
    "opaque_stack": opaque_stack_scene,
    "edge_cases": edge_case_scene,
}


def _background(kind: str, cam: Camera, dtype=F64) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "color":
        return torch.tensor([0.2, 0.5, 0.7], dtype=dtype)
    g = torch.Generator().manual_seed(11)
    return torch.rand(cam.height, cam.width, 3, generator=g, dtype=F64).to(dtype)


@pytest.mark.parametrize("scene", sorted(SCENES))
@pytest.mark.parametrize("bg_kind", ["none", "color", "image"])
def test_forward_equals_dense_reference(scene: str, bg_kind: str) -> None:
    (means, quats, scales, opac, colors), cam = SCENES[scene]()
    bg = _background(bg_kind, cam)
    out = rasterize(means, quats, scales, opac, colors, cam, bg, backend="cpu")
    ref = rasterize(means, quats, scales, opac, colors, cam, bg, backend="reference")
    assert out.backend == "cpu" and ref.backend == "reference"
    assert out.rgb.shape == (cam.height, cam.width, 3)
    assert torch.equal(out.radii, ref.radii)
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-10, rtol=1e-10, msg=name)
    torch.testing.assert_close(out.means2d, ref.means2d, atol=1e-10, rtol=1e-10)


def test_scenes_exercise_clamp_termination_and_culling() -> None:
    """Guard the fixtures: the corner cases the equality tests rely on really occur."""
    (means, quats, scales, opac, colors), cam = opaque_stack_scene()
    m2d, con, dep, radii = project_reference(means, quats, scales, opac, cam.viewmat, cam.K, cam.width, cam.height)
    out = rasterize(means, quats, scales, opac, colors, cam, backend="cpu")
    # some pixel stopped early: its transmittance is tiny but above the 1e-4 cut
    assert (1.0 - out.alpha).min() < 1e-3
    # some Gaussian reaches alpha = opacity * exp(-sigma) > 0.999 at a pixel centre
    ii, jj = torch.meshgrid(torch.arange(cam.height, dtype=F64), torch.arange(cam.width, dtype=F64), indexing="ij")
    d = m2d[:, None, None, :] - torch.stack([jj + 0.5, ii + 0.5], -1)
    sigma = 0.5 * (con[:, 0, None, None] * d[..., 0] ** 2 + con[:, 2, None, None] * d[..., 1] ** 2)
    sigma = sigma + con[:, 1, None, None] * d[..., 0] * d[..., 1]
    assert ((opac[:, None, None] * torch.exp(-sigma)) > 0.999).any()

    (means, quats, scales, opac, colors), cam = edge_case_scene()
    _, _, _, radii = cpu.project(means, quats, scales, opac, cam.viewmat, cam.K, cam.width, cam.height)
    visible = (radii > 0).all(-1)
    assert visible[:30].sum() > 15
    assert visible[30:].tolist() == [False, False, False, True, False, True]
    x, z = means[33, 0].item(), means[33, 2].item()
    lim = (cam.width - cam.K[0, 2].item()) / cam.K[0, 0].item() + 0.3 * 0.5 * cam.width / cam.K[0, 0].item()
    assert x / z > lim  # the Jacobian clamp branch is exercised


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_gradients_equal_dense_reference(scene: str) -> None:
    (means, quats, scales, opac, colors), cam = SCENES[scene]()
    bg = _background("image", cam)
    g = torch.Generator().manual_seed(2)
    w_rgb = torch.randn(cam.height, cam.width, 3, generator=g, dtype=F64)
    w_a = torch.randn(cam.height, cam.width, 1, generator=g, dtype=F64)
    w_d = torch.randn(cam.height, cam.width, 1, generator=g, dtype=F64)
    grads = {}
    for backend in ("cpu", "reference"):
        inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors, cam.viewmat, bg)]
        camera = Camera(inputs[5], cam.K, cam.width, cam.height)
        out = rasterize(*inputs[:5], camera, inputs[6], backend=backend)
        loss = (out.rgb * w_rgb).sum() + (out.alpha * w_a).sum() + (out.depth * w_d).sum()
        loss.backward()
        grads[backend] = [t.grad for t in inputs] + [out.grad2d()]
    names = ["means", "quats", "scales", "opacities", "colors", "viewmat", "background", "means2d"]
    for name, a, b in zip(names, grads["cpu"], grads["reference"]):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7, msg=name)


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_sh_colors_equal_reference_with_gradients(sh_degree: int) -> None:
    (means, quats, scales, opac, sh), cam = random_scene(60, 24, 24, seed=4, sh_degree=sh_degree)
    cam = Camera(torch.linalg.inv(_look_at(torch.tensor([0.4, -0.3, -0.5], dtype=F64))), cam.K, 24, 24)
    grads = {}
    for backend in ("cpu", "reference"):
        m, s = means.clone().requires_grad_(True), sh.clone().requires_grad_(True)
        out = rasterize(m, quats, scales, opac, s, cam, sh_degree=sh_degree, backend=backend)
        (out.rgb.square().sum() + out.depth.sum()).backward()
        grads[backend] = (out.rgb.detach(), m.grad, s.grad)
    for a, b in zip(grads["cpu"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def _look_at(eye: torch.Tensor) -> torch.Tensor:
    """camera-to-world [4, 4] at ``eye`` looking at (0, 0, 3), OpenCV axes."""
    target = torch.tensor([0.0, 0.0, 3.0], dtype=eye.dtype)
    fwd = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0], dtype=eye.dtype), fwd), dim=0)
    down = torch.linalg.cross(fwd, right)
    c2w = torch.eye(4, dtype=eye.dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye
    return c2w


def test_sh_matches_gsplat_torch_implementation() -> None:
    """Our SH basis (ordering, signs, constants, +0.5 and clamp) equals gsplat's pure-torch one."""
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(0)
    means = torch.randn(50, 3, generator=g, dtype=F64) + torch.tensor([0, 0, 3.0], dtype=F64)
    viewmat = torch.linalg.inv(_look_at(torch.tensor([0.3, 0.2, -0.4], dtype=F64)))
    campos = torch.linalg.inv(viewmat)[:3, 3]
    for degree in range(5):
        coeffs = torch.randn(50, 25, 3, generator=g, dtype=F64)
        ours = sh_to_color(degree, coeffs, means, viewmat)
        theirs = torch.clamp_min(_spherical_harmonics(degree, means - campos, coeffs) + 0.5, 0.0)
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("view", ["identity", "orbit"])
def test_projection_matches_gsplat_torch_implementation(view: str) -> None:
    """means2d / conics / depths and their gradients equal gsplat's own pure-torch projection
    (``_fully_fused_projection``, runs on CPU) for every Gaussian our projection keeps
    (with the identity view this includes the FoV-clamped one)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    (means, quats, scales, opac, _), cam = edge_case_scene()
    viewmat = cam.viewmat
    if view == "orbit":
        viewmat = torch.linalg.inv(_look_at(torch.tensor([0.3, -0.2, -0.6], dtype=F64)))
    W, H = cam.width, cam.height
    g = torch.Generator().manual_seed(1)
    w = [torch.randn(len(means), k, generator=g, dtype=F64) for k in (2, 3, 1)]
    results = {}
    for who in ("talkgs", "gsplat"):
        m, q, s, vm = (t.clone().requires_grad_(True) for t in (means, quats, scales, viewmat))
        if who == "talkgs":
            m2d, con, dep, radii = cpu.project(m, q, s, opac, vm, cam.K, W, H)
            keep = (radii > 0).all(-1)
        else:
            covars, _ = _quat_scale_to_covar_preci(q, s, compute_preci=False)
            _, m2d, dep, con, _ = _fully_fused_projection(m, covars, vm[None], cam.K[None], W, H)
            m2d, dep, con = m2d[0], dep[0], con[0]
        loss = ((m2d * w[0])[keep].sum() + (con * w[1])[keep].sum() + (dep[:, None] * w[2])[keep].sum())
        loss.backward()
        results[who] = [m2d[keep], con[keep], dep[keep], m.grad, q.grad, s.grad, vm.grad]
    assert keep.sum() > 20
    assert view != "identity" or keep[33]  # the FoV-clamped Gaussian takes part
    names = ["means2d", "conics", "depths", "d means", "d quats", "d scales", "d viewmat"]
    for name, a, b in zip(names, results["talkgs"], results["gsplat"]):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-9, rtol=1e-9, msg=name)


def test_gradcheck_full_pipeline_float64() -> None:
    """Finite differences vs the numba VJPs for every differentiable input."""
    (means, quats, scales, opac, colors), cam = random_scene(7, 12, 10, seed=21, opacity=(0.3, 0.9))
    means[:, :2] *= 0.4
    scales = scales * 2.0  # overlapping Gaussians covering most of the 12x10 image
    bg = torch.tensor([0.3, 0.6, 0.1], dtype=F64)
    K = cam.K

    def fn(m, q, s, o, c, vm, b):
        out = rasterize(m, q, s, o, c, Camera(vm, K, 12, 10), b, backend="cpu")
        return out.rgb, out.alpha, out.depth

    inputs = tuple(t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors, cam.viewmat, bg))
    assert rasterize(*inputs[:5], cam, backend="cpu").visible.all()
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_projection_with_fov_clamp() -> None:
    """The projection VJP, including Gaussians whose Jacobian is FoV-clamped."""
    (means, quats, scales, opac, _), cam = edge_case_scene()
    keep = torch.tensor([0, 1, 2, 3, 33, 35])  # ordinary ones, the clamped one, the needle
    means, quats, scales, opac = means[keep], quats[keep], scales[keep], opac[keep]

    def fn(m, q, s, vm):
        m2d, con, dep, _ = cpu.project(m, q, s, opac, vm, cam.K, cam.width, cam.height)
        return m2d, con, dep

    inputs = tuple(t.clone().requires_grad_(True) for t in (means, quats, scales, cam.viewmat))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-5, rtol=1e-5)


def test_single_gaussian_closed_form() -> None:
    """Pixel centres at +0.5, the 0.3 px^2 dilation, 1/255 cut-off, 0.999 clamp, depth = z."""
    W, H, f, z, s = 20, 16, 30.0, 2.0, 0.1
    means = torch.tensor([[0.0, 0.0, z]], dtype=F64)
    quats = torch.tensor([[0.3, -0.5, 0.2, 0.9]], dtype=F64)  # isotropic: rotation is irrelevant
    # (opacity, principal point): off-centre, then centred on pixel (9, 7) so alpha clamps
    for opacity, cx, cy in ((0.8, 9.3, 7.6), (1.0, 9.5, 7.5)):
        K = torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=F64)
        cam = Camera(torch.eye(4, dtype=F64), K, W, H)
        out = rasterize(means, quats, torch.full((1, 3), s, dtype=F64), torch.tensor([opacity], dtype=F64),
                        torch.tensor([[1.0, 0.5, 0.25]], dtype=F64), cam, backend="cpu")  # fmt: skip
        var = (f * s / z) ** 2 + 0.3
        jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        alpha = opacity * np.exp(-0.5 * ((jj - cx) ** 2 + (ii - cy) ** 2) / var)
        alpha = np.minimum(alpha, 0.999)
        alpha[alpha < 1.0 / 255.0] = 0.0
        np.testing.assert_allclose(out.alpha[..., 0].numpy(), alpha, atol=1e-12)
        np.testing.assert_allclose(out.rgb[..., 1].numpy(), 0.5 * alpha, atol=1e-12)
        np.testing.assert_allclose(out.depth[..., 0].numpy(), np.where(alpha > 0, z, 0.0), atol=1e-12)
        # opacity-aware radius, as gsplat: ceil(min(3.33, sqrt(2 ln(255 o))) * sqrt(var))
        r = math.ceil(min(3.33, math.sqrt(2 * math.log(opacity * 255))) * math.sqrt(var))
        assert out.radii.tolist() == [[r, r]]
    assert out.alpha[7, 9, 0].item() == 0.999


def test_pixel_stops_before_the_gaussian_that_ends_it() -> None:
    """gsplat's early stop is exclusive: the Gaussian that would bring T to <= 1e-4 is dropped."""
    K = torch.tensor([[20.0, 0, 8.5], [0, 20.0, 8.5], [0, 0, 1]], dtype=F64)  # centres on pixel (8, 8)
    cam = Camera(torch.eye(4, dtype=F64), K, 16, 16)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.5], [0.0, 0.0, 3.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=F64)
    scales = torch.full((3, 3), 0.3, dtype=F64)
    opac = torch.full((3,), 0.995, dtype=F64)
    colors = torch.eye(3, dtype=F64)
    bg = torch.zeros(3, dtype=F64)
    out = rasterize(means, quats, scales, opac, colors, cam, bg, backend="cpu")
    ref = rasterize(means, quats, scales, opac, colors, cam, bg, backend="reference")
    centre_rgb = out.rgb[8, 8]
    # at the common centre every alpha is 0.995: after the first T = 0.005, the second would
    # leave 2.5e-5 <= 1e-4, so the pixel ends with the first Gaussian alone
    assert centre_rgb.tolist() == pytest.approx([0.995, 0.0, 0.0], abs=1e-13)
    assert out.alpha[8, 8, 0].item() == pytest.approx(0.995, abs=1e-13)
    # one pixel away the second Gaussian still fits in and contributes
    assert out.rgb[8, 10, 1].item() > 0.0
    torch.testing.assert_close(out.rgb, ref.rgb, atol=1e-12, rtol=0)


def test_binning_lists_every_contributing_gaussian_in_depth_order() -> None:
    (means, quats, scales, opac, colors), cam = random_scene(300, 53, 40, seed=8, dtype=torch.float32)
    W, H = cam.width, cam.height
    m2d, con, dep, radii = cpu.project(means, quats, scales, opac, cam.viewmat, cam.K, W, H)
    thr = np.log(opac.numpy().astype(np.float64) * 255.0)
    offsets, gids = cpu.bin_gaussians(m2d.numpy(), con.numpy(), thr, dep.numpy(), radii.numpy(), W, H)
    n_tx = (W + 15) // 16
    # brute force: which Gaussians reach alpha >= 1/255 at any pixel centre of each tile
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    vis = np.flatnonzero((radii.numpy() > 0).all(-1))
    m, c, o = m2d.numpy().astype(np.float64), con.numpy().astype(np.float64), opac.numpy().astype(np.float64)
    for tile in range(len(offsets) - 1):
        ty, tx = divmod(tile, n_tx)
        sl = np.s_[ty * 16 : (ty + 1) * 16, tx * 16 : (tx + 1) * 16]
        listed = gids[offsets[tile] : offsets[tile + 1]]
        assert np.all(np.diff(dep.numpy()[listed]) >= 0)
        needed = set()
        for gid in vis:
            dx, dy = m[gid, 0] - jj[sl], m[gid, 1] - ii[sl]
            sigma = 0.5 * (c[gid, 0] * dx * dx + c[gid, 2] * dy * dy) + c[gid, 1] * dx * dy
            if np.any((sigma >= 0) & (o[gid] * np.exp(-sigma) >= 1 / 255)):
                needed.add(int(gid))
        assert needed <= set(listed.tolist()), f"tile {tile} misses {needed - set(listed.tolist())}"
        assert len(listed) <= len(needed) + 5  # and the lists are tight (ellipse-tile test)


def test_results_do_not_depend_on_the_thread_count() -> None:
    """Deterministic: no atomics, per-intersection partial gradients reduced in a fixed order."""
    import numba

    (means, quats, scales, opac, colors), cam = random_scene(300, 70, 50, seed=12, dtype=torch.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for n_threads in (1, before):
            numba.set_num_threads(n_threads)
            leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
            out = rasterize(*leaves, cam, torch.tensor([0.5, 0.5, 0.5]), backend="cpu")
            (out.rgb.square().sum() + out.depth.sum()).backward()
            results.append([out.rgb, out.alpha, out.depth] + [t.grad for t in leaves])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_work_lists_cover_every_tile_once_and_balance() -> None:
    offsets = np.concatenate([[0], np.cumsum(np.random.default_rng(0).integers(0, 300, 97))])
    for n_workers in (1, 2, 3, 8):
        work_offsets, work_tiles = cpu._balanced_work_lists(offsets, n_workers)
        assert sorted(work_tiles.tolist()) == list(range(97))
        loads = [sum(offsets[t + 1] - offsets[t] + 8 for t in work_tiles[a:b])
                 for a, b in zip(work_offsets[:-1], work_offsets[1:])]  # fmt: skip
        assert max(loads) - min(loads) <= 300 + 8  # greedy LPT: within one tile of each other


def test_float32_matches_float64() -> None:
    (means, quats, scales, opac, colors), cam = random_scene(150, 33, 31, seed=6)
    out64 = rasterize(means, quats, scales, opac, colors, cam, backend="cpu")
    args32 = [t.float() for t in (means, quats, scales, opac, colors)]
    out32 = rasterize(*args32, cam.to("cpu", torch.float32), backend="cpu")
    assert out32.rgb.dtype == torch.float32 and out32.depth.dtype == torch.float32
    torch.testing.assert_close(out32.rgb.double(), out64.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(out32.alpha.double(), out64.alpha, atol=1e-5, rtol=0)


def test_empty_and_fully_culled_scenes_render_background() -> None:
    cam = Camera.from_fov(40.0, 19, 13, device="cpu", dtype=F64)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=F64, requires_grad=True)
    for n, z in ((0, 3.0), (5, -2.0)):
        means = torch.zeros(n, 3, dtype=F64)
        means[:, 2] = z
        params = [means, torch.ones(n, 4, dtype=F64), torch.full((n, 3), 0.1, dtype=F64),
                  torch.full((n,), 0.9, dtype=F64), torch.rand(n, 3, dtype=F64)]  # fmt: skip
        params = [p.requires_grad_(True) for p in params]
        out = rasterize(*params, cam, bg, backend="cpu")
        assert torch.equal(out.rgb, bg.detach().expand(13, 19, 3))
        assert not out.alpha.any() and not out.depth.any() and not out.visible.any()
        out.rgb.sum().backward()
        for p in params:
            assert p.grad is not None and not p.grad.any()
        assert torch.equal(bg.grad, torch.full((3,), 13.0 * 19.0, dtype=F64))
        bg.grad = None


def test_grad2d_is_the_2d_mean_gradient() -> None:
    (means, quats, scales, opac, colors), cam = random_scene(40, 24, 24, seed=7)
    means[:3, 2] = -1.0  # behind the camera: culled
    means.requires_grad_(True)
    out = rasterize(means, quats, scales, opac, colors, cam, backend="cpu")
    assert isinstance(out, RenderOutput)
    with pytest.raises(RuntimeError, match="backward"):
        out.grad2d()
    out.rgb.sum().backward()
    g = out.grad2d()
    assert g.shape == (40, 2)
    assert (g[out.visible].abs().sum(-1) > 0).float().mean() > 0.9
    assert (~out.visible).any() and not g[~out.visible].any()


def test_input_validation_names_expected_and_found_shapes() -> None:
    (means, quats, scales, opac, colors), cam = random_scene(10, 16, 16, seed=0)
    with pytest.raises(ValueError, match=r"quats: expected \[10, 4\], found \[10, 3\]"):
        rasterize(means, quats[:, :3], scales, opac, colors, cam)
    with pytest.raises(ValueError, match=r"opacities: expected \[10\], found \[10, 1\]"):
        rasterize(means, quats, scales, opac[:, None], colors, cam)
    with pytest.raises(ValueError, match="sh_degree"):
        rasterize(means, quats, scales, opac, torch.zeros(10, 4, 3, dtype=F64), cam)
    with pytest.raises(ValueError, match=r"K>=16 for sh_degree=3"):
        rasterize(means, quats, scales, opac, torch.zeros(10, 9, 3, dtype=F64), cam, sh_degree=3)
    with pytest.raises(ValueError, match=r"background: expected \[3\] or \[H, W, 3\]"):
        rasterize(means, quats, scales, opac, colors, cam, torch.zeros(8, 8, 3, dtype=F64))
    with pytest.raises(ValueError, match="dtype"):
        rasterize(means.float(), quats, scales, opac, colors, cam)
    with pytest.raises(ValueError, match="gsplat 1.5.3 cannot render on CPU"):
        rasterize(means, quats, scales, opac, colors, cam, backend="gsplat")
    with pytest.raises(ValueError, match="unknown backend"):
        rasterize(means, quats, scales, opac, colors, cam, backend="opengl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"viewmat: expected a \[4, 4\]"):
        Camera(torch.eye(3), torch.eye(3), 16, 16)
    with pytest.raises(ValueError, match="width"):
        Camera(torch.eye(4), torch.eye(3), 0, 16)


def test_auto_backend_on_cpu_is_the_numba_backend() -> None:
    (means, quats, scales, opac, colors), cam = random_scene(10, 16, 16, seed=0, dtype=torch.float32)
    assert rasterize(means, quats, scales, opac, colors, cam).backend == "cpu"


def test_composite_reference_is_plain_front_to_back_alpha_blending() -> None:
    """The reference's vectorised compositing equals a literal per-pixel loop."""
    (means, quats, scales, opac, colors), cam = opaque_stack_scene(W=9, H=7)
    m2d, con, dep, radii = project_reference(means, quats, scales, opac, cam.viewmat, cam.K, 9, 7)
    out, alpha = composite_reference(m2d, con, colors, opac, dep, radii, 9, 7)
    order = [int(i) for i in torch.argsort(dep, stable=True) if (radii[i] > 0).all()]
    for i in range(7):
        for j in range(9):
            T, acc = 1.0, torch.zeros(3, dtype=F64)
            for gid in order:
                dx, dy = m2d[gid, 0] - (j + 0.5), m2d[gid, 1] - (i + 0.5)
                sigma = 0.5 * (con[gid, 0] * dx * dx + con[gid, 2] * dy * dy) + con[gid, 1] * dx * dy
                a = min(0.999, float(opac[gid] * torch.exp(-sigma)))
                if sigma < 0 or a < 1 / 255:
                    continue
                if T * (1 - a) <= 1e-4:
                    break
                acc += colors[gid] * a * T
                T *= 1 - a
            torch.testing.assert_close(out[i, j], acc, atol=1e-12, rtol=0)
            assert alpha[i, j, 0].item() == pytest.approx(1 - T, abs=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_extra_channels_are_composited_like_colours(backend: str) -> None:
    """``extras [N, E]`` ride along in the same pass (gsplat's ``colors [..., N, D]``): an extra
    channel equal to a colour channel renders to that channel's premultiplied value, the
    colour, alpha and depth do not change, and gradients reach the extras."""
    (means, quats, scales, opac, colors), cam = SCENES["random"]()
    extras = torch.cat([colors[:, :1], torch.ones_like(colors[:, :1])], dim=-1).clone().requires_grad_(True)
    plain = rasterize(means, quats, scales, opac, colors, cam, None, backend=backend)
    out = rasterize(means, quats, scales, opac, colors, cam, None, backend=backend, extras=extras)
    assert out.extras is not None and out.extras.shape == (cam.height, cam.width, 2) and plain.extras is None
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(out, name), getattr(plain, name), atol=1e-10, rtol=1e-10, msg=name)
    torch.testing.assert_close(out.extras[..., 0], out.rgb[..., 0], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out.extras[..., 1:], out.alpha, atol=1e-10, rtol=1e-10)  # a channel of ones = alpha
    out.extras.sum().backward()
    assert extras.grad is not None and extras.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"extras: expected \[N=120, E\]"):
        rasterize(means, quats, scales, opac, colors, cam, None, backend=backend, extras=extras[:5])
