"""The head contract: what a variant's model is, and the extension points of the one trainer.

A **head** (registry kind ``head``, :class:`Head`) is the whole talking-head model of a variant,
in the role nerfstudio's ``Model`` plays: it

- declares its **parameter groups** (:meth:`Head.param_groups`; a training phase gives groups a
  learning rate, the others stay frozen) and its **Gaussian sets** (:meth:`Head.gaussian_sets`:
  the per-Gaussian parameter dicts that densification resizes, e.g. ``face`` and ``mouth``);
- **renders a batch** of frames (:meth:`Head.render`), calling the one
  :func:`talkgs.render.rasterize` as often as it needs (face + mouth renders fused by alpha,
  region alphas as extra channels), and returns named :class:`Outputs` (``rgb`` is the final
  image every loss and metric reads);
- computes its own **named losses** (:meth:`Head.loss_terms`, e.g. TalkingGaussian's alpha-mask
  loss) next to the registered generic ones (kind ``loss``);
- contributes **training callbacks** (:meth:`Head.callbacks`), as gsplat's ``Strategy`` hooks.

The trainer (:mod:`talkgs.train.loop`) is the same for every head. Its other extension points,
all chosen by config and all registered components:

- :class:`Sampler` (kind ``sampler``): which frames (of which identity) a step trains on;
- :class:`Loss` (kind ``loss``): a loss, possibly owning a network and its optimizer;
- :class:`PostModule` (kind ``post``): image-space modules after the render (refiners, compositors);
- :class:`Callback` (kind ``callback``): hooks after backward (densification is one).

Everything here is tensors and plain data: a head never sees the preprocessing folders. The
trainer turns a subject's data into :class:`FrameView` / :class:`Batch` (``talkgs.train.data``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from talkgs.configlib import GAUSSIANS, NON_NEGATIVE, POSITIVE, ConfigError, Range, closest_hint, from_dict
from talkgs.models.conditioning.base import FrameCondition
from talkgs.models.gaussians import GaussianAttributes, GaussianParams
from talkgs.models.registry import ComponentConfig
from talkgs.render.camera import Camera
from talkgs.render.rasterize import RenderOutput

__all__ = [
    "Box",
    "region_box",
    "REGION_LANDMARKS",
    "FrameView",
    "Batch",
    "Outputs",
    "RenderSettings",
    "PointCloudSpec",
    "IdentityStats",
    "BuildContext",
    "PresetKnobs",
    "GaussianSet",
    "HeadConfig",
    "Head",
    "LossConfig",
    "LossContext",
    "Loss",
    "FramePool",
    "SamplerConfig",
    "Sampler",
    "PostConfig",
    "PostModule",
    "CallbackConfig",
    "Callback",
]

Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)`` half-open pixel box."""


def _region_landmarks() -> dict[str, tuple[int, ...]]:
    from talkgs.preprocess import facemesh as fm

    return {"lip": fm.LIPS_OUTER, "mouth": fm.LIPS_OUTER, "face": fm.FACE_OVAL}


REGION_LANDMARKS: dict[str, tuple[int, ...]] = _region_landmarks()
"""Region name → the MediaPipe landmark indices whose box it is."""


def region_box(points: Any, margin: float, min_size: int, width: int, height: int) -> Box:
    """Crop box around landmark ``points [K, 2]`` (pixels): their bounding box grown by
    ``margin`` x its size per side, at least ``min_size`` wide/high, clamped to the image."""
    p = np.asarray(points, dtype=np.float64)
    x0, y0 = p.min(0)
    x1, y1 = p.max(0)
    w, h = x1 - x0, y1 - y0
    x0, x1 = x0 - margin * w, x1 + margin * w
    y0, y1 = y0 - margin * h, y1 + margin * h
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w = max(x1 - x0, min_size)
    h = max(y1 - y0, min_size)
    w, h = min(w, width), min(h, height)
    xa = int(math.floor(min(max(cx - w / 2, 0), width - w)))
    ya = int(math.floor(min(max(cy - h / 2, 0), height - h)))
    return (ya, min(height, ya + int(math.ceil(h))), xa, min(width, xa + int(math.ceil(w))))


