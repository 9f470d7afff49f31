"""Identity similarity (CSIM) and the 68-point mouth landmark distance (LMD-68), with dlib's models.

Both use the real pretrained models that install from the registry (``dlib-bin`` +
``face-recognition-models``, located by :mod:`talkgs.pretrained`): dlib's ResNet face descriptor
``dlib_face_recognition_resnet_model_v1.dat`` (128-D, LFW 99.38 %) and the iBUG 300-W
``shape_predictor_68_face_landmarks.dat``. They are loaded once per process (:func:`models`); a
missing file raises :class:`talkgs.pretrained.PretrainedMissing` naming the file and the fix
(``make setup`` installs them; they are a hard dependency, never an ``n/a``).

**Face box.** dlib's own face detector is not run (on renders it may miss or move the face, and
the two images of a pair would then be measured in different boxes). The box comes from the
MediaPipe landmarks the evaluation already has (:func:`box_from_landmarks`): the bounding box of
the 468 mesh points, made square with side ``sqrt(w h)`` and its centre moved up by 2 % of ``h``.
That mapping was fitted to dlib's HOG frontal detector on the first frames of the nine real clips
in ``../shared/data/videos`` (512²): side ratio 0.92–1.06 and centre offsets within ±0.06 of the
box side, as close as dlib's detector pyramid (steps of ~20 % in size) itself places boxes. In
self-driven evaluation the box of the **ground-truth** frame is used for the render and its
ground truth alike; cross-driven renders (no ground truth) use their own landmarks' box.

**CSIM** (:func:`csim`): the cosine similarity of identity embeddings, as the papers define it
("Cosine Similarity of Identity Embedding", GaussianTalker Table 1, after ArcFace/CurricularFace);
the embedding here is dlib's 128-D descriptor (:func:`descriptor`: 68-point shape → aligned
150² chip → ResNet; ``num_jitters=0``, i.e. one forward pass, which dlib treats the same as 1).
The definition is the papers' but the network is not, so the values are not on their scale: dlib's
descriptors share a large common component, and on the real clips here the cosine of two frames of
one person 14 s apart is 0.993 (dlib distance 0.17) while different people give 0.72–0.89 (distance
0.65–1.09; dlib's same-person threshold is 0.6). Self-driven: render vs its ground-truth frame,
mean over frames. Cross-driven (no ground truth): render vs the mean descriptor of
:attr:`IdentityParams.reference_frames` (default 20) evenly spaced training frames of the subject
(:func:`reference_descriptor`).

**LMD-68** (:func:`lmd68_per_frame`): as the papers' ``LMDMeter`` with FAN / dlib 68 points (AD-NeRF,
ER-NeRF, GaussianTalker): the 20 mouth points 48–67 (0-based) of the 68-point predictor on the
render and on the ground truth (same box), each set mean-centred per frame, the mean Euclidean
point distance in pixels at the evaluated resolution (512² on the real clips, as the papers),
averaged over frames. The MediaPipe LMD (:mod:`talkgs.eval.landmarks`, 40 lip points) is reported
beside it.

**Cost.** One 68-point shape takes ~2 ms, one descriptor ~80 ms on one CPU core (measured at 512²
and 256² alike: the network sees a 150² chip). To bound it, :attr:`IdentityParams.max_frames`
evenly spaced frames of each render are measured (:func:`subsample`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from talkgs.configlib import Range

__all__ = [
    "IdentityParams",
    "MOUTH68",
    "DescriptorModels",
    "models",
    "box_from_landmarks",
    "Analysis",
    "analyze",
    "descriptor",
    "landmarks68",
    "csim",
    "lmd68_per_frame",
    "subsample",
    "reference_descriptor",
    "IDENTITY_PROTOCOL",
]

MOUTH68 = np.arange(48, 68)
"""The 20 mouth points of the 68-point (iBUG 300-W) layout: outer lip 48–59, inner lip 60–67."""

_MESH = 468  # MediaPipe mesh points without the 10 iris points
_BOX_UP = 0.02  # box centre moved up by this fraction of the landmark box height (fitted, see module doc)

IDENTITY_PROTOCOL = (
    "CSIM: cosine similarity of dlib's 128-D ResNet face descriptors (papers: ArcFace-like embeddings; same "
    "definition, other network, so not on the papers' scale), render vs its ground-truth frame (self-driven) or vs "
    "the mean descriptor of evenly spaced training frames (cross-driven); LMD-68: dlib 68-point shape predictor, "
    "mouth points 48-67, mean-centred, mean point distance in pixels at the evaluated resolution (as the papers' "
    "FAN-68 LMD). Face box for both: from the ground-truth frame's MediaPipe landmarks (cross-driven: the render's), "
    "not dlib's detector; measured on at most max_frames evenly spaced frames."
)


@dataclass(frozen=True)
class IdentityParams:
    """``params.yaml: evaluate.identity``: CSIM and LMD-68 (dlib models)."""

    max_frames: Annotated[int, Range(1, 100_000, unit="frames")] = 100
    """At most this many evenly spaced frames of each render are measured (one descriptor ~80 ms
    on a CPU core, two per self-driven frame). 100 covers every test frame of clips up to ~45 s
    (the test split is 1/11 of the clip) and keeps a long clip's evaluation to ~20 s per render."""
    reference_frames: Annotated[int, Range(1, 1000, unit="frames")] = 20
    """Cross-driven CSIM: the subject's identity is the mean descriptor of this many evenly spaced
    training frames (frames where MediaPipe finds no face are skipped)."""


