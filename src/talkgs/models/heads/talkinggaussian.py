"""``head/talkinggaussian``: TalkingGaussian (Li et al., ECCV 2024) -- structure-persistent
Gaussians deformed by a face branch and an inside-mouth branch, fused by alpha.

Two sets of explicit canonical Gaussians per identity: **face** (the head: face skin, hair,
eyes, lips) and **mouth** (the inside of the mouth: teeth, tongue). Their motion networks
(:mod:`talkgs.models.deformers.talkinggaussian`) only move them (Δμ, Δs, Δq; colour and
opacity persist). The final image (eq. fusion, the official ``train_fuse.py``)::

    C = C_face + (1 - A_face) · (C_mouth + (1 - A_mouth) · BG)

with ``C``, ``A`` the premultiplied colour and alpha of a render and ``BG`` the frame's torso
image. Training is three stages, each a phase with its ``head:`` options (``branch``):

- ``mouth``: the mouth Gaussians over a constant background colour (green), supervised on the
  inside-mouth pixels (label 6); pixels inside the lips box but outside the mouth are not
  supervised; the alpha loss ties the mouth alpha to the lips box. Incremental sampling by
  mouth opening.
- ``face``: the face Gaussians over green, supervised on the head pixels with the inside of the
  mouth removed (a hole the mouth shows through); hair is ignored on 6 of 7 steps
  (``hair_every``); alpha loss to the head mask; motion regulariser; region-attention losses
  (no expression attention on the lips, no attention on hair). Incremental sampling by blink.
- ``fuse``: both sets composited onto the torso frame, only colours (and face opacity) train.

``deform: false`` phases are the static 3DGS warm-ups of each branch. Head losses: ``alpha``,
``motion``, ``attention``, ``audio`` (the audio encoders' own similarity loss, when they have one:
SyncGaussian's sync-enhanced encoder). A callback makes Gaussians that took the training background colour
transparent (face; the densifier then prunes them) or small and faint (mouth), as the official
code's green pruning / softening.

Cross-subject: one face + mouth set per identity (``identities.<i>``: Gaussians and expression
statistics), motion networks shared -- the shape of D3-Talker's and InsTaG's pretraining.

Deviations from the official code (README, TalkingGaussian section): initial points from the
subject's own tracking (face: head labels; mouth: inside-mouth pixels of the widest-open frames
and the inner-lip landmarks, moved ``mouth_depth`` x head radius behind the lips) instead of a
random cube; exp-activated log scales instead of softplus; one learning rate for all SH
coefficients; LPIPS patch losses need the AlexNet weights (off in the cpu preset); no size
pruning; no SH-degree warm-up; the attention maps are extra channels of the face render (their
gradient also reaches the geometry, the official code renders them in a detached pass); the
green test uses the DC colour.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from talkgs.configlib import COUNT, NON_NEGATIVE, SH_DEGREE, Range
from talkgs.models.contract import (
    Batch,
    BuildContext,
    Callback,
    GaussianSet,
    Head,
    HeadConfig,
    LossContext,
    Outputs,
    PresetKnobs,
    RenderSettings,
)
from talkgs.models.deformers.talkinggaussian import FaceMotionConfig, FaceMotionNet, MouthMotionConfig, MouthMotionNet
from talkgs.models.gaussians import GaussianParams, inverse_sigmoid, num_sh_bases, rgb_to_sh, sh_to_rgb
from talkgs.models.params import InitParams
from talkgs.models.registry import register
from talkgs.preprocess import facemesh as fm
from talkgs.preprocess.segment import EYES, FACE, HAIR, LIPS, MOUTH
from talkgs.render import rasterize

__all__ = ["TalkingGaussianHead", "TalkingGaussianHeadConfig", "TalkingGaussianOptions", "BackgroundGaussians"]

BRANCH_GROUPS = ("means", "sh", "opacity", "scales", "quats", "grid", "audio", "audio_att", "net")
GROUPS: tuple[str, ...] = tuple(f"{b}.{g}" for b in ("face", "mouth") for g in BRANCH_GROUPS)
FACE_CLASSES = (FACE, HAIR, EYES, LIPS)
"""Label classes of the face branch (the inside of the mouth, label 6, is the mouth branch's)."""


@dataclass(frozen=True)
class TalkingGaussianOptions:
    """Per-phase options of ``head/talkinggaussian`` (a phase's ``head:`` mapping)."""

    branch: Literal["face", "mouth", "fuse"] = "fuse"
    """What the phase renders: one branch over the training background, or both fused onto the
    torso frame (inference always fuses)."""
    deform: bool = True
    """Apply the motion networks (False: the static warm-up)."""
    hair_every: Annotated[int, COUNT] = 7
    """Face branch, deforming: hair is supervised on steps ``local_step % hair_every == 0`` only
    (TalkingGaussian: 1 of 7); 1 = always."""
    background: tuple[float, float, float] = (0.0, 1.0, 0.0)
    """Background colour of the branch renders (TalkingGaussian: green)."""

    def __post_init__(self) -> None:
        if self.hair_every < 1:
            raise ValueError(f"hair_every must be >= 1, found {self.hair_every}")


@dataclass(frozen=True)
class TalkingGaussianHeadConfig(HeadConfig):
    """``head/talkinggaussian``. Defaults: the official code's settings where they carry over."""

    name: str = "talkinggaussian"
    groups: ClassVar[tuple[str, ...]] = GROUPS
    loss_names: ClassVar[tuple[str, ...]] = ("alpha", "motion", "attention", "audio")
    options: ClassVar[type] = TalkingGaussianOptions
    face_init: InitParams = field(default_factory=lambda: InitParams(points=10000, max_gaussians=50000))
    """Initial face Gaussians (labels face, hair, eyes, lips + the torso frame's cut-out)."""
    mouth_init: InitParams = field(default_factory=lambda: InitParams(points=4000, max_gaussians=20000, reference_frames=16))
    """Initial inside-mouth Gaussians."""
    mouth_budget: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 0.25
    """A hardware preset's Gaussian budget gives the mouth this fraction of the face's."""
    mouth_depth: Annotated[float, NON_NEGATIVE] = 0.12
    """Inside-mouth points start this far behind the lips (x head radius)."""
    sh_degree: Annotated[int, SH_DEGREE] = 2
    """SH degree of both sets (TalkingGaussian: 2)."""
    face: FaceMotionConfig = field(default_factory=FaceMotionConfig)
    mouth: MouthMotionConfig = field(default_factory=MouthMotionConfig)
    grid_margin: Annotated[float, NON_NEGATIVE] = 0.15
    """The hash grids' box is the initial clouds' box grown by this fraction per side."""
    audio_context: Annotated[int, Range(1, 1024, unit="frames")] = 8
    """Neighbouring audio windows smoothed by the attention (TalkingGaussian: 8)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        num_sh_bases(self.sh_degree)
        if not 0 < self.mouth_budget <= 1:
            raise ValueError(f"mouth_budget must be in (0, 1], found {self.mouth_budget}")

    def audio_frames(self) -> int:
        return self.audio_context

    def with_preset(self, knobs: PresetKnobs) -> TalkingGaussianHeadConfig:
        face = self.face_init.with_budget(knobs.init_points, knobs.max_gaussians)
        mp = None if knobs.init_points is None else max(1, round(knobs.init_points * self.mouth_budget))
        mm = None if knobs.max_gaussians is None else max(1, round(knobs.max_gaussians * self.mouth_budget))
        mouth = self.mouth_init.with_budget(mp, mm)
        sh = self.sh_degree if knobs.sh_degree is None else knobs.sh_degree
        return dataclasses.replace(self, face_init=face, mouth_init=mouth, sh_degree=sh)


class _Identity(nn.Module):
    """One subject's face and mouth Gaussians and its expression statistics."""

    def __init__(self, face: GaussianParams, mouth: GaussianParams, expression_dim: int) -> None:
        super().__init__()
        self.face = face
        self.mouth = mouth
        self.register_buffer("exp_mean", torch.zeros(expression_dim))
        self.register_buffer("exp_std", torch.ones(expression_dim))


def _explicit(means: Tensor, rgb: Tensor, log_scales: Tensor, sh_degree: int, opacity: float) -> GaussianParams:
    n = means.shape[0]
    sh = torch.zeros(n, num_sh_bases(sh_degree), 3)
    sh[:, 0] = rgb_to_sh(rgb.float())
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return GaussianParams({
        "means": means.float(), "quats": quats, "scales": log_scales.float(),
        "opacities": torch.full((n,), float(inverse_sigmoid(opacity))), "sh": sh,
    })  # fmt: skip


def _extent(means: Tensor) -> float:
    return float((means - means.mean(0)).norm(dim=-1).max()) if means.shape[0] > 1 else 1.0


def _box(clouds: list[Tensor], margin: float) -> tuple[Tensor, Tensor]:
    pts = torch.cat(clouds)
    lo, hi = pts.min(0).values, pts.max(0).values
    pad = (hi - lo) * margin
    return lo - pad, hi + pad


@register("head", "talkinggaussian", TalkingGaussianHeadConfig)
class TalkingGaussianHead(Head):
    """TalkingGaussian's face + inside-mouth Gaussians and motion networks (see the module doc)."""

    config: TalkingGaussianHeadConfig

    def __init__(self, cfg: TalkingGaussianHeadConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        face_spec = cfg.face_init.spec(classes=FACE_CLASSES, cutout=True)
        mouth_spec = cfg.mouth_init.spec(
            classes=(MOUTH,), cutout=False, landmarks=True, landmark_subset=fm.LIPS_INNER, depth_offset=cfg.mouth_depth, select="mouth_open",
        )  # fmt: skip
        idents, face_clouds, mouth_clouds, extents = [], [], [], []
        for i in range(ctx.n_identities):
            fmeans, frgb, fscale = ctx.initial_points(i, face_spec, f"face.{i}")
            mmeans, mrgb, mscale = ctx.initial_points(i, mouth_spec, f"mouth.{i}")
            face_clouds.append(fmeans.float())
            mouth_clouds.append(mmeans.float())
            extents.append(_extent(fmeans.float()))
            idents.append(_Identity(
                _explicit(fmeans, frgb, fscale, cfg.sh_degree, cfg.face_init.init_opacity),
                _explicit(mmeans, mrgb, mscale, cfg.sh_degree, cfg.mouth_init.init_opacity),
                ctx.expression_dim,
            ))  # fmt: skip
        self.identities = nn.ModuleList(idents)
        self.extents = extents
        self.scene_extent = extents[0]
        self.sh_degree = cfg.sh_degree
        seq = cfg.audio_context
        self.face_motion = FaceMotionNet(
            cfg.face, audio_window=ctx.audio_window, audio_dim=ctx.audio_dim, expression_dim=ctx.expression_dim, seq_len=seq,
            extent=self.scene_extent, ctx=ctx,
        )  # fmt: skip
        self.mouth_motion = MouthMotionNet(
            cfg.mouth, audio_window=ctx.audio_window, audio_dim=ctx.audio_dim, seq_len=seq, extent=self.scene_extent, ctx=ctx,
        )  # fmt: skip
        with torch.no_grad():
            self.face_motion.set_bounds(*_box(face_clouds, cfg.grid_margin))
            self.mouth_motion.set_bounds(*_box(mouth_clouds, cfg.grid_margin))
        if ctx.stats is not None:
            audio = torch.cat([s.audio for s in ctx.stats])
            self.face_motion.audio.fit(audio)
            self.mouth_motion.audio.fit(audio)
            for ident, s in zip(self.identities, ctx.stats):
                if s.expression is not None and s.expression.shape[1] == ctx.expression_dim and ctx.expression_dim > 0:
                    ident.exp_mean.copy_(s.expression.mean(0))
                    ident.exp_std.copy_(s.expression.std(0, unbiased=False).clamp(min=1e-4))

    # -- declarations --------------------------------------------------------------------------
    def gaussian_sets(self) -> dict[str, GaussianSet]:
        out = {}
        for i, ident in enumerate(self.identities):
            out[f"face.{i}"] = GaussianSet(ident.face, self.config.face_init.max_gaussians, self.extents[i] if i < len(self.extents) else 1.0)
            out[f"mouth.{i}"] = GaussianSet(ident.mouth, self.config.mouth_init.max_gaussians, self.extents[i] if i < len(self.extents) else 1.0)
        return out

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
        keys = {"means": "means", "sh": "sh", "opacity": "opacities", "scales": "scales", "quats": "quats"}
        for ident in self.identities:
            for branch, gp in (("face", ident.face), ("mouth", ident.mouth)):
                for g, k in keys.items():
                    groups[f"{branch}.{g}"].append(gp[k])
        for branch, net in (("face", self.face_motion), ("mouth", self.mouth_motion)):
            for g, ps in net.groups().items():
                groups[f"{branch}.{g}"] += ps
        return groups

    def loss_terms(self) -> dict[str, Any]:
        return {"alpha": self._alpha_loss, "motion": self._motion_loss, "attention": self._attention_loss, "audio": self._audio_loss}

    def callbacks(self, options: TalkingGaussianOptions) -> list[Callback]:
        if options.branch == "face":
            return [BackgroundGaussians("face", options.background, mode="transparent")]
        if options.branch == "mouth":
            return [BackgroundGaussians("mouth", options.background, mode="soften")]
        return []

    # -- rendering -----------------------------------------------------------------------------
    def _expression(self, cond: Any, ident: _Identity) -> Tensor:
        blink = cond.au45.reshape(1).clamp(0.0, self.config.face.blink_max)
        e = cond.expression
        if e is None or e.numel() == 0:
            return blink
        return torch.cat([(e - ident.exp_mean) / ident.exp_std, blink])

    def _face(self, view: Any, deform: bool, background: Tensor | None, settings: RenderSettings) -> tuple[Any, Any, dict[str, Tensor] | None]:
        ident = self.identities[view.identity]
        g = ident.face
        means, quats, log_scales = g["means"], g["quats"], g["scales"]
        off = extras = None
        if deform:
            if view.cond.audio_seq is None:
                raise ValueError("head 'talkinggaussian': the face motion needs the neighbouring audio windows (cond.audio_seq)")
            off = self.face_motion(means, view.cond.audio_seq, self._expression(view.cond, ident))
            means, quats, log_scales = means + off["means"], quats + off["quats"], log_scales + off["log_scales"]
            extras = off["attention"]
        out = rasterize(
            means, quats, torch.exp(log_scales), torch.sigmoid(g["opacities"]), g["sh"], camera=view.camera, background=background,
            sh_degree=self.sh_degree, backend=settings.backend, eps2d=settings.eps2d, extras=extras,  # type: ignore[arg-type]
        )  # fmt: skip
        return out, _Attrs(means, quats, log_scales, g["opacities"], g["sh"]), off

    def _mouth(self, view: Any, deform: bool, background: Tensor | None, settings: RenderSettings) -> tuple[Any, Any, dict[str, Tensor] | None]:
        g = self.identities[view.identity].mouth
        means = g["means"]
        off = None
        if deform:
            if view.cond.audio_seq is None:
                raise ValueError("head 'talkinggaussian': the mouth motion needs the neighbouring audio windows (cond.audio_seq)")
            off = self.mouth_motion(means, view.cond.audio_seq)
            means = means + off["means"]
        out = rasterize(
            means, g["quats"], torch.exp(g["scales"]), torch.sigmoid(g["opacities"]), g["sh"], camera=view.camera, background=background,
            sh_degree=self.sh_degree, backend=settings.backend, eps2d=settings.eps2d,  # type: ignore[arg-type]
        )  # fmt: skip
        return out, _Attrs(means, g["quats"], g["scales"], g["opacities"], g["sh"]), off

    def render(self, batch: Batch, options: TalkingGaussianOptions | None, settings: RenderSettings) -> Outputs:
        o = options or TalkingGaussianOptions()
        outs = Outputs()
        face_r, mouth_r, rgbs, alphas, offsets = [], [], [], [], []
        if o.branch == "fuse":
            mouth_alphas = []
            for view in batch.views:
                mo, ma, _ = self._mouth(view, o.deform, view.background, settings)
                fo, fa, _ = self._face(view, o.deform, mo.rgb, settings)
                mouth_r.append((mo, ma))
                face_r.append((fo, fa))
                rgbs.append(fo.rgb)
                alphas.append(fo.alpha)
                mouth_alphas.append(mo.alpha)
            outs.images = {"rgb": torch.stack(rgbs), "alpha": torch.stack(alphas), "mouth_alpha": torch.stack(mouth_alphas)}
            outs.renders = {f"face.{v.identity}": [] for v in batch.views} | {f"mouth.{v.identity}": [] for v in batch.views}
            for v, f, m in zip(batch.views, face_r, mouth_r):
                outs.renders[f"face.{v.identity}"].append(f)
                outs.renders[f"mouth.{v.identity}"].append(m)
            return outs
        bg = torch.tensor(o.background, dtype=batch.views[0].background.dtype, device=batch.views[0].background.device)
        attn = []
        for view in batch.views:
            if o.branch == "face":
                r, a, off = self._face(view, o.deform, bg, settings)
                if off is not None:
                    attn.append(r.extras)
            else:
                r, a, off = self._mouth(view, o.deform, bg, settings)
            outs.renders.setdefault(f"{o.branch}.{view.identity}", []).append((r, a))
            rgbs.append(r.rgb)
            alphas.append(r.alpha)
            offsets.append(off)
        rgb, alpha = torch.stack(rgbs), torch.stack(alphas)
        outs.images = {"alpha": alpha}
        outs.extras["offsets"] = offsets
        if attn:
            outs.images["attention"] = torch.stack(attn)
        if batch.targets is None or batch.labels is None:  # inference of one branch: the raw render
            outs.images["rgb"] = rgb
            return outs
        labels, gt = batch.labels, batch.targets
        bgi = bg.view(1, 1, 1, 3)
        if o.branch == "face":
            mouth = labels == MOUTH
            head = batch.mask(FACE_CLASSES)
            bgs = torch.stack([v.background for v in batch.views])
            head |= (gt - bgs).abs().mean(-1) * 255.0 > self.config.face_init.cutout_threshold  # the torso frame's cut-out
            head &= ~mouth
            target = torch.where(head[..., None], gt, bgi)
            hair_off = o.deform and o.hair_every > 1 and batch.local_step % o.hair_every != 0
            hair = labels == HAIR
            if hair_off:
                target = torch.where(hair[..., None], bgi, target)
                rgb = torch.where(hair[..., None], bgi, rgb)
            outs.extras.update(alpha_mask=head, hair=hair, hair_off=hair_off, lips_box=self._lips_masks(batch))
        else:
            mouth = labels == MOUTH
            box = self._lips_masks(batch)
            target = torch.where(mouth[..., None], gt, bgi)
            unsupervised = box ^ mouth
            rgb = torch.where(unsupervised[..., None], bgi, rgb)
            outs.extras.update(alpha_mask=box)
        outs.images["rgb"] = rgb
        outs.images["target"] = target
        return outs

    def _lips_masks(self, batch: Batch) -> Tensor:
        """``bool [K, H, W]``: the square box of each frame's lip landmarks (TalkingGaussian's ``lips_rect``)."""
        out = torch.zeros((batch.k, batch.height, batch.width), dtype=torch.bool, device=batch.views[0].background.device)
        for k in range(batch.k):
            y0, y1, x0, x1 = batch.box(k, "lip", 0.0, 4)
            cy, cx, half = (y0 + y1) // 2, (x0 + x1) // 2, max(y1 - y0, x1 - x0) // 2
            out[k, max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half] = True
        return out

    # -- losses --------------------------------------------------------------------------------
    def _alpha_loss(self, ctx: LossContext) -> Tensor:
        """``mean((1 - A) M) + mean(A (1 - M))``: the branch alpha covers its mask (face: the head
        without the inside of the mouth; mouth: the lips box) and nothing else."""
        m = ctx.outputs.extras.get("alpha_mask")
        if m is None:
            raise ValueError("loss 'alpha': only the face and mouth branches have an alpha mask (phase head.branch)")
        a = ctx.outputs["alpha"][..., 0]
        mf = m.to(a.dtype)
        return ((1 - a) * mf).mean() + (a * (1 - mf)).mean()

    def _motion_loss(self, ctx: LossContext) -> Tensor:
        """Mean absolute offsets (TalkingGaussian: Δμ, Δq, Δα, Δs of the face branch)."""
        terms = []
        for off in ctx.outputs.extras.get("offsets", []):
            if off is None:
                continue
            for k in ("raw_means", "quats", "opacity_logits", "log_scales"):
                if k in off and off[k].numel():
                    terms.append(off[k].abs().mean())
        if not terms:
            return ctx.pred.new_zeros(())
        return torch.stack(terms).sum() / max(1, len(ctx.outputs.extras.get("offsets", [])))

    def _audio_loss(self, ctx: LossContext) -> Tensor:
        """The audio encoders' own similarity loss (``audio_loss`` of the motion networks: SyncGaussian's
        ``L_ah = 1 - cos(a, a_ave)``, eq. 4), averaged over the rendered frames; 0 when the encoder
        has none (``window_conv``) or nothing deformed."""
        terms = [off["audio_loss"] for off in ctx.outputs.extras.get("offsets", []) if off is not None and "audio_loss" in off]
        if not terms:
            return ctx.pred.new_zeros(())
        return torch.stack(terms).mean()

    def _attention_loss(self, ctx: LossContext) -> Tensor:
        """No expression attention on the lips; no attention at all on hair (when hair is supervised)."""
        if "attention" not in ctx.outputs:
            return ctx.pred.new_zeros(())
        att = ctx.outputs["attention"]  # [K, H, W, 2]: audio, expression
        lips = ctx.outputs.extras["lips_box"]
        loss = _masked_mean(att[..., 1], lips)
        if not ctx.outputs.extras.get("hair_off", False):
            hair = ctx.outputs.extras["hair"]
            loss = loss + _masked_mean(att[..., 1], hair) + _masked_mean(att[..., 0], hair)
        return loss

    def describe(self) -> dict[str, Any]:
        return {"gaussians": self.n, "sets": self.sizes(), "parameters": {g: int(sum(p.numel() for p in ps)) for g, ps in self.param_groups().items() if ps}}


def _masked_mean(x: Tensor, m: Tensor) -> Tensor:
    n = m.sum()
    return (x * m.to(x.dtype)).sum() / n.clamp(min=1).to(x.dtype)


@dataclass
class _Attrs:
    """The raw attributes of one render, as densification reads them (``log_scales``, ``quats``,
    ``opacity_logits``; explicit sets store them, so only their shapes matter here)."""

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor


class BackgroundGaussians(Callback):
    """Gaussians whose colour became the training background colour (they paint the background
    instead of the head) are made harmless every ``every`` steps from ``start``: ``transparent``
    (opacity 0.001; the densifier prunes them at its next refinement -- TalkingGaussian prunes
    the face's green Gaussians) or ``soften`` (opacity 0.1, scale / 10: its mouth branch)."""

    def __init__(self, branch: str, background: tuple[float, float, float], *, mode: str, every: int = 100, start: int = 500, tol: float = 30 / 255) -> None:
        self.branch, self.mode, self.every, self.start, self.tol = branch, mode, every, start, tol
        self.background = torch.tensor(background)

    @torch.no_grad()
    def post_backward(self, model: Any, optimizer: Any, local_step: int, outputs: Outputs) -> dict[str, int]:
        if local_step <= self.start or local_step % self.every:
            return {}
        n = 0
        for name, gset in model.head.gaussian_sets().items():
            if not name.startswith(self.branch + ".") or name not in outputs.renders:
                continue
            p = gset.params
            rgb = sh_to_rgb(p["sh"][:, 0]).clamp(0, 1)
            bad = ((rgb - self.background.to(rgb)).abs() < self.tol).all(dim=-1)
            k = int(bad.sum())
            if not k:
                continue
            n += k
            if self.mode == "transparent":
                p["opacities"].data[bad] = float(inverse_sigmoid(0.001))
            else:
                p["opacities"].data[bad] = float(inverse_sigmoid(0.1))
                p["scales"].data[bad] -= math.log(10.0)
        return {"background_gaussians": n}
