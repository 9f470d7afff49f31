"""One call per evaluate stage: render, measure, write the metrics file (and the comparison video).

- :func:`evaluate_variant` -- for ``(subject, variant)``: render the test split
  (:func:`talkgs.synthesize.render_test`), the foreign audios (:func:`talkgs.synthesize.synthesize`),
  run the self- and cross-driven protocols, read the training time (the run's timings file) and
  measure the render FPS, write
  ``metrics/<S>/<V>.json`` and ``renders/<S>/<V>/comparison.mp4``.
- :func:`evaluate_subject_ground_truth` -- ``metrics/<S>/ground_truth.json`` (the tables'
  "Ground Truth" row: the real test frames' sync and mouth-motion measures).

Layout of ``renders_dir`` (``renders/<S>/<V>/``)::

    test/%06d.png        rendered test frames (frame index of the clip)
    comparison.mp4       ground truth | render | error heatmap, with the test audio
    cross_<audio>.mp4    the subject driven by each foreign audio (H.264 + AAC)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkgs.eval.identity import IdentityParams

log = logging.getLogger(__name__)

__all__ = ["EvalWeights", "evaluate_variant", "evaluate_subject_ground_truth", "test_split", "identity_reference"]


@dataclass(frozen=True)
class EvalWeights:
    """Weight files of the metrics that need them (None: each metric's default location; absent →
    the metric is written as unavailable with the reason)."""

    alexnet: str | None = None
    lpips_linear: str | None = None
    syncnet: str | None = None
    inception: str | None = None


def test_split(subject_dir: str | os.PathLike[str]) -> tuple[list[int], float]:
    """``(test frame indices, fps)`` from ``extract/meta.json`` (the last 1/11 of the clip)."""
    p = Path(subject_dir) / "extract" / "meta.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run the extract stage of this subject first")
    meta = json.loads(p.read_text())
    a, b = meta["split"]["test"]
    if b <= a:
        raise ValueError(f"{p}: the test split [{a}, {b}) is empty")
    return list(range(int(a), int(b))), float(meta["output"]["fps"])


test_split.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def identity_reference(subject_dir: str | os.PathLike[str], n: int) -> list[tuple[int, Any]]:
    """``n`` evenly spaced training frames ``[(index, uint8 [H, W, 3])]`` of the subject (the
    training split of ``extract/meta.json``, read from ``extract/frames``): the identity the
    cross-driven CSIM compares with (:func:`talkgs.eval.identity.reference_descriptor`)."""
    from talkgs.eval.identity import subsample
    from talkgs.eval.protocols import read_frames

    p = Path(subject_dir) / "extract" / "meta.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run the extract stage of this subject first")
    a, b = json.loads(p.read_text())["split"]["train"]
    if b <= a:
        raise ValueError(f"{p}: the training split [{a}, {b}) is empty")
    idx = [int(a) + int(k) for k in subsample(int(b) - int(a), n)]
    return read_frames(Path(subject_dir) / "extract" / "frames", idx)


def evaluate_variant(
    subject_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    renders_dir: str | os.PathLike[str],
    metrics_json: str | os.PathLike[str],
    *,
    subject: str,
    variant: str,
    foreign_audios: Mapping[str, str | os.PathLike[str]] | None = None,
    foreign_features: Mapping[str, str | os.PathLike[str]] | None = None,
    resolution: int | None = None,
    weights: EvalWeights = EvalWeights(),
    device: Any = "cpu",
    fid: bool = True,
    comparison_video: bool = True,
    progress: bool = False,
    extra: Mapping[str, Any] | None = None,
    train_timings: str | os.PathLike[str] | None = None,
    identity: IdentityParams = IdentityParams(),
) -> dict[str, Any]:
    """Evaluate a trained ``(subject, variant)`` and write its metrics file; returns the metrics.

    Args:
        subject_dir: ``data/<S>`` (extract, segment, features).
        model_dir: ``models/<S>/<V>`` (checkpoint.pt).
        renders_dir: ``renders/<S>/<V>`` (see the module docstring).
        metrics_json: ``metrics/<S>/<V>.json`` (:func:`talkgs.eval.report.metrics_path`).
        foreign_audios: audio name → wav for the cross-driven protocol (none: self-driven only).
        foreign_features: audio name → its ``audio_<feature>.parquet`` from the audio_features
            stage (skips re-encoding the audio).
        resolution: render (and evaluate) at this size (None: the extracted resolution).
        extra: more flat keys for the metrics file (e.g. the few-shot budget).
        train_timings: the training run's timings json (``train.time_s``; None: not reported).
        identity: CSIM / LMD-68 settings (dlib; the cross-driven reference frames).

    No timing is written into ``renders_dir``: the render speed (``render.fps``, forward +
    rasterisation frames/s of the test render) goes into the metrics file only, so a rerun writes
    the same renders.
    """
    from talkgs.eval.metrics import efficiency_metrics
    from talkgs.eval.protocols import evaluate_cross_driven, evaluate_self_driven, write_comparison_video
    from talkgs.eval.report import write_metrics
    from talkgs.synthesize import render_test, synthesize

    subject_dir, model_dir, renders_dir = Path(subject_dir), Path(model_dir), Path(renders_dir)
    idx, fps = test_split(subject_dir)
    audio = subject_dir / "extract" / "audio.wav"
    res = render_test(subject_dir, model_dir, None, frames_dir=renders_dir / "test", resolution=resolution, device=device, progress=progress)
    timing = {"fps": res["fps"], "frames": res["frames"], "resolution": res.get("resolution"), "device": str(device)}
    self_m = evaluate_self_driven(
        subject_dir / "extract" / "frames", renders_dir / "test", subject_dir / "segment", audio=audio, fps=fps,
        alexnet_weights=weights.alexnet, lpips_linear_weights=weights.lpips_linear, syncnet_weights=weights.syncnet,
        inception_weights=weights.inception, fid=fid, device=device, exclude=res["excluded"], identity=identity,
    )  # fmt: skip
    if self_m["self.first_frame"] != idx[0] or self_m["self.frames"] != len(idx):
        raise ValueError(f"{renders_dir / 'test'}: rendered frames {self_m['self.first_frame']}.. ({self_m['self.frames']}) are not the test split {idx[0]}..{idx[-1]}")
    if comparison_video:
        write_comparison_video(subject_dir / "extract" / "frames", renders_dir / "test", renders_dir / "comparison.mp4", audio=audio, fps=fps)
    parts: list[Mapping[str, Any]] = [self_m]
    if foreign_audios:
        renders = {}
        for name, wav in foreign_audios.items():
            out = renders_dir / f"cross_{name}.mp4"
            feats = (foreign_features or {}).get(name)
            synthesize(subject_dir, model_dir, wav, out, resolution=resolution, device=device, progress=progress, audio_features=feats)
            renders[name] = out
        reference = identity_reference(subject_dir, identity.reference_frames)
        parts.append(evaluate_cross_driven(renders, dict(foreign_audios), fps=fps, syncnet_weights=weights.syncnet, device=device, reference=reference, identity=identity))
    parts.append(efficiency_metrics(train_timings, timing))
    if extra:
        parts.append(dict(extra))
    return write_metrics(metrics_json, *parts, subject=subject, variant=variant)


def evaluate_subject_ground_truth(
    subject_dir: str | os.PathLike[str],
    metrics_json: str | os.PathLike[str],
    *,
    subject: str,
    syncnet_weights: str | None = None,
    device: Any = "cpu",
    identity: IdentityParams = IdentityParams(),
) -> dict[str, Any]:
    """Write ``metrics/<S>/ground_truth.json``: LSE-C/D, mouth-envelope correlation and mouth
    motion of the real test frames, and their CSIM vs the training frames (the ceiling of the
    cross-driven CSIM) (:func:`talkgs.eval.protocols.evaluate_ground_truth`)."""
    from talkgs.eval.protocols import evaluate_ground_truth
    from talkgs.eval.report import GROUND_TRUTH, write_metrics

    subject_dir = Path(subject_dir)
    idx, fps = test_split(subject_dir)
    m = evaluate_ground_truth(
        subject_dir / "extract" / "frames", idx, subject_dir / "extract" / "audio.wav", fps=fps, syncnet_weights=syncnet_weights, device=device,
        reference=identity_reference(subject_dir, identity.reference_frames), identity=identity,
    )  # fmt: skip
    return write_metrics(metrics_json, m, subject=subject, variant=GROUND_TRUTH)
