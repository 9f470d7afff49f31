"""The trainer's extension points, each exercised by a real component: samplers, several frames
per step, losses that own a network and an optimizer, phases that do not render, post-render
modules, init_from + freeze, and the contract checks on a variant."""

from __future__ import annotations

import talkgs  # noqa: F401
import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from talkgs.configlib import ConfigError, from_dict
from talkgs.models.contract import Batch, FramePool, Loss, LossConfig, LossContext, Outputs, PostConfig, PostModule
from talkgs.models.registry import build, register
from talkgs.train.checkpoint import load_checkpoint
from talkgs.train.loop import load_model, render_frame, render_settings, train
from talkgs.train.params import LRParams, PhaseParams, VariantParams
from talkgs.train.samplers import IncrementalConfig, UniformConfig, frame_order

# -- components used by these tests (registered like any paper's) -------------------------------


@dataclass(frozen=True)
class PatchCriticConfig(LossConfig):
    """A tiny patch discriminator on the final image (the shape of FG-3DGS's lip-sync
    discriminator): its own network, trained by its own optimizer after each step."""

    name: str = "test_patch_critic"
    lr: float = 1e-2


@register("loss", "test_patch_critic", PatchCriticConfig)
class PatchCritic(Loss):
    def __init__(self, cfg: PatchCriticConfig) -> None:
        super().__init__(cfg)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))

    def _score(self, img: Tensor) -> Tensor:
        return self.net(img.permute(0, 3, 1, 2)).mean()

    def forward(self, ctx: LossContext) -> Tensor:  # the head wants the critic to call its render real
        return torch.nn.functional.softplus(-self._score(ctx.pred))

    def update(self, ctx: LossContext, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        for p in self.parameters():
            p.requires_grad_(True)
        fake, real = ctx.pred.detach(), ctx.target
        loss = torch.nn.functional.softplus(self._score(fake)) + torch.nn.functional.softplus(-self._score(real))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for p in self.parameters():
            p.requires_grad_(False)
        return {"d": float(loss.detach())}


@dataclass(frozen=True)
class AudioPriorConfig(LossConfig):
    """A loss that renders nothing: pulls the head's audio token of each frame towards the
    frame's mean audio energy (an audio-encoder pretraining phase)."""

    name: str = "test_audio_prior"


@register("loss", "test_audio_prior", AudioPriorConfig)
class AudioPrior(Loss):
    def forward(self, ctx: LossContext) -> Tensor:
        tok = torch.stack([ctx.head.tokens["audio"](v.cond) for v in ctx.batch.views])
        energy = torch.stack([v.cond.audio.mean() for v in ctx.batch.views])
        return ((tok.mean(-1) - energy) ** 2).mean()


@dataclass(frozen=True)
class GainConfig(PostConfig):
    """A per-channel gain on the final image (the shape of a refiner / compositor)."""

    name: str = "test_gain"


@register("post", "test_gain", GainConfig)
class Gain(PostModule):
    def __init__(self, cfg: GainConfig) -> None:
        super().__init__(cfg)
        self.gain = nn.Parameter(torch.ones(3))

    def forward(self, outputs: Outputs, batch: Batch) -> Outputs:
        outputs.images["rgb"] = outputs.images["rgb"] * self.gain
        return outputs


@dataclass(frozen=True)
class FrozenTeacherConfig(LossConfig):
    """A loss built from a pipeline asset (the shape of FG-3DGS's lip-sync loss on the sync
    expert): it reads the file when built and keeps what it read."""

    name: str = "test_frozen_teacher"
    requires = ("sync_expert",)


@register("loss", "test_frozen_teacher", FrozenTeacherConfig)
class FrozenTeacher(Loss):
    def __init__(self, cfg: FrozenTeacherConfig, *, assets: dict) -> None:
        super().__init__(cfg)
        self.target = float(assets["sync_expert"].read_text())

    def forward(self, ctx: LossContext) -> Tensor:
        return (ctx.pred.mean() - self.target) ** 2


def _with_phases(v: VariantParams, *phases: PhaseParams, **kw) -> VariantParams:  # noqa: ANN003
    return dataclasses.replace(v, phases=tuple(phases), **kw)


# -- samplers ---------------------------------------------------------------------------------


def test_uniform_sampler_is_the_epoch_permutation_for_one_frame_and_covers_k() -> None:
    pool = FramePool(frames=[np.arange(3, 13)], signals=[{}])
    s = build("sampler", UniformConfig(), pool=pool, seed=5, iterations=100)
    assert [s.sample(t, t, 1)[0] for t in range(10)] == [(0, 3 + frame_order(10, 5, t)) for t in range(10)]
    two = [s.sample(t, t, 2) for t in range(5)]  # 5 steps x 2 frames = one epoch: every frame once
    assert sorted(i for picks in two for _, i in picks) == list(range(3, 13))
    # two identities: the pool is their concatenation
    pool2 = FramePool(frames=[np.arange(4), np.arange(2)], signals=[{}, {}])
    s2 = build("sampler", "uniform", pool=pool2, seed=0, iterations=6)
    picks = {s2.sample(t, t, 1)[0] for t in range(6)}
    assert picks == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)}


