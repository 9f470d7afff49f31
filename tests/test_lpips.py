"""LPIPS: the project's AlexNet loads torchvision-format weights; the lpips wheel's linear heads;
a clear error (where to put the file) when the backbone is missing."""

from __future__ import annotations

import talkgs  # noqa: F401
import pytest
import torch

from talkgs.models.perceptual import ALEXNET_FILE, LPIPS, AlexNetFeatures, LPIPSWeightsMissing, lpips_linear_weights_path


@pytest.fixture(scope="module")
def random_alexnet(tmp_path_factory: pytest.TempPathFactory):
    """A torchvision-format AlexNet checkpoint with random weights (features + a classifier)."""
    torch.manual_seed(0)
    feats = AlexNetFeatures()
    state = dict(feats.state_dict())
    state["classifier.1.weight"] = torch.zeros(8, 4)  # torchvision files have a classifier; it is ignored
    state["classifier.1.bias"] = torch.zeros(8)
    path = tmp_path_factory.mktemp("hub") / ALEXNET_FILE
    torch.save(state, path)
    return path, feats


def test_lpips_loads_backbone_and_linear_heads(random_alexnet) -> None:
    path, feats = random_alexnet
    net = LPIPS(alexnet_weights=path)
    for a, b in zip(net.net.state_dict().values(), feats.state_dict().values()):
        assert torch.equal(a, b)
    heads = torch.load(lpips_linear_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(net.lins[2].weight, heads["lin2.model.1.weight"])
    assert all(not p.requires_grad for p in net.parameters())
    x = torch.rand(1, 3, 64, 64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    assert float(net(x, x, normalize=True)) == pytest.approx(0.0, abs=1e-7)
    d = net(x, y, normalize=True)
    assert d.shape == (1,) and float(d.detach()) > 0
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_lpips_found_in_torch_hub_cache(random_alexnet, tmp_path, monkeypatch) -> None:
    path, _ = random_alexnet
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / ALEXNET_FILE).write_bytes(path.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    LPIPS()  # no path: the hub cache


def test_missing_alexnet_says_where_to_put_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LPIPSWeightsMissing, match=r"hub/checkpoints/alexnet-owt-7be5be79\.pth.*weight to 0"):
        LPIPS()


def test_training_with_lpips_but_no_weights_stops_before_training(tiny_subject, tiny_variant, tmp_path, monkeypatch) -> None:
    from talkgs.train.loop import train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    v = tiny_variant("static", loss_weights={"lpips": 0.01})
    with pytest.raises(LPIPSWeightsMissing, match="alexnet"):
        train(tiny_subject, tmp_path / "run", v, progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_lpips_loss_trains_with_weights(tiny_subject, tiny_variant, random_alexnet, tmp_path) -> None:
    import dataclasses

    from talkgs.train.loop import train

    path, _ = random_alexnet
    v = tiny_variant("static", loss_weights={"lpips": 0.01}, iteration_scale=2 / 16000)
    from talkgs.models.losses import LPIPSConfig

    v = dataclasses.replace(v, losses={"lpips": LPIPSConfig(alexnet_weights=str(path))})
    seen = []
    res = train(tiny_subject, tmp_path / "run", v, progress=False, on_step=lambda s, l: seen.append(l))
    assert res["finished"] and all("lpips" in row for row in seen)
