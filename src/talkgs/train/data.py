"""The ONE adapter between the preprocessing outputs and training / synthesis.

Everything the loop and the renderer need about a subject, loaded once into memory at the
training resolution (:class:`SubjectData`). Sources, in ``data/<S>/``::

    extract/   frames/%06d.jpg, audio.wav, meta.json (fps, train/test split)
    segment/   labels/%06d.png (class ids, talkgs.preprocess.segment.LABELS), torso/%06d.jpg,
               background.png
    features/  frames.parquet (per frame: world_to_camera, intrinsics, landmarks, blink AU45
               0-5, ...; metadata: canonical landmark shape), audio_<feature>.parquet (per
               frame: audio feature window [W, C] aligned to the video frames)

Poses, intrinsics, landmarks, the canonical landmark shape (all from the track stage, carried
by ``frames.parquet``), blinks and audio windows come from ``features`` through its validating
readers (:mod:`talkgs.features.cache`). Any missing input is an error naming the stage to run;
nothing is guessed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from talkgs.models.conditioning.base import FrameCondition
from talkgs.models.contract import Batch, FramePool, FrameView, IdentityStats, region_box
from talkgs.render.camera import Camera
from talkgs.train.samplers import frame_order
from talkgs.train.frames import LazyFrames

log = logging.getLogger(__name__)

__all__ = [
    "SubjectData", "DataError", "FewShotUnavailable", "load_subject", "fewshot_frames", "check_fewshot",
    "audio_features_for_wav", "frame_order", "split_frames", "pingpong", "audio_sequence", "make_batch", "frame_pool",
]  # fmt: skip


class DataError(FileNotFoundError):
    """A preprocessing output the training needs is missing or inconsistent."""


class FewShotUnavailable(ValueError):
    """The clip's training split is shorter than the few-shot budget asked for."""


def fewshot_frames(name: str, seconds: float, fps: float, n_train: int) -> int:
    """Number of training frames of a ``seconds`` few-shot budget (the first ``round(seconds *
    fps)`` frames of the training split).

    Raises:
        FewShotUnavailable: the training split (``n_train`` frames) is shorter than the budget.
    """
    n = int(round(seconds * fps))
    if seconds <= 0 or n < 1:
        raise ValueError(f"few-shot seconds must be positive (at least one frame at {fps:g} fps), got {seconds!r}")
    if n > n_train:
        raise FewShotUnavailable(
            f"{name}: the training split is {n_train / fps:.1f} s ({n_train} frames at {fps:g} fps), "
            f"shorter than the {seconds:g} s few-shot budget"
        )
    return n


def check_fewshot(subject_dir: str | Path, seconds: float) -> int:
    """:func:`fewshot_frames` of subject ``data/<S>`` (split and fps from ``extract/meta.json``)."""
    subject_dir = Path(subject_dir)
    meta = json.loads(_need(subject_dir / "extract" / "meta.json", "extract", subject_dir).read_text())
    return fewshot_frames(subject_dir.name, seconds, float(meta["output"]["fps"]), int(meta["split"]["n_train"]))