def test_incremental_sampler_window_slides_from_wide_open_to_all() -> None:
    """TalkingGaussian's mouth schedule: the window [1 - t, 1] on the 25-95th percentile scale,
    every 7th step; its first steps only draw the widest-open mouths."""
    mouth = np.linspace(0.0, 1.0, 101)
    pool = FramePool(frames=[np.arange(101)], signals=[{"mouth_open": mouth}])
    cfg = IncrementalConfig(metric="mouth_open", low=1.0, high=1.0, low_end=0.0, high_end=1.0, every=7, until=0.5)
    s = build("sampler", cfg, pool=pool, seed=1, iterations=1400)
    early = [s.sample(t, t, 1)[0][1] for t in range(0, 70, 7)]
    assert min(early) >= np.percentile(np.arange(101), 90), early  # frames above the 95th percentile (clipped to 1)
    assert s.window(3) is None and s.window(700) is None, "off-window steps and t >= 1 are uniform"
    lo, hi = s.window(350)
    assert lo == pytest.approx(0.5) and hi == 1.0
    p25, p95 = np.percentile(mouth, 25), np.percentile(mouth, 95)
    for t in range(350, 420, 7):  # every draw lies in its step's window (on the 25..95th percentile scale)
        i = s.sample(t, t, 1)[0][1]
        assert min((mouth[i] - p25) / (p95 - p25), 1.0) >= s.window(t)[0] - 1e-9
    assert [s.sample(t, t, 1) for t in range(0, 50, 7)] == [s.sample(t, t, 1) for t in range(0, 50, 7)], "pure function of the step"
    with pytest.raises(ValueError, match="no per-frame signal 'jaw'"):
        build("sampler", IncrementalConfig(metric="jaw"), pool=pool, seed=1, iterations=10)


def test_k_frames_per_step(tiny_subject, tiny_variant, tmp_path) -> None:
    v = tiny_variant("gaussiantalker")
    v = _with_phases(v, *(dataclasses.replace(p, frames_per_step=2) for p in v.phases))
    seen: list[dict] = []
    res = train(tiny_subject, tmp_path, v, progress=False, on_step=lambda s, l: seen.append(l))
    assert res["finished"] and res["steps"] == v.total_iterations and all(np.isfinite(r["loss"]) for r in seen)


# -- losses with networks, non-rendering phases, post modules ---------------------------------