@dataclass(frozen=True)
class DescriptorModels:
    """dlib's 68-point shape predictor and ResNet face descriptor, loaded (:func:`models`)."""

    shape_predictor: Any
    face_descriptor: Any


@functools.lru_cache(maxsize=1)
def models() -> DescriptorModels:
    """The two dlib models, loaded once per process; raises :class:`~talkgs.pretrained.PretrainedMissing`
    naming a missing file (or dlib itself missing) and how to fix it."""
    from talkgs import pretrained

    sp_path, fr_path = pretrained.dlib_shape_68(), pretrained.dlib_face_descriptor()
    try:
        import dlib
    except ImportError as e:
        raise pretrained.PretrainedMissing(f"cannot import dlib ({e}). Run `make setup` (it installs dlib-bin==20.0.1.post1).") from e
    try:
        sp = dlib.shape_predictor(str(sp_path))
        fr = dlib.face_recognition_model_v1(str(fr_path))
    except RuntimeError as e:  # dlib: "Unable to open ..." / a truncated file
        raise pretrained.PretrainedMissing(f"{sp_path} / {fr_path}: dlib cannot load the model ({e}). Run `make setup` to reinstall face-recognition-models.") from e
    return DescriptorModels(sp, fr)


def box_from_landmarks(lm: np.ndarray) -> tuple[int, int, int, int] | None:
    """A dlib-detector-like square face box ``(left, top, right, bottom)`` (pixels, inclusive, as
    ``dlib.rectangle``) from MediaPipe landmarks ``lm [478 or 468, >=2]`` (pixels); None when the
    landmarks are not finite (no face). The box may extend past the image border, as dlib's may.
    """
    a = np.asarray(lm, np.float64)
    if a.ndim != 2 or a.shape[0] < _MESH or a.shape[1] < 2:
        raise ValueError(f"box_from_landmarks: expected MediaPipe landmarks [478, 2 or 3], found {a.shape}")
    pts = a[:_MESH, :2]
    if not np.isfinite(pts).all():
        return None
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    w, h = x1 - x0, y1 - y0
    if w <= 1 or h <= 1:
        return None
    side = math.sqrt(w * h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - _BOX_UP * h
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    return left, top, left + s - 1, top + s - 1


def _check_img(img: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what}: expected uint8 [H, W, 3] RGB, found {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def _rect(box: Sequence[int]) -> Any:
    import dlib

    if len(box) != 4:
        raise ValueError(f"face box: expected (left, top, right, bottom), found {box!r}")
    left, top, right, bottom = (int(v) for v in box)
    if right <= left or bottom <= top:
        raise ValueError(f"face box {tuple(box)}: empty (right <= left or bottom <= top)")
    return dlib.rectangle(left, top, right, bottom)


@dataclass(frozen=True)
class Analysis:
    """One face measured: its 68 points and (if asked) its descriptor."""

    landmarks68: np.ndarray
    """``float64 [68, 2]`` (x, y) pixels."""
    descriptor: np.ndarray | None
    """``float64 [128]`` or None."""


def analyze(img: np.ndarray, box: Sequence[int], *, with_descriptor: bool = True) -> Analysis:
    """68-point shape of the face in ``box`` of ``img`` (``uint8 [H, W, 3]`` RGB) and, from that
    shape, its 128-D descriptor (one shape prediction serves both)."""
    img = _check_img(img, "analyze")
    m = models()
    shape = m.shape_predictor(img, _rect(box))
    pts = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
    desc = np.array(m.face_descriptor.compute_face_descriptor(img, shape, 0), np.float64) if with_descriptor else None
    return Analysis(pts, desc)


def descriptor(img: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """``float64 [128]`` dlib face descriptor of the face in ``box`` (``(left, top, right, bottom)``)."""
    d = analyze(img, box).descriptor
    assert d is not None
    return d


def landmarks68(img: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """``float64 [68, 2]`` dlib 68-point landmarks (x, y pixels) of the face in ``box``."""
    return analyze(img, box, with_descriptor=False).landmarks68


def csim(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two descriptors ``[128]`` (or ``[T, 128]`` row-wise → mean is the caller's)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"csim: descriptor sizes differ: {x.shape} vs {y.shape}")
    num = (x * y).sum(-1)
    den = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
    return float(num / den) if np.ndim(num) == 0 else num / den  # type: ignore[return-value]


def lmd68_per_frame(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame mouth LMD-68 ``[T]`` in pixels of ``pred, gt [T, 68, 2]`` (NaN rows stay NaN)."""
    p, g = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if p.shape != g.shape or p.ndim != 3 or p.shape[1:] != (68, 2):
        raise ValueError(f"lmd68: expected two [T, 68, 2] arrays of equal shape, found {p.shape} and {g.shape}")
    p, g = p[:, MOUTH68], g[:, MOUTH68]
    p = p - p.mean(1, keepdims=True)
    g = g - g.mean(1, keepdims=True)
    return np.sqrt(((p - g) ** 2).sum(-1)).mean(-1)


def subsample(n: int, k: int) -> np.ndarray:
    """``int64 [min(n, k)]``: ``k`` evenly spaced positions in ``0..n-1`` (all of them when ``n <= k``)."""
    if n <= 0:
        return np.zeros(0, np.int64)
    if n <= k:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def reference_descriptor(frames: Sequence[np.ndarray], landmarks: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The subject's identity: ``(mean descriptor [128], frames used)`` over ``frames`` (``uint8
    [H, W, 3]``; e.g. evenly spaced training frames), boxes from ``landmarks [T, 478, 3]``
    (MediaPipe; None: detected here, static mode). Frames without a face are skipped; raises
    ``ValueError`` when none has one."""
    if not len(frames):
        raise ValueError("reference_descriptor: no frames")
    if landmarks is None:
        from talkgs.eval.landmarks import detect_landmarks

        landmarks = detect_landmarks(frames, static=True)
    if len(landmarks) != len(frames):
        raise ValueError(f"reference_descriptor: {len(frames)} frames, {len(landmarks)} landmark sets")
    descs = []
    for f, lm in zip(frames, landmarks):
        box = box_from_landmarks(lm)
        if box is not None:
            descs.append(descriptor(f, box))
    if not descs:
        raise ValueError(f"reference_descriptor: MediaPipe found no face in any of the {len(frames)} reference frames")
    return np.mean(descs, 0), len(descs)
