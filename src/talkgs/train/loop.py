"""THE training loop: every variant trains here, as configuration plus registered components.

:func:`train` builds the variant's model (its head, :class:`talkgs.models.contract.Head`, and
post-render modules) and runs its phases on one global step counter. Each step:

1. the phase's **sampler** picks ``frames_per_step`` training frames (of one subject, or of
   several for cross-subject pretraining), a pure function of the seed and the step;
2. the **head renders** the batch with the phase's head options (unless the phase does not
   render), then the phase's **post-render modules** run;
3. the phase's weighted **losses** (the head's own, registered ones, and losses that own a
   network) are summed and backpropagated into the parameter groups the phase gives a
   learning rate (``freeze`` keeps groups frozen in every phase);
4. **callbacks** run between backward and the optimizer step (densification of each Gaussian
   set, the head's own callbacks, configured ones);
5. losses that own networks train them (:meth:`talkgs.models.contract.Loss.update`).

Outputs in ``out_dir`` (``models/<S>/<V>/``, or ``models/pretrain/<V>/``)::

    checkpoint.pt   versioned dict (talkgs.train.checkpoint), rewritten atomically every
                    ``checkpoint_every`` steps, at phase ends and at the end (finished = True)
    config.yaml     the resolved variant + seed + data facts
    curves.csv      step, phase, loss and its terms, gaussians, learning rates (for dvc plots)

No wall-clock time goes into these files (a rerun of a deterministic run writes the same bytes,
so DVC sees the same output): the optimisation time (summed over resumed runs, per phase) goes
to the ``timings`` json given to :func:`train` (the pipeline's ``metrics/timings/train/...``,
a ``cache: false`` metrics file), and the checkpoint carries it only while training is unfinished.

Resuming: a run killed at any step restarts from the last checkpoint and finishes with the same
result as an uninterrupted run with the same seed (everything random is derived from the seed
and step, or saved: model, optimizer moments, callback and loss-network states, RNG state).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from talkgs.configlib import ConfigError, dump_yaml, to_dict
from talkgs.io.atomic import sweep_temp, write_json, write_text
from talkgs.io.digest import sha256_file
from talkgs.models.contract import Batch, BuildContext, Callback, Loss, LossContext, Outputs, PointCloudSpec, RenderSettings
from talkgs.models.model import TalkingModel
from talkgs.models.registry import ASSETS, build
from talkgs.train.checkpoint import config_hash, load_checkpoint, save_checkpoint
from talkgs.train.data import SubjectData, frame_pool, load_subject, make_batch
from talkgs.train.density import Densify
from talkgs.train.init import initial_point_cloud
from talkgs.train.params import PhaseParams, VariantParams, variant_from_dict
from talkgs.train.schedule import locate, lr_at, phase_starts

log = logging.getLogger(__name__)

__all__ = ["train", "build_model", "load_model", "render_frame", "render_eps2d", "render_settings"]


# ----------------------------------------------------------------------------------------------
# model construction / rendering (shared with synthesis)


def build_model(
    variant: VariantParams, datasets: SubjectData | Sequence[SubjectData], seed: int, assets: Mapping[str, Path] | None = None
) -> TalkingModel:
    """A freshly initialised model for one subject, or for several (one identity each);
    deterministic in ``seed``. ``assets``: the pipeline files its components require
    (:meth:`VariantParams.required_assets`)."""
    datasets = [datasets] if isinstance(datasets, SubjectData) else list(datasets)
    d0 = datasets[0]
    for d in datasets[1:]:
        if (d.audio_window, d.audio_dim) != (d0.audio_window, d0.audio_dim) or d.expression_dim != d0.expression_dim:
            raise ValueError(
                f"subjects {d0.name} and {d.name} have different audio features ({[d0.audio_window, d0.audio_dim]} vs "
                f"{[d.audio_window, d.audio_dim]}) or expression signals; rebuild their features with the same params"
            )

    def point_cloud(identity: int, spec: PointCloudSpec) -> tuple[Tensor, Tensor, Tensor]:
        with torch.random.fork_rng(devices=[]):  # the cloud never perturbs the networks' initialisation
            return initial_point_cloud(datasets[identity], spec, seed)

    ctx = BuildContext(
        audio_window=d0.audio_window, audio_dim=d0.audio_dim, expression_dim=d0.expression_dim, n_identities=len(datasets),
        point_cloud=point_cloud, stats=[d.stats() for d in datasets], assets=dict(assets or {}),
    )  # fmt: skip
    torch.manual_seed(seed)
    head = build("head", variant.model, ctx=ctx)
    post = [build("post", p) for p in variant.post]
    return TalkingModel(head, post)


def _model_meta(model: TalkingModel, datasets: Sequence[SubjectData]) -> dict[str, Any]:
    h = model.head
    return {
        "sizes": h.sizes(), "audio_window": h.audio_window, "audio_dim": h.audio_dim, "expression_dim": h.expression_dim,
        "n_identities": h.n_identities, "extent": float(getattr(h, "scene_extent", 1.0)), "identities": [d.name for d in datasets],
    }  # fmt: skip


def load_model(checkpoint: str | Path | dict[str, Any], device: str | torch.device = "cpu") -> tuple[TalkingModel, VariantParams, dict[str, Any]]:
    """Rebuild the trained model from a checkpoint (no data needed). Returns (model, variant, checkpoint)."""
    ck = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    variant = variant_from_dict(ck["variant"], "checkpoint.variant")
    meta = ck["model_meta"]
    ctx = BuildContext(
        audio_window=int(meta["audio_window"]), audio_dim=int(meta["audio_dim"]), expression_dim=int(meta["expression_dim"]),
        n_identities=int(meta["n_identities"]), sizes={k: int(v) for k, v in meta["sizes"].items()},
    )  # fmt: skip
    head = build("head", variant.model, ctx=ctx)
    if hasattr(head, "scene_extent"):  # the placeholder cloud's extent is meaningless: the trained one
        head.scene_extent = float(meta.get("extent", head.scene_extent))
    model = TalkingModel(head, [build("post", p) for p in variant.post])
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    return model, variant, ck


def render_settings(variant: VariantParams, eps2d: float | None = None) -> RenderSettings:
    return RenderSettings(backend=variant.render.backend, eps2d=variant.render.eps2d if eps2d is None else eps2d)


def render_frame(
    model: TalkingModel,
    data: SubjectData,
    i: int,
    settings: RenderSettings,
    *,
    background: str = "torso",
    device: str | torch.device = "cpu",
    audio_source: Tensor | None = None,
    audio_index: int | None = None,
    identity: int = 0,
) -> Outputs:
    """Render frame ``i`` of ``data`` (its pose, blink, expression, torso frame) for inference;
    the audio from ``audio_source[audio_index]`` when given (cross-driving), else frame ``i``'s."""
    view = data.view(
        i, device, background=background, identity=identity, audio_frames=model.head.config.audio_frames(),
        audio_source=audio_source, audio_index=audio_index,
    )  # fmt: skip
    return model.render(Batch(views=[view], frames=[(identity, i)]), None, settings)


