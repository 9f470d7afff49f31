"""A tiny synthetic subject for tests and benchmarks (no preprocessing needed).

A flat-shaded "head" disc in front of a gradient background; its mouth opens with the audio
amplitude, its eyes close with AU45; the camera circles slightly. Landmarks are points on the
front of an ellipsoid, with the lip and face-oval landmark groups placed where the drawing has
them, so region crops land on the mouth and face.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from talkgs.train.data import SubjectData

__all__ = ["synthetic_subject"]


def _look_at_viewmat(yaw: float, pitch: float, dist: float) -> np.ndarray:
    """World-to-camera for a camera orbiting the origin at ``dist``, looking at it (world z into the head)."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    R = rx @ ry
    vm = np.eye(4)
    vm[:3, :3] = R
    vm[:3, 3] = [0.0, 0.0, dist]
    return vm


def synthetic_subject(
    n_frames: int = 16,
    size: int = 32,
    *,
    audio_window: int = 4,
    audio_dim: int = 8,
    n_test: int = 2,
    seed: int = 0,
) -> SubjectData:
    """A :class:`SubjectData` of ``n_frames`` frames at ``size x size``."""
    import cv2

    from talkgs.features.signals import EXPRESSION_NAMES
    from talkgs.preprocess import facemesh as fm
    from talkgs.preprocess.segment import BACKGROUND, EYES, FACE, MOUTH

    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)
    amp = 0.5 + 0.5 * np.sin(t * 0.9)  # mouth opening 0..1
    au45 = np.where(t % 7 == 3, 4.0, 0.3).astype(np.float32)
    audio = (amp[:, None, None] * np.linspace(1, 0.2, audio_dim)[None, None, :]).repeat(audio_window, 1)
    audio = (audio + 0.05 * rng.standard_normal(audio.shape)).astype(np.float32)
    # canonical landmarks on the front of an ellipsoid (metres); z into the head
    n_lm = fm.NUM_LANDMARKS
    u = rng.uniform(-1.0, 1.0, (n_lm, 2))
    canon = np.stack([0.07 * u[:, 0], 0.09 * u[:, 1], -0.06 * np.sqrt(np.clip(1 - 0.5 * (u**2).sum(1), 0.05, None))], -1)
    for k, idx in enumerate(fm.LIPS_OUTER):
        a = 2 * math.pi * k / len(fm.LIPS_OUTER)
        canon[idx] = [0.025 * math.cos(a), 0.045 + 0.01 * math.sin(a), -0.06]
    for k, idx in enumerate(fm.FACE_OVAL):
        a = 2 * math.pi * k / len(fm.FACE_OVAL)
        canon[idx] = [0.07 * math.cos(a), 0.09 * math.sin(a), -0.02]
    f = size * 2.5
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float64)
    yy, xx = np.mgrid[0:size, 0:size]
    plate = np.stack([40 + 100 * xx / size, 60 + 80 * yy / size, 120 + 0 * xx], -1).astype(np.uint8)
    images, labels, viewmats, lms = [], [], [], []
    for i in range(n_frames):
        vm = _look_at_viewmat(0.15 * math.sin(i * 0.4), 0.08 * math.cos(i * 0.3), 0.5)
        cam = canon @ vm[:3, :3].T + vm[:3, 3]
        uv = cam[:, :2] / cam[:, 2:3] * f + size / 2
        img = plate.copy()
        lab = np.full((size, size), BACKGROUND, np.uint8)
        c = (vm[:3, :3] @ np.array([0.0, 0.0, 0.0]) + vm[:3, 3])
        cu = c[:2] / c[2] * f + size / 2
        r = 0.085 / c[2] * f
        center = (int(round(cu[0] * 16)), int(round(cu[1] * 16)))
        axes = (int(round(r * 0.85 * 16)), int(round(r * 16)))
        cv2.ellipse(img, center, axes, 0, 0, 360, (225, 180, 150), -1, cv2.LINE_AA, shift=4)
        cv2.ellipse(lab, center, axes, 0, 0, 360, int(FACE), -1, shift=4)
        lip = uv[list(fm.LIPS_OUTER)].mean(0)
        mouth_axes = (int(round(0.35 * r * 16)), int(round((0.04 + 0.2 * amp[i]) * r * 16)))
        mc = (int(round(lip[0] * 16)), int(round(lip[1] * 16)))
        cv2.ellipse(img, mc, mouth_axes, 0, 0, 360, (90, 20, 30), -1, cv2.LINE_AA, shift=4)
        cv2.ellipse(lab, mc, mouth_axes, 0, 0, 360, int(MOUTH), -1, shift=4)
        for sx in (-1, 1):
            ec = (int(round((cu[0] + sx * 0.35 * r) * 16)), int(round((cu[1] - 0.25 * r) * 16)))
            ea = (int(round(0.15 * r * 16)), max(1, int(round(0.1 * r * (1 - au45[i] / 5) * 16))))
            cv2.ellipse(img, ec, ea, 0, 0, 360, (30, 30, 40), -1, cv2.LINE_AA, shift=4)
            cv2.ellipse(lab, ec, ea, 0, 0, 360, int(EYES), -1, shift=4)
        images.append(img)
        labels.append(lab)
        viewmats.append(vm)
        lms.append(uv)
    n_train = n_frames - n_test
    # upper-face signals: brows follow a slow wave, eye openness the blinks (no RNG: the draws above stay as they were)
    brow = 0.5 * np.sin(t * 0.3)
    eye = 1.0 - au45 / 5.0
    expression = np.stack([brow, brow, 0.5 * brow, -brow, eye, eye], -1).astype(np.float32)
    return SubjectData(
        name="synthetic",
        images=torch.from_numpy(np.stack(images)),
        backgrounds=torch.from_numpy(np.repeat(plate[None], n_frames, 0)),
        plate=torch.from_numpy(plate),
        labels=torch.from_numpy(np.stack(labels)),
        viewmats=torch.from_numpy(np.stack(viewmats).astype(np.float32)),
        K=torch.from_numpy(K.astype(np.float32)),
        landmarks=torch.from_numpy(np.stack(lms).astype(np.float32)),
        canonical_landmarks=torch.from_numpy(canon.astype(np.float32)),
        au45=torch.from_numpy(au45),
        audio=torch.from_numpy(audio),
        train_idx=torch.arange(0, n_train),
        test_idx=torch.arange(n_train, n_frames),
        fps=25.0,
        source_size=size,
        audio_feature="synthetic",
        info={"mouth_open": amp.tolist(), "expression_names": list(EXPRESSION_NAMES)},
        expression=torch.from_numpy(expression),
    )


