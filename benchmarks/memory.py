"""Benchmark: peak resident memory of loading a subject for training and for evaluation.

    python benchmarks/memory.py --subject-dir data/S [--resolution 128] [--whole-then-resize]

Runs each measurement in a fresh subprocess (peak RSS is per process) and prints, per case, the
peak RSS, the RSS before loading (interpreter + torch), the arrays' own size and the time:

- ``train``: ``load_subject(S, resolution=R)`` (what training does);
- ``evaluate``: ``load_subject(S, lazy=True)`` at the extracted resolution, then every test frame
  read once (what rendering the test split and synthesis do: frames decoded when indexed);
- ``evaluate_eager``: the same with the whole clip loaded as arrays (the old way, for before/after).

``--whole-then-resize`` also measures the old way of the training load (the whole clip at its
extracted resolution, then resized), for before/after. Peak memory targets of the issues are
checked with this script, never with a timed test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import talkgs, json, resource, sys, time, torch
from talkgs.train.data import load_subject
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
case, path, res = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch  # noqa: F401
before = rss_mb()
t0 = time.perf_counter()
if case == "train":
    d = load_subject(path, resolution=res)
elif case == "train_whole_then_resize":
    d = load_subject(path).resized(res)
elif case == "evaluate":
    d = load_subject(path, lazy=True)
    for i in d.test_idx.tolist():
        d.images[i], d.backgrounds[i]
else:
    d = load_subject(path)
    for i in d.test_idx.tolist():
        d.images[i], d.backgrounds[i]
dt = time.perf_counter() - t0
arrays = sum(t.numel() * t.element_size() for t in (d.images, d.backgrounds, d.labels) if isinstance(t, torch.Tensor)) / 2**20
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"case": case, "frames": d.n_frames, "size": d.width, "peak_mb": peak, "before_mb": before, "arrays_mb": arrays, "seconds": dt}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subject-dir", type=Path, default=Path("data/demo"))
    ap.add_argument("--resolution", type=int, default=128, help="training resolution (the cpu preset's: 128)")
    ap.add_argument("--whole-then-resize", action="store_true", help="also measure the old loads (before/after)")
    args = ap.parse_args()
    if not (args.subject_dir / "features").is_dir():
        raise SystemExit(f"{args.subject_dir}: not a preprocessed subject (run `make demo` or `dvc repro features@<S> segment@<S>`)")
    cases = ["train", *(["train_whole_then_resize"] if args.whole_then_resize else []), "evaluate", *(["evaluate_eager"] if args.whole_then_resize else [])]
    print(f"| {args.subject_dir} case | frames | size | peak RSS MB | RSS before load MB | frame arrays MB | seconds")
    for case in cases:
        out = subprocess.run([sys.executable, "-c", CHILD, case, str(args.subject_dir), str(args.resolution)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {case} | {r['frames']} | {r['size']}² | {r['peak_mb']:.0f} | {r['before_mb']:.0f} | {r['arrays_mb']:.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
