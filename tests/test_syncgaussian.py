"""SyncGaussian: the sync-enhanced audio encoder (shapes, ablations, the frozen sync-expert tower,
L_ah), the variant training on the head contract with the sync expert as a pipeline asset, and a
trained checkpoint that renders without the asset."""

from __future__ import annotations

import talkgs  # noqa: F401
import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import tiny_sync_expert
from talkgs.configlib import ConfigError, from_dict
from talkgs.models.conditioning.sync_enhanced import FrozenAudioTower, SyncEnhancedConfig, SyncEnhancedEncoder
from talkgs.models.contract import BuildContext
from talkgs.models.deformers.talkinggaussian import SmoothedAudio

from talkgs.train.loop import load_model, train

W, C, D = 4, 8, 16


def _ctx(expert: Path | None) -> BuildContext:
    """A training-time build context (a point cloud is given) with the expert as the asset."""
    return BuildContext(audio_window=W, audio_dim=C, point_cloud=lambda i, spec: None, assets={} if expert is None else {"sync_expert": expert})  # type: ignore[arg-type, return-value]


def _enc(expert: Path | None, **kw) -> SyncEnhancedEncoder:  # noqa: ANN003
    torch.manual_seed(0)
    return SyncEnhancedEncoder(SyncEnhancedConfig(**kw), in_dim=C, window=W, dim=D, ctx=_ctx(expert))


@pytest.fixture
def expert(tmp_path: Path) -> Path:
    return tiny_sync_expert(tmp_path / "expert.pt", audio_shape=(C, W))


def test_shapes_and_ablations(expert: Path) -> None:
    x = torch.randn(5, W, C)
    a, t = _enc(expert).forward_pair(x)
    assert a.shape == (5, D) and t is not None and t.shape == (5, D)
    assert _enc(expert)(x[0]).shape == (D,)
    assert _enc(expert, adaptation="subtract").forward_pair(x)[0].shape == (5, D)
    no_ave = _enc(None, use_ave=False)
    assert no_ave.forward_pair(x)[1] is None and no_ave.ave is None
    no_hu = _enc(expert, use_hu=False)
    a, t = no_hu.forward_pair(x)
    assert no_hu.hu is None and t is None and a.shape == (5, D)  # a is a'_ave itself: nothing to tie
    assert _enc(expert, tie=False).forward_pair(x)[1] is None
    # what each needs: the a_ave branch is the one built from the sync expert
    assert SyncEnhancedConfig().requires == ("sync_expert",) and SyncEnhancedConfig(use_ave=False).requires == ()
    with pytest.raises(ValueError, match="cannot both be false"):
        SyncEnhancedConfig(use_hu=False, use_ave=False)
    with pytest.raises(ConfigError, match="unknown key 'use_aev'"):
        from_dict(SyncEnhancedConfig, {"use_aev": False})


def test_sync_adaptation_follows_fig3(expert: Path) -> None:
    """h_k = SyncEncoder_k(h_{k-1} - a'_ave) * a'_ave, three times, from h_0 = a'_hu."""
    enc = _enc(expert)
    x = torch.randn(3, W, C)
    a_hu, a_ave = enc.hu(x), enc.ave_fc(enc.ave(x))
    h = a_hu
    for blk in enc.blocks:
        h = blk(h - a_ave) * a_ave
    a, t = enc.forward_pair(x)
    assert len(enc.blocks) == 3 and torch.allclose(a, h) and torch.allclose(t, a_ave)
    assert torch.allclose(_enc(expert, adaptation="subtract").forward_pair(x)[0], a_hu - a_ave)


