"""Training and evaluation of the audio-visual sync expert (stage ``sync_expert``).

**Loss** (Wav2Lip's expert, ``color_syncnet_train.py``): each step draws ``batch_size`` anchor
windows from the training clips; each gives an in-sync pair (its audio window, its mouth stack;
label 1) and a shifted pair (its audio window, the mouth stack of a training window
``negative_min_shift..negative_max_shift`` frames away in the same clip; label 0), so a batch is
balanced. ``p_sync = sigmoid(w * cos(audio_emb, video_emb) + b)`` (learned ``w``, ``b``; see
:mod:`talkgs.sync.model`) and the loss is the binary cross-entropy. Adam, constant learning rate.
Augmentation: a random shift of the crop within ``jitter_px`` and a random horizontal flip.

**Held-out sync accuracy** (:func:`evaluate`): on the test windows of each evaluation clip, every
window ``c`` with a test window ``c +- eval_shift`` gives the in-sync pair ``(a_c, v_c)`` and the
shifted pairs ``(a_c, v_{c +- shift})``. ``accuracy`` = balanced accuracy of ``p_sync > 0.5`` (mean
of the in-sync and the shifted pairs' accuracies; chance 0.5); ``pairwise_accuracy`` = how often
``p(a_c, v_c) > p(a_c, v_{c + s})`` (threshold-free; chance 0.5).

**Resume**: the checkpoint is written atomically every ``checkpoint_every`` steps with the
optimizer and RNG states; a killed run resumes from it when its config hash (params + data) matches.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from talkgs.configlib import COUNT, SEED, STEPS, WIDTH, Range, to_dict
from talkgs.sync.data import SyncClip, eval_pairs, load_clip, sample_pairs, stack_inputs
from talkgs.sync.model import build_net, load_expert, save_expert, talkgs_spec

log = logging.getLogger(__name__)

__all__ = ["SyncExpertParams", "fit", "evaluate", "run_sync_expert"]

SHIFT = Range(1, 250, unit="frames")


@dataclass(frozen=True)
class SyncExpertParams:
    """``params.yaml: sync_expert``: the audio-visual sync expert (stage ``sync_expert``)."""

    train: Literal["auto", "always"] = "auto"
    """``auto``: train only when an evaluated variant is built from the expert (SyncGaussian's
    sync-enhanced encoder, FG-3DGS's lip-sync loss), otherwise write ``none.json`` in a second;
    ``always``: train it anyway (to read its held-out accuracy)."""
    subjects: list[str] = field(default_factory=lambda: ["demo"])
    """Enabled subjects whose training splits it trains on (all pooled)."""
    eval_subjects: list[str] = field(default_factory=list)
    """Subjects it does not train on whose test splits measure the held-out accuracy (enabled ones
    are used; catalog ones are skipped and listed). None enabled: the test split of ``subjects``,
    labelled as such."""
    weights: str | None = None
    """Load this expert instead of training: Wav2Lip's ``lipsync_expert.pth`` or a talkgs
    ``models/sync_expert/checkpoint.pt`` (relative to the repository root, or absolute)."""
    arch: Literal["talkgs", "wav2lip"] = "talkgs"
    """Architecture to train (``wav2lip``: Wav2Lip's expert, 15 M parameters: a GPU job)."""
    steps: Annotated[int, STEPS] = 1200
    """Optimisation steps."""
    batch_size: Annotated[int, Range(2, 4096)] = 32
    """Anchor windows per step (each gives one in-sync and one shifted pair)."""
    lr: Annotated[float, Range(0, 1, lo_open=True)] = 1e-3
    """Adam learning rate."""
    crop_height: Annotated[int, Range(16, 512, multiple=2, unit="pixels")] = 48
    crop_width: Annotated[int, Range(16, 512, multiple=2, unit="pixels")] = 96
    """Mouth crop size (``talkgs`` arch; Wav2Lip's is fixed at 48 x 96)."""
    crop_scale: Annotated[float, Range(0.1, 3.0)] = 0.7
    """Crop width as a multiple of the face width (the face mesh's bounding box)."""
    color: Literal["gray", "rgb"] = "gray"
    frames: Annotated[int, Range(1, 15)] = 5
    """Consecutive frames per mouth stack (odd; SyncNet's 5)."""
    jitter_px: Annotated[int, Range(0, 32, unit="pixels")] = 4
    """Random shift of the crop during training (the crops carry this margin)."""
    flip: bool = True
    """Random horizontal flips during training."""
    width: Annotated[int, WIDTH] = 32
    """Base channel width of the ``talkgs`` towers (8x in the last block)."""
    embed_dim: Annotated[int, WIDTH] = 128
    negative_min_shift: Annotated[int, SHIFT] = 3
    negative_max_shift: Annotated[int, SHIFT] = 25
    """Offsets of the shifted (label 0) training pairs, in frames."""
    eval_shift: Annotated[int, SHIFT] = 5
    """Offset of the shifted pairs of the held-out accuracy (+- frames)."""
    seed: Annotated[int, SEED] = 0
    checkpoint_every: Annotated[int, COUNT] = 200
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.frames % 2 == 0:
            raise ValueError(f"frames: {self.frames} must be odd (stacks are centred on a frame)")
        if self.negative_min_shift > self.negative_max_shift:
            raise ValueError(f"negative_min_shift ({self.negative_min_shift}) is larger than negative_max_shift ({self.negative_max_shift})")
        overlap = set(self.subjects) & set(self.eval_subjects)
        if overlap:
            raise ValueError(f"eval_subjects {sorted(overlap)} are also training subjects: held-out subjects must not be trained on")
        if self.arch == "wav2lip" and self.frames != 5:
            raise ValueError("arch wav2lip takes 5-frame stacks: set frames: 5")


def _spec(params: SyncExpertParams, audio_shape: tuple[int, int]) -> dict[str, Any]:
    if params.arch == "wav2lip":
        from talkgs.sync.model import WAV2LIP_SPEC

        return dict(WAV2LIP_SPEC)
    return talkgs_spec(height=params.crop_height, width=params.crop_width, color=params.color, frames=params.frames,
                       crop_scale=params.crop_scale, audio_shape=audio_shape)  # fmt: skip


def _batch(clips: list[SyncClip], picks: list[tuple[int, int, int]], spec: dict[str, Any], rng: np.random.Generator | None, flip: bool, device: Any):
    """Tensors ``audio [2B, 1, C, W]``, ``video [2B, K, H, W]``, ``y [2B]`` of anchors ``picks``."""
    aud, vid = [], []
    for ci, c, s in picks:
        clip = clips[ci]
        aud.append(clip.audio[[c, c]])
        vid.append(stack_inputs(clip, np.array([c, s]), spec, rng, flip=flip))
    audio = torch.from_numpy(np.concatenate(aud))[:, None].to(device)
    video = torch.from_numpy(np.concatenate(vid)).to(device)
    y = torch.tensor([1.0, 0.0] * len(picks), device=device)
    return audio, video, y


def fit(
    net: nn.Module,
    clips: list[SyncClip],
    params: SyncExpertParams,
    *,
    state: dict[str, Any] | None = None,
    on_checkpoint: Any = None,
    progress: bool = False,
    device: Any = "cpu",
) -> dict[str, Any]:
    """Train ``net`` on the training windows of ``clips`` (see the module docstring).

    ``state``: a checkpoint's ``{step, optimizer, rng, timing}`` to resume from. ``on_checkpoint(
    state)`` is called every ``checkpoint_every`` steps with the current state (``step``,
    ``optimizer``, ``rng``, ``timing``). Returns ``{"step", "elapsed_s", "loss", "train_batch_accuracy"}``.
    """
    from talkgs.progress import Rate, progress_bar

    spec = net.spec  # type: ignore[attr-defined]
    opt = torch.optim.Adam(net.parameters(), lr=params.lr)
    rng = np.random.default_rng(params.seed)
    step, elapsed = 0, 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        step, elapsed = int(state["step"]), float((state.get("timing") or {}).get("elapsed_s") or 0.0)
    net.train()
    loss_ema = acc_ema = float("nan")

    def snapshot() -> dict[str, Any]:
        return {"step": step, "optimizer": opt.state_dict(), "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
                "timing": {"elapsed_s": round(elapsed, 3)}}  # fmt: skip

    bar = progress_bar(progress, "steps", fields="loss {loss:.4f}, batch acc {acc:.2f}", count="step")
    bar.start()
    task = bar.add_task("sync_expert", total=params.steps, completed=step, loss=float("nan"), acc=float("nan"), rate=0.0)
    meter, start = Rate(), step
    try:
        while step < params.steps:
            t0 = time.perf_counter()
            picks = sample_pairs(clips, params.batch_size, rng, min_shift=params.negative_min_shift, max_shift=params.negative_max_shift)
            audio, video, y = _batch(clips, picks, spec, rng, params.flip, device)
            a, v = net(audio, video)
            p = net.probability(a, v)  # type: ignore[operator]
            loss = F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed += time.perf_counter() - t0
            lv, av = float(loss.detach()), float(((p.detach() > 0.5).float() == y).float().mean())
            loss_ema = lv if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * lv
            acc_ema = av if math.isnan(acc_ema) else 0.95 * acc_ema + 0.05 * av
            if meter.due() or step == params.steps:
                bar.update(task, completed=step, loss=loss_ema, acc=acc_ema, rate=meter.rate(step - start))
            if on_checkpoint is not None and step % params.checkpoint_every == 0 and step < params.steps:
                on_checkpoint(snapshot())
    finally:
        bar.stop()
    net.eval()
    return {"step": step, "elapsed_s": round(elapsed, 3), "loss": None if math.isnan(loss_ema) else round(loss_ema, 5),
            "train_batch_accuracy": None if math.isnan(acc_ema) else round(acc_ema, 4)}  # fmt: skip


@torch.no_grad()
def evaluate(net: nn.Module, clips: list[SyncClip], split: str, shift: int, *, device: Any = "cpu", batch: int = 128) -> dict[str, Any]:
    """Sync accuracy on the ``split`` windows of ``clips``, in-sync vs ``+-shift``-frame shifted pairs
    (see the module docstring). A clip without such pairs counts nothing; none at all gives
    ``accuracy: None`` with the ``reason``."""
    net.eval()
    spec = net.spec  # type: ignore[attr-defined]
    pos, neg, wins, per = [], [], 0, {}
    for clip in clips:
        pairs = eval_pairs(clip, split, shift)
        if not pairs:
            per[clip.name] = {"pairs": 0}
            continue
        centres = sorted({c for c, _ in pairs} | {s for _, s in pairs})
        emb_v, emb_a = {}, {}
        for i in range(0, len(centres), batch):
            cs = np.array(centres[i : i + batch])
            v = net.embed_video(torch.from_numpy(stack_inputs(clip, cs, spec)).to(device))  # type: ignore[operator]
            a = net.embed_audio(torch.from_numpy(clip.audio[cs])[:, None].to(device))  # type: ignore[operator]
            emb_v.update(zip(cs.tolist(), v.cpu()))
            emb_a.update(zip(cs.tolist(), a.cpu()))
        anchors = sorted({c for c, _ in pairs})
        A = torch.stack([emb_a[c] for c in anchors])
        p_pos = dict(zip(anchors, net.probability(A, torch.stack([emb_v[c] for c in anchors])).tolist()))  # type: ignore[operator]
        p_neg = net.probability(torch.stack([emb_a[c] for c, _ in pairs]), torch.stack([emb_v[s] for _, s in pairs])).tolist()  # type: ignore[operator]
        cp, cn = [p_pos[c] for c in anchors], p_neg
        rank = [p_pos[c] > pn for (c, _), pn in zip(pairs, p_neg)]
        per[clip.name] = {"pairs": len(pairs), "windows": len(anchors), "accuracy": round(_balanced(cp, cn), 4), "pairwise_accuracy": round(float(np.mean(rank)), 4)}
        pos += cp
        neg += cn
        wins += len(anchors)
        per[clip.name]["_rank"] = rank
    ranks = [r for d in per.values() for r in d.pop("_rank", [])]
    if not neg:
        return {"accuracy": None, "pairwise_accuracy": None, "chance": 0.5, "pairs": 0, "per_subject": per,
                "reason": f"no {split} window has another {split} window {shift} frames away (split too short)"}  # fmt: skip
    return {
        "accuracy": round(_balanced(pos, neg), 4), "pairwise_accuracy": round(float(np.mean(ranks)), 4), "chance": 0.5,
        "in_sync_accuracy": round(float(np.mean(np.array(pos) > 0.5)), 4), "shifted_accuracy": round(float(np.mean(np.array(neg) <= 0.5)), 4),
        "mean_p_in_sync": round(float(np.mean(pos)), 4), "mean_p_shifted": round(float(np.mean(neg)), 4),
        "windows": wins, "pairs": len(neg), "per_subject": per,
    }  # fmt: skip


def _balanced(pos: list[float], neg: list[float]) -> float:
    return 0.5 * (float(np.mean(np.array(pos) > 0.5)) + float(np.mean(np.array(neg) <= 0.5)))


# ----------------------------------------------------------------------------------------------
# the stage


def _audio_shape(subject_dir: Path) -> tuple[int, int]:
    from talkgs.features.cache import CacheError, read_audio_table
    from talkgs.train.data import DataError, _need

    p = _need(subject_dir / "features" / "audio_mel.parquet", "features", subject_dir)
    try:
        t = read_audio_table(p, encoder="mel")
    except CacheError as e:
        raise DataError(str(e)) from e
    return int(t.features.shape[2]), int(t.features.shape[1])  # [C bands, W columns]


def run_sync_expert(
    params: SyncExpertParams,
    train_dirs: list[Path],
    eval_dirs: list[Path],
    out_dir: Path,
    metrics_path: Path,
    *,
    weights: Path | None = None,
    skipped_eval: list[str] | None = None,
    timings: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The ``sync_expert`` stage: train (or load ``weights``), evaluate, write ``out_dir``
    (``checkpoint.pt``, ``config.yaml``, ``metrics.json``) and ``metrics_path``; the training time
    goes to ``timings``. ``eval_dirs`` empty: the held-out accuracy is on the training subjects' test
    splits (``protocol`` says so). Resumes an unfinished checkpoint of the same config."""
    from talkgs.io.atomic import write_json, write_text
    from talkgs.train.checkpoint import config_hash
    from talkgs.train.data import DataError

    if not train_dirs and weights is None:
        raise DataError("sync_expert.subjects is empty: name the subjects to train on (or give sync_expert.weights)")
    device = torch.device(params.device)
    torch.manual_seed(params.seed)
    ckpt_path = out_dir / "checkpoint.pt"
    if weights is not None:
        net, info = load_expert(weights, device)
        spec, arch, net_kwargs = dict(net.spec), info.get("arch", "wav2lip"), {}  # type: ignore[attr-defined]
        if info.get("net"):
            net_kwargs = dict(info["net"])
    else:
        spec = _spec(params, _audio_shape(train_dirs[0]))
        arch = params.arch
        net_kwargs = {"spec": spec, "width": params.width, "embed_dim": params.embed_dim} if arch == "talkgs" else {}
        net = build_net(arch, net_kwargs).to(device)
    margin = params.jitter_px if weights is None else 0
    train_clips = [load_clip(d, spec, margin=margin, progress=progress) for d in train_dirs]
    eval_clips = [load_clip(d, spec, margin=margin, progress=progress) for d in eval_dirs]
    cfg = {k: v for k, v in to_dict(params).items() if k not in ("device", "train")}  # where and whether, not what
    data_fp = [[c.name, len(c.crops), len(c.train), len(c.test)] for c in train_clips]
    chash = config_hash({"config": cfg, "spec": spec, "data": data_fp, "weights": str(weights) if weights else None})
    out_dir.mkdir(parents=True, exist_ok=True)

    old = None
    if ckpt_path.is_file():
        try:
            old = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged file: start over
            log.warning("sync_expert: %s unreadable (%s): starting over", ckpt_path, e)
        if old is not None and old.get("config_hash") != chash:
            log.info("sync_expert: %s is of another config: starting over", ckpt_path)
            old = None

    def ckpt(step: int, finished: bool, extra: dict[str, Any]) -> dict[str, Any]:
        return {"arch": arch, "net": net_kwargs, "spec": spec, "state_dict": net.state_dict(), "config": cfg, "config_hash": chash,
                "step": step, "finished": finished, "source": str(weights) if weights else "trained",
                "optimizer": None, "rng": None, "timing": None, **extra}  # fmt: skip

    fit_info: dict[str, Any] = {}
    if weights is None and train_clips:
        for c in train_clips:
            if not len(c.train):
                raise DataError(f"{c.name}: no training window of {params.frames} consecutive frames with a detected face")
        if arch == "talkgs" and (old is None or not old.get("finished")):  # audio statistics of the training clips
            a = np.concatenate([c.audio[c.train] for c in train_clips])  # [N, C, W]
            net.audio_mean.copy_(torch.from_numpy(a.mean((0, 2))))  # type: ignore[union-attr, operator]
            net.audio_std.copy_(torch.from_numpy(a.std((0, 2)) + 1e-5))  # type: ignore[union-attr, operator]
        state = None
        if old is not None:
            net.load_state_dict(old["state_dict"])
            if not old.get("finished"):
                state = {"step": old["step"], "optimizer": old["optimizer"], "rng": old["rng"], "timing": old.get("timing")}
                log.info("sync_expert: resuming from step %d of %s", old["step"], ckpt_path)
        if old is not None and old.get("finished"):
            log.info("sync_expert: %s is finished for this config: evaluating only", ckpt_path)
            fit_info = {"step": int(old["step"]), "resumed_finished": True}
        else:
            fit_info = fit(net, train_clips, params, state=state, progress=progress, device=device,
                           on_checkpoint=lambda st: save_expert(ckpt_path, ckpt(st["step"], False, st)))  # fmt: skip
            if timings is not None:
                write_json(timings, {"elapsed_s": fit_info["elapsed_s"], "steps": fit_info["step"], "device": str(device), "config_hash": chash,
                                     "it_s": round(fit_info["step"] / fit_info["elapsed_s"], 3) if fit_info["elapsed_s"] else None,
                                     "measures": "optimisation time of the steps (batch assembly, forward, backward, optimizer), summed over resumed runs"})  # fmt: skip
    elif timings is not None:
        write_json(timings, {"elapsed_s": None, "reason": f"not trained: loaded {weights}"})
    step = int(fit_info.get("step", 0))

    held_out = bool(eval_clips)
    ev_clips, split = (eval_clips, "test") if held_out else (train_clips, "test")
    result = evaluate(net, ev_clips, split, params.eval_shift, device=device)
    if held_out:
        protocol = f"test split of held-out subjects {[c.name for c in eval_clips]} (not trained on); in-sync vs +-{params.eval_shift}-frame shifted pairs"
    else:
        protocol = (f"test split of the training subjects {[c.name for c in train_clips]} (no held-out subject enabled: "
                    f"same identities, unseen frames); in-sync vs +-{params.eval_shift}-frame shifted pairs")  # fmt: skip
    train_acc = evaluate(net, train_clips, "train", params.eval_shift, device=device) if train_clips else None
    metrics = {
        "protocol": protocol, "held_out_subjects": held_out, "eval_subjects": [c.name for c in ev_clips],
        "skipped_eval_subjects": list(skipped_eval or []), "train_subjects": [c.name for c in train_clips],
        "shift_frames": params.eval_shift, **result,
        "train_split": None if train_acc is None else {k: train_acc[k] for k in ("accuracy", "pairwise_accuracy", "pairs")},
        "source": str(weights) if weights else "trained", "arch": arch, "steps": step,
        "loss": "cosine similarity -> sigmoid(w cos + b) -> BCE, in-sync vs shifted pairs (Wav2Lip expert style)" if arch == "talkgs"
        else "Wav2Lip expert: cosine similarity as the probability, BCE",
    }  # fmt: skip
    if weights is not None or fit_info.get("resumed_finished") is None:
        save_expert(ckpt_path, ckpt(step, True, {}))
    from talkgs.configlib import dump_yaml

    write_text(out_dir / "config.yaml", dump_yaml({"sync_expert": params, "spec": spec, "arch": arch}))
    write_json(out_dir / "metrics.json", metrics)
    write_json(metrics_path, metrics)
    log.info("sync_expert: %s accuracy %s (pairwise %s, chance 0.5) on %s", "held-out" if held_out else "test-split", metrics["accuracy"], metrics["pairwise_accuracy"], metrics["eval_subjects"])
    return metrics

