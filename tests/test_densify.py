"""Densification: tensors and optimizer state stay aligned; the rules equal gsplat's DefaultStrategy.

gsplat's strategy code is plain PyTorch, so it runs on CPU: the parity test feeds gsplat's
``DefaultStrategy`` and ours the same renders (CPU backend) and compares the resulting Gaussians.
"""

from __future__ import annotations

import math

import talkgs  # noqa: F401  (sets OMP_WAIT_POLICY before torch starts)
import pytest
import torch

from talkgs.render import Camera, rasterize
from talkgs.render.densify import (
    DensifyConfig,
    DensifyStrategy,
    check_params,
    duplicate,
    remove,
    reset_opacity,
    split,
)


def make_params(n: int = 64, seed: int = 0) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.5, 0.5, 0.2]) + torch.tensor([0.0, 0.0, 3.0])
    return torch.nn.ParameterDict(
        {
            "means": means,
            "scales": torch.log(0.02 + 0.1 * torch.rand(n, 3, generator=g)),
            "quats": torch.randn(n, 4, generator=g),
            "opacities": torch.logit(0.02 + 0.9 * torch.rand(n, generator=g)),
            "sh0": torch.rand(n, 1, 3, generator=g),
            "features": torch.randn(n, 8, generator=g),
        }
    )


def make_single_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k} for k, p in params.items()], eps=1e-15)


def make_optimizer_dict(params) -> dict[str, torch.optim.Optimizer]:
    return {k: torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k}], eps=1e-15) for k, p in params.items()}


def camera() -> Camera:
    return Camera.from_fov(45.0, 32, 24, device="cpu")


def render(params) -> object:
    return rasterize(
        params["means"],
        params["quats"],
        torch.exp(params["scales"]),
        torch.sigmoid(params["opacities"]),
        params["sh0"][:, 0, :],
        camera(),
        torch.zeros(3),
        backend="cpu",
    )


def train_step(params, optimizers, target: torch.Tensor):
    out = render(params)
    loss = (out.rgb - target).abs().mean() + 0.01 * params["features"].square().sum()
    loss.backward()
    return out


def opt_step(optimizers):
    for opt in optimizers.values() if isinstance(optimizers, dict) else [optimizers]:
        opt.step()
        opt.zero_grad(set_to_none=True)


def optimizer_rows(optimizers, params, name: str) -> dict[str, torch.Tensor]:
    opt = optimizers[name] if isinstance(optimizers, dict) else optimizers
    return opt.state[params[name]]


def assert_aligned(params, optimizers, stats: dict | None = None) -> int:
    n = check_params(params, optimizers)
    for name, p in params.items():
        opt = optimizers[name] if isinstance(optimizers, dict) else optimizers
        groups = [gr for gr in opt.param_groups if any(q is p for q in gr["params"])]
        assert len(groups) == 1 and groups[0]["params"] == [p], name
        assert groups[0]["name"] == name
        for key, v in opt.state.get(p, {}).items():
            if key != "step":
                assert v.shape == p.shape, (name, key)
    for v in (stats or {}).values():
        assert v.shape[0] == n
    return n