def test_a_loss_that_owns_a_network_trains_it_and_resumes_exactly(tiny_subject, tiny_variant, tmp_path) -> None:
    v = tiny_variant("static", steps_per_phase=6, checkpoint_every=100)
    ph = dataclasses.replace(v.phases[0], losses={"l1": 1.0, "test_patch_critic": 0.1})
    v = _with_phases(v, ph)
    full = train(tiny_subject, tmp_path / "full", v, progress=False, seed=2)
    ck = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    critic = ck["losses"]["test_patch_critic"]
    init = build("loss", PatchCriticConfig())
    assert any(not torch.equal(critic["module"][k], init.state_dict()[k]) for k in critic["module"]), "the critic trained"
    assert critic["optimizer"]["state"], "its optimizer state is saved"
    train(tiny_subject, tmp_path / "res", v, progress=False, seed=2, until_step=3)
    train(tiny_subject, tmp_path / "res", v, progress=False, seed=2)
    a, b = ck, load_checkpoint(tmp_path / "res" / "checkpoint.pt")
    assert full["steps"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in critic["module"]:
        assert torch.equal(critic["module"][k], b["losses"]["test_patch_critic"]["module"][k]), k


def test_assets_reach_the_components_that_require_them_and_key_the_resume(tiny_subject, tiny_variant, tmp_path) -> None:
    from talkgs.models.registry import required_assets

    v = tiny_variant("static", steps_per_phase=4, checkpoint_every=100)
    v = _with_phases(v, dataclasses.replace(v.phases[0], losses={"l1": 1.0, "test_frozen_teacher": 1.0}))
    assert v.required_assets() == ("sync_expert",)
    assert required_assets([v.model, {"x": FrozenTeacherConfig()}]) == ("sync_expert",)
    assert tiny_variant("static").required_assets() == ()
    with pytest.raises(ConfigError, match=r"built from the pipeline asset 'sync_expert' \(the audio-visual sync expert"):
        train(tiny_subject, tmp_path / "m", v, progress=False)
    from talkgs.train.data import DataError

    with pytest.raises(DataError, match=r"nope\.pt not found: the asset 'sync_expert'"):
        train(tiny_subject, tmp_path / "m", v, progress=False, assets={"sync_expert": tmp_path / "nope.pt"})
    asset = tmp_path / "teacher.txt"
    asset.write_text("0.25")
    seen: list[dict] = []
    train(tiny_subject, tmp_path / "m", v, progress=False, assets={"sync_expert": asset}, on_step=lambda s, l: seen.append(l))
    n = v.total_iterations
    assert len(seen) == n and all(np.isfinite(r["test_frozen_teacher"]) for r in seen)
    h1 = load_checkpoint(tmp_path / "m" / "checkpoint.pt")["config_hash"]
    train(tiny_subject, tmp_path / "m", v, progress=False, assets={"sync_expert": asset}, on_step=lambda s, l: seen.append(l))
    assert len(seen) == n, "same asset: the finished run resumes (nothing to train)"
    asset.write_text("0.75")  # a retrained asset: the run starts over instead of resuming a stale model
    train(tiny_subject, tmp_path / "m", v, progress=False, assets={"sync_expert": asset}, on_step=lambda s, l: seen.append(l))
    assert len(seen) == 2 * n and load_checkpoint(tmp_path / "m" / "checkpoint.pt")["config_hash"] != h1


def test_a_phase_that_does_not_render_trains_its_groups(tiny_subject, tiny_variant, tmp_path, monkeypatch) -> None:
    import talkgs.models.heads.deformable as D

    calls = []
    real = D.rasterize
    monkeypatch.setattr(D, "rasterize", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    v = tiny_variant("gaussiantalker")
    pre = PhaseParams(name="audio_prior", iterations=5, render=False, lr={"audio": LRParams(start=1e-2)}, losses={"test_audio_prior": 1.0})
    v = _with_phases(v, pre, *v.phases)
    train(tiny_subject, tmp_path / "init", v, progress=False, until_step=0)
    train(tiny_subject, tmp_path / "a", v, progress=False, until_step=5)
    assert not calls, "the non-rendering phase never rasterized"
    m0 = load_checkpoint(tmp_path / "init" / "checkpoint.pt")["model"]
    m1 = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    audio = [k for k in m0 if k.startswith("head.tokens.audio.") and "mean" not in k and "std" not in k]
    assert audio and any(not torch.equal(m0[k], m1[k]) for k in audio)
    others = [k for k in m0 if not k.startswith("head.tokens.audio.")]
    assert all(torch.equal(m0[k], m1[k]) for k in others), "only the audio group trained"
    train(tiny_subject, tmp_path / "a", v, progress=False)  # and the rendering phases then run as usual
    assert calls


def test_post_render_module_trains_and_runs_at_inference(tiny_subject, tiny_variant, tmp_path) -> None:
    v = tiny_variant("static")
    ph = dataclasses.replace(v.phases[0], lr={**v.phases[0].lr, "post.test_gain": LRParams(start=5e-2)})
    v = _with_phases(v, ph, post=(GainConfig(),))
    train(tiny_subject, tmp_path, v, progress=False)
    model, variant, _ = load_model(tmp_path / "checkpoint.pt")
    gain = model.post["test_gain"].gain.detach().clone()
    assert not torch.equal(gain, torch.ones(3)), "the post module trained"
    with torch.no_grad():
        model.prepare()
        with_post = render_frame(model, tiny_subject, 0, render_settings(variant)).rgb
        model.post["test_gain"].gain.fill_(1.0)
        without = render_frame(model, tiny_subject, 0, render_settings(variant)).rgb
    assert torch.allclose(with_post, without * gain), "inference renders through the post module"


def test_init_from_loads_the_shared_model_and_freeze_keeps_groups(tiny_subject, tiny_variant, tmp_path) -> None:
    v = tiny_variant("gaussiantalker")
    train(tiny_subject, tmp_path / "base", v, progress=False)
    base = load_checkpoint(tmp_path / "base" / "checkpoint.pt")["model"]
    v2 = dataclasses.replace(v, freeze=("deformer",))
    train(tiny_subject, tmp_path / "ft", v2, progress=False, init_from=tmp_path / "base" / "checkpoint.pt")
    ft = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")
    deformer = [k for k in base if k.startswith("head.deformer.")]
    assert deformer and all(torch.equal(base[k], ft["model"][k]) for k in deformer), "frozen: the pretrained deformer as loaded"
    assert not torch.equal(base["head.canonical.encoder.planes.0"], ft["model"]["head.canonical.encoder.planes.0"])
    assert ft["init_from"]["config_hash"] == load_checkpoint(tmp_path / "base" / "checkpoint.pt")["config_hash"]


# -- the contract is checked when params.yaml is parsed ---------------------------------------


def test_variants_are_validated_against_their_head() -> None:
    with pytest.raises(ConfigError, match="no parameter group 'deformr'.*Did you mean 'deformer'"):
        from_dict(VariantParams, {"phases": [{"lr": {"deformr": {"start": 1.0}}}]})
    with pytest.raises(ConfigError, match="no loss 'lpip'.*Did you mean 'lpips'"):
        from_dict(VariantParams, {"phases": [{"losses": {"lpip": 1.0}}]})
    with pytest.raises(ConfigError, match=r"head: unknown key 'deforms'.*Did you mean 'deform'"):
        from_dict(VariantParams, {"phases": [{"head": {"deforms": False}}]})
    with pytest.raises(ConfigError, match="no post-render module 'gain'"):
        from_dict(VariantParams, {"phases": [{"post": ["gain"]}]})
    with pytest.raises(ConfigError, match="freeze: no parameter group"):
        from_dict(VariantParams, {"freeze": ["audio_net"]})
    with pytest.raises(ConfigError, match="init_from: pretrain needs pretrain.subjects"):
        from_dict(VariantParams, {"init_from": "pretrain"})
    with pytest.raises(ConfigError, match="losses.lip: unknown key 'margn'.*Did you mean 'margin'"):
        from_dict(VariantParams, {"losses": {"lip": {"margn": 0.3}}})
    v = from_dict(VariantParams, {"losses": {"lip_wide": {"name": "lip", "margin": 0.5}}, "phases": [{"losses": {"lip_wide": 1.0}}]})
    assert v.loss_config("lip_wide").margin == 0.5 and v.loss_config("l1").name == "l1"
    with pytest.raises(ValueError, match="cannot be trained across 2 subjects"):
        from talkgs.models.contract import BuildContext

        build("head", v.model, ctx=BuildContext(audio_window=2, audio_dim=2, n_identities=2))
