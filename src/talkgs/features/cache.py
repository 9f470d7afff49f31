"""The Parquet feature cache: ``frames.parquet`` (one row per video frame) and
``audio_<encoder>.parquet`` (one row per video frame of an audio track).

Both have explicit pyarrow schemas and carry, in the schema metadata under the key
``talkgs``, a JSON object with ``format_version`` (:data:`FORMAT_VERSION`), ``kind``
(``"frames"`` / ``"audio"``) and what is needed to interpret the columns. Array-valued
columns are fixed-size lists of float32, flattened row-major; their shapes are in the metadata
and in the docstrings below. Plain ``pandas.read_parquet`` reads both (array columns arrive as
numpy arrays per cell); :func:`read_frames_table` / :func:`read_audio_table` additionally
validate the version, the schema and the lengths and return numpy arrays of the right shapes.

``frames.parquet`` columns (``T`` rows, ``E = len(meta["expression_names"])``):

==================  ==========================  ===============================================
frame               int32                       0..T-1
time_s              float64                     frame / fps (frame i covers [i/fps, (i+1)/fps))
split               string                      "train" / "test" (the test split is the end)
detected            bool                        the face mesh found the face (else interpolated)
world_to_camera     float32[16]  → [4, 4]       OpenCV camera, X_cam = R X_world + t (metres)
intrinsics          float32[4]                  fx, fy, cx, cy in pixels (continuous coordinates)
landmarks           float32[478*3] → [478, 3]   MediaPipe x, y (pixels), z (relative, pixels)
landmark_motion     float32[478*3] → [478, 3]   pose-removed landmarks minus the clip reference
                                                (metres, head frame; reference in the metadata)
blink               float32                     AU45-like blink intensity, 0 (open) .. 5 (closed)
eye_aspect_ratio    float32                     mean eye aspect ratio (raw, head frame)
expression          float32[E]                  upper-face signals (names in the metadata)
mouth_open          float32                     inner-lip gap / mouth width (head frame)
reproj_error_px     float32                     mean rigid-landmark reprojection error of the pose
==================  ==========================  ===============================================

``audio_<encoder>.parquet`` columns: ``frame`` int32, ``time_s`` float64, ``features``
float32[W*C] → ``[W, C]``: ``W`` encoder frames (50 Hz) centred on the video frame, ``C``
channels (metadata: encoder, model, window, dim, fps, sample_rate, source).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from talkgs.io.atomic import atomic_path

FORMAT_VERSION = 1
"""Bump when a column or its meaning changes; readers refuse other versions."""
META_KEY = b"talkgs"
N_LANDMARKS = 478
_REBUILD = "Rebuild it with this talkgs version (`dvc repro features@<subject>` or `talkgs featurize-audio`)."


class CacheError(ValueError):
    """A cache file is missing, of another format version, malformed or inconsistent with
    another one; the message says which file and how to fix it."""


# ----------------------------------------------------------------------------------------------
# helpers


def _flist(values: np.ndarray, size: int) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), size)


def _unflatten(col: pa.ChunkedArray, shape: tuple[int, ...], path: Path, name: str) -> np.ndarray:
    arr = col.combine_chunks()
    if arr.null_count or arr.values.null_count:
        raise CacheError(f"{path}: column {name!r} has missing values. The file is damaged. {_REBUILD}")
    return arr.values.to_numpy(zero_copy_only=False).reshape(len(arr), *shape)


def _write(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _read(path: Path, kind: str) -> tuple[pa.Table, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: not found. Build it first ({'the features stage' if kind == 'frames' else 'the features stage or featurize_audio'}).")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CacheError(f"{path}: not a readable Parquet file ({e}). {_REBUILD}") from e
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise CacheError(f"{path}: no talkgs metadata: it was not written by talkgs. {_REBUILD}")
    meta = json.loads(raw)
    if meta.get("kind") != kind:
        raise CacheError(f"{path}: holds a {meta.get('kind')!r} table, expected {kind!r}. Check the file name you passed.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path}: cache format version {meta.get('format_version')}, this talkgs reads version {FORMAT_VERSION}. {_REBUILD}")
    return table, meta


def _check_schema(path: Path, table: pa.Table, expected: pa.Schema) -> None:
    found = table.schema.remove_metadata()
    if not found.equals(expected):
        exp = {f.name: str(f.type) for f in expected}
        got = {f.name: str(f.type) for f in found}
        diff = [f"{k}: expected {exp.get(k, 'absent')}, found {got.get(k, 'absent')}" for k in sorted(set(exp) | set(got)) if exp.get(k) != got.get(k)]
        raise CacheError(f"{path}: schema differs from format version {FORMAT_VERSION} ({'; '.join(diff)}). {_REBUILD}")


# ----------------------------------------------------------------------------------------------
# frames.parquet


def frames_schema(n_expression: int) -> pa.Schema:
    """The columns of ``frames.parquet`` (without metadata)."""
    f32 = pa.float32()
    return pa.schema([
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("time_s", pa.float64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("detected", pa.bool_(), nullable=False),
        pa.field("world_to_camera", pa.list_(f32, 16), nullable=False),
        pa.field("intrinsics", pa.list_(f32, 4), nullable=False),
        pa.field("landmarks", pa.list_(f32, N_LANDMARKS * 3), nullable=False),
        pa.field("landmark_motion", pa.list_(f32, N_LANDMARKS * 3), nullable=False),
        pa.field("blink", f32, nullable=False),
        pa.field("eye_aspect_ratio", f32, nullable=False),
        pa.field("expression", pa.list_(f32, n_expression), nullable=False),
        pa.field("mouth_open", f32, nullable=False),
        pa.field("reproj_error_px", f32, nullable=False),
    ])  # fmt: skip


@dataclass
class FramesTable:
    """Per-frame face data of one subject, ``T`` frames (see the module docstring)."""

    time_s: np.ndarray
    """``float64 [T]``."""
    split: np.ndarray
    """``str [T]``: ``"train"`` / ``"test"``."""
    detected: np.ndarray
    """``bool [T]``."""
    world_to_camera: np.ndarray
    """``float32 [T, 4, 4]``."""
    intrinsics: np.ndarray
    """``float32 [T, 4]`` fx, fy, cx, cy."""
    landmarks: np.ndarray
    """``float32 [T, 478, 3]``."""
    landmark_motion: np.ndarray
    """``float32 [T, 478, 3]``."""
    blink: np.ndarray
    """``float32 [T]`` in [0, 5]."""
    eye_aspect_ratio: np.ndarray
    """``float32 [T]``."""
    expression: np.ndarray
    """``float32 [T, E]``."""
    mouth_open: np.ndarray
    """``float32 [T]``."""
    reproj_error_px: np.ndarray
    """``float32 [T]``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Must hold ``expression_names`` (length E); also fps, image size, canonical shape, ..."""

    def __len__(self) -> int:
        return len(self.time_s)

    @property
    def frame(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int32)

    def check(self) -> None:
        """Raise ``ValueError`` (expected vs found) when an array has the wrong shape."""
        t = len(self)
        e = len(self.meta.get("expression_names", []))
        want = {
            "split": (t,), "detected": (t,), "world_to_camera": (t, 4, 4), "intrinsics": (t, 4),
            "landmarks": (t, N_LANDMARKS, 3), "landmark_motion": (t, N_LANDMARKS, 3), "blink": (t,),
            "eye_aspect_ratio": (t,), "expression": (t, e), "mouth_open": (t,), "reproj_error_px": (t,),
        }  # fmt: skip
        for name, shape in want.items():
            found = np.shape(getattr(self, name))
            if tuple(found) != shape:
                raise ValueError(f"FramesTable.{name}: expected shape {shape} (T={t}, E={e}), found {tuple(found)}")
        bad = set(np.unique(self.split)) - {"train", "test"}
        if bad:
            raise ValueError(f"FramesTable.split: values must be 'train'/'test', found {sorted(bad)}")


def write_frames_table(path: Path, table: FramesTable) -> None:
    """Write ``frames.parquet`` atomically."""
    table.check()
    t = len(table)
    n_expr = table.expression.shape[1]
    schema = frames_schema(n_expr)
    meta = {**table.meta, "format_version": FORMAT_VERSION, "kind": "frames", "n_frames": t}
    cols = [
        pa.array(np.arange(t, dtype=np.int32)),
        pa.array(np.asarray(table.time_s, np.float64)),
        pa.array([str(s) for s in table.split], type=pa.string()),
        pa.array(np.asarray(table.detected, bool)),
        _flist(table.world_to_camera, 16),
        _flist(table.intrinsics, 4),
        _flist(table.landmarks, N_LANDMARKS * 3),
        _flist(table.landmark_motion, N_LANDMARKS * 3),
        pa.array(np.asarray(table.blink, np.float32)),
        pa.array(np.asarray(table.eye_aspect_ratio, np.float32)),
        _flist(table.expression, n_expr),
        pa.array(np.asarray(table.mouth_open, np.float32)),
        pa.array(np.asarray(table.reproj_error_px, np.float32)),
    ]
    tab = pa.Table.from_arrays(cols, schema=schema).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    _write(Path(path), tab)


def read_frames_table(path: Path, *, n_frames: int | None = None) -> FramesTable:
    """Read and validate ``frames.parquet``; with ``n_frames``, also check the frame count
    (e.g. against the extract's ``meta.json``)."""
    path = Path(path)
    table, meta = _read(path, "frames")
    names = meta.get("expression_names")
    if not isinstance(names, list):
        raise CacheError(f"{path}: metadata lacks 'expression_names'. {_REBUILD}")
    _check_schema(path, table, frames_schema(len(names)))
    t = table.num_rows
    if meta.get("n_frames") != t:
        raise CacheError(f"{path}: metadata says {meta.get('n_frames')} frames, the table has {t} rows: the file was altered. {_REBUILD}")
    frame = table.column("frame").to_numpy()
    if not np.array_equal(frame, np.arange(t)):
        raise CacheError(f"{path}: column 'frame' is not 0..{t - 1} in order: rows were dropped or reordered. {_REBUILD}")
    if n_frames is not None and t != n_frames:
        raise CacheError(
            f"{path}: has {t} frames but the video has {n_frames}: it was built from another extract of the clip. "
            "Rerun the track and features stages (`dvc repro features@<subject>`)."
        )
    out = FramesTable(
        time_s=table.column("time_s").to_numpy(),
        split=np.asarray(table.column("split").to_pylist(), dtype=object),
        detected=table.column("detected").to_numpy(zero_copy_only=False),
        world_to_camera=_unflatten(table.column("world_to_camera"), (4, 4), path, "world_to_camera"),
        intrinsics=_unflatten(table.column("intrinsics"), (4,), path, "intrinsics"),
        landmarks=_unflatten(table.column("landmarks"), (N_LANDMARKS, 3), path, "landmarks"),
        landmark_motion=_unflatten(table.column("landmark_motion"), (N_LANDMARKS, 3), path, "landmark_motion"),
        blink=table.column("blink").to_numpy(),
        eye_aspect_ratio=table.column("eye_aspect_ratio").to_numpy(),
        expression=_unflatten(table.column("expression"), (len(names),), path, "expression"),
        mouth_open=table.column("mouth_open").to_numpy(),
        reproj_error_px=table.column("reproj_error_px").to_numpy(),
        meta=meta,
    )
    for name in ("world_to_camera", "intrinsics", "landmarks", "blink", "expression", "mouth_open"):
        if not np.isfinite(getattr(out, name)).all():
            raise CacheError(f"{path}: column {name!r} has NaN/inf values. {_REBUILD}")
    return out


# ----------------------------------------------------------------------------------------------
# audio_<encoder>.parquet


def audio_schema(window: int, dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("time_s", pa.float64(), nullable=False),
        pa.field("features", pa.list_(pa.float32(), window * dim), nullable=False),
    ])  # fmt: skip


