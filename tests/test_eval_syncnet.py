"""SyncNet LSE-C/LSE-D: the official architecture loads a state dict (random weights saved to a tmp
file through the same loader), MFCC equals python_speech_features 0.6, the offset search of
``SyncNetInstance.evaluate`` finds a known shift, the whole procedure runs; missing weights say where
to put them."""

from __future__ import annotations

import talkgs  # noqa: F401
import numpy as np
import pytest
import torch

from talkgs.eval.syncnet import (
    SYNCNET_FILE,
    SyncNet,
    SyncNetWeightsMissing,
    face_track_crops,
    load_syncnet,
    lse,
    mfcc,
    offset_search,
)


@pytest.fixture(scope="module")
def random_syncnet_file(tmp_path_factory: pytest.TempPathFactory):
    """A syncnet_v2.model-like file: SyncNetModel.S state dict with random weights and non-trivial
    BatchNorm statistics, without num_batches_tracked (as files saved by old PyTorch)."""
    torch.manual_seed(0)
    net = SyncNet()
    state = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.endswith("running_var"):
            v = torch.rand_like(v) + 0.5
        elif k.endswith("running_mean"):
            v = 0.1 * torch.randn_like(v)
        state[k] = v
    path = tmp_path_factory.mktemp("weights") / SYNCNET_FILE
    torch.save(state, path)
    return path, state


def test_state_dict_names_are_the_official_ones() -> None:
    keys = SyncNet().state_dict().keys()
    for k in ("netcnnaud.0.weight", "netcnnaud.18.weight", "netfcaud.3.weight", "netfclip.1.running_var", "netcnnlip.0.weight", "netcnnlip.19.weight"):
        assert k in keys, k
    assert sum(p.numel() for p in SyncNet().parameters()) == 13_631_616  # the 54 MB syncnet_v2.model


def test_loader_reads_the_file_and_rejects_others(random_syncnet_file, tmp_path, monkeypatch) -> None:
    path, state = random_syncnet_file
    net = load_syncnet(path)
    assert not net.training
    own = net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    monkeypatch.setenv("TALKGS_SYNCNET", str(path))
    load_syncnet()  # from the environment variable
    bad = dict(state)
    bad.pop("netcnnlip.0.weight")
    torch.save(bad, tmp_path / "bad.model")
    with pytest.raises(ValueError, match="missing.*netcnnlip.0.weight"):
        load_syncnet(tmp_path / "bad.model")


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TALKGS_SYNCNET", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SyncNetWeightsMissing, match=r"hub/checkpoints/syncnet_v2\.model.*download_model\.sh"):
        load_syncnet()


def test_mfcc_equals_python_speech_features() -> None:
    """Reference values computed with python_speech_features 0.6 ``mfcc(x, 16000)`` on this signal."""
    t = np.arange(4810) / 16000
    x = np.round(8000 * np.sin(2 * np.pi * (200 + 800 * t) * t) + 1500 * np.sin(2 * np.pi * 3100 * t) * np.sin(2 * np.pi * 7 * t)).astype(np.int16)
    m = mfcc(x, 16000)
    assert m.shape == (29, 13)
    row7 = [19.0611265928, 12.8147262842, 1.9980949162, 32.1139219157, -32.944444017, -30.2484449299, 2.2551466785,
            -52.0533089623, -24.8946189469, 9.6964687834, -27.0630604089, 6.5903939868, 23.8131800663]  # fmt: skip
    last = [19.7371980819, 15.3193931515, -12.5655308902, -6.0179005119, -44.3781903538, -23.2852254131, 30.2469028189,
            3.8265622509, 20.0530583032, 27.320880494, -28.7502289471, -17.1467116548, -1.7927214061]  # fmt: skip
    np.testing.assert_allclose(m[7], row7, atol=1e-8)
    np.testing.assert_allclose(m[-1], last, atol=1e-8)  # the zero-padded last frame
    assert m.sum() == pytest.approx(-875.3187771988216, abs=1e-7)


@pytest.mark.parametrize("shift", [-4, 0, 3])
def test_offset_search_finds_a_known_shift(shift: int) -> None:
    torch.manual_seed(1)
    n = 40
    cc = torch.randn(n + 20, 16)
    # video window i shows what the audio said at i - shift (video lags the audio by `shift` frames)
    im = torch.stack([cc[10 + i - shift] for i in range(n)])
    r = offset_search(im, cc[10 : 10 + n], vshift=15)
    assert r["offset"] == shift
    # exact matches except where the true audio lies outside the clip (zero padding, as the official code)
    assert r["min_dist"] < 0.3 * float(np.median(r["mdist"])) and r["conf"] > 0
    assert r["mdist"].shape == (31,)
    assert r["conf"] == pytest.approx(float(np.median(r["mdist"]) - r["min_dist"]), rel=1e-6)


def test_face_track_crops_follow_the_official_crop() -> None:
    frames = [np.full((120, 160, 3), 30, np.uint8) for _ in range(13)]
    for f in frames:
        f[40:80, 60:100] = (200, 0, 0)  # a red "face" (RGB)
    boxes = np.tile([60.0, 40.0, 100.0, 80.0], (13, 1))
    boxes[6] += 40  # one outlier box: removed by the median filter
    crops = face_track_crops(frames, boxes)
    assert crops.shape == (13, 224, 224, 3) and crops.dtype == np.uint8
    assert np.array_equal(crops[6], crops[0])
    # crop rows [cy - s, cy + 1.8 s] = [40, 96) , cols [cx - 1.4 s, cx + 1.4 s] = [52, 108): the box is at the top centre
    c = crops[0]
    assert tuple(c[40, 112]) == (0, 0, 200)  # BGR, inside the box
    assert tuple(c[210, 112]) == (30, 30, 30)  # below the box (chin side)


def test_lse_runs_the_whole_procedure_on_random_weights(random_syncnet_file, tmp_path) -> None:
    from conftest import speech_like_wav

    from talkgs.io.media import read_wav

    path, _ = random_syncnet_file
    net = load_syncnet(path)
    rng = np.random.default_rng(0)
    t = 10
    frames = [rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(t)]
    boxes = np.tile([28.0, 20.0, 68.0, 64.0], (t, 1))
    audio, sr = read_wav(speech_like_wav(tmp_path / "a.wav", t / 25 + 0.05))
    r = lse(net, frames, audio, boxes=boxes)
    assert set(r) == {"lse_c", "lse_d", "offset", "windows", "mdist"}
    assert r["windows"] == t - 5 and r["mdist"].shape == (31,)
    assert -15 <= r["offset"] <= 15 and r["lse_c"] >= 0 and r["lse_d"] > 0 and np.isfinite(r["lse_c"])
    assert r["lse_d"] == pytest.approx(float(r["mdist"].min()))
    r2 = lse(net, frames, audio, boxes=boxes)  # deterministic (eval mode)
    assert r2["lse_c"] == r["lse_c"] and r2["offset"] == r["offset"]
    with pytest.raises(ValueError, match="at least 6 frames"):
        lse(net, frames[:5], audio, boxes=boxes[:5])
    with pytest.raises(ValueError, match="25 fps"):
        lse(net, frames, audio, boxes=boxes, fps=30)
