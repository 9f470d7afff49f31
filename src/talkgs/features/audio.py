"""Audio encoders behind one interface, features aligned to the video frames.

Every encoder turns 16 kHz mono samples into a sequence of feature frames at 50 Hz (hop 320
samples), frame ``m`` describing the audio around sample ``m * 320 + 160`` (i.e. covering
``[m * 20 ms, (m + 1) * 20 ms)``). :func:`encode_samples` / :func:`encode_wav` then cut, for every
video frame ``i`` (covering ``[i / fps, (i + 1) / fps)``), a window of ``window`` consecutive
encoder frames centred on the frame's centre → ``float32 [T, window, C]``. With the default 25
fps and ``window = 16`` that is 0.32 s of context per frame, the 16-frame windows of AD-NeRF /
ER-NeRF / TalkingGaussian; ``window = 2`` gives exactly the two 50 Hz frames inside each video
frame (ER-NeRF's ``[T, 2, C]`` HuBERT layout). Before the start and after the end of the audio
the encoders see silence (zeros), so edge windows are well defined.

Registered encoders (``register_audio_encoder``):

- ``mel`` (default, no weights): log-mel spectrogram, ``n_mels`` bands 55-7600 Hz (Wav2Lip's
  range), 25 ms Hann window (n_fft 512), hop 20 ms, natural log of the magnitude mel energies
  floored at 1e-5. Computed with ``torch.stft`` and a triangular (HTK-scale, Slaney-normalised)
  filterbank built here; no torchaudio.
- ``hubert``: a transformers HuBERT model, default ``facebook/hubert-large-ls960-ft``
  (ER-NeRF / TalkingGaussian), hidden state ``layer`` (-1 = last, 1024 channels).
- ``wav2vec2``: a transformers wav2vec 2.0 model, default ``facebook/wav2vec2-base-960h``.
- ``phonemes`` (:mod:`talkgs.features.phonemes`): smoothed one-hot phone (or viseme) classes
  decoded by pocketsphinx's pretrained US-English acoustic model (installed from the registry).
- ``a+b`` (e.g. ``mel+phonemes``): the named encoders' windows concatenated along the channels.

``model`` is a Hugging Face hub id or a local folder (``save_pretrained`` output with the
model and its ``preprocessor_config.json``). With ``HF_HUB_OFFLINE=1`` (set by the Makefile) a
hub id must already be in the Hugging Face cache; otherwise :class:`AudioModelError` says at
once where to put the model. Long audio goes through the transformer in chunks of ``chunk_s``
seconds with ``context_s`` of overlap on each side (attention cost is quadratic).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkgs.preprocess.errors import InputError

log = logging.getLogger(__name__)

PHONE_SETS = ("phones", "visemes")
"""Classes of the ``phonemes`` encoder (:mod:`talkgs.features.phonemes`): 39 CMUdict phones +
silence, or 13 visemes."""

HOP = 320
"""Encoder frame hop in samples at 16 kHz (50 Hz), shared by every encoder."""
SAMPLE_RATE = 16000


class AudioModelError(InputError):
    """An audio encoder's model cannot be loaded; the message says where to put it."""


