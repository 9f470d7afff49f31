"""THE training loop: every variant trains here, as configuration plus registered components.

:func:`train` runs the variant's phases (e.g. canonical → deformation) on one global step
counter. Each step draws one training frame (a fixed permutation per epoch, a pure function of
the seed and step), builds the frame's Gaussians (canonical attributes + the deformer's offsets
when the phase deforms), splats them onto the frame's torso image, and optimises the phase's
weighted losses over the parameter groups the phase gives a learning rate. Densification runs
where the phase enables it.

Outputs in ``out_dir`` (``models/<S>/<V>/``)::

    checkpoint.pt   versioned dict (talkgs.train.checkpoint), rewritten atomically every
                    ``checkpoint_every`` steps, at phase ends and at the end (finished = True)
    config.yaml     the resolved variant + seed + data facts
    curves.csv      step, phase, loss and its terms, gaussians, it/s, elapsed (for dvc plots)

Resuming: a run killed at any step restarts from the last checkpoint and finishes with the same
result as an uninterrupted run with the same seed (everything random is derived from the seed
and step, or saved: model, optimizer moments, densification statistics, RNG state).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from talkgs.config import dump_yaml, to_dict
from talkgs.io.atomic import write_text
from talkgs.models.head import PARAM_GROUPS, TalkingHead
from talkgs.render import rasterize
from talkgs.train.checkpoint import config_hash, load_checkpoint, save_checkpoint
from talkgs.train.data import SubjectData, frame_order, load_subject
from talkgs.train.density import ModelDensifier
from talkgs.train.init import initial_point_cloud, scene_extent
from talkgs.train.losses import LossContext, build_losses
from talkgs.train.params import PhaseParams, VariantParams
from talkgs.train.schedule import locate, lr_at, phase_starts

log = logging.getLogger(__name__)

__all__ = ["train", "build_model", "render_frame", "render_eps2d", "load_model", "REGIONS"]

REGIONS = ("lip", "face")
"""Region crops computed for every frame (region losses pick theirs by name)."""


# ----------------------------------------------------------------------------------------------
# model construction / rendering (shared with synthesis)


def build_model(variant: VariantParams, data: SubjectData, seed: int) -> tuple[TalkingHead, float]:
    """A freshly initialised model for ``data`` and the scene extent (deterministic in ``seed``)."""
    torch.manual_seed(seed)
    means, rgb, log_scales = initial_point_cloud(data, variant.model.init, seed)
    torch.manual_seed(seed)
    model = TalkingHead(
        variant.model, means=means, rgb=rgb, log_scales=log_scales, audio_window=data.audio_window, audio_dim=data.audio_dim
    )
    model.fit_conditions(data.viewmats[data.train_idx], data.audio[data.train_idx])
    return model, scene_extent(means)


def load_model(checkpoint: str | Path | dict[str, Any], device: str | torch.device = "cpu") -> tuple[TalkingHead, VariantParams, dict[str, Any]]:
    """Rebuild the trained model from a checkpoint (no data needed). Returns (model, variant, checkpoint)."""
    from talkgs.train.params import variant_from_dict

    ck = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    variant = variant_from_dict(ck["variant"], "checkpoint.variant")
    meta = ck["model_meta"]
    n = int(meta["n"])
    model = TalkingHead(
        variant.model,
        means=torch.zeros(n, 3).uniform_(-1, 1),
        audio_window=int(meta["audio_window"]),
        audio_dim=int(meta["audio_dim"]),
    )
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    return model, variant, ck


def render_frame(
    model: TalkingHead,
    data: SubjectData,
    i: int,
    *,
    deform: bool = True,
    background: str = "torso",
    backend: str = "auto",
    device: str | torch.device = "cpu",
    audio: Tensor | None = None,
    viewmat: Tensor | None = None,
    eps2d: float = 0.3,
    canonical: Any = None,
) -> tuple[Any, Any]:
    """Render frame ``i`` (its pose, blink, audio window — or ``audio`` instead) onto its
    background. ``eps2d``: screen-space dilation (see :func:`render_eps2d`); ``canonical``:
    precomputed canonical attributes (inference). Returns ``(RenderOutput, GaussianAttributes)``."""
    cond = data.condition(i, device, audio=audio)
    if viewmat is not None:
        cond.viewmat = viewmat.to(device=device, dtype=torch.float32)
    attrs = model(cond, deform=deform, canonical=canonical)
    out = rasterize(
        **attrs.activated(),
        camera=data.camera(i, device, viewmat=viewmat),
        background=data.background(i, device, background),
        sh_degree=model.sh_degree,
        backend=backend,  # type: ignore[arg-type]
        eps2d=eps2d,
    )
    return out, attrs


def render_eps2d(variant: VariantParams, train_size: int, size: int) -> float:
    """The dilation for rendering at ``size`` a model trained at ``train_size``: the training
    ``eps2d`` scaled by the squared size ratio (same footprint in image-relative units)."""
    return variant.render.eps2d * (size / max(train_size, 1)) ** 2


# ----------------------------------------------------------------------------------------------
# optimizer


def _make_optimizer(model: TalkingHead, phase: PhaseParams) -> torch.optim.Adam:
    """Adam over the groups the phase trains (each per-Gaussian tensor in its own param-group,
    as densification needs); every other parameter is frozen (``requires_grad = False``)."""
    groups = model.param_groups()
    per_gaussian = model.per_gaussian_keys()
    for p in model.parameters():
        p.requires_grad_(False)
    param_groups: list[dict[str, Any]] = []
    for g, lr in phase.lr.items():
        ps = groups.get(g, [])
        if not ps:
            continue
        if g in ("means", "gaussians"):
            for key in sorted(per_gaussian):
                p = model.gaussians[key]
                if any(p is q for q in ps):
                    p.requires_grad_(True)
                    param_groups.append({"params": [p], "lr": lr.start, "name": key, "group": g})
        else:
            for p in ps:
                p.requires_grad_(True)
            param_groups.append({"params": ps, "lr": lr.start, "name": g, "group": g})
    if not param_groups:
        raise ValueError(f"phase {phase.name!r} trains nothing: give at least one parameter group a learning rate")
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for g in param_groups for p in g["params"])
    return torch.optim.Adam(param_groups, lr=0.0, eps=1e-15, fused=fused or None)


def _set_lrs(opt: torch.optim.Optimizer, phase: PhaseParams, local: int, extent: float) -> dict[str, float]:
    out = {}
    for group in opt.param_groups:
        lr = lr_at(phase.lr[group["group"]], local, phase.iterations, extent)
        group["lr"] = lr
        out[group["group"]] = lr
    return out


# ----------------------------------------------------------------------------------------------
# progress / curves


class _Progress:
    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]{task.fields[phase]:<12}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[gaussians]:>6} G"),
                TextColumn("{task.fields[rate]:>5.1f} it/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, phase="", loss=0.0, gaussians=0, rate=0.0)

    def update(self, step: int, **fields: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _curves_csv(rows: list[dict[str, Any]], loss_names: list[str], groups: list[str]) -> str:
    cols = ["step", "phase", "loss", *[f"loss_{n}" for n in loss_names], "gaussians", "it_s", "elapsed_s", *[f"lr_{g}" for g in groups]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# the loop


def _fingerprint(data: SubjectData) -> dict[str, Any]:
    return {
        "subject": data.name,
        "n_frames": data.n_frames,
        "resolution": [data.width, data.height],
        "audio": list(data.audio.shape),
        "audio_feature": data.audio_feature,
        "n_train": int(len(data.train_idx)),
        "pose_sum": round(float(data.viewmats.double().sum()), 6),
        "image_sum": int(data.images[:: max(1, data.n_frames // 8)].sum()),
    }


def train(
    subject: str | Path | SubjectData,
    out_dir: str | Path,
    variant: VariantParams,
    *,
    resume: bool = True,
    progress: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    until_step: int | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    train_seconds: float | None = None,
) -> dict[str, Any]:
    """Train ``variant`` on a subject; write ``checkpoint.pt``, ``config.yaml``, ``curves.csv``.

    Args:
        subject: the subject folder ``data/<S>`` or an in-memory :class:`SubjectData`.
        out_dir: output folder (``models/<S>/<V>``).
        variant: the resolved variant (preset already applied).
        resume: continue from ``out_dir/checkpoint.pt`` when it was written by the same
            config, seed and data (a finished one returns at once); otherwise start over.
        progress: show a progress bar (phase, loss, Gaussians, it/s).
        seed: random seed.
        device: torch device (data stays on the CPU; one frame is moved per step).
        until_step: stop after this many global steps (checkpoint written, ``finished`` False):
            time-boxed runs and the resume test.
        on_step: callback ``(step, losses)`` after every step (tests, monitoring).
        train_seconds: few-shot protocol: train on the first ``train_seconds`` of the clip only
            (:meth:`SubjectData.first_seconds`; same iterations, same test split).

    Returns:
        Summary: steps, finished, gaussians, elapsed_s, it_s (mean), final losses, paths.

    Raises:
        LPIPSWeightsMissing: a phase weights ``lpips`` > 0 and the AlexNet weights are absent.
        DataError: the subject's preprocessing outputs are missing.
        FewShotUnavailable: the training split is shorter than ``train_seconds``.
    """
    out_dir = Path(out_dir)
    device = torch.device(device)
    # losses first: a missing LPIPS backbone stops the run before any work
    loss_names = sorted({n for ph in variant.phases for n, w in ph.losses.items() if w > 0})
    lr_groups = [g for g in PARAM_GROUPS if any(g in ph.lr for ph in variant.phases)]
    losses = build_losses(set(loss_names), variant.losses)
    zero = sorted({n for ph in variant.phases for n, w in ph.losses.items() if w == 0})
    if zero:
        log.info("losses with weight 0 in every phase (not computed): %s", ", ".join(zero))

    if isinstance(subject, SubjectData):
        data = subject
    else:
        data = load_subject(subject, resolution=variant.render.resolution, audio_feature=variant.model.audio.feature)
    if variant.render.resolution is not None and data.width != variant.render.resolution:
        data = data.resized(variant.render.resolution)
    if train_seconds is not None:
        data = data.first_seconds(train_seconds)

    cfg = to_dict(variant)
    fp = _fingerprint(data)
    if train_seconds is not None:
        fp["train_seconds"] = float(train_seconds)
    chash = config_hash({"variant": cfg, "seed": seed, "data": fp})
    ckpt_path = out_dir / "checkpoint.pt"
    total = variant.total_iterations
    stop = total if until_step is None else min(total, int(until_step))

    model, extent = build_model(variant, data, seed)
    model.to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    step, curves, elapsed = 0, [], 0.0
    opt: torch.optim.Adam | None = None
    opt_phase = -1
    densifier: ModelDensifier | None = None
    pending_opt_state = pending_densify = None

    if resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, map_location="cpu")
        if ck.get("config_hash") != chash:
            log.warning("%s was written by another config/seed/data; training from scratch", ckpt_path)
        else:
            model.load_state_dict(ck["model"])
            model.to(device)
            step, curves, elapsed = int(ck["step"]), list(ck["curves"]), float(ck["elapsed_s"])
            gen.set_state(ck["generator"])
            if ck.get("optimizer") is not None and step < total and locate(variant.phases, step)[0] == ck["phase"]:
                opt_phase = int(ck["phase"])
                pending_opt_state, pending_densify = ck["optimizer"], ck.get("densify")
            log.info("resuming %s at step %d/%d", ckpt_path, step, total)

    starts = phase_starts(variant.phases)

    def save(finished: bool) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "variant": cfg,
                "config_hash": chash,
                "step": step,
                "finished": finished,
                "seed": seed,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "model_meta": {
                    "n": model.n,
                    "audio_window": data.audio_window,
                    "audio_dim": data.audio_dim,
                    "sh_degree": model.sh_degree,
                    "extent": extent,
                },
                # optimizer moments and densification statistics only while unfinished (resume)
                "optimizer": None if opt is None or finished else opt.state_dict(),
                "phase": opt_phase,
                "densify": None if densifier is None or finished else densifier.state_dict(),
                "generator": gen.get_state(),
                "curves": curves,
                "elapsed_s": elapsed,
                "data": {**fp, "audio_path": str(data.audio_path) if data.audio_path else None, "source_size": data.source_size},
            },
        )
        write_text(out_dir / "curves.csv", _curves_csv(curves, loss_names, lr_groups))

    def write_config() -> None:
        text = "# resolved training config (talkgs.train.loop.train)\n" + dump_yaml(
            {"variant": cfg, "seed": seed, "device": str(device), "data": fp, "extent": extent}
        )
        write_text(out_dir / "config.yaml", text)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_config()
    train_idx = data.train_idx
    n_train = len(train_idx)
    bar = _Progress(progress, total, step)
    t_window, n_window, rate = time.perf_counter(), 0, 0.0
    t_run = time.perf_counter()
    last_terms: dict[str, float] = {}
    try:
        while step < stop:
            pi, local = locate(variant.phases, step)
            phase = variant.phases[pi]
            if opt is None or opt_phase != pi or pending_opt_state is not None:
                model.train()
                opt = _make_optimizer(model, phase)
                densifier = None
                if phase.densify.enabled:
                    densifier = ModelDensifier(phase.densify, extent, gen, variant.model.init.max_gaussians)
                if pending_opt_state is not None and opt_phase == pi:
                    opt.load_state_dict(pending_opt_state)
                    if densifier is not None and pending_densify is not None:
                        densifier.load_state_dict(pending_densify)
                pending_opt_state = pending_densify = None
                opt_phase = pi
                log.info("phase %s: %d steps from step %d, training %s", phase.name, phase.iterations, starts[pi], ", ".join(phase.lr))
            t0 = time.perf_counter()
            lrs = _set_lrs(opt, phase, local, extent)
            i = int(train_idx[frame_order(n_train, seed, step)])
            out, attrs = render_frame(
                model, data, i, deform=phase.deform, background=variant.render.background, backend=variant.render.backend, device=device,
                eps2d=variant.render.eps2d,
            )
            boxes = {}
            for region in REGIONS:
                rp = getattr(variant.losses, region)
                boxes[region] = data.region_box(i, region, rp.margin, rp.min_size)
            ctx = LossContext(pred=out.rgb, target=data.image(i, device), boxes=boxes, extras={"attrs": attrs})
            terms = {name: losses[name](ctx) for name, w in phase.losses.items() if w > 0}
            loss = sum(phase.losses[n] * v for n, v in terms.items())
            loss_v = float(loss.detach())
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"step {step} ({phase.name}, frame {i}): loss is {loss_v}; lower the learning rates")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if densifier is not None:
                densifier.step(model, opt, local, out, attrs)
            opt.step()
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            n_window += 1
            last_terms = {n: float(v.detach()) for n, v in terms.items()}
            if on_step is not None:
                on_step(step, {"loss": loss_v, **last_terms})
            now = time.perf_counter()
            if now - t_window > 1.0:
                rate = n_window / (now - t_window)
                t_window, n_window = now, 0
            phase_end = step == starts[pi] + phase.iterations
            if step % variant.log_every == 0 or phase_end:  # not at until_step: resumed curves = uninterrupted
                curves.append(
                    {
                        "step": step,
                        "phase": phase.name,
                        "loss": round(loss_v, 6),
                        **{f"loss_{n}": round(v, 6) for n, v in last_terms.items()},
                        "gaussians": model.n,
                        "it_s": round(rate if rate > 0 else 1.0 / max(dt, 1e-9), 3),
                        "elapsed_s": round(elapsed, 3),
                        **{f"lr_{g}": float(f"{v:.4g}") for g, v in lrs.items()},
                    }
                )
            bar.update(step, phase=phase.name, loss=loss_v, gaussians=model.n, rate=rate)
            if step % variant.checkpoint_every == 0 or phase_end or step == stop:
                save(finished=step >= total)
    finally:
        bar.close()
    finished = step >= total
    if not ckpt_path.is_file():
        save(finished=finished)  # nothing to train (0 steps)
    else:
        write_text(out_dir / "curves.csv", _curves_csv(curves, loss_names, lr_groups))
    wall = time.perf_counter() - t_run
    mean_rate = step / elapsed if elapsed > 0 else float("nan")
    summary = {
        "subject": data.name,
        "steps": step,
        "total_steps": total,
        "train_frames": int(len(data.train_idx)),
        "finished": finished,
        "gaussians": model.n,
        "elapsed_s": round(elapsed, 2),
        "wall_s_this_run": round(wall, 2),
        "it_s": round(mean_rate, 3) if math.isfinite(mean_rate) else None,
        "losses": last_terms,
        "checkpoint": str(ckpt_path),
        "config": str(out_dir / "config.yaml"),
        "curves": str(out_dir / "curves.csv"),
    }
    log.info("trained %s: %d/%d steps, %d Gaussians, %.1f s (%.2f it/s)", data.name, step, total, model.n, elapsed, summary["it_s"] or 0)
    return summary