# ----------------------------------------------------------------------------------------------
# what a head renders


@dataclass
class FrameView:
    """Everything needed to render one frame (tensors on the model's device).

    Attributes:
        camera: the frame's camera (world-to-camera head pose + intrinsics, image size).
        background: ``[H, W, 3]`` in [0, 1]: what the head is composited onto (the torso frame
            or the background plate, :class:`RenderSettings`).
        cond: the driving signals (audio window(s), blink, pose, expression).
        identity: index of the subject among the model's identities (0 for one-subject models).
    """

    camera: Camera
    background: Tensor
    cond: FrameCondition
    identity: int = 0


@dataclass
class Batch:
    """``K`` frames rendered together in one step (``K = 1`` at inference).

    Attributes:
        views: ``K`` :class:`FrameView`.
        frames: ``K`` ``(identity, frame index)`` pairs (logs, samplers).
        targets: ``float32 [K, H, W, 3]`` ground truth in [0, 1] (training only).
        labels: ``uint8 [K, H, W]`` segmentation classes (``talkgs.preprocess.segment.LABELS``),
            training only (None when the subject was loaded without them).
        landmarks: ``float32 [K, 478, 2]`` tracked landmarks in pixels (region crops).
        step, local_step: the training step (global, within the phase); 0 at inference. Heads
            whose supervision changes over a phase read them (e.g. TalkingGaussian's hair mask
            on 6 of 7 steps).
    """

    views: list[FrameView]
    frames: list[tuple[int, int]] = field(default_factory=list)
    targets: Tensor | None = None
    labels: Tensor | None = None
    landmarks: Tensor | None = None
    step: int = 0
    local_step: int = 0

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("Batch: needs at least one view")
        k = len(self.views)
        for name in ("targets", "labels", "landmarks"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != k:
                raise ValueError(f"Batch.{name}: expected {k} frames (first dimension), found {list(t.shape)}")

    @property
    def k(self) -> int:
        return len(self.views)

    @property
    def height(self) -> int:
        return self.views[0].camera.height

    @property
    def width(self) -> int:
        return self.views[0].camera.width

    def box(self, k: int, region: str, margin: float, min_size: int) -> Box:
        """Crop ``(y0, y1, x0, x1)`` of ``region`` (``lip``, ``mouth``, ``face``) around frame ``k``'s landmarks."""
        if self.landmarks is None:
            raise ValueError(f"Batch.box({region!r}): the batch has no landmarks (a training batch has them)")
        if region not in REGION_LANDMARKS:
            raise ValueError(f"unknown region {region!r}; known: {sorted(REGION_LANDMARKS)}")
        pts = self.landmarks[k, list(REGION_LANDMARKS[region])].detach().cpu().numpy()
        return region_box(pts, margin, min_size, self.width, self.height)

    def mask(self, classes: Sequence[int]) -> Tensor:
        """``bool [K, H, W]``: pixels whose label is one of ``classes``.

        Raises:
            ValueError: the batch has no labels.
        """
        if self.labels is None:
            raise ValueError("Batch.mask: the batch has no segmentation labels (load the subject with its labels)")
        out = torch.zeros(self.labels.shape, dtype=torch.bool, device=self.labels.device)
        for c in classes:
            out |= self.labels == int(c)
        return out


@dataclass
class Outputs:
    """What a head (and post-render modules) return for a batch.

    Attributes:
        images: name → ``[K, H, W, C]`` images; ``rgb`` (``C = 3``) is the final image composited
            on the views' backgrounds, read by the generic losses, the metrics and synthesis.
            A head may also return ``target``: what ``rgb`` is compared with in this phase when it
            is not the full frame (e.g. the ground truth masked to the face region over the
            training background colour); the generic losses then use it.
        renders: Gaussian-set name → the ``K`` ``(RenderOutput, GaussianAttributes)`` of that set
            rendered this step (densification reads the 2D-mean gradients and radii).
        extras: anything else losses or analysis need (deformation offsets, attention maps, ...).
    """

    images: dict[str, Tensor] = field(default_factory=dict)
    renders: dict[str, list[tuple[RenderOutput, GaussianAttributes]]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.images:
            raise KeyError(f"outputs have no image {name!r} (have {sorted(self.images)})")
        return self.images[name]

    def __contains__(self, name: str) -> bool:
        return name in self.images

    @property
    def rgb(self) -> Tensor:
        return self["rgb"]


@dataclass(frozen=True)
class RenderSettings:
    """How heads call :func:`talkgs.render.rasterize` (shared by training and inference)."""

    backend: str = "auto"
    """Rasterizer backend (auto: gsplat on CUDA, numba on CPU)."""
    eps2d: float = 0.3
    """Screen-space dilation in pixels² at this resolution."""


# ----------------------------------------------------------------------------------------------
# building a head


@dataclass(frozen=True)
class PointCloudSpec:
    """What initial point cloud a Gaussian set wants (built by the trainer from the subject's own
    tracking, :mod:`talkgs.train.init`; no 3DMM).

    Points: the tracked landmarks (``landmarks``) plus pixels of the ``classes`` labels (and, with
    ``cutout``, of any pixel the torso frame lacks) of ``reference_frames`` training frames,
    lifted to 3D with the landmarks' depth inside the face hull and a head ellipsoid outside it,
    merged, voxel-thinned and subsampled to ``points``. ``depth_offset`` moves the lifted pixels
    along their rays and the landmarks along the head's depth axis (x the head radius; e.g.
    behind the lips for the inside of the mouth).
    """

    points: Annotated[int, GAUSSIANS] = 20000
    classes: tuple[int, ...] = (2, 3, 4, 5, 6)
    cutout: bool = True
    landmarks: bool = True
    reference_frames: Annotated[int, Range(1, 1000)] = 8
    head_depth_scale: Annotated[float, POSITIVE] = 1.15
    cutout_threshold: Annotated[float, NON_NEGATIVE] = 12.0
    scale_neighbors: Annotated[int, Range(1, 64)] = 3
    depth_offset: float = 0.0
    landmark_subset: tuple[int, ...] | None = None
    """Only these landmark indices (None: all 478)."""
    select: str = "even"
    """Reference frames: ``even`` (spread over the training split) or ``mouth_open`` (the
    widest-open mouths: the inside of the mouth is visible)."""

    def __post_init__(self) -> None:
        if self.select not in ("even", "mouth_open"):
            raise ValueError(f"PointCloudSpec.select: 'even' or 'mouth_open', found {self.select!r}")


@dataclass(frozen=True)
class IdentityStats:
    """Training statistics of one identity (condition encoders standardise their inputs with them)."""

    viewmats: Tensor
    """``[T, 4, 4]`` training poses."""
    audio: Tensor
    """``[T, W, C]`` training audio windows."""
    expression: Tensor | None = None
    """``[T, E]`` training upper-face expression signals."""


@dataclass
class BuildContext:
    """What a head is built from.

    Attributes:
        audio_window, audio_dim: shape ``[W, C]`` of one frame's audio feature window.
        expression_dim: ``E`` upper-face expression signals per frame.
        n_identities: subjects the model covers (``> 1``: cross-subject pretraining).
        point_cloud: ``(identity, spec) -> (means [N, 3], rgb [N, 3], log_scales [N, 3])``;
            None when the head is rebuilt to load a checkpoint (then :attr:`sizes` gives the
            Gaussian counts and every value comes from the checkpoint).
        stats: per-identity training statistics (None when loading).
        sizes: Gaussian-set name → N (loading only).
        assets: pipeline assets by name (:data:`talkgs.models.registry.ASSETS`: files of other
            stages, e.g. the sync expert) for the components that declare them in ``requires``;
            empty when loading (a component keeps what it read from them in its own state).
    """

    audio_window: int
    audio_dim: int
    expression_dim: int = 0
    n_identities: int = 1
    point_cloud: Callable[[int, PointCloudSpec], tuple[Tensor, Tensor, Tensor]] | None = None
    stats: list[IdentityStats] | None = None
    sizes: dict[str, int] | None = None
    assets: Mapping[str, Path] = field(default_factory=dict)

    @property
    def loading(self) -> bool:
        return self.point_cloud is None

    def asset(self, name: str, who: str) -> Path:
        """The file of asset ``name`` for component ``who`` (a clear error when it was not given)."""
        p = self.assets.get(name)
        if p is None:
            raise ConfigError(
                f"{who} is built from the pipeline asset {name!r} but none was given: run it through `dvc repro` "
                f"(the pretrain@<variant> stage provides it), or pass assets={{{name!r}: path}} to talkgs.train.loop.train"
            )
        return Path(p)

    def initial_points(self, identity: int, spec: PointCloudSpec, set_name: str) -> tuple[Tensor, Tensor, Tensor]:
        """The initial cloud of a Gaussian set (placeholders of the checkpoint's size when loading)."""
        if self.point_cloud is not None:
            return self.point_cloud(identity, spec)
        n = max(1, int((self.sizes or {}).get(set_name, 1)))
        return torch.zeros(n, 3).uniform_(-1, 1), torch.full((n, 3), 0.5), torch.full((n, 3), -4.0)


@dataclass(frozen=True)
class PresetKnobs:
    """Hardware-preset knobs a head maps onto its own config (:meth:`HeadConfig.with_preset`);
    None = unchanged. Heads ignore knobs that do not apply to them."""

    init_points: int | None = None
    max_gaussians: int | None = None
    sh_degree: int | None = None
    grid_resolution: int | None = None
    head_layers: int | None = None


@dataclass
class GaussianSet:
    """One per-Gaussian parameter dict of a head, as densification sees it.

    Attributes:
        params: the parameter dict (``means`` + what the canonical model stores per Gaussian).
        max_gaussians: growth cap of this set.
        extent: scene scale of this set (radius of its initial cloud): the 3D thresholds of
            densification and ``relative_to_extent`` learning rates multiply by it.
    """

    params: GaussianParams
    max_gaussians: int
    extent: float


@dataclass(frozen=True)
class HeadConfig(ComponentConfig):
    """Base of head configs (registry kind ``head``; ``name`` picks the head).

    Class attributes a head config declares (so a variant is validated when ``params.yaml``
    is parsed, before anything is built):

    - :attr:`groups`: its parameter-group names;
    - :attr:`loss_names`: its own named losses;
    - :attr:`options`: the dataclass of its per-phase options (a phase's ``head:`` mapping).
    """

    kind: ClassVar[str] = "head"
    default: ClassVar[str] = "deformable"
    groups: ClassVar[tuple[str, ...]] = ()
    loss_names: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[type | None] = None

    def with_preset(self, knobs: PresetKnobs) -> HeadConfig:
        """This config with a hardware preset's knobs applied (default: unchanged)."""
        return self

    def parse_options(self, value: dict[str, Any], where: str) -> Any:
        """A phase's ``head:`` mapping as this head's options dataclass (strict)."""
        if self.options is None:
            if value:
                raise ConfigError(f"{where}: head {self.name!r} takes no per-phase options, found {sorted(value)}")
            return None
        return from_dict(self.options, value, where)

    def check_groups(self, groups: Sequence[str], where: str) -> None:
        bad = [g for g in groups if g not in self.groups]
        if bad:
            raise ConfigError(
                f"{where}: head {self.name!r} has no parameter group {bad[0]!r}.{closest_hint(bad[0], list(self.groups))} "
                f"Groups: {', '.join(self.groups)}"
            )

    def audio_frames(self) -> int:
        """Consecutive audio windows per frame the head reads (``FrameCondition.audio_seq``):
        1 = the frame's own window only; 8 = frames ``i-4 .. i+3`` (ER-NeRF / TalkingGaussian
        AudioAttNet smoothing)."""
        return 1


class Head(nn.Module):
    """Base class of heads. Subclasses implement :meth:`param_groups`, :meth:`gaussian_sets`,
    :meth:`render`; the rest has defaults.

    Args:
        cfg: the head's config.
        ctx: sizes, initial point clouds and training statistics.
    """

    def __init__(self, cfg: HeadConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = cfg
        self.audio_window, self.audio_dim = int(ctx.audio_window), int(ctx.audio_dim)
        self.expression_dim = int(ctx.expression_dim)
        self.n_identities = int(ctx.n_identities)
        self._cache: Any = None

    # -- declarations --------------------------------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Group name (every one of ``config.groups``) → its parameters."""
        raise NotImplementedError

    def gaussian_sets(self) -> dict[str, GaussianSet]:
        """Set name → :class:`GaussianSet` (e.g. ``{"head": ...}``, or ``face`` + ``mouth``)."""
        raise NotImplementedError

    def loss_terms(self) -> dict[str, Callable[[LossContext], Tensor]]:
        """Head-owned losses by name (every one of ``config.loss_names``)."""
        return {}

    def callbacks(self, options: Any) -> list[Callback]:
        """Callbacks the head adds to a phase with these options (default: none)."""
        return []

    # -- rendering -----------------------------------------------------------------------------
    def render(self, batch: Batch, options: Any, settings: RenderSettings) -> Outputs:
        """Render the batch; ``options``: the phase's head options (None: inference defaults)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Inference: precompute what does not change between frames (see :attr:`cache`).
        Cleared by ``train()``."""
        self._cache = None

    @property
    def cache(self) -> Any:
        return self._cache

    def train(self, mode: bool = True) -> Head:
        self._cache = None
        return super().train(mode)

    # -- checkpoints / cross-subject -----------------------------------------------------------
    def sizes(self) -> dict[str, int]:
        """Gaussian-set name → N (checkpoint metadata, to rebuild the head for loading)."""
        return {k: s.params.n for k, s in self.gaussian_sets().items()}

    def identity_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes that belong to one identity (not transferred by ``init_from``)."""
        return ("identities.",)

    def transfer(self, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
        """Load the shared (identity-independent) part of another head's state dict (a
        cross-subject pretrained model). Returns ``(loaded keys, skipped keys)``."""
        own = self.state_dict()
        prefixes = self.identity_prefixes()
        load, skipped = {}, []
        for k, v in state.items():
            if k.startswith(prefixes) or k not in own or own[k].shape != v.shape:
                skipped.append(k)
            else:
                load[k] = v
        own.update(load)
        self.load_state_dict(own)
        return sorted(load), sorted(skipped)

    @property
    def n(self) -> int:
        """Total number of Gaussians."""
        return sum(s.params.n for s in self.gaussian_sets().values())


# ----------------------------------------------------------------------------------------------
# losses


@dataclass(frozen=True)
class LossConfig(ComponentConfig):
    """Base of loss configs (registry kind ``loss``)."""

    kind: ClassVar[str] = "loss"
    default: ClassVar[str] = ""

    @property
    def learning_rate(self) -> float:
        """Adam learning rate of the loss's own network (losses owning one define a field ``lr``)."""
        return float(getattr(self, "lr", 1e-4))


@dataclass
class LossContext:
    """What a loss sees for one training step.

    Attributes:
        outputs: the head's (and post modules') outputs for the batch.
        batch: the batch (targets, labels, landmarks).
        head: the head (losses may read its state, e.g. offsets in ``outputs.extras``).
        step: global step; local_step / phase_iterations: within the current phase.
    """

    outputs: Outputs
    batch: Batch
    head: Head
    step: int = 0
    local_step: int = 0
    phase_iterations: int = 1

    @property
    def pred(self) -> Tensor:
        """``[K, H, W, 3]`` final image."""
        return self.outputs.rgb

    @property
    def target(self) -> Tensor:
        """``[K, H, W, 3]``: the head's ``target`` output when it gives one, else the batch's frames."""
        if "target" in self.outputs:
            return self.outputs["target"]
        if self.batch.targets is None:
            raise ValueError("loss: the batch has no targets")
        return self.batch.targets


class Loss(nn.Module):
    """Base class of registered losses: ``forward(ctx) -> scalar``.

    A loss that owns a network (a lip-sync discriminator, an audio-visual alignment expert)
    keeps it as submodules: the trainer gives its parameters an Adam optimizer at
    ``config.learning_rate``, keeps them frozen while the head's loss is backpropagated, and then calls
    :meth:`update` with that optimizer (e.g. the discriminator's own step on detached
    outputs). Its state (network + optimizer) is saved in training checkpoints, so a killed
    run resumes exactly.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.config = cfg

    def forward(self, ctx: LossContext) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def update(self, ctx: LossContext, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """After the step's main optimizer step: train the loss's own network (default: nothing)."""
        return {}

    @property
    def owns_parameters(self) -> bool:
        return any(True for _ in self.parameters())


# ----------------------------------------------------------------------------------------------
# samplers


@dataclass
class FramePool:
    """The training frames samplers draw from.

    Attributes:
        frames: per identity, the training frame indices (``int64 [n_i]``).
        signals: per identity, per-frame signals by name (``blink``: AU45 0-5, ``mouth_open``:
            inner-lip gap / mouth width, ...), each ``float [T_i]`` over all frames of the clip.
    """

    frames: list[np.ndarray]
    signals: list[dict[str, np.ndarray]]

    @property
    def total(self) -> int:
        return int(sum(len(f) for f in self.frames))

    def position(self, j: int) -> tuple[int, int]:
        """The ``j``-th training frame of the concatenated pool → ``(identity, frame index)``."""
        for ident, f in enumerate(self.frames):
            if j < len(f):
                return ident, int(f[j])
            j -= len(f)
        raise IndexError(f"FramePool: position {j} is past the pool ({self.total} frames)")

    def signal(self, name: str) -> np.ndarray:
        """``[total]``: signal ``name`` of every pool frame, in pool order."""
        out = []
        for ident, f in enumerate(self.frames):
            sig = self.signals[ident]
            if name not in sig:
                raise ValueError(f"sampler: no per-frame signal {name!r}; have {sorted(sig)}")
            out.append(np.asarray(sig[name], np.float64)[f])
        return np.concatenate(out) if out else np.zeros(0)


@dataclass(frozen=True)
class SamplerConfig(ComponentConfig):
    """Base of sampler configs (registry kind ``sampler``)."""

    kind: ClassVar[str] = "sampler"
    default: ClassVar[str] = "uniform"


class Sampler:
    """Which frames a step trains on: ``sample(step, local_step, k)`` → ``k`` ``(identity,
    frame)`` pairs. Must be a pure function of the seed and the steps (resuming needs no state).

    Args:
        cfg: the sampler's config.
        pool: the training frames.
        seed: the run's seed.
        iterations: steps of the phase the sampler serves.
    """

    def __init__(self, cfg: SamplerConfig, *, pool: FramePool, seed: int, iterations: int) -> None:
        self.config, self.pool, self.seed, self.iterations = cfg, pool, int(seed), int(iterations)
        if pool.total == 0:
            raise ValueError("sampler: the training split is empty")

    def sample(self, step: int, local_step: int, k: int) -> list[tuple[int, int]]:  # pragma: no cover - interface
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# post-render modules and callbacks


@dataclass(frozen=True)
class PostConfig(ComponentConfig):
    """Base of post-render module configs (registry kind ``post``)."""

    kind: ClassVar[str] = "post"
    default: ClassVar[str] = ""


class PostModule(nn.Module):
    """Image-space module run after the head's render (a refiner, a compositor). Its
    parameters are the parameter group ``post.<name>``; it runs at inference too.
    ``forward(outputs, batch) -> outputs`` (typically replacing ``rgb``)."""

    def __init__(self, cfg: PostConfig) -> None:
        super().__init__()
        self.config = cfg

    @property
    def group(self) -> str:
        return f"post.{self.config.name}"

    def forward(self, outputs: Outputs, batch: Batch) -> Outputs:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class CallbackConfig(ComponentConfig):
    """Base of callback configs (registry kind ``callback``)."""

    kind: ClassVar[str] = "callback"
    default: ClassVar[str] = ""


class Callback:
    """A training hook in the spirit of gsplat's ``Strategy``: called after ``backward`` and
    before the optimizer step of every step of a phase. State is saved for resuming."""

    def post_backward(self, model: Any, optimizer: torch.optim.Optimizer, local_step: int, outputs: Outputs) -> dict[str, int]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def replace_config(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that leaves ``cfg`` untouched when nothing changes."""
    changes = {k: v for k, v in changes.items() if v is not None and getattr(cfg, k) != v}
    return dataclasses.replace(cfg, **changes) if changes else cfg
