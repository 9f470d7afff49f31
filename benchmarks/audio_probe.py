"""Benchmark: how much of the mouth opening each audio encoder explains, without training a head.

    python benchmarks/audio_probe.py data/german data/macron [--encoders mel phonemes visemes mel+phonemes]

For each encoder, the subjects' own audio is encoded (``talkgs.features.encode_wav``, the
features stage's alignment) and a ridge regression from the centre 160 ms of each frame's window
(8 of the 16 encoder frames, standardised) to the tracked mouth opening (``frames.parquet``
``mouth_open``) is fitted:

- **held-out r**: fitted on a subject's train split, the Pearson correlation on its test split;
- **cross-speaker r**: fitted on all frames of one subject, evaluated on all frames of another
  (mouth opening standardised per subject): how speaker-independent the feature is, the property
  an ASR feature brings to cross-driven lip sync.

``visemes`` is the ``phonemes`` encoder with ``phone_set: visemes``. A linear probe is a floor on
what the head's audio network can extract; the README's encoder table has the trained heads.
"""

from __future__ import annotations

import argparse
from itertools import permutations
from pathlib import Path

import talkgs  # noqa: F401  (first: pins the numeric kernels)
import numpy as np

from talkgs.features import audio as A
from talkgs.features.cache import read_frames_table


def encode(subject: Path, encoder: str, n: int) -> np.ndarray:
    name, phone_set = ("phonemes", "visemes") if encoder == "visemes" else (encoder, "phones")
    return A.encode_wav(subject / "extract" / "audio.wav", A.AudioEncoderParams(name=name, phone_set=phone_set), n_frames=n)


def ridge(x: np.ndarray, y: np.ndarray, lam: float):  # noqa: ANN201
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    w = np.linalg.solve(xs.T @ xs + lam * np.eye(x.shape[1]), xs.T @ (y - y.mean()))
    return lambda z: ((z - mu) / sd) @ w + y.mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("subjects", nargs="+", type=Path, help="subject folders (data/S) with extract/ and features/")
    ap.add_argument("--encoders", nargs="+", default=["mel", "phonemes", "visemes", "mel+phonemes"])
    ap.add_argument("--ridge", type=float, default=100.0)
    args = ap.parse_args()
    tables = {s: read_frames_table(s / "features" / "frames.parquet") for s in args.subjects}
    ys = {s: t.mouth_open.astype(np.float64) for s, t in tables.items()}
    train = {s: np.asarray(t.split) == "train" for s, t in tables.items()}
    names = [s.name for s in args.subjects]
    head = [f"held-out r {n}" for n in names] + [f"{a}→{b}" for a, b in permutations(names, 2)]
    print("| encoder | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for enc in args.encoders:
        x = {s: encode(s, enc, len(ys[s])) for s in args.subjects}
        x = {s: f[:, 4:12].reshape(len(f), -1) for s, f in x.items()}
        row = []
        for s in args.subjects:
            f = ridge(x[s][train[s]], ys[s][train[s]], args.ridge)
            row.append(np.corrcoef(f(x[s][~train[s]]), ys[s][~train[s]])[0, 1])
        for a, b in permutations(args.subjects, 2):
            f = ridge(x[a], (ys[a] - ys[a].mean()) / ys[a].std(), args.ridge)
            row.append(np.corrcoef(f(x[b]), ys[b])[0, 1])
        print(f"| {enc} | " + " | ".join(f"{r:.2f}" for r in row) + " |", flush=True)


if __name__ == "__main__":
    main()
