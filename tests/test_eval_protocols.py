"""Protocols on real frames of may_5s (shared data): self-driven (identical render → PSNR inf / SSIM 1 /
LMD 0; a noisy render with random-weight LPIPS and SyncNet; metrics without weights are unavailable
with the reason), LMD growing with a mouth warp, ground truth and cross-driven on an mp4 with sound;
the side-by-side comparison video (synthetic)."""

from __future__ import annotations

import talkgs  # noqa: F401
import math

import cv2
import numpy as np
import pytest
import torch

from talkgs.eval.identity import IdentityParams
from talkgs.eval.metrics import is_unavailable
from talkgs.eval.protocols import evaluate_cross_driven, evaluate_ground_truth, evaluate_self_driven, read_frames, write_comparison_video

N_FRAMES = 25
SIZE = 256
FEW = IdentityParams(max_frames=6, reference_frames=4)
"""CSIM / LMD-68 on a few frames only (one dlib descriptor ~80 ms)."""


@pytest.fixture(scope="module")
def may(shared_data, tmp_path_factory):
    """First second of may_5s at 256²: ``(gt_dir, segment_dir, frames, audio, landmarks)``; label maps
    drawn from MediaPipe landmarks (face oval → face, eyes + brows → eyes, lips, mouth)."""
    from talkgs.io.media import load_audio
    from talkgs.io.video import FrameReader
    from talkgs.preprocess import facemesh as fm

    video = shared_data / "videos" / "may_5s.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found")
    frames = []
    with FrameReader(video, width=SIZE, height=SIZE, vf=f"scale={SIZE}:{SIZE}") as r:
        for f in r:
            frames.append(np.array(f))
            if len(frames) == N_FRAMES:
                break
    audio = load_audio(video, 16000)
    root = tmp_path_factory.mktemp("may_eval")
    gt_dir, labels_dir = root / "frames", root / "segment" / "labels"
    gt_dir.mkdir()
    labels_dir.mkdir(parents=True)
    lms = []
    with fm.FaceMesh(static=True) as mesh:
        for i, f in enumerate(frames):
            cv2.imwrite(str(gt_dir / f"{i:06d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            lm = mesh.process(f)
            assert lm is not None
            lms.append(lm)
            lab = np.zeros((SIZE, SIZE), np.uint8)
            for group, cls in (("face_oval", 2), ("right_eye", 4), ("left_eye", 4), ("right_brow", 4), ("left_brow", 4), ("lips_outer", 5), ("lips_inner", 6)):
                cv2.fillPoly(lab, [fm.polygon(lm, group)], cls)
            cv2.imwrite(str(labels_dir / f"{i:06d}.png"), lab)
    return gt_dir, root / "segment", frames, audio, np.stack(lms)


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No weights anywhere: an empty torch hub cache, no TALKGS_SYNCNET."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.delenv("TALKGS_SYNCNET", raising=False)


def test_self_driven_identical_render(may, no_weights) -> None:
    gt_dir, seg_dir, frames, audio, _ = may
    idx = list(range(5, N_FRAMES))  # a test split that does not start at 0: audio and labels follow the indices
    r = evaluate_self_driven(gt_dir, [(i, frames[i]) for i in idx], seg_dir, audio=audio, identity=FEW)
    assert r["self.frames"] == 20 and r["self.first_frame"] == 5 and r["self.resolution"] == "256x256"
    assert r["self.psnr_full"] == math.inf and r["self.psnr_face"] == math.inf and r["self.psnr_face_mask"] == math.inf
    assert r["self.ssim_full"] == 1.0 and r["self.ssim_face"] == 1.0
    assert r["self.lmd_mouth"] == 0.0 and r["self.lmd_face"] == 0.0
    assert r["self.aue_lower"] == 0.0 and r["self.aue_upper"] == 0.0
    assert r["self.mouth_corr"] == pytest.approx(1.0) and r["self.mouth_corr_lag"] == 0
    assert r["self.csim"] == 1.0 and r["self.lmd68_mouth"] == 0.0 and r["self.identity_frames"] == 6  # dlib, 6 of 20 frames
    assert isinstance(r["self.mouth_env_corr"], float)
    for k, what in (("self.lpips_face", "alexnet-owt"), ("self.lpips_full", "alexnet-owt"), ("self.fid", "pt_inception"), ("self.lse_c", "syncnet_v2.model"), ("self.lse_d", "syncnet_v2.model")):
        assert is_unavailable(r[k]) and what in r[k]["reason"], k
    assert "face = the bounding box" in r["protocol"]


def test_self_driven_noisy_render_with_random_weights(may, tmp_path, monkeypatch) -> None:
    from talkgs.eval.syncnet import SyncNet
    from talkgs.models.perceptual import AlexNetFeatures

    gt_dir, seg_dir, frames, audio, _ = may
    torch.manual_seed(0)
    torch.save(dict(AlexNetFeatures().state_dict()), tmp_path / "alexnet.pth")
    torch.save(SyncNet().state_dict(), tmp_path / "syncnet_v2.model")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    rng = np.random.default_rng(0)
    noisy = [np.clip(f.astype(np.int16) + rng.integers(-8, 9, f.shape), 0, 255).astype(np.uint8) for f in frames]
    ren_dir = tmp_path / "render"
    ren_dir.mkdir()
    for i, f in enumerate(noisy):
        cv2.imwrite(str(ren_dir / f"{i:06d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    r = evaluate_self_driven(gt_dir, ren_dir, seg_dir, audio=audio, alexnet_weights=tmp_path / "alexnet.pth", syncnet_weights=tmp_path / "syncnet_v2.model", fid=False, identity=FEW)
    # uniform integer noise in [-8, 8] (clipped at the range ends): MSE ≈ 24/255²  → ≈ 34.3 dB
    assert r["self.psnr_full"] == pytest.approx(10 * math.log10(255**2 / 24.0), abs=0.3)
    assert 0.5 < r["self.ssim_face"] < 1.0 and r["self.lpips_face"] > 0 and r["self.lpips_full"] > 0
    assert r["self.face_detected_render"] == 1.0 and 0 < r["self.lmd_mouth"] < 2.0
    assert 0.97 < r["self.csim"] < 1.0 and 0 < r["self.lmd68_mouth"] < 2.0  # noise: same identity, mouth barely moves
    assert isinstance(r["self.lse_c"], float) and r["self.lse_c"] >= 0 and -15 <= r["self.lse_offset"] <= 15
    assert "self.fid" not in r


def _warp_mouth(img: np.ndarray, lm: np.ndarray, strength: float) -> np.ndarray:
    """Stretch the image vertically around the mouth centre (smooth radial falloff): the mouth opens."""
    from talkgs.eval.landmarks import MOUTH_IDX

    c = lm[MOUTH_IDX, :2].mean(0)
    radius = 1.2 * np.ptp(lm[MOUTH_IDX, 0])
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float32)
    d = np.sqrt((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / radius
    w = np.clip(1 - d, 0, 1) ** 2
    map_y = (c[1] + (ys - c[1]) / (1 + strength * w)).astype(np.float32)
    return cv2.remap(img, xs, map_y, cv2.INTER_LINEAR)


def test_lmd_grows_with_a_mouth_warp(may) -> None:
    from talkgs.eval.landmarks import detect_landmarks, lmd

    _, _, frames, _, lms = may
    f, lm = frames[12], lms[12]
    warped = [_warp_mouth(f, lm, s) for s in (0.0, 0.25, 0.6)]
    got = detect_landmarks([f, *warped])
    ref = np.repeat(got[:1], 3, 0)
    d = [lmd(got[k + 1 : k + 2], ref[:1], "mouth") for k in range(3)]
    assert d[0] == 0.0 and 0.3 < d[1] < d[2]
    assert lmd(got[3:4], ref[:1], "face") < d[2]  # the rest of the face barely moves


def test_ground_truth_and_cross_driven_from_an_mp4(may, tmp_path, no_weights) -> None:
    from talkgs.eval.syncnet import SyncNet
    from talkgs.io.media import VideoWriter, write_wav

    gt_dir, _, frames, audio, _ = may
    g = evaluate_ground_truth(gt_dir, range(N_FRAMES), audio, reference=frames[::8], identity=FEW)
    assert g["gt.frames"] == N_FRAMES and g["gt.face_detected"] == 1.0 and g["gt.mouth_open_std"] > 0
    assert g["gt.csim_ref"] > 0.97 and g["gt.identity_frames"] == 6 and g["gt.identity_reference_frames"] == 4
    assert isinstance(g["gt.mouth_env_corr"], float) and is_unavailable(g["gt.lse_c"])

    write_wav(tmp_path / "a.wav", audio[: N_FRAMES * 640], 16000)
    with VideoWriter(tmp_path / "driven.mp4", 25, audio=tmp_path / "a.wav") as w:
        for f in frames:
            w.write(f)
    assert len(read_frames(tmp_path / "driven.mp4")) == N_FRAMES
    c = evaluate_cross_driven({"own": tmp_path / "driven.mp4"}, identity=FEW)  # the mp4's own sound drives the measures
    assert c["cross.own.frames"] == N_FRAMES and c["cross.own.face_detected"] == 1.0
    assert is_unavailable(c["cross.csim"]) and "no reference" in c["cross.csim"]["reason"]
    assert isinstance(c["cross.own.mouth_env_corr"], float) and c["cross.mouth_env_corr"] == c["cross.own.mouth_env_corr"]
    assert is_unavailable(c["cross.own.lse_c"]) and is_unavailable(c["cross.lse_c"]) and "syncnet_v2.model" in c["cross.lse_c"]["reason"]
    torch.manual_seed(0)
    torch.save(SyncNet().state_dict(), tmp_path / "s.model")
    ref = np.random.default_rng(1).normal(size=128)  # a precomputed reference descriptor is accepted too
    c = evaluate_cross_driven({"own": tmp_path / "driven.mp4"}, syncnet_weights=tmp_path / "s.model", reference=frames[::8], identity=FEW)
    assert isinstance(c["cross.lse_c"], float) and c["cross.lse_d"] == c["cross.own.lse_d"] > 0
    assert c["cross.csim"] == c["cross.own.csim"] > 0.97 and c["cross.own.identity_frames"] == 6 and c["cross.identity_reference_frames"] == 4
    c = evaluate_cross_driven({"own": tmp_path / "driven.mp4"}, reference=ref, identity=IdentityParams(max_frames=1))
    assert abs(c["cross.own.csim"]) < 0.5 and c["cross.own.identity_frames"] == 1
    with pytest.raises(ValueError, match="metric key"):
        evaluate_cross_driven({"bad.name": tmp_path / "driven.mp4"})


def test_comparison_video_has_three_panels_and_sound(tmp_path) -> None:
    from conftest import speech_like_wav

    from talkgs.io.video import probe

    rng = np.random.default_rng(0)
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    gts = {}
    for i in range(10, 20):
        gts[i] = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
        cv2.imwrite(str(gt_dir / f"{i:06d}.jpg"), gts[i])
    ren = [(i, np.clip(f.astype(int) + 20, 0, 255).astype(np.uint8)) for i, f in gts.items()]
    wav = speech_like_wav(tmp_path / "s.wav", 1.0)
    res = write_comparison_video(gt_dir, ren, tmp_path / "cmp.mp4", audio=wav)
    info = probe(tmp_path / "cmp.mp4")
    assert res["frames"] == 10 and (info.width, info.height) == (144, 32) and info.has_audio and info.video_codec == "h264"
    assert info.duration_s is not None and abs(info.duration_s - 0.4) < 0.1


def test_end_to_end_on_a_tiny_trained_model(tiny_subject_dir, tmp_path, no_weights) -> None:
    """train → evaluate_variant (test render, foreign-audio render, self/cross metrics, efficiency,
    metrics file, comparison video) → ground truth → tables. 32² synthetic frames: no real face, so the
    landmark metrics are unavailable with the reason."""
    import json

    from conftest import speech_like_wav, tiny_variant_of

    from talkgs.eval import build_tables, evaluate_subject_ground_truth, evaluate_variant, metrics_path
    from talkgs.eval.run import test_split
    from talkgs.io.video import probe
    from talkgs.train.loop import train

    model = tmp_path / "models" / "tiny" / "static"
    timings = tmp_path / "timings" / "train.json"
    train(tiny_subject_dir, model, tiny_variant_of("static", steps_per_phase=2), progress=False, timings=timings)
    wav = speech_like_wav(tmp_path / "foreign.wav", 0.5, seed=3)
    renders = tmp_path / "renders" / "tiny" / "static"
    m = evaluate_variant(tiny_subject_dir, model, renders, metrics_path(tmp_path / "metrics", "tiny", "static"),
                         subject="tiny", variant="static", foreign_audios={"other": wav}, train_timings=timings)  # fmt: skip
    idx, _ = test_split(tiny_subject_dir)
    assert m["self.frames"] == len(idx) and m["self.first_frame"] == idx[0]
    assert 0 < m["self.psnr_full"] < 60 and -1 <= m["self.ssim_full"] <= 1
    assert is_unavailable(m["self.lmd_mouth"]) and "MediaPipe finds the face" in m["self.lmd_mouth"]["reason"]
    assert m["train.time_s"] > 0 and m["render.fps"] > 0 and m["cross.other.frames"] == 12
    assert is_unavailable(m["cross.lse_c"]) and "self-driven" in m["protocol"] and "cross-driven" in m["protocol"]
    assert m["train.time_s"] == json.loads(timings.read_text())["elapsed_s"]
    assert not (renders / "timing.json").exists(), "no wall-clock value in the renders (a DVC output)"
    info = probe(renders / "comparison.mp4")
    assert info.width == 3 * 32 and info.has_audio
    assert probe(renders / "cross_other.mp4").has_audio
    g = evaluate_subject_ground_truth(tiny_subject_dir, tmp_path / "metrics" / "tiny" / "ground_truth.json", subject="tiny")
    assert g["variant"] == "ground_truth" and g["gt.frames"] == len(idx)
    out = build_tables(tmp_path / "metrics", tmp_path / "metrics" / "tables")
    md = out["self_driven.md"].read_text()
    assert "| Ground Truth |" in md and "| static |" in md and "MediaPipe finds the face" in md
    assert "| static |" in out["cross_driven.md"].read_text()
