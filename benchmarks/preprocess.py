"""Benchmark the ``extract`` and ``segment`` stages: frames per second at 512².

Target (issue #3): ≥ 30 frames/s through both stages together on a 2-core CPU, so that a
paper-length 6,500-frame video is preprocessed in under 4 minutes.

    python benchmarks/preprocess.py                        # macron clip (30 fps → 25), 512²
    python benchmarks/preprocess.py --frames 6500          # loop a real clip to paper length
    python benchmarks/preprocess.py --video my.mp4 --resolution 256

Times are wall-clock for the whole stage call (probing, face detection, background plate,
writing every file), measured once. The machine's load average is printed with them: other
processes on the same cores slow both stages proportionally.
"""

from __future__ import annotations

import talkgs  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch/numba)

import argparse
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from talkgs.io.media import ffmpeg_exe
from talkgs.preprocess.extract import ExtractParams, extract
from talkgs.preprocess.segment import SegmentParams, segment

REPO = Path(__file__).resolve().parents[1]
TARGET_FPS = 30.0
PAPER_FRAMES = 6500


def shared_videos() -> Path:
    env = os.environ.get("TALKGS_SHARED_DATA")
    return (Path(env) if env else REPO.parent / "shared" / "data") / "videos"


def looped_clip(src: Path, frames: int, fps: int, dst: Path) -> Path:
    """``src`` looped (stream copy, no re-encode) to at least ``frames`` frames at ``fps``."""
    import subprocess

    seconds = frames / fps
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-stream_loop", "-1",
           "-i", str(src), "-t", f"{seconds:.3f}", "-c", "copy", str(dst)]  # fmt: skip
    subprocess.run(cmd, check=True)
    return dst


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its finished children (ffmpeg)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=None, help="input video (default: the 50 s Macron clip)")
    ap.add_argument("--frames", type=int, default=0, help="loop the video to this many 25 fps frames (0: as is)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one, removed)")
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    video = args.video or shared_videos() / "macron_dfrf_french_50s.mp4"
    if not video.is_file():
        raise SystemExit(f"{video}: not found; pass --video or set TALKGS_SHARED_DATA")
    work = Path(tempfile.mkdtemp(prefix="talkgs-bench-")) if args.out is None else args.out
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.frames:
            video = looped_clip(video, args.frames, 25, work / f"looped{video.suffix}")
        load_before = os.getloadavg()
        c0, t0 = cpu_seconds(), time.perf_counter()
        meta = extract(video, work / "extract", ExtractParams(resolution=args.resolution), progress=args.progress)
        c1, t1 = cpu_seconds(), time.perf_counter()
        segment(work / "extract", work / "segment", SegmentParams(), progress=args.progress)
        c2, t2 = cpu_seconds(), time.perf_counter()
        load_after = os.getloadavg()
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    n = meta["output"]["frames"]
    te, ts = t1 - t0, t2 - t1
    both = n / (te + ts)
    print(f"video        {video.name}: {n} frames at {meta['output']['fps']} fps, {args.resolution}² "
          f"(source {meta['source']['width']}x{meta['source']['height']} @ {meta['source']['measured_fps']:g} fps)")
    print(f"machine      {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"extract      {te:7.1f} s  {n / te:7.1f} frames/s   CPU {1000 * (c1 - c0) / n:5.1f} ms/frame (with ffmpeg)")
    print(f"segment      {ts:7.1f} s  {n / ts:7.1f} frames/s   CPU {1000 * (c2 - c1) / n:5.1f} ms/frame")
    print(f"both         {te + ts:7.1f} s  {both:7.1f} frames/s  (target >= {TARGET_FPS:g}: "
          f"{'OK' if both >= TARGET_FPS else 'MISSED'})")
    print(f"6,500 frames ~{PAPER_FRAMES / both / 60:.1f} min at this rate (target < 4 min)")
    cpu = (c2 - c0) / n
    print(f"CPU cost     {1000 * cpu:.1f} CPU-ms/frame for both stages: ~{1 / cpu:.0f} frames/s on one uncontended core "
          "(less sensitive to other load than wall time)")
    print(f"peak RSS     {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