def render_eps2d(variant: VariantParams, train_size: int, size: int) -> float:
    """The dilation for rendering at ``size`` a model trained at ``train_size``: the training
    ``eps2d`` scaled by the squared size ratio (same footprint in image-relative units)."""
    return variant.render.eps2d * (size / max(train_size, 1)) ** 2


# ----------------------------------------------------------------------------------------------
# optimizer


def _make_optimizer(model: TalkingModel, phase: PhaseParams, frozen: set[str]) -> torch.optim.Adam | None:
    """Adam over the groups the phase trains (each per-Gaussian tensor in its own param-group,
    as densification needs); every other parameter is frozen (``requires_grad = False``)."""
    groups = model.param_groups()
    per_gaussian: dict[int, str] = {}
    for set_name, gset in model.head.gaussian_sets().items():
        for key in sorted(gset.params.keys()):
            per_gaussian[id(gset.params[key])] = key if set_name == "head" else f"{set_name}.{key}"
    for p in model.parameters():
        p.requires_grad_(False)
    param_groups: list[dict[str, Any]] = []
    for g, lr in phase.lr.items():
        if g in frozen:
            continue
        ps = groups.get(g, [])
        if not ps:
            continue
        pg = sorted((p for p in ps if id(p) in per_gaussian), key=lambda p: per_gaussian[id(p)])
        rest = [p for p in ps if id(p) not in per_gaussian]
        for p in pg:
            p.requires_grad_(True)
            param_groups.append({"params": [p], "lr": lr.start, "name": per_gaussian[id(p)], "group": g})
        if rest:
            for p in rest:
                p.requires_grad_(True)
            param_groups.append({"params": rest, "lr": lr.start, "name": g, "group": g})
    if not param_groups:
        return None
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for g in param_groups for p in g["params"])
    return torch.optim.Adam(param_groups, lr=0.0, eps=1e-15, fused=fused or None)


