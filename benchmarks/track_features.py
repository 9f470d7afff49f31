"""Benchmark of the track and features stages at 512² on this machine's cores.

Measures, on a real clip (default ``../shared/data/videos/german_20s.mp4``, 500 frames):

- track throughput without the one-off bundle adjustment (face mesh + optical flow pass,
  camera / focal fit, per-frame PnP) and features throughput (signals, mel audio, Parquet,
  contact sheet), and the two together → frames/s (target ≥ 40);
- the bundle adjustment on a synthetic 6,500-frame track (≈ 4.3 min of video) built by looping
  the clip's track back and forth (keypoint tracks and landmarks, with small perturbations)
  → seconds (target < 120).

The machine's load average is printed: other processes sharing the cores slow every number.

    .venv/bin/python benchmarks/track_features.py [--video PATH] [--work DIR] [--ba-frames 6500]
"""

from __future__ import annotations

import talkgs  # noqa: F401  (first: OMP_WAIT_POLICY before torch)

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def loop_track(track_dir: Path, n_frames: int, seed: int = 0) -> dict:
    """BA inputs for ``n_frames`` frames made by ping-ponging a real track (with perturbations)."""
    from talkgs.preprocess import refine
    from talkgs.preprocess.track import load_track

    z = np.load(track_dir / "track.npz")
    tr = load_track(track_dir)
    t0 = tr.n_frames
    obj = tr.canonical[tr.rigid_indices].astype(np.float64)
    lm = tr.landmarks[:, tr.rigid_indices, :2].astype(np.float64)
    fr, tk, uv = z["keypoint_frame"], z["keypoint_track"], z["keypoint_uv"]
    n_tr = int(tk.max()) + 1
    rng = np.random.default_rng(seed)
    reps = -(-n_frames // t0)
    w2c, lms, frames, tracks, obs = [], [], [], [], []
    for c in range(reps):
        idx = np.arange(t0) if c % 2 == 0 else np.arange(t0)[::-1]
        w2c.append(tr.world_to_camera_initial[idx])
        lms.append(lm[idx] + rng.normal(0, 0.2, lm.shape))
        frames.append((fr if c % 2 == 0 else t0 - 1 - fr) + c * t0)
        tracks.append(tk + c * n_tr)
        obs.append(uv + rng.normal(0, 0.05, uv.shape).astype(np.float32))
    f = np.concatenate(frames)
    keep = f < n_frames
    tracks_ = refine.KeypointTracks(f[keep].astype(np.int32), np.concatenate(tracks)[keep].astype(np.int32),
                                    np.concatenate(obs)[keep], reps * n_tr).subset(np.ones(int(keep.sum()), bool))  # fmt: skip
    return {
        "k": tr.k, "w2c0": np.concatenate(w2c)[:n_frames], "canonical": obj, "lm_uv": np.concatenate(lms)[:n_frames],
        "lm_valid": np.ones(n_frames, bool), "tracks": tracks_, "surface": tr.canonical[:468].astype(np.float64),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=REPO.parent / "shared" / "data" / "videos" / "german_20s.mp4")
    ap.add_argument("--work", type=Path, default=Path("/tmp/talkgs-bench-track-features"))
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--ba-frames", type=int, default=6500)
    args = ap.parse_args()

    from talkgs.features import FeaturesParams, build_features
    from talkgs.preprocess import refine
    from talkgs.preprocess.extract import ExtractParams, extract
    from talkgs.preprocess.track import TrackParams, track

    ex = args.work / f"extract_{args.resolution}"
    if not (ex / "meta.json").is_file():
        extract(args.video, ex, ExtractParams(resolution=args.resolution), progress=False)
    load0 = os.getloadavg()
    params = TrackParams()
    rep = track(ex, args.work / "track", params, progress=False)
    n = rep["frames"]
    tt = rep["timing_s"]
    track_no_ba = tt["total"] - tt["bundle_adjustment"]
    t0 = time.perf_counter()
    feat = build_features(ex, args.work / "track", args.work / "features", FeaturesParams(), progress=False)
    t_feat = time.perf_counter() - t0

    ba_in = loop_track(args.work / "track", args.ba_frames)
    t0 = time.perf_counter()
    ba = refine.bundle_adjust(**ba_in, params=params, progress=False)
    t_ba = time.perf_counter() - t0
    load1 = os.getloadavg()

    res = {
        "video": str(args.video),
        "resolution": args.resolution,
        "frames": n,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load0],
        "load_average_after": [round(v, 2) for v in load1],
        "track_pass_fps": round(n / tt["landmarks_and_flow_pass"], 1),
        "track_fps_excluding_ba": round(n / track_no_ba, 1),
        "features_fps": round(n / t_feat, 1),
        "track_plus_features_fps_excluding_ba": round(n / (track_no_ba + t_feat), 1),
        "track_timing_s": tt,
        "features_timing_s": feat["timing_s"],
        "clip_ba_s": tt["bundle_adjustment"],
        "ba_frames": args.ba_frames,
        "ba_observations": int(len(ba_in["tracks"].frame)),
        "ba_s": round(t_ba, 1),
        "ba_jitter_deg": [round(refine.pose_jitter(ba_in["w2c0"])["angular_deg_mean"], 3), round(refine.pose_jitter(ba.w2c)["angular_deg_mean"], 3)],
        "targets": {"track_plus_features_fps_excluding_ba": ">= 40", "ba_s": "< 120"},
    }
    (args.work / "bench.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(
        f"\ntrack+features (no BA): {res['track_plus_features_fps_excluding_ba']} frames/s (target ≥ 40; "
        f"face mesh + flow pass alone {res['track_pass_fps']} frames/s) | BA of {args.ba_frames} frames: {res['ba_s']} s "
        f"(target < 120) | load average {load0[0]:.1f} → {load1[0]:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
