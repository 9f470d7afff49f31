"""Image metrics (PSNR, SSIM vs scikit-image, face region), LPIPS as a metric, FID (Fréchet math on
known Gaussians, the feature pipeline on a tiny random net, the Inception loader), efficiency."""

from __future__ import annotations

import talkgs  # noqa: F401
import math

import numpy as np
import pytest
import torch

from talkgs.eval.metrics import (
    LPIPSMetric,
    efficiency_metrics,
    face_box,
    face_mask,
    is_unavailable,
    psnr,
    ssim,
    unavailable,
)


def _img(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((h // 8, w // 8, 3))
    import cv2

    return np.clip(cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC) + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)


def test_psnr_known_cases() -> None:
    a = _img(0)
    assert psnr(a, a) == math.inf
    u8 = (a * 255).round().astype(np.uint8)
    assert psnr(u8, u8.copy()) == math.inf
    # a constant offset of 0.01 everywhere: MSE = 1e-4 -> 40 dB
    b = a + 0.01
    assert psnr(a, b) == pytest.approx(40.0, abs=1e-9)
    # Gaussian noise of sigma 0.05: ~ 26.02 dB
    rng = np.random.default_rng(1)
    n = a + 0.05 * rng.standard_normal(a.shape)
    assert psnr(a, n) == pytest.approx(-10 * math.log10(0.05**2), abs=0.15)
    # over a mask: only the masked pixels count
    m = np.zeros(a.shape[:2], bool)
    m[10:20, 10:30] = True
    c = a.copy()
    c[~m] = 0.0
    assert psnr(a, np.where(m[..., None], a + 0.1, c), mask=m) == pytest.approx(20.0, abs=1e-9)
    with pytest.raises(ValueError, match="empty"):
        psnr(a, a, mask=np.zeros_like(m))
    with pytest.raises(ValueError, match="shape"):
        psnr(a, a[:10])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_skimage(seed: int) -> None:
    from skimage.metrics import structural_similarity

    a = _img(seed)
    rng = np.random.default_rng(10 + seed)
    b = np.clip(a + (0.02 + 0.05 * seed) * rng.standard_normal(a.shape), 0, 1)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_on_a_real_face_matches_skimage() -> None:
    from skimage import data
    from skimage.metrics import structural_similarity

    a = data.astronaut()[100:228, 150:278]  # the face, 128²
    import cv2

    b = cv2.GaussianBlur(a, (5, 5), 1.2)
    ref = structural_similarity(a / 255.0, b / 255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10) and ref < 0.99
    with pytest.raises(ValueError, match="smaller than"):
        ssim(a[:8, :8], b[:8, :8])


def test_face_region_from_labels() -> None:
    lab = np.zeros((40, 50), np.uint8)
    lab[5:30, 10:40] = 1  # torso: not face
    lab[8:20, 12:30] = 2  # face skin
    lab[20:23, 15:20] = 5  # lips
    lab[2:4, 0:50] = 3  # hair: not face
    assert face_box(lab, min_size=8) == (8, 23, 12, 30)
    assert face_box(lab) == (8, 24, 12, 30)  # grown to the 16 px minimum
    assert face_mask(lab).sum() == 12 * 18 + 3 * 5
    assert face_box(np.zeros((40, 50), np.uint8)) is None
    small = np.zeros((40, 50), np.uint8)
    small[0:3, 48:50] = 6
    assert face_box(small, min_size=16) == (0, 16, 34, 50)  # grown to 16, kept inside the image


@pytest.fixture(scope="module")
def random_alexnet(tmp_path_factory: pytest.TempPathFactory):
    from talkgs.models.perceptual import ALEXNET_FILE, AlexNetFeatures

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hub") / ALEXNET_FILE
    torch.save(dict(AlexNetFeatures().state_dict()), path)
    return path


def test_lpips_metric_reuses_the_training_network(random_alexnet) -> None:
    from talkgs.models.perceptual import LPIPS

    m = LPIPSMetric(alexnet_weights=random_alexnet)
    assert isinstance(m.net, LPIPS)
    a = _img(3, 96, 96)
    assert m(a, a) == pytest.approx(0.0, abs=1e-7)
    assert m(a, np.clip(a + 0.1, 0, 1)) > 0
    assert m(a[:40, :30], np.clip(a[:40, :30] + 0.1, 0, 1)) > 0  # small crops are upsampled


def test_lpips_missing_weights_raise_the_training_error(tmp_path, monkeypatch) -> None:
    from talkgs.models.perceptual import LPIPSWeightsMissing

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LPIPSWeightsMissing, match="alexnet-owt"):
        LPIPSMetric()


def test_submodule_metrics_are_reexported() -> None:
    import talkgs.eval as ev
    from talkgs.eval import metrics

    for name in metrics._LAZY:
        assert callable(getattr(metrics, name)), name
    for name in ev.__all__:
        assert callable(getattr(ev, name)), name
    with pytest.raises(AttributeError):
        metrics.no_such_metric  # noqa: B018


def test_unavailable_value() -> None:
    v = unavailable("weights absent")
    assert v == {"status": "unavailable", "reason": "weights absent"} and is_unavailable(v) and not is_unavailable(3.0)


# ----------------------------------------------------------------------------------------------
# FID


def test_frechet_distance_of_known_gaussians() -> None:
    from talkgs.eval.fid import frechet_distance

    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 3.0])
    s1, s2 = np.diag([1.0, 2.0, 3.0]), np.diag([4.0, 5.0, 6.0])
    closed = 14.0 + sum(a + b - 2 * math.sqrt(a * b) for a, b in zip([1, 2, 3], [4, 5, 6]))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-10)
    # general SPD vs identity: Tr(A) + n - 2 Tr(sqrt(A))
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    lam = rng.uniform(0.5, 3.0, 5)
    a = q @ np.diag(lam) @ q.T
    assert frechet_distance(np.ones(5), a, np.ones(5), np.eye(5)) == pytest.approx(lam.sum() + 5 - 2 * np.sqrt(lam).sum(), rel=1e-8)
    assert frechet_distance(mu2, s2, mu2, s2) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # sqrtm of a rank-deficient product, as pytorch-fid