def _set_lrs(opt: torch.optim.Optimizer | None, phase: PhaseParams, local: int, extent: float) -> dict[str, float]:
    out: dict[str, float] = {}
    if opt is None:
        return out
    for group in opt.param_groups:
        lr = lr_at(phase.lr[group["group"]], local, phase.iterations, extent)
        group["lr"] = lr
        out[group["group"]] = lr
    return out


# ----------------------------------------------------------------------------------------------
# progress / curves


class _Progress:
    """The training progress bar (a plain line every few seconds when stderr is not a terminal)."""

    def __init__(self, enabled: bool, total: int, start: int, label: str = "train") -> None:
        from talkgs.progress import progress_bar

        self.bar = progress_bar(enabled, "steps", fields="phase {phase}, loss {loss:.4f}, {gaussians} Gaussians", count="step")
        self.bar.start()
        self.task = self.bar.add_task(label, total=total, completed=start, phase="", loss=0.0, gaussians=0, rate=0.0)

    def update(self, step: int, **fields: Any) -> None:
        self.bar.update(self.task, completed=step, **fields)

    def close(self) -> None:
        self.bar.stop()


_TIMED = ("it_s", "elapsed_s")
"""Curve columns of checkpoints written before timings left the outputs (dropped on resume)."""


def _curves_csv(rows: list[dict[str, Any]], loss_names: list[str], groups: list[str]) -> str:
    cols = ["step", "phase", "loss", *[f"loss_{n}" for n in loss_names], "gaussians", *[f"lr_{g}" for g in groups]]
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


def _check_assets(variant: VariantParams, assets: Mapping[str, str | Path] | None) -> dict[str, Path]:
    """The assets the variant requires, as paths; a missing one is a clear error (unrequired ones
    are left out: they must not change the config hash)."""
    from talkgs.train.data import DataError

    given = {k: Path(v) for k, v in (assets or {}).items()}
    out: dict[str, Path] = {}
    for name in variant.required_assets():
        p = given.get(name)
        if p is None:
            raise ConfigError(f"the variant's components are built from the pipeline asset {name!r} ({ASSETS[name]}); none was given")
        if not p.is_file():
            raise DataError(f"{p} not found: the asset {name!r} ({ASSETS[name]}); run `dvc repro` (its pretrain@<variant> stage copies it)")
        out[name] = p
    return out


