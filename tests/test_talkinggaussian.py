"""TalkingGaussian (head/talkinggaussian): the tri-plane hash grid, the motion networks, the
branch targets and the fusion, its losses and callback, and cross-subject pretraining on two
real clips through the pretrain stage (init_from)."""

from __future__ import annotations

import talkgs  # noqa: F401
import dataclasses
from pathlib import Path

import pytest
import torch

from talkgs.models.contract import Batch, BuildContext, FrameView, LossContext, Outputs, RenderSettings
from talkgs.models.conditioning import FrameCondition
from talkgs.models.encoders.hashgrid import HashGrid2D, TriplaneHashGrid, TriplaneHashGridConfig
from talkgs.models.heads.talkinggaussian import BackgroundGaussians, TalkingGaussianHead, TalkingGaussianHeadConfig, TalkingGaussianOptions
from talkgs.models.model import TalkingModel
from talkgs.models.params import InitParams
from talkgs.render import Camera, rasterize


def test_hash_grid_levels_interpolation_and_outside() -> None:
    g = HashGrid2D()  # TalkingGaussian's face grid: 12 dense levels, 16 -> 38.4
    assert g.resolutions == [16, 18, 19, 21, 22, 24, 26, 28, 31, 33, 36, 39] and all(g.dense)
    mouth = HashGrid2D(base_resolution=64, max_resolution=57.6)
    assert mouth.resolutions == [64, 64, 63, 63, 62, 62, 61, 60, 60, 59, 59, 58]
    # bilinear: a level holding a linear function of its vertex positions reproduces it
    one = HashGrid2D(levels=1, base_resolution=9, max_resolution=9)
    r, s = one.resolutions[0], one.scales[0]
    with torch.no_grad():
        jj, ii = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="xy")
        one.dense_tables[0][0, 0] = 2 * (jj - 0.5) / s + 3 * (ii - 0.5) / s
    u = torch.rand(200, 2) * 0.8 + 0.1
    assert torch.allclose(one(u)[:, 0], 2 * u[:, 0] + 3 * u[:, 1], atol=1e-5)
    assert torch.count_nonzero(one(torch.tensor([[1.2, 0.5], [-0.1, 0.5]]))) == 0, "outside [0, 1]: zero features"
    # hashed levels (a table smaller than the grid) index inside the table and get gradients
    big = HashGrid2D(levels=3, base_resolution=16, max_resolution=512, log2_size=10)
    assert big.dense == [True, False, False]
    y = big(torch.rand(500, 2))
    y.square().sum().backward()
    assert y.shape == (500, 3) and big.hash_table.grad is not None and big.hash_table.grad.abs().sum() > 0
    t = TriplaneHashGrid(TriplaneHashGridConfig())
    assert t(torch.randn(7, 3) * 0.3).shape == (7, 36), "three planes, concatenated"


def _ctx(n_face: int = 60, n_mouth: int = 20, identities: int = 1, e: int = 6) -> BuildContext:
    g = torch.Generator().manual_seed(0)

    def cloud(ident: int, spec) -> tuple:  # noqa: ANN001
        n = n_mouth if 6 in spec.classes else n_face
        means = torch.randn(n, 3, generator=g) * 0.03 + torch.tensor([0.0, 0.0, 0.5])
        return means, torch.rand(n, 3, generator=g), torch.full((n, 3), -4.0)

    return BuildContext(audio_window=4, audio_dim=8, expression_dim=e, n_identities=identities, point_cloud=cloud)


def _small_cfg() -> TalkingGaussianHeadConfig:
    return TalkingGaussianHeadConfig(face_init=InitParams(points=60, max_gaussians=100), mouth_init=InitParams(points=20, max_gaussians=40), sh_degree=1)


def _view(seed: int = 0, identity: int = 0) -> FrameView:
    g = torch.Generator().manual_seed(seed)
    cond = FrameCondition(
        audio=torch.randn(4, 8, generator=g), au45=torch.tensor(1.0), viewmat=torch.eye(4), expression=torch.randn(6, generator=g),
        audio_seq=torch.randn(8, 4, 8, generator=g),
    )  # fmt: skip
    return FrameView(Camera.from_fov(40.0, 32, 32, device="cpu"), torch.rand(32, 32, 3, generator=g), cond, identity)


