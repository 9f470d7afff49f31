"""Benchmark: milliseconds per training step of each variant, split into where the time goes.

    python benchmarks/train.py [--subject-dir data/demo] [--variants static gaussiantalker ...]
                               [--preset cpu] [--steps 40] [--device cpu] [--reference-kernels]

For every variant of ``params.yaml`` (with the preset applied) and every one of its phases,
trains ``--steps`` steps of that phase alone (a fresh model initialised with the preset's
``max_gaussians`` points, the size a real run densifies to, unless ``--preset-init``; the first 5
steps are warm-up and not counted) through the real trainer, and times each part of a step by wrapping the functions
the trainer calls:

- ``data``: the sampler + building the batch (frames, conditions, targets);
- ``head``: the head's forward (and post modules) without the rasterizer;
- ``rasterize``: :func:`talkgs.render.rasterize` forward calls;
- ``loss``: the losses (what remains of the step before backward);
- ``backward``: ``loss.backward()`` (the rasterizer's backward included);
- ``callbacks``: densification and the other callbacks;
- ``optimizer``: Adam steps.

``--reference-kernels`` swaps the fused CPU kernels (SSIM loss, triplane sampling) back for their
torch formulations, for a before/after comparison in one environment.

Prints one table per variant (ms per step, by phase and the mean over the preset's schedule
weighted by phase length) and writes ``--out`` as JSON when given. The speed targets of the
issues are checked with this script, never with a timed test.
"""

from __future__ import annotations

import talkgs  # noqa: F401  (first: OMP_WAIT_POLICY)

import argparse
import contextlib
import dataclasses
import importlib
import json
import time
from pathlib import Path

import torch

PARTS = ("data", "head", "rasterize", "loss", "backward", "callbacks", "optimizer")


class _Timer:
    def __init__(self) -> None:
        self.t: dict[str, float] = {p: 0.0 for p in PARTS}
        self.depth = 0

    def wrap(self, part: str, fn):  # noqa: ANN001, ANN201
        def inner(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[part] += time.perf_counter() - t0

        return inner


@contextlib.contextmanager
def _instrumented(timer: _Timer):  # noqa: ANN202
    """Wrap the trainer's calls with timers; restore them afterwards."""
    import talkgs.models.model as model_mod
    import talkgs.train.density as density
    import talkgs.train.loop as loop
    from talkgs.models.registry import names

    names("head")  # import every head module
    patched: list[tuple[object, str, object]] = []

    def patch(obj: object, attr: str, new: object) -> None:
        patched.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, new)

    patch(loop, "make_batch", timer.wrap("data", loop.make_batch))
    patch(model_mod.TalkingModel, "render", timer.wrap("head", model_mod.TalkingModel.render))
    import sys

    for name, mod in list(sys.modules.items()):
        if name.startswith("talkgs.models.heads.") and hasattr(mod, "rasterize"):
            patch(mod, "rasterize", timer.wrap("rasterize", mod.rasterize))
    patch(torch.Tensor, "backward", timer.wrap("backward", torch.Tensor.backward))
    patch(density.Densify, "post_backward", timer.wrap("callbacks", density.Densify.post_backward))
    patch(torch.optim.Adam, "step", timer.wrap("optimizer", torch.optim.Adam.step))
    try:
        yield
    finally:
        for obj, attr, old in reversed(patched):
            setattr(obj, attr, old)


