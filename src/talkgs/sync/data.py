"""Sync-expert data: mouth-crop stacks and audio windows per frame, in-sync and shifted pairs.

A :class:`SyncClip` holds, for every frame ``t`` of one subject, the crop the expert sees
(``uint8 [T, H + 2m, W + 2m, ch]``, ``m`` = the jitter margin) and the audio input that goes
with a stack **centred** on ``t`` (``float32 [T, C, W]``). A *window* is a centre frame ``c`` whose
``frames`` frames ``c - k .. c + k`` all had a detected face and lie in one split.

Crops (``spec["crop"]``):

- ``lips`` (the talkgs expert): an axis-aligned box centred on the 20 outer-lip landmarks,
  ``crop_scale x`` the face width wide (the face mesh's bounding box: it does not change as the
  mouth opens), ``height / width`` of that high, resampled bilinearly to ``height x width``.
- ``lower_face`` (Wav2Lip's expert): :func:`talkgs.sync.wav2lip.lower_face_crops`.

Audio (``spec["audio"]``): ``mel_window``, the centre frame's window of ``features/audio_mel.parquet``
(``[W, C]`` there, transposed to ``[C, W]``; 16 columns at 50 Hz = 0.32 s, which covers the 5-frame
stack's 0.2 s); ``wav2lip_mel``, Wav2Lip's 0.2 s window starting at the first frame of the stack.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["SyncClip", "lip_boxes", "lip_crops", "windows", "load_clip", "sample_pairs", "eval_pairs", "stack_inputs"]


@dataclass
class SyncClip:
    """One subject's expert inputs (see the module docstring)."""

    name: str
    crops: np.ndarray
    """``uint8 [T, H + 2m, W + 2m, ch]`` (``m``: :attr:`margin`)."""
    audio: np.ndarray
    """``float32 [T, C, W]``: the audio input of a stack centred on each frame."""
    train: np.ndarray
    """``int64``: centre frames of the training windows."""
    test: np.ndarray
    """``int64``: centre frames of the test windows."""
    margin: int = 0
    frames: int = 5

    def __post_init__(self) -> None:
        if self.crops.ndim != 4 or self.audio.ndim != 3 or len(self.crops) != len(self.audio):
            raise ValueError(f"SyncClip {self.name}: expected crops [T, H, W, ch] and audio [T, C, W] of one T, found {self.crops.shape} and {self.audio.shape}")


def windows(ok: np.ndarray, frames: int) -> np.ndarray:
    """Centre frames ``c`` with ``ok[c - k .. c + k]`` all true (``k = frames // 2``): ``int64``."""
    ok = np.asarray(ok, bool)
    k = frames // 2
    if len(ok) < frames:
        return np.zeros(0, np.int64)
    full = np.convolve(ok.astype(np.int64), np.ones(frames, np.int64), mode="valid") == frames  # [T - frames + 1]
    return (np.nonzero(full)[0] + k).astype(np.int64)


def lip_boxes(landmarks: np.ndarray, crop_scale: float, aspect: float) -> np.ndarray:
    """``float64 [T, 4]`` (cx, cy, w, h): the ``lips`` crop of each frame (see the module docstring).
    ``landmarks [T, 478, >=2]`` pixels; ``aspect`` = height / width."""
    from talkgs.eval.syncnet import face_boxes
    from talkgs.preprocess import facemesh as fm

    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1] != fm.NUM_LANDMARKS:
        raise ValueError(f"lip_boxes: expected landmarks [T, {fm.NUM_LANDMARKS}, 2 or 3], found {lm.shape}")
    fb = face_boxes(lm)
    lips = lm[:, list(fm.LIPS_OUTER), :2]
    c = np.nanmean(lips, 1)
    bad = ~np.isfinite(c).all(1)
    if bad.any():  # no face there: the face box centre's lower third stands in (the frame is never a window)
        c[bad] = np.stack([(fb[bad, 0] + fb[bad, 2]) / 2, fb[bad, 1] + 0.8 * (fb[bad, 3] - fb[bad, 1])], 1)
    w = crop_scale * (fb[:, 2] - fb[:, 0])
    return np.stack([c[:, 0], c[:, 1], w, w * aspect], 1)