def test_motion_starts_as_the_identity_and_fusion_is_face_over_mouth_over_torso() -> None:
    torch.manual_seed(0)
    head = TalkingGaussianHead(_small_cfg(), _ctx())
    view = _view()
    face_off = head.face_motion(head.identities[0].face["means"], view.cond.audio_seq, head._expression(view.cond, head.identities[0]))
    for k in ("means", "quats", "log_scales", "opacity_logits"):
        assert torch.count_nonzero(face_off[k]) == 0, k
    assert torch.count_nonzero(head.mouth_motion(head.identities[0].mouth["means"], view.cond.audio_seq)["means"]) == 0
    s = RenderSettings(backend="reference")
    out = head.render(Batch([view]), TalkingGaussianOptions(branch="fuse"), s)
    m, f = head.identities[0].mouth, head.identities[0].face

    def raw(g):  # noqa: ANN001, ANN202
        return rasterize(g["means"], g["quats"], torch.exp(g["scales"]), torch.sigmoid(g["opacities"]), g["sh"], view.camera, None, sh_degree=1, backend="reference")

    rm, rf = raw(m), raw(f)
    expected = rf.rgb + (1 - rf.alpha) * (rm.rgb + (1 - rm.alpha) * view.background)
    assert torch.allclose(out.rgb[0], expected, atol=1e-5), "C = C_face + (1 - A_face)(C_mouth + (1 - A_mouth) BG)"
    assert set(out.renders) == {"face.0", "mouth.0"}


def test_branch_targets_alpha_masks_and_losses() -> None:
    from talkgs.preprocess.segment import FACE, HAIR, MOUTH

    torch.manual_seed(0)
    head = TalkingGaussianHead(_small_cfg(), _ctx())
    view = _view()
    labels = torch.zeros(1, 32, 32, dtype=torch.uint8)
    labels[0, 8:24, 8:24] = FACE
    labels[0, 4:8, 8:24] = HAIR
    labels[0, 16:20, 12:20] = MOUTH
    gt = torch.rand(1, 32, 32, 3)
    view.background = gt[0].clone()  # no cut-out: the torso frame equals the frame outside the head
    lms = torch.zeros(1, 478, 2)
    lms[0, :, 0], lms[0, :, 1] = 16.0, 18.0
    lms[0, :40, 0] = torch.linspace(11, 21, 40)
    lms[0, :40, 1] = torch.linspace(15, 21, 40)
    green = torch.tensor([0.0, 1.0, 0.0])
    batch = Batch([view], targets=gt, labels=labels, landmarks=lms, local_step=7)  # hair supervised on this step (7 % 7 == 0)
    out = head.render(batch, TalkingGaussianOptions(branch="face"), RenderSettings(backend="reference"))
    t = out["target"][0]
    assert torch.equal(t[10, 10], gt[0, 10, 10]) and torch.equal(t[18, 14], green), "face target: head pixels, the mouth is a hole"
    assert torch.equal(t[0, 0], green) and torch.equal(t[5, 10], gt[0, 5, 10])
    assert "attention" in out and out["attention"].shape == (1, 32, 32, 2)
    ctx = LossContext(outputs=out, batch=batch, head=head)
    for name, fn in head.loss_terms().items():
        assert torch.isfinite(fn(ctx)), name
    a = out["alpha"][0, ..., 0]
    m = out.extras["alpha_mask"][0].float()
    assert torch.allclose(head.loss_terms()["alpha"](ctx), ((1 - a) * m).mean() + (a * (1 - m)).mean())
    batch6 = dataclasses.replace(batch, local_step=6)  # hair ignored: render and target both green there
    out6 = head.render(batch6, TalkingGaussianOptions(branch="face"), RenderSettings(backend="reference"))
    assert torch.equal(out6["target"][0, 5, 10], green) and torch.equal(out6["rgb"][0, 5, 10], green)
    mouth = head.render(batch, TalkingGaussianOptions(branch="mouth"), RenderSettings(backend="reference"))
    mt = mouth["target"][0]
    assert torch.equal(mt[18, 14], gt[0, 18, 14]) and torch.equal(mt[10, 10], green), "mouth target: only the inside of the mouth"