@dataclass
class SubjectData:
    """One subject in memory, at one resolution (``T`` frames of ``H x W``).

    Attributes:
        name: subject name (for logs).
        images: ``uint8 [T, H, W, 3]`` RGB frames (a tensor, or :class:`LazyFrames` read when
            indexed; the same for ``backgrounds`` and ``labels``).
        backgrounds: ``uint8 [T, H, W, 3]`` what the head is splatted onto for each frame (the
            torso frame: background plate + torso with the head removed).
        plate: ``uint8 [H, W, 3]`` background plate (no person).
        labels: ``uint8 [T, H, W]`` segmentation class ids, or None.
        viewmats: ``float32 [T, 4, 4]`` world-to-camera head poses (OpenCV axes).
        K: ``float32 [3, 3]`` intrinsics at this resolution.
        landmarks: ``float32 [T, 478, 2]`` tracked landmarks, pixels at this resolution.
        canonical_landmarks: ``float32 [478, 3]`` the person's rigid landmark shape (world).
        au45: ``float32 [T]`` blink intensity 0-5.
        audio: ``float32 [T, W, C]`` audio feature window per frame.
        train_idx, test_idx: ``int64`` frame indices of the splits: the frames where the face
            mesh found the face (``detected`` in ``frames.parquet``); the others are ``excluded``.
        fps: frame rate.
        audio_path: the subject's wav (for muxing test renders), or None.
        source_size: extracted resolution (before any resize).
        audio_feature: name of the audio feature (``mel``, ``hubert``, ...).
        expression: ``float32 [T, E]`` upper-face expression signals (``frames.parquet``), or
            ``[T, 0]`` when not loaded.
        excluded: ``int64`` frames in neither split: the face mesh failed there (the track
            stage filled their landmarks and pose in from the neighbours: no training target).
        test_start: first frame of the test part of the clip (default: the first test frame);
            ``train_span`` / ``test_span`` are the contiguous parts, excluded frames included.
    """

    name: str
    images: Tensor | LazyFrames
    backgrounds: Tensor | LazyFrames
    plate: Tensor
    labels: Tensor | LazyFrames | None
    viewmats: Tensor
    K: Tensor
    landmarks: Tensor
    canonical_landmarks: Tensor
    au45: Tensor
    audio: Tensor
    train_idx: Tensor
    test_idx: Tensor
    fps: float = 25.0
    audio_path: Path | None = None
    source_size: int = 0
    audio_feature: str = "mel"
    info: dict[str, Any] = field(default_factory=dict)
    expression: Tensor | None = None
    excluded: Tensor | None = None
    test_start: int | None = None

    def __post_init__(self) -> None:
        t, h, w = self.images.shape[:3]
        checks = {
            "images": (self.images.shape, (t, h, w, 3)),
            "backgrounds": (self.backgrounds.shape, (t, h, w, 3)),
            "plate": (self.plate.shape, (h, w, 3)),
            "viewmats": (self.viewmats.shape, (t, 4, 4)),
            "K": (self.K.shape, (3, 3)),
            "landmarks": (self.landmarks.shape[:1] + self.landmarks.shape[2:], (t, 2)),
            "canonical_landmarks": (self.canonical_landmarks.shape[1:], (3,)),
            "au45": (self.au45.shape, (t,)),
        }
        if self.labels is not None:
            checks["labels"] = (self.labels.shape, (t, h, w))
        for name, (found, want) in checks.items():
            if tuple(found) != tuple(want):
                raise ValueError(f"SubjectData {self.name}: {name} has shape {list(found)}, expected {list(want)}")
        if self.audio.ndim != 3 or self.audio.shape[0] != t:
            raise ValueError(f"SubjectData {self.name}: audio must be [T={t}, W, C], found {list(self.audio.shape)}")
        if len(self.train_idx) == 0:
            raise ValueError(f"SubjectData {self.name}: empty training split")
        if self.expression is None:
            self.expression = torch.zeros(t, 0)
        elif self.expression.ndim != 2 or self.expression.shape[0] != t:
            raise ValueError(f"SubjectData {self.name}: expression must be [T={t}, E], found {list(self.expression.shape)}")
        if not self.source_size:
            self.source_size = w
        if self.excluded is None:
            self.excluded = torch.zeros(0, dtype=torch.int64)
        if self.test_start is None:
            self.test_start = int(self.test_idx[0]) if len(self.test_idx) else t

    # ------------------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def audio_window(self) -> int:
        return int(self.audio.shape[1])

    @property
    def audio_dim(self) -> int:
        return int(self.audio.shape[2])

    def image(self, i: int, device: torch.device | str = "cpu") -> Tensor:
        """``float32 [H, W, 3]`` in [0, 1]."""
        return self.images[i].to(device=device, dtype=torch.float32) / 255.0

    def background(self, i: int, device: torch.device | str = "cpu", kind: str = "torso") -> Tensor:
        """``float32 [H, W, 3]``: the torso frame (``torso``) or the plate (``plate``)."""
        src = self.backgrounds[i] if kind == "torso" else self.plate
        return src.to(device=device, dtype=torch.float32) / 255.0

    def camera(self, i: int, device: torch.device | str = "cpu", viewmat: Tensor | None = None) -> Camera:
        vm = self.viewmats[i] if viewmat is None else viewmat
        return Camera(vm.to(device=device, dtype=torch.float32), self.K.to(device=device, dtype=torch.float32), self.width, self.height)

    @property
    def expression_dim(self) -> int:
        assert self.expression is not None
        return int(self.expression.shape[1])

    def condition(
        self,
        i: int,
        device: torch.device | str = "cpu",
        audio: Tensor | None = None,
        *,
        audio_frames: int = 1,
        audio_source: Tensor | None = None,
        audio_index: int | None = None,
    ) -> FrameCondition:
        """Frame ``i``'s conditions.

        Args:
            audio: replaces the frame's audio window (cross-driving; with ``audio_frames > 1``
                give ``audio_source`` + ``audio_index`` instead).
            audio_frames: consecutive windows in ``audio_seq`` (1: none).
            audio_source, audio_index: the ``[T', W, C]`` window sequence and the position in it
                that drive this frame (default: the subject's own audio at ``i``).
        """
        src = self.audio if audio_source is None else audio_source
        j = i if audio_index is None else audio_index
        a = (src[j] if audio is None else audio).to(device=device, dtype=torch.float32)
        assert self.expression is not None
        return FrameCondition(
            audio=a,
            au45=self.au45[i].to(device=device, dtype=torch.float32),
            viewmat=self.viewmats[i].to(device=device, dtype=torch.float32),
            expression=self.expression[i].to(device=device, dtype=torch.float32),
            audio_seq=None if audio_frames <= 1 else audio_sequence(src, j, audio_frames).to(device=device, dtype=torch.float32),
        )

    def view(
        self,
        i: int,
        device: torch.device | str = "cpu",
        *,
        background: str = "torso",
        identity: int = 0,
        audio_frames: int = 1,
        audio_source: Tensor | None = None,
        audio_index: int | None = None,
        viewmat: Tensor | None = None,
    ) -> FrameView:
        """Frame ``i`` as a :class:`FrameView` (its camera, background and conditions; the audio
        from ``audio_source[audio_index]`` when given: cross-driving)."""
        cond = self.condition(i, device, audio_frames=audio_frames, audio_source=audio_source, audio_index=audio_index)
        if viewmat is not None:
            cond.viewmat = viewmat.to(device=device, dtype=torch.float32)
        return FrameView(self.camera(i, device, viewmat=viewmat), self.background(i, device, background), cond, identity)

    def region_box(self, i: int, region: str, margin: float, min_size: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` crop of ``lip`` / ``face`` / ``mouth`` around frame ``i``'s landmarks."""
        from talkgs.models.contract import REGION_LANDMARKS

        if region not in REGION_LANDMARKS:
            raise ValueError(f"unknown region {region!r}; known: {sorted(REGION_LANDMARKS)}")
        pts = self.landmarks[i, list(REGION_LANDMARKS[region])].numpy()
        return region_box(pts, margin, min_size, self.width, self.height)

    def signals(self) -> dict[str, np.ndarray]:
        """Per-frame signals samplers can use: ``blink`` (AU45 0-5), ``mouth_open`` (inner-lip
        gap / mouth width), and each expression signal by name when known."""
        out = {"blink": self.au45.numpy().astype(np.float64)}
        mo = self.info.get("mouth_open")
        if mo is not None:
            out["mouth_open"] = np.asarray(mo, np.float64)
        assert self.expression is not None
        for k, name in enumerate(self.info.get("expression_names", [])[: self.expression_dim]):
            out[str(name)] = self.expression[:, k].numpy().astype(np.float64)
        return out

    def stats(self) -> IdentityStats:
        """Training statistics (poses, audio windows, expression of the training frames)."""
        assert self.expression is not None
        idx = self.train_idx
        return IdentityStats(viewmats=self.viewmats[idx], audio=self.audio[idx], expression=self.expression[idx])

    @property
    def train_span(self) -> Tensor:
        """``int64``: every frame of the training part of the clip (excluded ones included), in order."""
        return torch.arange(0, int(self.test_start or 0))

    @property
    def test_span(self) -> Tensor:
        """``int64``: every frame of the test part of the clip (excluded ones included): what is
        rendered for evaluation (continuous video and audio); the metrics skip the excluded ones."""
        return torch.arange(int(self.test_start or 0), self.n_frames)

    @property
    def train_seconds(self) -> float:
        """Length of the training split in seconds."""
        return len(self.train_idx) / self.fps

    def first_seconds(self, seconds: float) -> SubjectData:
        """This subject with the training split cut to its first ``seconds`` (the few-shot protocol
        of D3-Talker Table 2: train on the first 5/10/15/20 s, test on the same held-out frames).

        Raises:
            FewShotUnavailable: the training split is shorter than ``seconds``.
        """
        n = fewshot_frames(self.name, seconds, self.fps, len(self.train_span))
        return replace(self, train_idx=self.train_idx[self.train_idx < n].clone(), info={**self.info, "train_seconds": float(seconds)})

    def resized(self, size: int) -> SubjectData:
        """This subject at ``size x size`` (images area-resampled, labels nearest, K scaled)."""
        if size == self.width and size == self.height:
            return self
        import cv2

        s = size / self.width

        def rs(x: Tensor | LazyFrames, interp: int) -> Tensor | LazyFrames:
            if isinstance(x, LazyFrames):
                read = x.read
                return LazyFrames(x.paths, lambda p: cv2.resize(read(p), (size, size), interpolation=interp), (size, size, *x.frame_shape[2:]), error=x.error)
            arr = x.numpy()
            out = np.stack([cv2.resize(a, (size, size), interpolation=interp) for a in arr])
            return torch.from_numpy(out)

        area = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        K = self.K.clone()
        K[:2] *= s
        return replace(
            self,
            images=rs(self.images, area),
            backgrounds=rs(self.backgrounds, area),
            plate=torch.from_numpy(cv2.resize(self.plate.numpy(), (size, size), interpolation=area)),
            labels=None if self.labels is None else rs(self.labels, cv2.INTER_NEAREST),
            K=K,
            landmarks=self.landmarks * s,
        )


# ----------------------------------------------------------------------------------------------
# batches


def audio_sequence(audio: Tensor, i: int, frames: int) -> Tensor:
    """``[frames, W, C]``: windows ``i - frames//2 .. i + frames - frames//2 - 1`` of ``audio
    [T, W, C]``, zeros outside ``0 .. T-1`` (ER-NeRF / TalkingGaussian's ``get_audio_features``)."""
    t = audio.shape[0]
    lo = i - frames // 2
    out = torch.zeros((frames, *audio.shape[1:]), dtype=audio.dtype)
    a, b = max(lo, 0), min(lo + frames, t)
    if b > a:
        out[a - lo : b - lo] = audio[a:b]
    return out


def frame_pool(datasets: list[SubjectData]) -> FramePool:
    """The training frames (and per-frame signals) of every identity, for samplers."""
    return FramePool(frames=[d.train_idx.numpy() for d in datasets], signals=[d.signals() for d in datasets])


def make_batch(
    datasets: list[SubjectData],
    picks: list[tuple[int, int]],
    device: torch.device | str,
    *,
    background: str = "torso",
    audio_frames: int = 1,
    targets: bool = True,
    step: int = 0,
    local_step: int = 0,
) -> Batch:
    """A training :class:`Batch` of ``picks`` (``(identity, frame)`` pairs) at ``step``."""
    views = [datasets[ident].view(i, device, background=background, identity=ident, audio_frames=audio_frames) for ident, i in picks]
    tg = lab = None
    if targets:
        tg = torch.stack([datasets[ident].image(i, device) for ident, i in picks])
        if all(datasets[ident].labels is not None for ident, _ in picks):
            lab = torch.stack([datasets[ident].labels[i] for ident, i in picks]).to(device)  # type: ignore[index]
    lms = torch.stack([datasets[ident].landmarks[i] for ident, i in picks])
    return Batch(views=views, frames=list(picks), targets=tg, labels=lab, landmarks=lms, step=step, local_step=local_step)


def pingpong(k: int, n: int) -> int:
    """Index ``k`` of the sequence ``0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...`` (looped back and forth)."""
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    k %= period
    return k if k < n else period - k


# ----------------------------------------------------------------------------------------------
# loading from the stage folders


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: missing or unreadable. Rerun the stage that writes it.")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_label(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: missing or unreadable. Rerun the segment stage.")
    return img


def _load_many(fn, paths: list[Path], size: int | None = None, *, nearest: bool = False) -> np.ndarray:  # noqa: ANN001
    """``fn`` of every path stacked into one array (each image resized to ``size x size`` as it is
    read when given: area-resampled when shrinking, bilinear when growing, nearest for labels --
    as :meth:`SubjectData.resized`)."""
    import concurrent.futures

    load = _resizer(fn, size, nearest)
    first = load(paths[0])
    out = np.empty((len(paths), *first.shape), dtype=first.dtype)
    out[0] = first

    def put(k: int) -> None:
        img = load(paths[k])
        if img.shape != first.shape:
            raise DataError(f"{paths[k]}: {img.shape[1]}x{img.shape[0]}, unlike {paths[0]} ({first.shape[1]}x{first.shape[0]}); rerun the stage that writes them")
        out[k] = img

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        list(ex.map(put, range(1, len(paths))))
    return out


def _resizer(fn, size: int | None, nearest: bool):  # noqa: ANN001, ANN202
    import cv2

    def load(path: Path) -> np.ndarray:
        img = fn(path)
        if size is None or (img.shape[0] == size and img.shape[1] == size):
            return img
        interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if size < img.shape[1] else cv2.INTER_LINEAR)
        return cv2.resize(img, (size, size), interpolation=interp)

    return load


def _lazy_many(fn, paths: list[Path], size: int | None = None, *, nearest: bool = False) -> LazyFrames:  # noqa: ANN001
    """:func:`_load_many` decoded on access (the first file is read now, for the shape)."""
    load = _resizer(fn, size, nearest)
    return LazyFrames(paths, load, load(paths[0]).shape, error=DataError)


def _tensor(x: np.ndarray | LazyFrames) -> Tensor | LazyFrames:
    return x if isinstance(x, LazyFrames) else torch.from_numpy(x)


def _need(path: Path, stage: str, subject_dir: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: not found. Run the {stage} stage for this subject first (`dvc repro {stage}@{subject_dir.name}`).")
    return path


def _load_features(subject_dir: Path, n_frames: int, audio_feature: str) -> tuple[Any, Any]:
    """``(FramesTable, AudioTable)`` of the features stage (validated by their readers)."""
    from talkgs.features.cache import CacheError, read_audio_table, read_frames_table

    feat_dir = _need(subject_dir / "features", "features", subject_dir)
    frames_path = _need(feat_dir / "frames.parquet", "features", subject_dir)
    audio_path = feat_dir / f"audio_{audio_feature}.parquet"
    if not audio_path.is_file():
        have = sorted(p.name for p in feat_dir.glob("audio_*.parquet"))
        raise DataError(
            f"{audio_path}: not found (have {have}). The variant uses audio feature {audio_feature!r}: add it to "
            f"features.audio_encoders in params.yaml and rerun the features stage (`dvc repro features@{subject_dir.name}`)."
        )
    try:
        frames = read_frames_table(frames_path, n_frames=n_frames)
        audio = read_audio_table(audio_path, n_frames=n_frames, encoder=audio_feature)
    except CacheError as e:
        raise DataError(str(e)) from e
    return frames, audio


def split_frames(frames: Any, n_train: int, subject_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train_idx, test_idx, excluded)`` of a subject's ``frames.parquet`` table (a
    :class:`~talkgs.features.cache.FramesTable`): the frames of each split where the face mesh found
    the face, and those where it did not. ``n_train``: the extract's ``meta.json`` split.

    Raises:
        DataError: the table's split disagrees with ``n_train``, or a split has no detected face.
    """
    split_train = int((frames.split == "train").sum())
    if split_train != n_train:
        raise DataError(f"{subject_dir}: features split has {split_train} train frames, extract meta says {n_train}; rerun the features stage")
    detected = np.asarray(frames.detected, bool)
    excluded = np.nonzero(~detected)[0]
    train_idx, test_idx = np.nonzero(detected[:n_train])[0], n_train + np.nonzero(detected[n_train:])[0]
    if len(train_idx) == 0 or len(test_idx) == 0:
        which = "training" if len(train_idx) == 0 else "test"
        raise DataError(
            f"{subject_dir / 'features' / 'frames.parquet'}: the face mesh found the face in no frame of the {which} split; "
            "look at the track stage's report.png and use a clip where the face is visible"
        )
    return train_idx, test_idx, excluded


def load_subject(
    subject_dir: str | Path,
    *,
    resolution: int | None = None,
    audio_feature: str = "mel",
    load_labels: bool = True,
    lazy: bool = False,
) -> SubjectData:
    """Load subject ``data/<S>`` (folders ``extract``, ``segment``, ``track``, ``features``).

    Args:
        subject_dir: the subject folder.
        resolution: square size to resize to (None: as extracted).
        audio_feature: which ``audio_<feature>.parquet`` to read.
        load_labels: also load the label maps (initialisation, region metrics).
        lazy: frames, torso frames and labels as :class:`~talkgs.train.frames.LazyFrames`
            (decoded when indexed: memory flat in clip length, for rendering and synthesis)
            instead of arrays (training, which visits random frames every step).

    Raises:
        DataError: an input is missing or inconsistent (message names the stage to run).
    """
    subject_dir = Path(subject_dir)
    ex = _need(subject_dir / "extract", "extract", subject_dir)
    seg = _need(subject_dir / "segment", "segment", subject_dir)
    meta = json.loads(_need(ex / "meta.json", "extract", subject_dir).read_text())
    n = int(meta["output"]["frames"])
    fps = float(meta["output"]["fps"])
    pattern = str(meta["output"]["frame_pattern"])
    n_train = int(meta["split"]["n_train"])
    frames, audio = _load_features(subject_dir, n, audio_feature)
    if "canonical_landmarks" not in frames.meta:
        raise DataError(f"{subject_dir / 'features' / 'frames.parquet'}: metadata lacks canonical_landmarks; rerun the features stage")
    plate = _read_rgb(_need(seg / "background.png", "segment", subject_dir))
    src_h, src_w = _read_rgb(ex / (pattern % 0)).shape[:2]
    size = src_w
    img_size = frames.meta.get("image_size")
    if img_size is not None and list(img_size) != [src_w, src_h]:
        raise DataError(f"{subject_dir / 'features'}: built for {img_size} frames, extract has {src_w}x{src_h}; rerun track and features")
    # frames are resized as they are read (as resized() does, frame by frame): a 128² training
    # load never holds the clip at its extracted resolution (1,779 frames at 512² are 2.8 GB)
    to = resolution if resolution is not None and resolution != size else None
    load = _lazy_many if lazy else _load_many
    images = load(_read_rgb, [ex / (pattern % i) for i in range(n)], to)
    torso = load(_read_rgb, [seg / "torso" / f"{i:06d}.jpg" for i in range(n)], to)
    labels = load(_read_label, [seg / "labels" / f"{i:06d}.png" for i in range(n)], to, nearest=True) if load_labels else None
    fx, fy, cx, cy = (float(v) for v in frames.intrinsics[0])
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float32)
    landmarks = torch.from_numpy(np.array(frames.landmarks[..., :2], np.float32))
    if to is not None:  # the frames are at `to` already: scale the rest as resized() does
        import cv2

        sc = to / size
        K[:2] *= np.float32(sc)
        landmarks = landmarks * sc
        plate = cv2.resize(plate, (to, to), interpolation=cv2.INTER_AREA if sc < 1 else cv2.INTER_LINEAR)
    train_idx, test_idx, excluded = split_frames(frames, n_train, subject_dir)
    if len(excluded):
        log.info(
            "%s: %d frame(s) without a detected face left out of training (%d) and evaluation (%d): %s%s",
            subject_dir.name, len(excluded), int((excluded < n_train).sum()), int((excluded >= n_train).sum()),
            ", ".join(map(str, excluded[:12].tolist())), " ..." if len(excluded) > 12 else "",
        )  # fmt: skip
    data = SubjectData(
        name=subject_dir.name,
        images=_tensor(images),
        backgrounds=_tensor(torso),
        plate=torch.from_numpy(plate),
        labels=None if labels is None else _tensor(labels),
        viewmats=torch.from_numpy(np.array(frames.world_to_camera, np.float32)),
        K=torch.from_numpy(K),
        landmarks=landmarks,
        canonical_landmarks=torch.tensor(frames.meta["canonical_landmarks"], dtype=torch.float32),
        au45=torch.from_numpy(np.array(frames.blink, np.float32)),
        audio=torch.from_numpy(np.array(audio.features, np.float32)),
        train_idx=torch.from_numpy(train_idx.astype(np.int64)),
        test_idx=torch.from_numpy(test_idx.astype(np.int64)),
        fps=fps,
        audio_path=ex / str(meta["output"]["audio"]),
        source_size=size,
        audio_feature=audio_feature,
        info={
            "subject_dir": str(subject_dir), "audio_params": audio.meta.get("params", {}), "mouth_open": frames.mouth_open.tolist(),
            "expression_names": list(frames.meta.get("expression_names", [])),
        },
        expression=torch.from_numpy(np.array(frames.expression, np.float32)),
        excluded=torch.from_numpy(excluded.astype(np.int64)),
        test_start=n_train,
    )  # fmt: skip
    return data


def audio_features_for_wav(
    wav: str | Path, feature: str, *, fps: float = 25.0, audio_params: dict[str, Any] | None = None, n_frames: int | None = None
) -> Tensor:
    """Audio windows ``float32 [T, W, C]`` of any audio file through the features stage's encoder
    (:func:`talkgs.features.encode_wav`), aligned to ``fps``.

    ``audio_params``: the encoder settings the subject's features were built with (the
    ``params`` of its ``audio_<feature>.parquet`` metadata, :attr:`SubjectData.info`), so
    the windows match what the model was trained on.
    """
    import dataclasses

    from talkgs.features.audio import AudioEncoderParams, encode_wav

    known = {f.name for f in dataclasses.fields(AudioEncoderParams)}
    kw = {k: v for k, v in (audio_params or {}).items() if k in known}
    kw.update(name=feature, fps=fps)
    arr = encode_wav(Path(wav), AudioEncoderParams(**kw), n_frames=n_frames)
    return torch.from_numpy(np.ascontiguousarray(arr, np.float32))