def lip_crops(frames: Any, boxes: np.ndarray, height: int, width: int, *, margin: int = 0, gray: bool = True) -> np.ndarray:
    """``uint8 [T, height + 2 margin, width + 2 margin, 1 or 3]``: each RGB frame's box ``(cx, cy, w, h)``
    (pixels) resampled to ``height x width``, plus ``margin`` pixels of context at that scale on each
    side (random-shift augmentation); borders replicate the edge."""
    import cv2

    out = []
    H, W = height + 2 * margin, width + 2 * margin
    for f, (cx, cy, bw, bh) in zip(frames, boxes):
        sx, sy = width / bw, height / bh
        # output pixel (u, v) centre <- source (cx + (u + 0.5 - W/2) / sx - 0.5, ...)
        m = np.array([[sx, 0.0, W / 2 - 0.5 - sx * (cx - 0.5)], [0.0, sy, H / 2 - 0.5 - sy * (cy - 0.5)]])
        crop = cv2.warpAffine(np.ascontiguousarray(f), m, (W, H), flags=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if gray:
            crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[..., None]
        out.append(crop)
    return np.stack(out)


def load_clip(subject_dir: str | Path, spec: dict[str, Any], *, margin: int = 0, progress: bool = False) -> SyncClip:
    """Subject ``data/<S>`` (``extract/`` frames, audio, meta; ``features/`` frames.parquet, audio_mel.parquet)
    as a :class:`SyncClip` for an expert with inputs ``spec``.

    Raises:
        DataError: an input is missing or inconsistent (the message names the stage to run).
    """
    from talkgs.progress import iterate
    from talkgs.train.data import _load_features, _need, _read_rgb, split_frames

    subject_dir = Path(subject_dir)
    ex = _need(subject_dir / "extract", "extract", subject_dir)
    meta = json.loads(_need(ex / "meta.json", "extract", subject_dir).read_text())
    n, n_train = int(meta["output"]["frames"]), int(meta["split"]["n_train"])
    fps = float(meta["output"]["fps"])
    table, mel = _load_features(subject_dir, n, "mel")
    train_idx, test_idx, _ = split_frames(table, n_train, subject_dir)
    landmarks = np.asarray(table.landmarks[..., :2], np.float64)
    paths = [ex / (str(meta["output"]["frame_pattern"]) % i) for i in range(n)]
    frames = iterate((_read_rgb(p) for p in paths), progress, f"sync_expert: crops of {subject_dir.name}", total=n)
    if spec["crop"] == "lips":
        boxes = lip_boxes(landmarks, float(spec["crop_scale"]), spec["height"] / spec["width"])
        crops = lip_crops(frames, boxes, spec["height"], spec["width"], margin=margin, gray=spec["color"] == "gray")
    elif spec["crop"] == "lower_face":
        from talkgs.sync.wav2lip import lower_face_crops

        crops = lower_face_crops(frames, landmarks)
        if margin:
            crops = np.pad(crops, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode="edge")
    else:
        raise ValueError(f"unknown crop {spec['crop']!r}")
    k = int(spec["frames"]) // 2
    if spec["audio"] == "mel_window":
        audio = np.ascontiguousarray(np.asarray(mel.features, np.float32).transpose(0, 2, 1))  # [T, C, W]
    elif spec["audio"] == "wav2lip_mel":
        from talkgs.io.media import read_wav
        from talkgs.sync.wav2lip import wav2lip_audio_windows

        samples, sr = read_wav(_need(ex / str(meta["output"]["audio"]), "extract", subject_dir))
        starts = wav2lip_audio_windows(samples, n, fps, sr)  # row s: the window of frames s .. s + 4
        audio = np.full_like(starts, -4.0)
        audio[k:] = starts[: n - k]  # row c: the window of the stack centred on c
    else:
        raise ValueError(f"unknown audio input {spec['audio']!r}")
    if list(audio.shape[1:]) != list(spec["audio_shape"]):
        from talkgs.train.data import DataError

        raise DataError(
            f"{subject_dir / 'features' / 'audio_mel.parquet'}: audio windows are {list(audio.shape[1:])} (bands x columns), the sync "
            f"expert takes {spec['audio_shape']}: the subjects' features were built with other mel settings; rebuild them alike"
        )
    detected = np.zeros(n, bool)
    detected[train_idx] = True
    in_train = detected.copy()
    detected[test_idx] = True
    in_test = detected & ~in_train
    return SyncClip(subject_dir.name, crops, audio, windows(in_train, spec["frames"]), windows(in_test, spec["frames"]), margin, int(spec["frames"]))


# ----------------------------------------------------------------------------------------------
# pairs


def sample_pairs(clips: list[SyncClip], n: int, rng: np.random.Generator, *, min_shift: int, max_shift: int) -> list[tuple[int, int, int]]:
    """``n`` anchors ``(clip, centre, shifted centre)`` from the training windows: each anchor gives an
    in-sync pair (its audio with its video) and a shifted one (its audio with the video of a training
    window ``min_shift <= |shift| <= max_shift`` frames away in the same clip; anchors without one are
    not drawn)."""
    pool = []
    for ci, clip in enumerate(clips):
        tr = clip.train
        for c in tr:
            d = np.abs(tr - c)
            cand = tr[(d >= min_shift) & (d <= max_shift)]
            if len(cand):
                pool.append((ci, int(c), cand))
    if not pool:
        raise ValueError(
            f"sync expert: no training window has another one {min_shift}..{max_shift} frames away in "
            f"{[c.name for c in clips]}: the clips' training splits are too short"
        )
    picks = rng.integers(0, len(pool), n)
    out = []
    for p in picks:
        ci, c, cand = pool[p]
        out.append((ci, c, int(cand[rng.integers(0, len(cand))])))
    return out


def eval_pairs(clip: SyncClip, split: str, shift: int) -> list[tuple[int, int]]:
    """``(centre, shifted centre)`` pairs of a split: every window ``c`` with the window ``c + shift``
    and/or ``c - shift`` of the same split (both when both exist)."""
    win = clip.train if split == "train" else clip.test
    have = set(win.tolist())
    return [(int(c), int(c) + s) for c in win for s in (shift, -shift) if int(c) + s in have]


def stack_inputs(clip: SyncClip, centres: np.ndarray, spec: dict[str, Any], rng: np.random.Generator | None = None, *, flip: bool = False) -> np.ndarray:
    """``float32 [B, frames * ch, H, W]`` video stacks centred on ``centres`` (frame-major channels,
    as Wav2Lip's ``np.concatenate(window, axis=2)``), scaled to [0, 1]; with ``rng``: a random shift
    within the margin and (``flip``) a random horizontal flip per stack, else the centre crop."""
    k = clip.frames // 2
    m = clip.margin
    h, w = spec["height"], spec["width"]
    out = np.empty((len(centres), clip.frames * clip.crops.shape[-1], h, w), np.float32)
    for b, c in enumerate(centres):
        dy, dx = (rng.integers(0, 2 * m + 1, 2) if rng is not None and m else (m, m))
        st = clip.crops[c - k : c + k + 1, dy : dy + h, dx : dx + w]  # [frames, h, w, ch]
        if rng is not None and flip and rng.random() < 0.5:
            st = st[:, :, ::-1]
        out[b] = st.transpose(0, 3, 1, 2).reshape(-1, h, w)
    return out / 255.0
