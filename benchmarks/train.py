"""Benchmark: train variants on a subject with a preset, render the test split, compare.

    python benchmarks/train.py --subject-dir data/german --variants static gaussiantalker \
        --preset cpu --out /tmp/bench [--resolution 256]

For each variant: training time and it/s, test-split render (self-driven) at ``--resolution``,
face-region PSNR (box of the ground-truth face-oval landmarks) and full-frame PSNR, and mouth
landmark distance (LMD: MediaPipe face mesh on render and ground truth, mean distance of the 40
lip landmarks in pixels at the render resolution). Writes ``<out>/results.json``.
"""

from __future__ import annotations

import talkgs  # noqa: F401  (first: OMP_WAIT_POLICY)

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def face_box(lm: np.ndarray, size: int, margin: float = 0.05) -> tuple[int, int, int, int]:
    from talkgs.preprocess import facemesh as fm
    from talkgs.train.losses import region_box

    return region_box(lm[list(fm.FACE_OVAL), :2], margin, 16, size, size)


def mouth_landmarks(frames: list[np.ndarray]) -> np.ndarray:
    """``[T, 40, 2]`` lip landmarks (MediaPipe tracking mode over the sequence); NaN where no face."""
    from talkgs.preprocess import facemesh as fm

    idx = list(fm.LIPS_OUTER) + list(fm.LIPS_INNER)
    out = np.full((len(frames), len(idx), 2), np.nan)
    with fm.FaceMesh() as mesh:
        for k, f in enumerate(frames):
            lm = mesh.process(f)
            if lm is not None:
                out[k] = lm[idx, :2]
    return out


def evaluate(data, frames_dir: Path) -> dict[str, float]:  # noqa: ANN001
    import cv2

    test = data.test_idx.tolist()
    renders = [cv2.cvtColor(cv2.imread(str(frames_dir / f"{i:06d}.png")), cv2.COLOR_BGR2RGB) for i in test]
    gts = [data.images[i].numpy() for i in test]
    size = data.width
    face, full = [], []
    for i, r, g in zip(test, renders, gts):
        y0, y1, x0, x1 = face_box(data.landmarks[i].numpy(), size)
        face.append(psnr(r[y0:y1, x0:x1], g[y0:y1, x0:x1]))
        full.append(psnr(r, g))
    lr, lg = mouth_landmarks(renders), mouth_landmarks(gts)
    d = np.linalg.norm(lr - lg, axis=-1).mean(-1)
    ok = np.isfinite(d)
    return {
        "face_psnr": float(np.mean(face)),
        "full_psnr": float(np.mean(full)),
        "mouth_lmd_px": float(np.mean(d[ok])) if ok.any() else float("nan"),
        "lmd_frames": int(ok.sum()),
        "test_frames": len(test),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subject-dir", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=["static", "gaussiantalker"])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--resolution", type=int, default=None, help="render/eval resolution (default: extracted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-train", action="store_true", help="only render + evaluate existing models")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from talkgs.synthesize import render_test
    from talkgs.train.data import load_subject
    from talkgs.train.loop import train
    from talkgs.train.params import builtin_variant

    results = {}
    eval_data = None
    for name in args.variants:
        v = builtin_variant(name, args.preset)
        mdir = args.out / name
        t0 = time.perf_counter()
        summary = None if args.no_train else train(args.subject_dir, mdir, v, progress=False, seed=args.seed)
        t_train = time.perf_counter() - t0
        if eval_data is None:
            eval_data = load_subject(args.subject_dir, resolution=args.resolution, audio_feature=v.model.audio.feature)
        t1 = time.perf_counter()
        rt = render_test(eval_data, mdir, mdir / "test.mp4", frames_dir=mdir / "test_frames", progress=False)
        t_render = time.perf_counter() - t1
        metrics = evaluate(eval_data, mdir / "test_frames")
        results[name] = {"train": summary, "train_wall_s": round(t_train, 1), "render": rt, "render_wall_s": round(t_render, 1), **metrics}
        logging.info("%s: %s", name, json.dumps({k: results[name][k] for k in ("face_psnr", "full_psnr", "mouth_lmd_px")}))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: {m: r[m] for m in ("face_psnr", "full_psnr", "mouth_lmd_px", "train_wall_s")} for k, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
