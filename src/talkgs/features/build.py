"""Stage ``features`` (per subject) and the foreign-audio featurisation (per audio file).

:func:`build_features` writes, atomically, the folder::

    frames.parquet          one row per frame: split, pose, intrinsics, landmarks, blink,
                            expression, mouth opening, landmark motion (talkgs.features.cache)
    audio_<encoder>.parquet one per encoder in ``audio_encoders``: [T, window, C] per frame
    blink_sheet.png         contact sheet: blink signal + eye crops at its peaks and at open frames
    features.json           summary (counts, blink peaks, params; no timings)

:func:`featurize_audio` writes one ``audio_<encoder>.parquet`` for any audio file (cross-driven
audio), with the same encoder settings.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from talkgs.configlib import PROBABILITY, Range
from talkgs.features import audio as audio_mod
from talkgs.features.cache import FramesTable, write_audio_table, write_frames_table
from talkgs.features.signals import EXPRESSION_NAMES, FaceSignals, blink_peaks, face_signals
from talkgs.io.atomic import atomic_dir, write_json
from talkgs.io.digest import sha256_file
from talkgs.preprocess import facemesh as fm
from talkgs.preprocess.errors import InputError
from talkgs.preprocess.track import ExtractInfo, load_track, read_extract

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeaturesParams:
    """Parameters of the ``features`` stage (``params.yaml: features``)."""

    audio_encoders: list[str] = field(default_factory=lambda: ["mel"])
    """Audio encoders to run (``mel``, ``phonemes``, ``hubert``, ``wav2vec2``, or several joined
    by ``+``, e.g. ``mel+phonemes``: concatenated channels); one ``audio_<name>.parquet`` each."""
    audio_models: dict[str, str] = field(default_factory=dict)
    """Per-encoder model: hub id or local folder (default: each encoder's own default)."""
    audio_window: Annotated[int, Range(1, 1024, unit="frames")] = 16
    """Encoder frames (50 Hz) per video frame, centred on it."""
    audio_layer: Annotated[int, Range(-128, 128)] = -1
    """Transformer hidden state to output (-1 = last)."""
    n_mels: Annotated[int, Range(8, 512)] = 80
    """Mel bands of the ``mel`` encoder."""
    audio_chunk_s: Annotated[float, Range(1, 600, unit="seconds")] = 20.0
    """Chunk length for transformer encoders on long audio (seconds)."""
    phone_set: str = "phones"
    """Classes of the ``phonemes`` encoder: ``phones`` (39 CMUdict phones + silence) or ``visemes``
    (the 13 viseme classes of Neti et al. 2000)."""
    phone_chunk_s: Annotated[float, Range(1, 60, unit="seconds")] = 8.0
    """The ``phonemes`` encoder decodes in chunks of this length, with 1 s of context each side
    (one 60 s utterance loses track of the speech; 8 s chunks do not)."""
    phone_smoothing_ms: Annotated[float, Range(0, 200, unit="ms")] = 20.0
    """Gaussian smoothing (sigma) of the ``phonemes`` encoder's one-hot classes over time."""
    device: str = "cpu"
    """Torch device for the audio encoders."""
    blink_closed_ratio: Annotated[float, PROBABILITY] = 0.4
    """Eye aspect ratio of a closed eye relative to the clip's open EAR (maps to AU45 = 5)."""
    contact_sheet: bool = True
    """Write ``blink_sheet.png``."""

    def __post_init__(self) -> None:
        if not self.audio_encoders:
            raise ValueError("features params: audio_encoders must name at least one encoder")
        for e in self.audio_encoders:
            try:
                audio_mod.encoder_parts(e)
            except ValueError as err:
                raise ValueError(f"features params: audio_encoders: {err}") from None
        if self.phone_set not in audio_mod.PHONE_SETS:
            raise ValueError(f"features params: phone_set must be one of {audio_mod.PHONE_SETS}, got {self.phone_set!r}")
        if not 0.0 < self.blink_closed_ratio < 1.0:
            raise ValueError("features params: blink_closed_ratio must be in (0, 1)")

    def audio_params(self, name: str, fps: float = 25.0) -> audio_mod.AudioEncoderParams:
        """Settings of encoder ``name`` (as used for the subject's own audio and foreign audio)."""
        return audio_mod.AudioEncoderParams(
            name=name, model=self.audio_models.get(name, ""), window=self.audio_window, fps=fps,
            layer=self.audio_layer, n_mels=self.n_mels, chunk_s=self.audio_chunk_s, phone_set=self.phone_set,
            phone_chunk_s=self.phone_chunk_s, phone_smoothing_ms=self.phone_smoothing_ms,
        )  # fmt: skip


def _audio_meta(enc: audio_mod.AudioEncoder, params: audio_mod.AudioEncoderParams, source: Path) -> dict[str, Any]:
    return {
        **enc.describe(),
        "fps": params.fps,
        "sample_rate": audio_mod.SAMPLE_RATE,
        "hop": audio_mod.HOP,
        "frame_rate_hz": audio_mod.SAMPLE_RATE / audio_mod.HOP,
        "alignment": "features[i, k] = encoder frame m0_i + k, m0_i = floor((i + 0.5) * sample_rate / fps / hop "
        "- window / 2 + 0.5); encoder frame m covers samples [m * hop, (m + 1) * hop); zeros outside the audio",
        "source": str(source),
        "source_sha256": sha256_file(source),
        "params": dataclasses.asdict(params),
    }


def featurize_audio(
    wav: Path, out_path: Path, params: audio_mod.AudioEncoderParams, *, device: str = "cpu", progress: bool = True
) -> dict[str, Any]:
    """Encode any audio file (foreign / cross-driven speech) into ``out_path`` (an
    ``audio_<encoder>.parquet``), aligned to ``params.fps`` video frames. Returns a summary."""
    wav, out_path = Path(wav), Path(out_path)
    t0 = time.perf_counter()
    enc = audio_mod.get_encoder(params, device)
    feats = audio_mod.encode_wav(wav, params, device=device, encoder=enc, progress=progress)
    meta = _audio_meta(enc, params, wav)
    write_audio_table(out_path, feats, meta)
    secs = time.perf_counter() - t0
    log.info("%s → %s: %d frames x %s (%.1f s)", wav, out_path, len(feats), feats.shape[1:], secs)
    return {"frames": int(len(feats)), "shape": list(feats.shape), "encoder": params.name, "seconds": round(secs, 2)}


def build_features(
    extract_dir: Path, track_dir: Path, out_dir: Path, params: FeaturesParams, *, progress: bool = True,
    timings: Path | None = None,
) -> dict[str, Any]:
    """Run the features stage for one subject (see the module docstring). Returns the summary
    (``features.json``) plus ``timing_s``, which stays out of the output folder (a rerun writes the
    same bytes) and goes to the json file ``timings`` when given."""
    extract_dir, track_dir, out_dir = Path(extract_dir), Path(track_dir), Path(out_dir)
    t_start = time.perf_counter()
    info = read_extract(extract_dir)
    track = load_track(track_dir)
    if track.n_frames != info.n_frames:
        raise InputError(
            f"{track_dir / 'track.npz'}: has {track.n_frames} frames, {extract_dir / 'meta.json'} says {info.n_frames}: "
            "the track comes from another extract. Rerun the track stage (`dvc repro track@<subject>`)."
        )
    if info.sample_rate != audio_mod.SAMPLE_RATE:
        raise InputError(f"{info.audio}: extracted at {info.sample_rate} Hz, the audio encoders need {audio_mod.SAMPLE_RATE}. Set extract.sample_rate: 16000.")
    n = info.n_frames
    t0 = time.perf_counter()
    sig = face_signals(track, params.blink_closed_ratio)
    k = track.k
    split = np.where(np.arange(n) < info.n_train, "train", "test").astype(object)
    table = FramesTable(
        time_s=np.arange(n) / info.fps,
        split=split,
        detected=track.detected,
        world_to_camera=track.world_to_camera.astype(np.float32),
        intrinsics=np.tile(np.array([k[0, 0], k[1, 1], k[0, 2], k[1, 2]], np.float32), (n, 1)),
        landmarks=track.landmarks,
        landmark_motion=sig.landmark_motion,
        blink=sig.blink,
        eye_aspect_ratio=sig.ear,
        expression=sig.expression,
        mouth_open=sig.mouth_open,
        reproj_error_px=track.reproj_error,
        meta={
            "fps": info.fps,
            "image_size": [info.width, info.height],
            "n_train": info.n_train,
            "expression_names": list(EXPRESSION_NAMES),
            "open_eye_aspect_ratio": sig.open_ear,
            "blink_closed_ratio": params.blink_closed_ratio,
            "canonical_landmarks": np.round(track.canonical.astype(np.float64), 6).tolist(),
            "landmark_reference": np.round(sig.reference.astype(np.float64), 6).tolist(),
            "rigid_indices": [int(v) for v in track.rigid_indices],
            "conventions": "world_to_camera: OpenCV camera (x right, y down, z forward), X_cam = R X_world + t, metres; "
            "intrinsics fx, fy, cx, cy in pixels, continuous pixel coordinates; landmarks: MediaPipe x, y pixels, z relative; "
            "landmark_motion: head frame (x subject's left, y down, z into the head), metres, minus landmark_reference",
            "source": {"extract": str(extract_dir), "track": str(track_dir)},
        },
    )
    t_sig = time.perf_counter() - t0
    summary: dict[str, Any] = {"frames": n, "n_train": info.n_train, "audio": {}}
    with atomic_dir(out_dir) as tmp:
        write_frames_table(tmp / "frames.parquet", table)
        t_audio = 0.0
        t_enc: dict[str, float] = {}
        for name in params.audio_encoders:
            ta = time.perf_counter()
            ap = params.audio_params(name, info.fps)
            enc = audio_mod.get_encoder(ap, params.device)
            feats = audio_mod.encode_wav(info.audio, ap, n_frames=n, device=params.device, encoder=enc, progress=progress)
            write_audio_table(tmp / f"audio_{name}.parquet", feats, _audio_meta(enc, ap, info.audio))
            dt = time.perf_counter() - ta
            t_audio += dt
            t_enc[name] = round(dt, 2)
            summary["audio"][name] = {"shape": list(feats.shape)}
        peaks = blink_peaks(sig.blink)
        if params.contact_sheet:
            blink_contact_sheet(info, track.landmarks, sig, tmp / "blink_sheet.png")
        summary.update({
            "blink": {
                "open_eye_aspect_ratio": sig.open_ear,
                "peaks": [int(p) for p in peaks],
                "peaks_per_minute": float(len(peaks) / (n / info.fps / 60.0)),
                "fraction_above_2": float((sig.blink >= 2).mean()),
            },
            "mouth_open": {"median": float(np.median(sig.mouth_open)), "p95": float(np.percentile(sig.mouth_open, 95))},
            "params": dataclasses.asdict(params),
        })  # fmt: skip
        write_json(tmp / "features.json", summary)
    timing = {"signals": round(t_sig, 3), "audio": round(t_audio, 2), "audio_encoders": t_enc, "total": round(time.perf_counter() - t_start, 2)}
    if timings is not None:
        write_json(timings, {"frames": n, "timing_s": timing})
    summary = {**summary, "timing_s": timing}
    log.info("%s: features for %d frames, %d blink peaks, audio %s (%.1f s)", out_dir, n, len(peaks), list(summary["audio"]), summary["timing_s"]["total"])
    return summary


def blink_contact_sheet(
    info: ExtractInfo, landmarks: np.ndarray, sig: FaceSignals, out_png: Path, n_peaks: int = 8, n_open: int = 4
) -> None:
    """PNG: the blink signal over time (peaks marked) and eye-region crops at the strongest blink
    peaks (top rows) and at open-eye frames (bottom row), each labelled with frame and AU45."""
    import cv2
    from matplotlib.figure import Figure

    blink = sig.blink
    peaks = blink_peaks(blink, threshold=1.0)
    peaks = peaks[np.argsort(-blink[peaks])][:n_peaks]
    peaks = np.sort(peaks)
    open_frames = np.nonzero(blink == 0)[0]
    if len(open_frames) == 0:
        open_frames = np.argsort(blink)[:n_open]
    open_frames = open_frames[np.linspace(0, len(open_frames) - 1, min(n_open, len(open_frames))).round().astype(int)]
    eye_idx = [*fm.RIGHT_EYE, *fm.LEFT_EYE, *fm.RIGHT_BROW, *fm.LEFT_BROW]

    def crop(i: int) -> np.ndarray:
        img = cv2.imread(str(info.frame_path(int(i))), cv2.IMREAD_COLOR)[..., ::-1]
        pts = landmarks[int(i), eye_idx, :2]
        lo, hi = pts.min(0), pts.max(0)
        pad = 0.15 * (hi - lo)
        x0, y0 = np.maximum(np.floor(lo - pad), 0).astype(int)
        x1, y1 = np.ceil(hi + pad).astype(int)
        c = img[y0:y1, x0:x1]
        return cv2.resize(c, (240, max(1, int(240 * c.shape[0] / max(c.shape[1], 1)))), interpolation=cv2.INTER_AREA)

    cols = 4
    tiles = [(int(i), "peak") for i in peaks] + [(int(i), "open") for i in open_frames]
    rows = max(1, -(-len(tiles) // cols))
    fig = Figure(figsize=(12, 2.6 + 1.6 * rows), dpi=90)
    gs = fig.add_gridspec(rows + 1, cols, height_ratios=[1.6] + [1.0] * rows)
    ax = fig.add_subplot(gs[0, :])
    t = np.arange(len(blink)) / info.fps
    ax.plot(t, blink, lw=0.8)
    ax.plot(t[peaks], blink[peaks], "rv", ms=6, label="shown peaks")
    ax.plot(t[open_frames], blink[open_frames], "g^", ms=6, label="shown open frames")
    ax.set(xlabel="time (s)", ylabel="AU45 (0-5)", title=f"blink intensity, {len(blink_peaks(blink))} peaks ≥ 2", ylim=(-0.2, 5.2))
    ax.legend(fontsize=7, loc="upper right")
    for j, (i, kind) in enumerate(tiles):
        a = fig.add_subplot(gs[1 + j // cols, j % cols])
        a.imshow(crop(i))
        a.set_title(f"{kind}: frame {i}  AU45 {blink[i]:.1f}", fontsize=8, color="r" if kind == "peak" else "g")
        a.axis("off")
    fig.tight_layout()
    fig.savefig(out_png)
