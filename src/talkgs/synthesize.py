"""Synthesis: render a trained head driven by any audio, and render the test split.

- :func:`synthesize`: the trained model driven by a new audio file (features through the same
  encoder as training), head poses, blinks and torso frames taken from the training frames
  looped back and forth, composited on the torso image, written as H.264 + AAC with the audio.
- :func:`render_test`: the held-out test frames (self-driven: their own audio windows, poses,
  blinks, torso), optionally side by side with the ground truth, with the clip's audio.

Both report frames/s (model + rasteriser, without decoding and encoding) and overall.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkgs.io.media import VideoWriter, read_wav, write_wav
from talkgs.train.data import SubjectData, audio_features_for_wav, load_subject, pingpong
from talkgs.train.loop import load_model, render_eps2d, render_frame, render_settings

log = logging.getLogger(__name__)

__all__ = ["synthesize", "render_test", "load_for_render"]


def load_for_render(
    subject: str | Path | SubjectData, model_dir: str | Path, *, resolution: int | None = None, device: str | torch.device = "cpu"
) -> tuple[Any, Any, SubjectData, dict[str, Any]]:
    """``(model, variant, data, render_opts)``: the trained model of ``model_dir`` (prepared for
    inference), the subject at ``resolution`` (None: the extracted resolution) and the keyword
    options of :func:`~talkgs.train.loop.render_frame` for that resolution (settings with the
    scaled dilation, background)."""
    model, variant, ckpt = load_model(Path(model_dir) / "checkpoint.pt", device=device)
    if isinstance(subject, SubjectData):
        data = subject
    else:
        # frames decoded when rendered, resized as read: memory flat in clip length
        data = load_subject(subject, resolution=resolution, audio_feature=variant.audio_feature, load_labels=False, lazy=True)
    if resolution is not None and resolution != data.width:
        data = data.resized(resolution)
    with torch.no_grad():
        model.prepare()
    return model, variant, data, _render_opts(variant, ckpt, data)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


class _Bar:
    def __init__(self, enabled: bool, total: int, what: str) -> None:
        from talkgs.progress import progress_bar

        self.bar = progress_bar(enabled, "frames", count="frame")
        self.bar.start()
        self.task = self.bar.add_task(what, total=total, rate=0.0)

    def update(self, n: int, fps: float) -> None:
        self.bar.update(self.task, completed=n, rate=fps)

    def close(self) -> None:
        self.bar.stop()


@torch.no_grad()
def synthesize(
    subject: str | Path | SubjectData,
    model_dir: str | Path,
    audio_wav: str | Path,
    out_mp4: str | Path,
    *,
    resolution: int | None = None,
    device: str | torch.device = "cpu",
    max_frames: int | None = None,
    progress: bool = True,
    audio_features: torch.Tensor | str | Path | None = None,
) -> dict[str, Any]:
    """Render the trained head of ``model_dir`` driven by ``audio_wav`` into ``out_mp4``.

    Args:
        subject: the subject folder ``data/<S>`` (poses, blinks, torso frames) or its data.
        model_dir: folder with ``checkpoint.pt`` (``models/<S>/<V>``).
        audio_wav: any audio file ffmpeg reads; its features come from the features stage's
            encoder (the variant's ``model.audio.feature``).
        out_mp4: output video (H.264 + AAC), written atomically.
        resolution: output size (None: the extracted resolution).
        max_frames: render at most this many frames.
        audio_features: precomputed windows of ``audio_wav``: a ``[T, W, C]`` tensor or the
            ``audio_<feature>.parquet`` the ``audio_features`` stage wrote (skips encoding).

    Returns:
        ``{"frames", "fps" (render frames/s), "fps_total", "seconds", "out"}``.
    """
    from talkgs.configlib import PIXELS
    from talkgs.io.atomic import sweep_temp

    PIXELS.check(resolution, "resolution")  # before the model loads: an odd size fails only at the encoder
    t_start = time.perf_counter()
    sweep_temp(out_mp4)  # what a killed earlier run left next to it
    model, variant, data, opts = load_for_render(subject, model_dir, resolution=resolution, device=device)
    feature = variant.audio_feature
    if isinstance(audio_features, (str, Path)):
        from talkgs.features.cache import read_audio_table

        table = read_audio_table(Path(audio_features), encoder=feature)
        fps = table.meta.get("fps")
        if fps is not None and abs(float(fps) - data.fps) > 1e-6:
            raise ValueError(f"{audio_features}: features at {fps} fps, the subject is at {data.fps} fps; recompute them")
        feats = torch.from_numpy(np.array(table.features, np.float32))
    elif audio_features is not None:
        feats = audio_features
    else:
        feats = audio_features_for_wav(audio_wav, feature, fps=data.fps, audio_params=data.info.get("audio_params"))
    if feats.ndim != 3 or tuple(feats.shape[1:]) != (data.audio_window, data.audio_dim):
        raise ValueError(
            f"audio features of {audio_wav} are {list(feats.shape)}, the model was trained on windows "
            f"[{data.audio_window}, {data.audio_dim}] of {variant.audio_feature!r}"
        )
    n = len(feats) if max_frames is None else min(len(feats), max_frames)
    train = data.train_span.tolist()  # poses and blinks of the whole training part (smooth where tracking failed)
    bar = _Bar(progress, n, f"synthesize {Path(out_mp4).name}")
    t_render = 0.0
    with VideoWriter(out_mp4, data.fps, audio=audio_wav) as w:
        for k in range(n):
            j = train[pingpong(k, len(train))]
            t0 = time.perf_counter()
            out = render_frame(model, data, j, audio_source=feats, audio_index=k, device=device, **opts)
            frame = _to_uint8(out.rgb[0])
            t_render += time.perf_counter() - t0
            w.write(frame)
            bar.update(k + 1, (k + 1) / max(t_render, 1e-9))
    bar.close()
    total = time.perf_counter() - t_start
    res = {"frames": n, "fps": round(n / max(t_render, 1e-9), 2), "fps_total": round(n / max(total, 1e-9), 2), "seconds": round(total, 2), "out": str(out_mp4), "resolution": data.width}
    log.info("synthesized %d frames to %s: %.1f frames/s rendering (%.1f overall)", n, out_mp4, res["fps"], res["fps_total"])
    return res


def _render_opts(variant: Any, ckpt: dict[str, Any], data: SubjectData) -> dict[str, Any]:
    d = ckpt.get("data", {})
    res = d.get("resolution") or (d.get("subjects") or [{}])[0].get("resolution") or [data.width]
    train_size = int(res[0])
    return {"background": variant.render.background, "settings": render_settings(variant, render_eps2d(variant, train_size, data.width))}


@torch.no_grad()
def render_test(
    subject: str | Path | SubjectData,
    model_dir: str | Path,
    out_mp4: str | Path | None,
    *,
    side_by_side: bool = True,
    resolution: int | None = None,
    device: str | torch.device = "cpu",
    frames_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Render the test part of the clip (self-driven) into ``out_mp4`` (with the clip's audio of
    those frames): every frame of it, also those where tracking found no face (listed as
    ``excluded``: the metrics leave them out; the video and the sync measures need them).

    Args:
        side_by_side: ground truth on the left, render on the right.
        frames_dir: also write every rendered frame as ``%06d.png`` (frame index of the clip)
            into this folder (atomically), e.g. for metrics.

    Returns:
        ``{"frames", "fps", "out", "frames_dir", "first_frame", "resolution", "excluded"}``.
    """
    import cv2

    from talkgs.io.atomic import atomic_dir

    model, variant, data, opts = load_for_render(subject, model_dir, resolution=resolution, device=device)
    test = data.test_span.tolist()  # the contiguous test part (video, sync); excluded frames are left to the metrics
    if not test:
        raise ValueError(f"{data.name}: the test split is empty")
    renders: list[np.ndarray] = []
    t_render = 0.0
    bar = _Bar(progress, len(test), f"render test frames of {data.name}")
    for k, i in enumerate(test):
        t0 = time.perf_counter()
        out = render_frame(model, data, i, device=device, **opts)
        renders.append(_to_uint8(out.rgb[0]))
        t_render += time.perf_counter() - t0
        bar.update(k + 1, (k + 1) / max(t_render, 1e-9))
    bar.close()
    fps = len(test) / max(t_render, 1e-9)
    if frames_dir is not None:
        with atomic_dir(frames_dir) as tmp:
            for i, img in zip(test, renders):
                cv2.imwrite(str(tmp / f"{i:06d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if out_mp4 is not None:
        with tempfile.TemporaryDirectory() as td:
            audio = None
            if data.audio_path is not None and Path(data.audio_path).is_file():
                samples, sr = read_wav(data.audio_path)
                a0, a1 = int(round(test[0] / data.fps * sr)), int(round((test[-1] + 1) / data.fps * sr))
                audio = Path(td) / "test.wav"
                write_wav(audio, samples[a0:a1], sr)
            with VideoWriter(out_mp4, data.fps, audio=audio) as w:
                for i, img in zip(test, renders):
                    if side_by_side:
                        gt = data.images[i].numpy()
                        img = np.concatenate([gt, img], axis=1)
                    w.write(np.ascontiguousarray(img))
    log.info("rendered %d test frames of %s at %d px: %.1f frames/s", len(test), data.name, data.width, fps)
    return {"frames": len(test), "fps": round(fps, 2), "out": None if out_mp4 is None else str(out_mp4),
            "frames_dir": None if frames_dir is None else str(frames_dir), "first_frame": test[0], "resolution": data.width,
            "excluded": [int(i) for i in data.excluded.tolist() if i >= test[0]]}  # type: ignore[union-attr]  # fmt: skip