def test_the_expert_tower_is_frozen_and_l_ah_trains_the_adapters(expert: Path) -> None:
    torch.manual_seed(0)
    sa = SmoothedAudio(SyncEnhancedConfig(), in_dim=C, window=W, dim=D, seq_len=8, ctx=_ctx(expert))
    tower = sa.encoder.ave
    assert isinstance(tower, FrozenAudioTower)
    assert not list(tower.parameters()), "the expert's weights are buffers: in no parameter group"
    sa.train()
    assert not tower.net.training, "its batch norms stay in eval mode"
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    opt = torch.optim.Adam(sa.parameters(), lr=1e-2)
    x = torch.randn(8, W, C)
    losses = []
    for _ in range(30):
        a, l_ah = sa.forward_aux(x)
        assert a.shape == (D,) and 0.0 <= float(l_ah.detach()) <= 2.0
        opt.zero_grad()
        l_ah.backward()
        opt.step()
        losses.append(float(l_ah.detach()))
    assert losses[-1] < 0.5 * losses[0], losses  # L_ah = 1 - cos(a, a_ave) is minimised
    for k, v in tower.state_dict().items():
        assert torch.equal(v, before[k]), k
    # a'_hu's convolutions got gradients from L_ah
    assert sa.encoder.hu.convs[0].weight.grad is not None and sa.encoder.hu.convs[0].weight.grad.abs().sum() > 0


def test_errors_name_the_cause(expert: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pipeline asset 'sync_expert' but none was given"):
        _enc(None)
    with pytest.raises(ConfigError, match=r"takes mel windows of 6 bands x 4 columns, the encoder is given 8 x 4"):
        _enc(tiny_sync_expert(tmp_path / "other.pt", audio_shape=(6, W)))
    with pytest.raises(ConfigError, match=r"ave_channels \[0, 12\] exceeds the audio feature's 8 channels"):
        _enc(expert, ave_channels=(0, 12))
    from talkgs.sync.model import SyncWeightsError

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SyncWeightsError, match="junk.pt cannot be read"):
        _enc(tmp_path / "junk.pt")


def test_variant_trains_and_its_checkpoint_renders_without_the_asset(tiny_subject, tiny_variant, tmp_path: Path) -> None:
    """syncgaussian on the head contract (TalkingGaussian's head, its audio encoder swapped by
    configuration): L_ah is computed in the deformation phases; the checkpoint carries the frozen
    tower, so the model loads and renders with the asset gone."""
    v = tiny_variant("syncgaussian")
    assert v.model.name == "talkinggaussian" and v.required_assets() == ("sync_expert",)
    asset = tiny_sync_expert(tmp_path / "assets" / "sync_expert.pt")
    seen: list[tuple[int, dict]] = []
    train(tiny_subject, tmp_path / "m", v, progress=False, assets={"sync_expert": asset}, on_step=lambda s, l: seen.append((s, l)))
    deform = [l for s, l in seen if "audio" in l and l["audio"] > 0]
    assert deform, "L_ah was computed in the deformation phases"
    asset.unlink()
    model, variant, ck = load_model(tmp_path / "m" / "checkpoint.pt")
    enc = model.head.face_motion.audio.encoder
    assert enc.ave.net is not None, "the frozen tower came back from the checkpoint"
    state = ck["model"]
    for k, val in model.state_dict().items():
        assert torch.equal(val, state[k]), k
    # the same weights as the trained expert (from its own file, rebuilt here)
    tiny_sync_expert(tmp_path / "again.pt")
    from talkgs.sync.model import load_expert

    net, _ = load_expert(tmp_path / "again.pt")
    assert torch.equal(enc.ave.net.audio[0][0].weight, net.audio[0][0].weight)
    from talkgs.train.loop import render_frame, render_settings

    out = render_frame(model, tiny_subject, 0, render_settings(variant))
    assert torch.isfinite(out["rgb"]).all()


def test_ablation_entries_differ_from_syncgaussian_only_in_their_option(tiny_variant) -> None:
    base = tiny_variant("syncgaussian")
    for name, opt in (("syncgaussian_no_ave", {"use_ave": False}), ("syncgaussian_no_hu", {"use_hu": False}),
                      ("syncgaussian_no_lah", {"tie": False}), ("syncgaussian_subtract", {"adaptation": "subtract"})):  # fmt: skip
        v = tiny_variant(name)
        assert v.phases == base.phases, name
        audio = dataclasses.replace(base.model.face.audio, **opt)
        assert v.model.face.audio == audio and v.model.mouth.audio == audio, name
    assert tiny_variant("syncgaussian_no_ave").required_assets() == ()
    # the fused stage trains the colours only, without densification (§3.5)
    fuse = base.phases[-1]
    assert fuse.name == "fuse" and set(fuse.lr) == {"face.sh", "mouth.sh"} and not fuse.densify.enabled