@dataclass
class AudioTable:
    features: np.ndarray
    """``float32 [T, W, C]``: ``W`` encoder frames centred on each video frame, ``C`` channels."""
    meta: dict[str, Any]
    """encoder, model, window, dim, fps, sample_rate, hop, source, ..."""

    def __len__(self) -> int:
        return len(self.features)


def write_audio_table(path: Path, features: np.ndarray, meta: dict[str, Any]) -> None:
    """Write ``audio_<encoder>.parquet`` atomically. ``features``: ``float [T, W, C]``;
    ``meta`` must hold ``encoder`` and ``fps``."""
    features = np.asarray(features)
    if features.ndim != 3:
        raise ValueError(f"audio features: expected [T, W, C], found shape {features.shape}")
    for key in ("encoder", "fps"):
        if key not in meta:
            raise ValueError(f"audio table metadata needs {key!r}, found keys {sorted(meta)}")
    if not np.isfinite(features).all():
        raise ValueError("audio features contain NaN/inf")
    t, w, c = features.shape
    full = {**meta, "format_version": FORMAT_VERSION, "kind": "audio", "n_frames": t, "window": w, "dim": c}
    cols = [
        pa.array(np.arange(t, dtype=np.int32)),
        pa.array(np.arange(t, dtype=np.float64) / float(meta["fps"])),
        _flist(features, w * c),
    ]
    tab = pa.Table.from_arrays(cols, schema=audio_schema(w, c)).replace_schema_metadata({META_KEY: json.dumps(full).encode()})
    _write(Path(path), tab)