@pytest.fixture(params=["single_optimizer", "optimizer_dict"])
def setup(request):
    params = make_params()
    optimizers = make_single_optimizer(params) if request.param == "single_optimizer" else make_optimizer_dict(params)
    target = torch.rand(24, 32, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # populate Adam moments
        train_step(params, optimizers, target)
        opt_step(optimizers)
    return params, optimizers, target


def test_duplicate_split_remove_keep_rows_aligned(setup) -> None:
    params, optimizers, target = setup
    n0 = assert_aligned(params, optimizers)
    before = {k: p.detach().clone() for k, p in params.items()}
    moments = {k: optimizer_rows(optimizers, params, k)["exp_avg"].clone() for k in params}
    step_before = optimizer_rows(optimizers, params, "means")["step"].clone()
    stats = {"grad2d": torch.arange(n0, dtype=torch.float32), "count": torch.ones(n0)}

    mask = torch.zeros(n0, dtype=torch.bool)
    mask[[1, 5, 9]] = True
    stats = duplicate(params, optimizers, mask, stats)
    n1 = assert_aligned(params, optimizers, stats)
    assert n1 == n0 + 3
    for k in params:
        torch.testing.assert_close(params[k][n0:], before[k][[1, 5, 9]])
        rows = optimizer_rows(optimizers, params, k)["exp_avg"]
        torch.testing.assert_close(rows[:n0], moments[k])
        assert not rows[n0:].any()  # new rows start with zero moments
    assert torch.equal(stats["grad2d"][n0:], torch.tensor([1.0, 5.0, 9.0]))
    assert torch.equal(optimizer_rows(optimizers, params, "means")["step"], step_before)

    # split Gaussians 0 and n0 (the copy of #1): kept rows first, then two children each
    mask = torch.zeros(n1, dtype=torch.bool)
    mask[[0, n0]] = True
    kept = [i for i in range(n1) if not mask[i]]
    before = {k: p.detach().clone() for k, p in params.items()}
    stats = split(params, optimizers, mask, stats, generator=torch.Generator().manual_seed(0))
    n2 = assert_aligned(params, optimizers, stats)
    assert n2 == n1 + 2
    torch.testing.assert_close(params["features"][: n1 - 2], before["features"][kept])
    children = params["scales"][n1 - 2 :]
    torch.testing.assert_close(children, (before["scales"][[0, n0]] - math.log(1.6)).repeat(2, 1))
    torch.testing.assert_close(params["features"][n1 - 2 :], before["features"][[0, n0]].repeat(2, 1))
    # children are sampled around their parent (within a few standard deviations)
    parent_means = before["means"][[0, n0]].repeat(2, 1)
    parent_scale = torch.exp(before["scales"][[0, n0]]).max(-1).values.repeat(2)
    assert ((params["means"][n1 - 2 :] - parent_means).norm(dim=-1) < 5 * parent_scale).all()
    assert not optimizer_rows(optimizers, params, "means")["exp_avg"][n1 - 2 :].any()

    mask = torch.zeros(n2, dtype=torch.bool)
    mask[[2, 3, n2 - 1]] = True
    before = {k: p.detach().clone() for k, p in params.items()}
    moments = {k: optimizer_rows(optimizers, params, k)["exp_avg_sq"].clone() for k in params}
    stats = remove(params, optimizers, mask, stats)
    n3 = assert_aligned(params, optimizers, stats)
    assert n3 == n2 - 3
    for k in params:
        torch.testing.assert_close(params[k], before[k][~mask])
        torch.testing.assert_close(optimizer_rows(optimizers, params, k)["exp_avg_sq"], moments[k][~mask])

    # the optimizer still trains the resized tensors
    train_step(params, optimizers, target)
    old = params["means"].detach().clone()
    opt_step(optimizers)
    assert not torch.equal(old, params["means"])


def test_reset_opacity_clamps_and_zeroes_moments(setup) -> None:
    params, optimizers, _ = setup
    others = {k: optimizer_rows(optimizers, params, k)["exp_avg"].clone() for k in params if k != "opacities"}
    reset_opacity(params, optimizers, value=0.01)
    assert torch.sigmoid(params["opacities"]).max().item() <= 0.01 + 1e-6
    assert not optimizer_rows(optimizers, params, "opacities")["exp_avg"].any()
    for k, v in others.items():
        torch.testing.assert_close(optimizer_rows(optimizers, params, k)["exp_avg"], v)
    assert_aligned(params, optimizers)


def test_check_params_rejects_bad_layouts() -> None:
    params = make_params(8)
    with pytest.raises(ValueError, match="its own group"):
        check_params(params, torch.optim.Adam(list(params.values())))
    partial = torch.optim.Adam([{"params": [params["means"]]}])
    with pytest.raises(ValueError, match=r"params\['\w+'\] is in no optimizer"):
        check_params(params, partial)
    bad = make_params(8)
    bad["features"] = torch.nn.Parameter(torch.zeros(7, 2))
    with pytest.raises(ValueError, match="first dimension N=8"):
        check_params(bad, make_single_optimizer(bad))
    with pytest.raises(ValueError, match="lack"):
        check_params(torch.nn.ParameterDict({"means": torch.zeros(3, 3)}), {})


def test_stats_are_ndc_scaled_2d_gradient_norms() -> None:
    params = make_params()
    opt = make_single_optimizer(params)
    out = train_step(params, opt, torch.rand(24, 32, 3))
    strategy = DensifyStrategy(DensifyConfig(refine_start_iter=10**6))
    strategy.step_post_backward(params, opt, 1, out)
    g = out.grad2d()
    expected = torch.stack([g[:, 0] * 16.0, g[:, 1] * 12.0], -1).norm(dim=-1) * out.visible
    torch.testing.assert_close(strategy.grad2d, expected.float())
    assert torch.equal(strategy.count, out.visible.float())


def test_schedule_grows_prunes_and_resets_with_cpu_renders() -> None:
    params = make_params(64, seed=3)
    params["opacities"].data[:4] = torch.logit(torch.tensor(0.001))  # below prune_opa
    opt = make_single_optimizer(params)
    target = torch.rand(24, 32, 3, generator=torch.Generator().manual_seed(2))
    cfg = DensifyConfig(refine_start_iter=2, refine_every=3, reset_every=6, refine_stop_iter=100, grow_grad2d=2e-3)
    strategy = DensifyStrategy(cfg, scene_scale=2.0, generator=torch.Generator().manual_seed(0))
    log = {}
    for step in range(1, 8):
        out = train_step(params, opt, target)
        log[step] = strategy.step_post_backward(params, opt, step, out)
        assert_aligned(params, opt, strategy._stats())
        opt_step(opt)
    assert log[3]["duplicated"] + log[3]["split"] > 0 and log[3]["pruned"] >= 4
    assert log[6]["reset"] == 1 and sum(v["reset"] for v in log.values()) == 1
    assert log[5] == {"duplicated": 0, "split": 0, "pruned": 0, "reset": 0}


def test_same_rules_as_gsplat_default_strategy() -> None:
    """Feed gsplat's DefaultStrategy and ours identical gradients: identical Gaussians result."""
    from gsplat.strategy import DefaultStrategy

    kw = dict(refine_start_iter=1, refine_every=2, refine_stop_iter=50, reset_every=10**6, grow_grad2d=1e-3,
              grow_scale3d=0.04, prune_opa=0.05)  # fmt: skip
    theirs = DefaultStrategy(**kw)
    their_state = theirs.initialize_state(scene_scale=1.5)
    ours = DensifyStrategy(DensifyConfig(**kw), scene_scale=1.5)
    target = torch.rand(24, 32, 3, generator=torch.Generator().manual_seed(5))
    runs, counts = {}, {"duplicated": 0, "split": 0, "pruned": 0}
    for who in ("gsplat", "talkgs"):
        params = make_params(80, seed=7)
        opts = make_optimizer_dict(params)
        for step in range(1, 8):
            out = train_step(params, opts, target)
            torch.manual_seed(100 + step)  # both draw split samples from the global RNG
            if who == "gsplat":
                means2d = out.means2d.detach()[None].clone()
                means2d.grad = out.grad2d()[None].clone()  # what gsplat's retain_grad would hold
                info = {"means2d": means2d, "radii": out.radii[None], "width": out.width,
                        "height": out.height, "n_cameras": 1, "gaussian_ids": None}  # fmt: skip
                theirs.step_post_backward(params, opts, their_state, step, info, packed=False)
            else:
                for k, v in ours.step_post_backward(params, opts, step, out).items():
                    counts[k] = counts.get(k, 0) + v
            opt_step(opts)
        runs[who] = {k: p.detach().clone() for k, p in params.items()}
    assert counts["duplicated"] > 0 and counts["split"] > 0 and counts["pruned"] > 0, counts
    for k in runs["gsplat"]:
        torch.testing.assert_close(runs["talkgs"][k], runs["gsplat"][k], msg=k)