def test_fid_pipeline_on_a_tiny_random_net() -> None:
    from talkgs.eval.fid import fid_from_frames

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    frames = [(_img(s, 32, 32) * 255).astype(np.uint8) for s in range(20)]
    same = fid_from_frames(net, frames, frames)
    darker = [(f * 0.6).astype(np.uint8) for f in frames]
    other = fid_from_frames(net, frames, darker)
    assert abs(same) < 1e-8 and other > 1e4 * max(abs(same), 1e-12)


def test_fid_inception_loads_pytorch_fid_state_dict(tmp_path, monkeypatch) -> None:
    from talkgs.eval.fid import INCEPTION_FILE, FIDInceptionV3, InceptionWeightsMissing, load_fid_inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InceptionWeightsMissing, match="pt_inception-2015-12-05"):
        load_fid_inception()
    torch.manual_seed(0)
    src = FIDInceptionV3()
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert state["fc.weight"].shape == (1008, 2048) and not any(k.startswith("AuxLogits") for k in state)
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / INCEPTION_FILE)
    net = load_fid_inception()  # from the torch hub cache
    assert torch.equal(net.Mixed_7c.branch_pool.conv.weight, src.Mixed_7c.branch_pool.conv.weight)
    with torch.no_grad():
        f = net(torch.rand(2, 3, 64, 80))
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    bad = dict(state)
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not pytorch-fid"):
        load_fid_inception(tmp_path / "bad.pth")


# ----------------------------------------------------------------------------------------------
# efficiency


def test_efficiency_metrics_from_the_timings(tmp_path) -> None:
    t = tmp_path / "train.json"  # what talkgs.train.loop.train writes to its timings file
    t.write_text('{"elapsed_s": 7.25, "steps": 20, "it_s": 2.76, "phases": {}, "finished": true}')
    (tmp_path / "timing.json").write_text('{"fps": 41.5, "device": "cpu", "resolution": 256}')
    m = efficiency_metrics(t, tmp_path / "timing.json")
    assert m == {"train.time_s": 7.25, "train.steps": 20, "render.fps": 41.5, "render.device": "cpu", "render.resolution": 256}
    assert efficiency_metrics(timing_json={"fps": 3.0}) == {"render.fps": 3.0}
    m = efficiency_metrics(tmp_path / "absent.json", tmp_path / "absent.json")
    assert is_unavailable(m["train.time_s"]) and is_unavailable(m["render.fps"])
    m = efficiency_metrics({"elapsed_s": None, "steps": 20, "reason": "not recorded"})
    assert is_unavailable(m["train.time_s"]) and "not recorded" in m["train.time_s"]["reason"]