def test_background_coloured_gaussians_are_made_harmless() -> None:
    torch.manual_seed(0)
    head = TalkingGaussianHead(_small_cfg(), _ctx())
    f = head.identities[0].face
    with torch.no_grad():
        f["sh"][:3, 0] = (torch.tensor([0.0, 1.0, 0.0]) - 0.5) / 0.28209479177387814
    cb = BackgroundGaussians("face", (0.0, 1.0, 0.0), mode="transparent")
    info = cb.post_backward(TalkingModel(head), None, 600, Outputs(renders={"face.0": []}))
    assert info["background_gaussians"] >= 3 and (torch.sigmoid(f["opacities"][:3]) < 0.002).all()


def test_cross_subject_pretraining_on_two_real_clips(shared_data: Path, may_segment: Path, may_features: Path, ffmpeg, tmp_path_factory, tmp_path) -> None:
    """pretrain@<V> on may + trump (one identity each, shared motion networks), then train@may
    starting from it: the shared networks are loaded, the subject's own Gaussians are its own."""
    import yaml

    from talkgs import pipeline
    from talkgs.config import load_params
    from talkgs.features import FeaturesParams, build_features
    from talkgs.preprocess.extract import ExtractParams, extract
    from talkgs.preprocess.segment import SegmentParams, segment
    from talkgs.preprocess.track import TrackParams, track
    from talkgs.train.checkpoint import load_checkpoint

    trump = tmp_path_factory.mktemp("trump")
    clip = trump / "trump_4s.mp4"  # the first 4 s of the real clip are enough for a tiny pretraining
    ffmpeg("-i", str(shared_data / "videos" / "trump_10s.mp4"), "-t", "4", "-c:v", "libx264", "-c:a", "aac", str(clip))
    extract(clip, trump / "extract", ExtractParams(resolution=128), progress=False)
    segment(trump / "extract", trump / "segment", SegmentParams(), progress=False)
    track(trump / "extract", trump / "track", TrackParams(), progress=False)
    build_features(trump / "extract", trump / "track", trump / "features", FeaturesParams(), progress=False)

    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "data" / "may").symlink_to(may_features.parent)
    (root / "data" / "trump").symlink_to(trump)
    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["subjects"] = {"may": {"video": "may.mp4"}, "trump": {"video": "trump.mp4"}}
    params["train"]["presets"]["tiny"] = {
        "resolution": 64, "init_points": 300, "max_gaussians": 400, "iteration_scale": 0.0006, "loss_weights": {"lpips": 0.0},
        "sh_degree": 1, "checkpoint_every": 1000,
    }  # fmt: skip
    params["train"]["preset"] = "tiny"
    params["train"]["variants"]["tg_multi"] = {
        **params["train"]["variants"]["talkinggaussian"], "pretrain": {"subjects": ["may", "trump"]}, "init_from": "pretrain",
        "freeze": ["mouth.net"],
    }  # fmt: skip
    params["evaluate"]["variants"] = ["tg_multi"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = load_params(root / "params.yaml")

    res = pipeline.pretrain(p, "tg_multi", root, progress=False)
    assert res["finished"] and res["subject"] == ["may", "trump"]
    pre = load_checkpoint(root / "models" / "pretrain" / "tg_multi" / "checkpoint.pt")
    assert pre["model_meta"]["n_identities"] == 2 and pre["model_meta"]["identities"] == ["may", "trump"]
    assert {"face.0", "mouth.0", "face.1", "mouth.1"} == set(pre["model_meta"]["sizes"])

    pipeline.train(p, "may", "tg_multi", root, progress=False)
    ft = load_checkpoint(root / "models" / "may" / "tg_multi" / "checkpoint.pt")
    assert ft["init_from"]["config_hash"] == pre["config_hash"] and ft["model_meta"]["n_identities"] == 1
    shared = [k for k in pre["model"] if k.startswith("head.mouth_motion.sigma.")]
    assert shared and all(torch.equal(pre["model"][k], ft["model"][k]) for k in shared), "frozen shared weights = the pretrained ones"
    moved = [k for k in pre["model"] if k.startswith("head.face_motion.sigma.")]
    assert any(not torch.equal(pre["model"][k], ft["model"][k]) for k in moved), "unfrozen shared weights went on training"
    assert "head.identities.1.face.params.means" not in ft["model"], "the other identity's Gaussians are not carried over"

    # a variant whose pretrain subject is not enabled is an error naming the fix
    params["train"]["variants"]["tg_multi"]["pretrain"]["subjects"] = ["may", "german"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from talkgs.configlib import ConfigError

    with pytest.raises(ConfigError, match="pretrain.subjects names 'german', not an enabled subject"):
        load_params(root / "params.yaml")