def read_audio_table(path: Path, *, n_frames: int | None = None, encoder: str | None = None) -> AudioTable:
    """Read and validate an audio feature table.

    ``n_frames``: the number of video frames it must match (the subject's own audio); a
    mismatch says how to fix it. ``encoder``: the encoder it must come from.
    """
    path = Path(path)
    table, meta = _read(path, "audio")
    try:
        w, c = int(meta["window"]), int(meta["dim"])
    except (KeyError, TypeError, ValueError) as e:
        raise CacheError(f"{path}: metadata lacks window/dim ({e}). {_REBUILD}") from e
    _check_schema(path, table, audio_schema(w, c))
    t = table.num_rows
    if meta.get("n_frames") != t or not np.array_equal(table.column("frame").to_numpy(), np.arange(t)):
        raise CacheError(f"{path}: rows do not match the metadata (frames 0..{meta.get('n_frames')}): the file was altered. {_REBUILD}")
    if encoder is not None and meta.get("encoder") != encoder:
        raise CacheError(f"{path}: holds {meta.get('encoder')!r} features, expected {encoder!r}. Use audio_{encoder}.parquet or add {encoder!r} to features.audio_encoders.")
    if n_frames is not None and t != n_frames:
        diff = t - n_frames
        raise CacheError(
            f"{path}: has {t} audio frames but the video has {n_frames} ({abs(diff)} {'more' if diff > 0 else 'fewer'}; "
            f"{abs(diff) / float(meta.get('fps', 25)):.2f} s): it was computed from a different audio or extract. "
            "Rerun the features stage for this subject (`dvc repro features@<subject>`) so both come from the same extract."
        )
    feats = _unflatten(table.column("features"), (w, c), path, "features")
    return AudioTable(features=feats, meta=meta)


def check_aligned(frames: FramesTable, audio: AudioTable, *, frames_path: Path | str = "frames.parquet", audio_path: Path | str = "audio.parquet") -> None:
    """Raise :class:`CacheError` unless ``audio`` has one row per video frame of ``frames`` at the same fps."""
    if len(audio) != len(frames):
        raise CacheError(
            f"{audio_path}: {len(audio)} audio frames vs {len(frames)} video frames in {frames_path}. "
            "Rebuild both with the features stage from the same extract (`dvc repro features@<subject>`)."
        )
    fa, fv = audio.meta.get("fps"), frames.meta.get("fps")
    if fa is not None and fv is not None and abs(float(fa) - float(fv)) > 1e-6:
        raise CacheError(f"{audio_path}: features at {fa} fps, {frames_path} at {fv} fps. Rebuild the audio features with fps={fv}.")