def write_subject_folder(data: SubjectData, root, wav, *, audio_window: int = 4, n_mels: int = 8, undetected=()) -> SubjectData:  # noqa: ANN001
    """Write ``data`` as a subject folder in the pipeline's layout (``extract/``, ``segment/``,
    ``features/`` with real Parquet tables; audio features of ``wav`` through the features
    stage's mel encoder), so tests can exercise :func:`~talkgs.train.data.load_subject` and the
    synthesis entry points on disk. ``undetected``: frames written as where the face mesh failed
    (``detected`` false). Returns ``data`` with the encoder's audio windows.
    """
    import json
    from pathlib import Path

    import cv2

    from talkgs.features.audio import AudioEncoderParams, encode_wav
    from talkgs.features.cache import FramesTable, write_audio_table, write_frames_table
    from talkgs.features.signals import EXPRESSION_NAMES
    from talkgs.io.media import read_wav, write_wav

    root = Path(root)
    n = data.n_frames
    n_train = len(data.train_idx)
    (root / "extract" / "frames").mkdir(parents=True, exist_ok=True)
    (root / "segment" / "torso").mkdir(parents=True, exist_ok=True)
    (root / "segment" / "labels").mkdir(parents=True, exist_ok=True)
    (root / "features").mkdir(parents=True, exist_ok=True)
    samples, sr = read_wav(wav)
    need = int(round(n / data.fps * sr))
    samples = np.pad(samples, (0, max(0, need - len(samples))))[:need]
    write_wav(root / "extract" / "audio.wav", samples, sr)
    for i in range(n):
        cv2.imwrite(str(root / "extract" / "frames" / f"{i:06d}.jpg"), cv2.cvtColor(data.images[i].numpy(), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "segment" / "torso" / f"{i:06d}.jpg"), cv2.cvtColor(data.backgrounds[i].numpy(), cv2.COLOR_RGB2BGR))
        if data.labels is not None:
            cv2.imwrite(str(root / "segment" / "labels" / f"{i:06d}.png"), data.labels[i].numpy())
    cv2.imwrite(str(root / "segment" / "background.png"), cv2.cvtColor(data.plate.numpy(), cv2.COLOR_RGB2BGR))
    meta = {
        "output": {"frames": n, "fps": data.fps, "width": data.width, "height": data.height, "frame_pattern": "frames/%06d.jpg",
                   "audio": "audio.wav", "sample_rate": sr},
        "split": {"n_train": n_train, "n_test": n - n_train, "train": [0, n_train], "test": [n_train, n]},
    }  # fmt: skip
    (root / "extract" / "meta.json").write_text(json.dumps(meta))
    K = data.K.numpy()
    lm3 = np.concatenate([data.landmarks.numpy(), np.zeros((n, data.landmarks.shape[1], 1), np.float32)], -1)
    table = FramesTable(
        time_s=np.arange(n) / data.fps,
        split=np.where(np.arange(n) < n_train, "train", "test").astype(object),
        detected=~np.isin(np.arange(n), np.asarray(undetected, np.int64)),
        world_to_camera=data.viewmats.numpy(),
        intrinsics=np.tile(np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], np.float32), (n, 1)),
        landmarks=lm3,
        landmark_motion=np.zeros_like(lm3),
        blink=data.au45.numpy(),
        eye_aspect_ratio=np.full(n, 0.3, np.float32),
        expression=data.expression.numpy() if data.expression is not None and data.expression.shape[1] == len(EXPRESSION_NAMES)
        else np.zeros((n, len(EXPRESSION_NAMES)), np.float32),
        mouth_open=np.asarray(data.info.get("mouth_open", np.zeros(n)), np.float32),
        reproj_error_px=np.zeros(n, np.float32),
        meta={"fps": data.fps, "image_size": [data.width, data.height], "n_train": n_train, "expression_names": list(EXPRESSION_NAMES),
              "canonical_landmarks": data.canonical_landmarks.numpy().tolist()},
    )  # fmt: skip
    write_frames_table(root / "features" / "frames.parquet", table)
    params = AudioEncoderParams(name="mel", window=audio_window, n_mels=n_mels, fps=data.fps)
    feats = encode_wav(root / "extract" / "audio.wav", params, n_frames=n)
    import dataclasses as _dc

    write_audio_table(root / "features" / "audio_mel.parquet", feats, {"encoder": "mel", "fps": data.fps, "params": _dc.asdict(params)})
    from dataclasses import replace

    return replace(data, audio=torch.from_numpy(feats), audio_feature="mel", info={**data.info, "audio_params": _dc.asdict(params)})