def bench_phase(subject, variant, phase_index: int, steps: int, device: str, warmup: int = 5) -> dict[str, float]:  # noqa: ANN001
    """ms per step of one phase of ``variant`` (trained alone, ``steps`` steps, ``warmup`` not counted)."""
    import tempfile

    from talkgs.train.loop import train

    ph = variant.phases[phase_index]
    v = dataclasses.replace(variant, phases=(dataclasses.replace(ph, iterations=warmup + steps),), checkpoint_every=10**9, log_every=10**9)
    timer = _Timer()
    stamps: list[tuple[float, dict[str, float]]] = []

    def on_step(step: int, _losses: dict[str, float]) -> None:
        stamps.append((time.perf_counter(), dict(timer.t)))

    with tempfile.TemporaryDirectory() as td, _instrumented(timer):
        train(subject, Path(td), v, progress=False, resume=False, device=device, on_step=on_step)
    (t0, a), (t1, b) = stamps[warmup - 1], stamps[-1]
    n = len(stamps) - warmup
    out = {p: 1000.0 * (b[p] - a[p]) / n for p in PARTS}
    out["head"] -= out["rasterize"]  # the head's forward without the rasterizer
    total = 1000.0 * (t1 - t0) / n
    out["loss"] = max(0.0, total - sum(v_ for k, v_ in out.items() if k != "loss"))
    out["total"] = total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subject-dir", type=Path, default=Path("data/demo"), help="a preprocessed subject (default: the demo; `make demo` builds it)")
    ap.add_argument("--variants", nargs="+", default=None, help="default: every variant of params.yaml")
    ap.add_argument("--preset", default="cpu", help="train preset ('none' for the paper settings)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per phase")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--preset-init", action="store_true", help="start at the preset's init_points instead of its max_gaussians")
    ap.add_argument("--reference-kernels", action="store_true", help="torch formulations instead of the fused CPU kernels (before/after)")
    args = ap.parse_args()
    if args.reference_kernels:
        import talkgs.models.losses as losses
        from talkgs.models.encoders.triplane import Triplane

        losses.ssim = losses.ssim_reference
        Triplane.forward = Triplane.forward_reference
    from talkgs.config import load_params
    from talkgs.train.data import load_subject

    params = load_params(args.params)
    tp = dataclasses.replace(params.train, preset=None if args.preset == "none" else args.preset)
    if args.preset != "none" and not args.preset_init:
        # start every phase at the preset's Gaussian budget: a fresh model has only init_points
        # (4k in the cpu preset), a real run densifies up to max_gaussians before the later phases
        pr = tp.presets[args.preset]
        if pr.max_gaussians is not None:
            tp = dataclasses.replace(tp, presets={**tp.presets, args.preset: dataclasses.replace(pr, init_points=pr.max_gaussians)})
    variants = args.variants or list(params.train.variants)
    results: dict[str, dict] = {}
    for name in variants:
        v = tp.variant(name)
        if not (args.subject_dir / "features").is_dir():
            raise SystemExit(f"{args.subject_dir}: not a preprocessed subject (run `make demo` or `dvc repro features@<S> segment@<S>`)")
        subject = load_subject(args.subject_dir, resolution=v.render.resolution, audio_feature=v.audio_feature)
        rows = {}
        for i, ph in enumerate(v.phases):
            if ph.iterations == 0:
                continue
            rows[ph.name] = bench_phase(subject, v, i, args.steps, args.device)
        weights = {ph.name: ph.iterations for ph in v.phases if ph.name in rows}
        total = sum(weights.values())
        rows["schedule mean"] = {p: sum(rows[k][p] * w for k, w in weights.items()) / total for p in (*PARTS, "total")}
        results[name] = {"phases": rows, "steps": weights, "resolution": v.render.resolution, "preset": args.preset, "reference_kernels": args.reference_kernels}
        kernels = "reference (torch) kernels" if args.reference_kernels else "fused kernels"
        print(f"\n{name} (preset {args.preset}, {v.render.resolution}², {kernels}, ms per step; schedule: {weights})")
        print(f"| phase | {' | '.join(PARTS)} | total |")
        print(f"|---|{'---|' * (len(PARTS) + 1)}")
        for k, r in rows.items():
            print(f"| {k} | " + " | ".join(f"{r[p]:.1f}" for p in PARTS) + f" | {r['total']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    importlib.invalidate_caches()
    main()