@dataclass(frozen=True)
class AudioEncoderParams:
    """One audio featurisation: which encoder, which model, how the windows are cut."""

    name: str = "mel"
    """Registered encoder name: ``mel``, ``phonemes``, ``hubert``, ``wav2vec2`` (see
    :func:`available_encoders`), or several joined by ``+`` (``mel+phonemes``: their features
    concatenated along the channels, :class:`ConcatEncoder`)."""
    model: str = ""
    """Hub id or local folder of the model; empty = the encoder's default (unused by ``mel``)."""
    window: int = 16
    """Encoder frames (50 Hz) per video frame, centred on it (16 ≈ 0.32 s as AD-NeRF/ER-NeRF)."""
    fps: float = 25.0
    """Video frame rate the features are aligned to."""
    layer: int = -1
    """Transformer hidden state to output (-1 = last; 0 = the feature projection output)."""
    n_mels: int = 80
    """Mel bands of the ``mel`` encoder."""
    chunk_s: float = 20.0
    """Transformer encoders process long audio in chunks of this many seconds ..."""
    context_s: float = 1.0
    """... each with this much extra audio on both sides (trimmed from the output)."""
    phone_set: str = "phones"
    """``phonemes`` encoder classes: ``phones`` (39 CMUdict phones + silence) or ``visemes`` (13)."""
    phone_chunk_s: float = 8.0
    """``phonemes`` encoder: decode in chunks of this many seconds (plus ``context_s`` each side)."""
    phone_smoothing_ms: float = 20.0
    """``phonemes`` encoder: Gaussian smoothing (sigma, ms) of the one-hot classes over time."""

    def __post_init__(self) -> None:
        checks = [
            (self.window >= 1, "window must be >= 1"),
            (self.fps > 0, "fps must be > 0"),
            (self.n_mels >= 8, "n_mels must be >= 8"),
            (self.chunk_s >= 1.0, "chunk_s must be >= 1"),
            (self.context_s >= 0.0, "context_s must be >= 0"),
            (self.phone_set in PHONE_SETS, f"phone_set must be one of {PHONE_SETS}"),
            (self.phone_chunk_s >= 1.0, "phone_chunk_s must be >= 1"),
            (self.phone_smoothing_ms >= 0.0, "phone_smoothing_ms must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"audio encoder params: {msg} (got {dataclasses.asdict(self)})")


class AudioEncoder:
    """Base class. Subclasses set ``dim`` and ``receptive`` and implement :meth:`frames`.

    ``frames(samples)`` maps ``float32 [S]`` (16 kHz, any length ≥ ``receptive``) to
    ``float32 [N, dim]`` with ``N = (S - receptive) // HOP + 1``, frame ``n`` computed from
    samples ``[n * HOP, n * HOP + receptive)`` (centred on ``n * HOP + receptive / 2``).
    """

    name: str = ""
    dim: int = 0
    receptive: int = 400

    def frames(self, samples: np.ndarray, *, progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What to record in the cache metadata."""
        return {"encoder": self.name, "dim": self.dim}


_REGISTRY: dict[str, Callable[[AudioEncoderParams, torch.device], AudioEncoder]] = {}


def register_audio_encoder(name: str) -> Callable[[Callable[[AudioEncoderParams, torch.device], AudioEncoder]], Callable[[AudioEncoderParams, torch.device], AudioEncoder]]:
    """Decorator registering a factory ``(params, device) -> AudioEncoder`` (e.g. the class) under ``name``."""

    def deco(factory: Callable[[AudioEncoderParams, torch.device], AudioEncoder]) -> Callable[[AudioEncoderParams, torch.device], AudioEncoder]:
        if name in _REGISTRY:
            raise ValueError(f"audio encoder {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_encoders() -> list[str]:
    return sorted(_REGISTRY)


def encoder_parts(name: str) -> list[str]:
    """The registered encoders of ``name`` (``"mel+phonemes"`` → ``["mel", "phonemes"]``);
    ``ValueError`` naming the closest registered one for an unknown part."""
    parts = name.split("+")
    for part in parts:
        if part not in _REGISTRY:
            import difflib

            close = difflib.get_close_matches(part, list(_REGISTRY), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown audio encoder {part!r}; registered: {available_encoders()} (join several with '+').{hint}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"audio encoder {name!r} names an encoder twice")
    return parts


def get_encoder(params: AudioEncoderParams, device: str | torch.device = "cpu") -> AudioEncoder:
    """Build the encoder ``params.name`` on ``device`` (loads model weights where it has any)."""
    parts = encoder_parts(params.name)
    if len(parts) > 1:
        return ConcatEncoder([get_encoder(dataclasses.replace(params, name=p), device) for p in parts])
    return _REGISTRY[params.name](params, torch.device(device))


class ConcatEncoder(AudioEncoder):
    """Several encoders side by side (``mel+phonemes``): ``dim`` = the sum of theirs.

    :func:`encode_samples` encodes the audio with each part exactly as it would alone (its own
    receptive field, its own input normalisation) and concatenates the aligned windows along the
    channels, so ``mel+phonemes`` features are ``mel``'s and ``phonemes``' features side by side."""

    def __init__(self, parts: list[AudioEncoder]) -> None:
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.dim = sum(p.dim for p in parts)
        self.receptive = max(p.receptive for p in parts)

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.name, "dim": self.dim, "parts": [p.describe() for p in self.parts]}


# ----------------------------------------------------------------------------------------------
# log-mel


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular mel filters ``float32 [n_mels, n_fft // 2 + 1]`` on the HTK mel scale,
    each normalised to unit area (Slaney normalisation)."""

    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(up, down))
    fb *= (2.0 / (hi - lo))
    return fb.astype(np.float32)


@register_audio_encoder("mel")
class MelEncoder(AudioEncoder):
    """Log-mel spectrogram at 50 Hz (see the module docstring)."""

    name = "mel"
    n_fft = 512
    win_length = 400
    fmin = 55.0
    fmax = 7600.0

    def __init__(self, params: AudioEncoderParams, device: torch.device) -> None:
        self.device = device
        self.dim = params.n_mels
        self.receptive = self.n_fft
        self.fb = torch.as_tensor(mel_filterbank(params.n_mels, self.n_fft, SAMPLE_RATE, self.fmin, self.fmax), device=device)
        self.window = torch.hann_window(self.win_length, periodic=True, device=device)

    def frames(self, samples: np.ndarray, *, progress: bool = False) -> np.ndarray:
        x = torch.as_tensor(np.ascontiguousarray(samples, np.float32), device=self.device)
        spec = torch.stft(
            x, n_fft=self.n_fft, hop_length=HOP, win_length=self.win_length, window=self.window,
            center=False, return_complex=True,
        ).abs()  # fmt: skip  # [F, N]
        mel = self.fb @ spec
        return torch.log(mel.clamp_min(1e-5)).T.contiguous().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.name, "dim": self.dim, "n_fft": self.n_fft, "win_length": self.win_length,
                "fmin": self.fmin, "fmax": self.fmax, "scale": "ln(max(mel magnitude, 1e-5))"}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# transformers encoders


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _missing_model_message(encoder: str, model: str, reason: str) -> str:
    base = model.rstrip("/").split("/")[-1] or "model"
    cache = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    where = "downloads are disabled (HF_HUB_OFFLINE=1)" if _offline() else "it could not be downloaded"
    return (
        f"{encoder} audio encoder: cannot load model {model!r}: it is not a local folder, not in the Hugging Face "
        f"cache ({cache}/hub) and {where} ({reason}). On a machine with internet run "
        f"`huggingface-cli download {model} --local-dir models/{base}` (or `from_pretrained(...).save_pretrained(...)` "
        f"for the model and its feature extractor), copy models/{base} into the repository and set "
        f"`features.audio_models.{encoder}: models/{base}` in params.yaml (or pass the folder as the model)."
    )


class TransformersEncoder(AudioEncoder):
    """A transformers speech model (HuBERT / wav2vec 2.0): hidden states at 50 Hz."""

    model_types: tuple[str, ...] = ()
    default_model = ""

    def __init__(self, params: AudioEncoderParams, device: torch.device) -> None:
        from transformers import AutoConfig, Wav2Vec2FeatureExtractor

        self.device = device
        self.layer = params.layer
        self.chunk_frames = max(1, int(round(params.chunk_s * SAMPLE_RATE / HOP)))
        self.context_frames = int(round(params.context_s * SAMPLE_RATE / HOP))
        model_id = params.model or self.default_model
        local = Path(model_id).expanduser()
        is_local = local.is_dir()
        if not is_local and (model_id.startswith((".", "/", "~")) or os.sep + os.sep in model_id or model_id.count("/") > 1):
            raise AudioModelError(f"{local}: model folder not found. Put the `save_pretrained` folder of the {self.name} model there, or fix the path.")
        src = str(local) if is_local else model_id
        kwargs: dict[str, Any] = {"local_files_only": is_local or _offline()}
        try:
            config = AutoConfig.from_pretrained(src, **kwargs)
        except (OSError, ValueError) as e:
            raise AudioModelError(_missing_model_message(self.name, model_id, type(e).__name__)) from e
        if config.model_type not in self.model_types:
            raise AudioModelError(
                f"{src}: is a {config.model_type!r} model, the {self.name} encoder expects {' or '.join(self.model_types)}. "
                f"Use the encoder that matches the model, or another model."
            )
        try:
            self.extractor = Wav2Vec2FeatureExtractor.from_pretrained(src, **kwargs)
        except (OSError, ValueError) as e:
            raise AudioModelError(
                f"{src}: no feature extractor (preprocessor_config.json) next to the model ({type(e).__name__}). Save it with "
                "`Wav2Vec2FeatureExtractor.from_pretrained(hub_id).save_pretrained(folder)` (it says whether the model "
                "expects normalised input)."
            ) from e
        if self.extractor.sampling_rate != SAMPLE_RATE:
            raise AudioModelError(f"{src}: the model expects {self.extractor.sampling_rate} Hz audio; talkgs feeds {SAMPLE_RATE} Hz.")
        self.model = self._load(src, kwargs)
        self.model.eval().to(device)
        self.model_id = model_id
        n_layers = config.num_hidden_layers
        if not -1 <= self.layer <= n_layers:
            raise ValueError(f"{self.name}: layer {self.layer} out of range for a {n_layers}-layer model (use -1..{n_layers})")
        self.dim = int(config.hidden_size)
        # receptive field and hop of the convolutional feature encoder
        rf, hop = 1, 1
        for k, s in zip(config.conv_kernel, config.conv_stride):
            rf += (k - 1) * hop
            hop *= s
        if hop != HOP:
            raise AudioModelError(f"{src}: feature hop is {hop} samples, talkgs aligns audio at {HOP} (50 Hz).")
        self.receptive = rf

    def _load(self, src: str, kwargs: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    @torch.no_grad()
    def _run(self, x: np.ndarray) -> np.ndarray:
        inp = torch.as_tensor(x, dtype=torch.float32, device=self.device)[None]
        out = self.model(inp, output_hidden_states=self.layer != -1)
        h = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        return h[0].float().cpu().numpy()

    def frames(self, samples: np.ndarray, *, progress: bool = False) -> np.ndarray:
        x = np.asarray(samples, np.float32)
        n_total = (len(x) - self.receptive) // HOP + 1
        if n_total < 1:
            raise ValueError(f"{self.name}: need at least {self.receptive} samples, got {len(x)}")
        out = np.zeros((n_total, self.dim), np.float32)
        starts = list(range(0, n_total, self.chunk_frames))
        from talkgs.progress import progress_bar

        with progress_bar(progress and len(starts) > 1, "chunks") as bar:
            task = bar.add_task(f"{self.name} encoder", total=len(starts), rate=0.0)
            for c0 in starts:
                c1 = min(n_total, c0 + self.chunk_frames)
                s0 = max(0, c0 - self.context_frames)
                e0 = min(n_total, c1 + self.context_frames)
                h = self._run(x[s0 * HOP : (e0 - 1) * HOP + self.receptive])
                if len(h) != e0 - s0:
                    raise RuntimeError(f"{self.name}: model returned {len(h)} frames for {e0 - s0} expected")  # invariant
                out[c0:c1] = h[c0 - s0 : c1 - s0]
                bar.advance(task)
        return out

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.name, "dim": self.dim, "model": self.model_id, "layer": self.layer,
                "normalized_input": bool(self.extractor.do_normalize)}  # fmt: skip


@register_audio_encoder("hubert")
class HubertEncoder(TransformersEncoder):
    name = "hubert"
    model_types = ("hubert",)
    default_model = "facebook/hubert-large-ls960-ft"

    def _load(self, src: str, kwargs: dict[str, Any]) -> torch.nn.Module:
        from transformers import HubertModel

        return HubertModel.from_pretrained(src, **kwargs)


@register_audio_encoder("wav2vec2")
class Wav2Vec2Encoder(TransformersEncoder):
    name = "wav2vec2"
    model_types = ("wav2vec2",)
    default_model = "facebook/wav2vec2-base-960h"

    def _load(self, src: str, kwargs: dict[str, Any]) -> torch.nn.Module:
        from transformers import Wav2Vec2Model

        return Wav2Vec2Model.from_pretrained(src, **kwargs)


# ----------------------------------------------------------------------------------------------
# alignment to video frames


def frame_count(n_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames covered by ``n_samples`` of audio (rounded to the nearest frame)."""
    return int(round(n_samples * fps / sample_rate))


def window_starts(n_frames: int, fps: float, window: int) -> np.ndarray:
    """Index (on the 50 Hz grid, frame ``m`` centred on sample ``m * HOP + HOP / 2``) of the first
    encoder frame of each video frame's window, ``int64 [T]``."""
    centres = (np.arange(n_frames) + 0.5) * (SAMPLE_RATE / fps)
    return np.floor(centres / HOP - window / 2.0 + 0.5).astype(np.int64)


def _normalized(enc: AudioEncoder, samples: np.ndarray) -> np.ndarray:
    """Zero-mean unit-variance samples for a transformer that expects them (its extractor's
    ``do_normalize``), else the samples unchanged."""
    if isinstance(enc, TransformersEncoder) and enc.extractor.do_normalize:
        return (samples - samples.mean()) / math.sqrt(float(samples.var()) + 1e-7)
    return samples


def encode_samples(
    samples: np.ndarray, params: AudioEncoderParams, *, encoder: AudioEncoder | None = None,
    n_frames: int | None = None, device: str | torch.device = "cpu", progress: bool = False,
) -> np.ndarray:  # fmt: skip
    """16 kHz mono ``float32 [S]`` → ``float32 [T, window, C]`` aligned to the video frames.

    ``T`` is ``n_frames`` when given (the subject's own audio, exactly T / fps seconds long)
    else ``round(S * fps / 16000)``.
    """
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples [S], got shape {samples.shape}")
    enc = encoder if encoder is not None else get_encoder(params, device)
    t = frame_count(len(samples), params.fps) if n_frames is None else int(n_frames)
    if t < 1:
        raise ValueError(f"audio of {len(samples)} samples is shorter than one video frame at {params.fps} fps")
    if isinstance(enc, ConcatEncoder):
        return np.concatenate([
            encode_samples(samples, dataclasses.replace(params, name=p.name), encoder=p, n_frames=t, device=device, progress=progress)
            for p in enc.parts
        ], axis=2)  # fmt: skip
    samples = _normalized(enc, samples)
    starts = window_starts(t, params.fps, params.window)
    m0, m1 = int(starts[0]), int(starts[-1]) + params.window  # encoder frames [m0, m1) needed
    a = m0 * HOP + HOP // 2 - enc.receptive // 2  # first sample fed to the encoder
    b = (m1 - 1) * HOP + HOP // 2 - enc.receptive // 2 + enc.receptive  # one past the last
    seg = np.zeros(b - a, np.float32)
    lo, hi = max(a, 0), min(b, len(samples))
    if hi > lo:
        seg[lo - a : hi - a] = samples[lo:hi]
    feats = enc.frames(seg, progress=progress)
    if len(feats) != m1 - m0:
        raise RuntimeError(f"{enc.name}: produced {len(feats)} frames, expected {m1 - m0}")  # encoder contract broken
    idx = (starts - m0)[:, None] + np.arange(params.window)[None]
    return np.ascontiguousarray(feats[idx], dtype=np.float32)


def load_wav_16k(path: Path) -> np.ndarray:
    """Any audio file → 16 kHz mono float32 (16 kHz 16-bit wavs are read directly, the rest via ffmpeg)."""
    from talkgs.io.media import MediaError, load_audio, read_wav

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: audio file not found. Check the path.")
    try:
        if path.suffix.lower() == ".wav":
            try:
                x, sr = read_wav(path)
                if sr == SAMPLE_RATE:
                    return x
            except (MediaError, EOFError, OSError, ValueError) as e:  # not 16-bit PCM etc.: decode with ffmpeg
                log.debug("%s: %s; decoding with ffmpeg", path, e)
        return load_audio(path, SAMPLE_RATE)
    except MediaError as e:
        raise InputError(f"{path}: cannot be decoded as audio ({e}). Convert it: `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`.") from e


def encode_wav(
    path: Path, params: AudioEncoderParams, *, n_frames: int | None = None, device: str | torch.device = "cpu",
    encoder: AudioEncoder | None = None, progress: bool = False,
) -> np.ndarray:  # fmt: skip
    """Features ``float32 [T, window, C]`` of an audio file (see :func:`encode_samples`)."""
    samples = load_wav_16k(Path(path))
    if len(samples) == 0 or not np.any(samples):
        raise InputError(f"{path}: the audio is empty or silent. Use a speech recording.")
    return encode_samples(samples, params, encoder=encoder, n_frames=n_frames, device=device, progress=progress)