class _Losses:
    """The losses of a run: registered loss modules by the name phases weight them with, plus
    the head's own; losses that own networks get an optimizer each."""

    def __init__(self, variant: VariantParams, names: list[str], device: torch.device, seed: int, assets: Mapping[str, Path] | None = None) -> None:
        self.modules: dict[str, Loss] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for k, n in enumerate(names):
            cfg = variant.loss_config(n)
            if cfg is None:
                continue  # the head's own
            with torch.random.fork_rng(devices=[]):  # a loss's own network starts the same in every run of the seed
                torch.manual_seed(seed * 7 + 1000 + k)
                m = (build("loss", cfg, assets=dict(assets or {})) if cfg.requires else build("loss", cfg)).to(device)
            self.modules[n] = m
            if m.owns_parameters:
                self.optimizers[n] = torch.optim.Adam(m.parameters(), lr=cfg.learning_rate)

    def state_dict(self) -> dict[str, Any]:
        return {n: {"module": self.modules[n].state_dict(), "optimizer": o.state_dict()} for n, o in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, s in state.items():
            self.modules[n].load_state_dict(s["module"])
            self.optimizers[n].load_state_dict(s["optimizer"])

    def freeze(self) -> None:
        for n in self.optimizers:
            for p in self.modules[n].parameters():
                p.requires_grad_(False)


def train(
    subject: str | Path | SubjectData | Sequence[str | Path | SubjectData],
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
    init_from: str | Path | None = None,
    timings: str | Path | None = None,
    assets: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Train ``variant`` on a subject (or on several: cross-subject pretraining, one identity
    each); write ``checkpoint.pt``, ``config.yaml``, ``curves.csv``.

    Args:
        subject: the subject folder ``data/<S>`` or an in-memory :class:`SubjectData`; a list
            of them trains one multi-identity model.
        out_dir: output folder (``models/<S>/<V>``).
        variant: the resolved variant (preset already applied).
        resume: continue from ``out_dir/checkpoint.pt`` when it was written by the same
            config, seed, data and initial model (a finished one returns at once); otherwise
            start over.
        progress: show a progress bar (phase, loss, Gaussians, it/s).
        seed: random seed.
        device: torch device (data stays on the CPU; each step's frames are moved).
        until_step: stop after this many global steps (checkpoint written, ``finished`` False):
            time-boxed runs and the resume test.
        on_step: callback ``(step, losses)`` after every step (tests, monitoring).
        train_seconds: few-shot protocol: train on the first ``train_seconds`` of the clip only
            (:meth:`SubjectData.first_seconds`; same iterations, same test split).
        init_from: a checkpoint (e.g. the ``pretrain@<V>`` model) whose shared parameters the
            model starts from (:meth:`talkgs.models.contract.Head.transfer`).
        timings: json file for the training time (kept out of ``out_dir``): ``elapsed_s``
            (optimisation time summed over resumed runs, no start-up or checkpoint writing),
            ``steps``, ``it_s``, ``phases`` (each phase's steps and seconds), ``finished``,
            ``config_hash``. A finished run that is resumed (nothing to train) leaves an existing
            file of the same config as it is; without one the time is ``null`` with the reason.
        assets: the pipeline files (name -> path) the variant's components are built from
            (:meth:`VariantParams.required_assets`, e.g. the sync expert); their contents are part
            of the config hash, so a changed asset starts the run over instead of resuming.

    Returns:
        Summary: steps, finished, gaussians, elapsed_s, it_s (mean), final losses, paths.

    Raises:
        LPIPSWeightsMissing: a phase weights ``lpips`` > 0 and the AlexNet weights are absent.
        DataError: the subject's preprocessing outputs are missing.
        FewShotUnavailable: the training split is shorter than ``train_seconds``.
    """
    out_dir = Path(out_dir)
    sweep_temp(out_dir)  # e.g. a half-written checkpoint of a killed run (the folder persists across runs)
    device = torch.device(device)
    asset_paths = _check_assets(variant, assets)
    # losses first: a missing LPIPS backbone stops the run before any work
    loss_names = sorted({n for ph in variant.phases for n, w in ph.losses.items() if w > 0})
    losses = _Losses(variant, loss_names, device, seed, asset_paths)
    zero = sorted({n for ph in variant.phases for n, w in ph.losses.items() if w == 0})
    if zero:
        log.info("losses with weight 0 in every phase (not computed): %s", ", ".join(zero))

    subjects = list(subject) if isinstance(subject, (list, tuple)) else [subject]
    datasets: list[SubjectData] = []
    for s in subjects:
        d = s if isinstance(s, SubjectData) else load_subject(s, resolution=variant.render.resolution, audio_feature=variant.audio_feature)
        if variant.render.resolution is not None and d.width != variant.render.resolution:
            d = d.resized(variant.render.resolution)
        if train_seconds is not None:
            d = d.first_seconds(train_seconds)
        datasets.append(d)
    if not datasets:
        raise ValueError("train: no subjects")

    init_ck = None
    if init_from is not None:
        init_ck = load_checkpoint(init_from, map_location="cpu")
        if not init_ck.get("finished"):
            raise ValueError(f"{init_from}: the model to start from has not finished training ({init_ck['step']} steps); finish it first")

    cfg = to_dict(variant)
    fps = [_fingerprint(d) for d in datasets]
    fp: dict[str, Any] = fps[0] if len(fps) == 1 else {"subjects": fps}
    if train_seconds is not None:
        fp["train_seconds"] = float(train_seconds)
    hashed: dict[str, Any] = {"variant": cfg, "seed": seed, "data": fp}
    if init_ck is not None:
        hashed["init_from"] = init_ck["config_hash"]
    if asset_paths:
        hashed["assets"] = {k: sha256_file(p) for k, p in asset_paths.items()}
    chash = config_hash(hashed)
    ckpt_path = out_dir / "checkpoint.pt"
    total = variant.total_iterations
    stop = total if until_step is None else min(total, int(until_step))

    model = build_model(variant, datasets, seed, asset_paths)
    head = model.head
    extent = float(getattr(head, "scene_extent", 1.0))
    if init_ck is not None:
        loaded, skipped = head.transfer({k[len("head."):]: v for k, v in init_ck["model"].items() if k.startswith("head.")})
        post_state = {k: v for k, v in init_ck["model"].items() if k.startswith("post.")}
        if post_state:
            own = model.state_dict()
            own.update({k: v for k, v in post_state.items() if k in own and own[k].shape == v.shape})
            model.load_state_dict(own)
        log.info("starting from %s: %d tensors loaded, %d identity-specific or mismatched ones kept", init_from, len(loaded), len(skipped))
    model.to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    step, curves, elapsed = 0, [], 0.0
    phase_elapsed: dict[str, float] = {}
    timing_known = True  # False: resumed a finished checkpoint, whose timing is not in it
    opt: torch.optim.Adam | None = None
    opt_phase = -1  # the phase whose optimizer state is saved / to be restored
    built = -1  # the phase whose optimizer and callbacks are built
    callbacks: list[Callback] = []
    pending_opt_state = pending_callbacks = None
    frozen = set(variant.freeze)

    if resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, map_location="cpu")
        if ck.get("config_hash") != chash:
            log.warning("%s was written by another config/seed/data; training from scratch", ckpt_path)
        else:
            model.load_state_dict(ck["model"])
            model.to(device)
            step = int(ck["step"])
            curves = [{k: v for k, v in r.items() if k not in _TIMED} for r in ck["curves"]]
            t = ck.get("timing")
            if t is None and ck.get("elapsed_s") is not None:  # a checkpoint from before timings left it
                t = {"elapsed_s": ck["elapsed_s"], "phases": {}}
            if t is not None:
                elapsed, phase_elapsed = float(t["elapsed_s"]), {k: float(v) for k, v in (t.get("phases") or {}).items()}
            else:
                timing_known = step == 0
            gen.set_state(ck["generator"])
            if ck.get("losses"):
                losses.load_state_dict(ck["losses"])
            if step < total and locate(variant.phases, step)[0] == ck["phase"]:
                opt_phase = int(ck["phase"])
                pending_opt_state, pending_callbacks = ck.get("optimizer"), ck.get("callbacks")
            log.info("resuming %s at step %d/%d", ckpt_path, step, total)

    starts = phase_starts(variant.phases)
    pool = frame_pool(datasets)
    settings = render_settings(variant)
    audio_frames = head.config.audio_frames()
    samplers: dict[int, Any] = {}
    options: dict[int, Any] = {}
    head_losses = head.loss_terms()
    lr_groups = [g for g in variant.groups() if any(g in ph.lr for ph in variant.phases)]

    def timing_record() -> dict[str, Any]:
        steps_of = {}
        for ph, start in zip(variant.phases, starts):
            steps_of[ph.name] = steps_of.get(ph.name, 0) + max(0, min(step, start + ph.iterations) - start)
        return {
            "elapsed_s": round(elapsed, 2) if timing_known else None,
            "steps": step,
            "it_s": round(step / elapsed, 3) if timing_known and elapsed > 0 else None,
            "phases": {
                n: {"steps": k, "elapsed_s": round(phase_elapsed.get(n, 0.0), 2), "it_s": round(k / phase_elapsed[n], 3) if phase_elapsed.get(n) else None}
                for n, k in steps_of.items() if n in phase_elapsed  # (none from a checkpoint that had only the total)
            } if timing_known else {},
            "finished": step >= total,
            "device": str(device),
            "config_hash": chash,
            "measures": "optimisation time of the steps (data, render, losses, backward, callbacks, optimizer), summed over resumed runs; no start-up, no checkpoint writing",
        }  # fmt: skip

    written_timings = False

    def write_timings() -> None:
        nonlocal written_timings
        if timings is None:
            return
        written_timings = True
        tp = Path(timings)
        rec = timing_record()
        if not timing_known:
            try:
                old = json.loads(tp.read_text()) if tp.is_file() else None
            except (OSError, ValueError):
                old = None
            if old is not None and old.get("config_hash") == chash and old.get("elapsed_s") is not None:
                return  # the run that trained it recorded its time: keep it
            rec["reason"] = f"{ckpt_path} had finished before this run and its training time was not recorded in {tp}"
        write_json(tp, rec)

    def save(finished: bool) -> None:
        if finished:
            write_timings()  # first: the finished checkpoint no longer carries the time
        save_checkpoint(
            ckpt_path,
            {
                "variant": cfg,
                "config_hash": chash,
                "step": step,
                "finished": finished,
                "seed": seed,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "model_meta": _model_meta(model, datasets),
                # optimizer moments and callback statistics only while unfinished (resume)
                "optimizer": None if opt is None or finished else opt.state_dict(),
                "phase": opt_phase,
                "callbacks": None if finished else [c.state_dict() for c in callbacks],
                "losses": losses.state_dict(),
                "init_from": None if init_ck is None else {"path": str(init_from), "config_hash": init_ck["config_hash"]},
                "generator": gen.get_state(),
                # fresh objects: pickle shares repeated objects, and resumed rows come from the
                # loaded checkpoint; a canonical copy keeps a resumed run's bytes = an uninterrupted one's
                "curves": json.loads(json.dumps(curves)),
                # wall-clock time only while unfinished (resume); a finished model holds none
                "timing": None if finished or not timing_known else {"elapsed_s": elapsed, "phases": dict(phase_elapsed)},
                "data": {**fp, "audio_path": str(datasets[0].audio_path) if datasets[0].audio_path else None, "source_size": datasets[0].source_size},
            },
        )
        write_text(out_dir / "curves.csv", _curves_csv(curves, loss_names, lr_groups))

    # frames of the training part where the face mesh failed: not trained on (SubjectData.excluded)
    excluded = {d.name: [int(i) for i in d.excluded.tolist() if i < int(d.test_start)] for d in datasets}  # type: ignore[union-attr]
    n_excluded = sum(map(len, excluded.values()))
    if n_excluded:
        log.info("training frames without a detected face, left out: %s", "; ".join(f"{k}: {len(v)}" for k, v in excluded.items()))

    def write_config() -> None:
        text = "# resolved training config (talkgs.train.loop.train)\n" + dump_yaml(
            {"variant": cfg, "seed": seed, "device": str(device), "data": fp, "extent": extent,
             "init_from": None if init_from is None else str(init_from),
             "excluded_frames": {"why": "no face detected by the track stage's face mesh", "count": n_excluded, "frames": excluded}}  # fmt: skip
        )
        write_text(out_dir / "config.yaml", text)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_config()
    bar = _Progress(progress, total, step, f"train {'+'.join(d.name for d in datasets)}/{out_dir.name}")
    t_window, n_window, rate = time.perf_counter(), 0, 0.0
    t_run = time.perf_counter()
    last_terms: dict[str, float] = {}
    try:
        while step < stop:
            pi, local = locate(variant.phases, step)
            phase = variant.phases[pi]
            if pi not in options:
                options[pi] = variant.model.parse_options(phase.head, f"phases[{pi}].head")
                samplers[pi] = build("sampler", phase.sampler, pool=pool, seed=seed, iterations=phase.iterations)
            if built != pi:
                model.train()
                opt = _make_optimizer(model, phase, frozen)
                losses.freeze()
                callbacks = []
                if phase.densify.enabled:
                    callbacks.append(Densify(phase.densify, gen, scene_scale=extent))
                callbacks += head.callbacks(options[pi])
                callbacks += [build("callback", c) for c in phase.callbacks]
                if opt_phase == pi:  # resuming inside this phase: its optimizer and callback states
                    if pending_opt_state is not None and opt is not None:
                        opt.load_state_dict(pending_opt_state)
                    for c, st in zip(callbacks, pending_callbacks or []):
                        c.load_state_dict(st)
                pending_opt_state = pending_callbacks = None
                if opt is None and not any(n in losses.optimizers for n, w in phase.losses.items() if w > 0):
                    raise ValueError(f"phase {phase.name!r} trains nothing: give at least one parameter group a learning rate")
                built = opt_phase = pi
                log.info("phase %s: %d steps from step %d, training %s", phase.name, phase.iterations, starts[pi],
                         ", ".join(g for g in phase.lr if g not in frozen))  # fmt: skip
            t0 = time.perf_counter()
            lrs = _set_lrs(opt, phase, local, extent)
            picks = samplers[pi].sample(step, local, phase.frames_per_step)
            batch = make_batch(datasets, picks, device, background=variant.render.background, audio_frames=audio_frames, step=step, local_step=local)
            outputs = model.render(batch, options[pi], settings, post=phase.post) if phase.render else Outputs()
            ctx = LossContext(outputs=outputs, batch=batch, head=head, step=step, local_step=local, phase_iterations=phase.iterations)
            terms = {}
            for name, w in phase.losses.items():
                if w > 0:
                    terms[name] = head_losses[name](ctx) if name in head_losses else losses.modules[name](ctx)
            loss = sum(phase.losses[n] * v for n, v in terms.items())
            loss_v = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"step {step} ({phase.name}, frames {picks}): loss is {loss_v}; lower the learning rates")
            if opt is not None:
                opt.zero_grad(set_to_none=True)
            if isinstance(loss, Tensor) and loss.requires_grad:
                loss.backward()
            for c in callbacks:
                c.post_backward(model, opt, local, outputs)  # type: ignore[arg-type]
            if opt is not None:
                opt.step()
            for n, o in losses.optimizers.items():
                if phase.losses.get(n, 0) > 0:
                    terms.update({f"{n}.{k}": torch.tensor(v) for k, v in losses.modules[n].update(ctx, o).items()})
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            phase_elapsed[phase.name] = phase_elapsed.get(phase.name, 0.0) + dt
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
    if not written_timings:  # an unfinished (time-boxed) run, or a finished one resumed
        write_timings()
    wall = time.perf_counter() - t_run
    mean_rate = step / elapsed if elapsed > 0 and timing_known else float("nan")
    summary = {
        "subject": datasets[0].name if len(datasets) == 1 else [d.name for d in datasets],
        "steps": step,
        "total_steps": total,
        "train_frames": int(pool.total),
        "train_frames_excluded": n_excluded,
        "finished": finished,
        "gaussians": model.n,
        "elapsed_s": round(elapsed, 2) if timing_known else None,
        "wall_s_this_run": round(wall, 2),
        "it_s": round(mean_rate, 3) if math.isfinite(mean_rate) else None,
        "losses": last_terms,
        "checkpoint": str(ckpt_path),
        "config": str(out_dir / "config.yaml"),
        "curves": str(out_dir / "curves.csv"),
    }
    log.info("trained %s: %d/%d steps, %d Gaussians, %.1f s (%.2f it/s)", summary["subject"], step, total, model.n, elapsed, summary["it_s"] or 0)
    return summary
