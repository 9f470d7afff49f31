"""Evaluation cost per metric: ms per frame (or per clip) at a given resolution.

Usage::

    .venv/bin/python benchmarks/eval.py [--res 512] [--frames 25]

Frames: the first ``--frames`` of ``../shared/data/videos/may_5s.mp4`` when present (a real face for
MediaPipe), else random images (the landmark rows are then meaningless). LPIPS, SyncNet and
Inception use random weights of the real architectures (same cost as the real weights). CPU timings
depend on the other processes sharing the cores: the load average is printed.
"""

from __future__ import annotations

import talkgs  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch/numba start)

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _frames(n: int, res: int) -> list[np.ndarray]:
    video = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "may_5s.mp4"
    if video.is_file():
        from talkgs.io.video import FrameReader

        out = []
        with FrameReader(video, width=res, height=res, vf=f"scale={res}:{res}") as r:
            for f in r:
                out.append(np.array(f))
                if len(out) == n:
                    return out
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (res, res, 3), dtype=np.uint8) for _ in range(n)]


def _time(fn, reps: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--frames", type=int, default=25)
    args = ap.parse_args()
    from talkgs.eval import landmarks as L
    from talkgs.eval.fid import FIDInceptionV3, frame_features, frechet_distance
    from talkgs.eval.metrics import LPIPSMetric, psnr, ssim
    from talkgs.eval.syncnet import SyncNet, lse
    from talkgs.models.perceptual import AlexNetFeatures

    torch.manual_seed(0)
    frames = _frames(args.frames, args.res)
    noisy = [np.clip(f.astype(np.int16) + 5, 0, 255).astype(np.uint8) for f in frames]
    n = len(frames)
    rows = []
    rows.append(("PSNR (full frame)", 1e3 * _time(lambda: [psnr(a, b) for a, b in zip(frames, noisy)]) / n, "ms/frame"))
    rows.append(("SSIM (full frame)", 1e3 * _time(lambda: [ssim(a, b) for a, b in zip(frames, noisy)]) / n, "ms/frame"))
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "alex.pth"
        torch.save(AlexNetFeatures().state_dict(), p)
        lp = LPIPSMetric(p)
        rows.append(("LPIPS (full frame)", 1e3 * _time(lambda: [lp(a, b) for a, b in zip(frames, noisy)]) / n, "ms/frame"))
    rows.append(("MediaPipe landmarks (static)", 1e3 * _time(lambda: L.detect_landmarks(frames)) / n, "ms/frame"))
    lm = L.detect_landmarks(frames)
    from talkgs.eval import identity as idn

    boxes = [idn.box_from_landmarks(x) for x in lm]
    if all(b is not None for b in boxes):
        idn.models()  # loading (~1 s) is not per frame
        rows.append(("dlib 68-point shape (LMD-68)", 1e3 * _time(lambda: [idn.landmarks68(f, b) for f, b in zip(frames, boxes)]) / n, "ms/frame"))
        rows.append(("dlib shape + descriptor (CSIM, one image)", 1e3 * _time(lambda: [idn.analyze(f, b) for f, b in zip(frames, boxes)]) / n, "ms/frame"))
    net = SyncNet().eval()
    audio = (0.1 * np.random.default_rng(0).standard_normal(n * 640)).astype(np.float32)
    if L.detected(lm).any() and n >= 6:
        rows.append(("SyncNet LSE (crops + embeddings + offsets)", 1e3 * _time(lambda: lse(net, frames, audio, landmarks=lm)) / n, "ms/frame"))
    inc = FIDInceptionV3().eval()
    rows.append(("Inception pool3 features", 1e3 * _time(lambda: frame_features(inc, frames)) / n, "ms/frame"))
    a = np.random.default_rng(0).standard_normal((4096, 2048))
    mu, s = a.mean(0), np.cov(a, rowvar=False)
    rows.append(("Fréchet distance (2048-d sqrtm)", _time(lambda: frechet_distance(mu, s, mu + 0.1, s)), "s/clip"))
    print(f"evaluation cost at {args.res}², {n} frames; load average {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")
    for name, v, unit in rows:
        print(f"  {name:<45s} {v:9.1f} {unit}")


if __name__ == "__main__":
    main()
