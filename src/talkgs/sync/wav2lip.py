"""Wav2Lip's lip-sync expert (Prajwal et al. 2020, ``models/syncnet.py: SyncNet_color``): the
architecture with the official state-dict names, and its input conventions, so the official
``lipsync_expert.pth`` (trained on LRS2) loads as is when a user has it
(``params.yaml: sync_expert.weights``).

Inputs of the official expert, as its training script ``color_syncnet_train.py`` builds them:

- **video** ``[B, 15, 48, 96]``: 5 consecutive frames of the face (S3FD box padded 10 px at the
  bottom, resized to 96 x 96, BGR, /255), the **lower half** (rows 48..95) of each, stacked along
  the channels frame by frame (``np.concatenate(window, axis=2)``). Here the box is the bounding
  box of the MediaPipe mesh (:func:`lower_face_crops`; S3FD needs its own weights), as
  :mod:`talkgs.eval.syncnet` does for LSE.
- **audio** ``[B, 1, 80, 16]``: 16 columns (0.2 s) of Wav2Lip's mel spectrogram
  (:func:`wav2lip_mel`: 80 Hz, 80 bands, 55-7600 Hz, pre-emphasis 0.97, dB, scaled to [-4, 4])
  starting at column ``int(80 * start_frame / 25)``: the first of the 5 frames.
- **output**: two 512-d embeddings (ReLU, then L2-normalised); their cosine similarity is the
  sync probability (in [0, 1]: both are non-negative) trained with BCE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Wav2LipSyncNet", "wav2lip_mel", "wav2lip_audio_windows", "lower_face_crops", "MEL_FPS", "MEL_STEP"]

MEL_FPS = 80.0
"""Columns per second of :func:`wav2lip_mel` (hop 200 at 16 kHz)."""
MEL_STEP = 16
"""Mel columns per 5-frame window (0.2 s)."""
FACE_SIZE = 96
BOTTOM_PAD = 10


class _Conv(nn.Module):
    """Wav2Lip's ``models/conv.py: Conv2d``: conv + BN (+ residual) + ReLU, as ``conv_block``."""

    def __init__(self, cin: int, cout: int, kernel_size: Any, stride: Any, padding: Any, residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def _blocks(spec: list[tuple]) -> nn.Sequential:
    return nn.Sequential(*[_Conv(*s) for s in spec])


class Wav2LipSyncNet(nn.Module):
    """``SyncNet_color`` of Wav2Lip (same layers, same state-dict names: ``face_encoder.N.conv_block.M.*``,
    ``audio_encoder.N.conv_block.M.*``).

    ``forward(audio [B, 1, 80, 16], video [B, 15, 48, 96])`` → ``(audio_emb, video_emb)``, ``[B, 512]``
    each, L2-normalised.
    """

    arch = "wav2lip"

    def __init__(self) -> None:
        super().__init__()
        r = True
        self.face_encoder = _blocks([
            (15, 32, 7, 1, 3),
            (32, 64, 5, (1, 2), 1), (64, 64, 3, 1, 1, r), (64, 64, 3, 1, 1, r),
            (64, 128, 3, 2, 1), (128, 128, 3, 1, 1, r), (128, 128, 3, 1, 1, r), (128, 128, 3, 1, 1, r),
            (128, 256, 3, 2, 1), (256, 256, 3, 1, 1, r), (256, 256, 3, 1, 1, r),
            (256, 512, 3, 2, 1), (512, 512, 3, 1, 1, r), (512, 512, 3, 1, 1, r),
            (512, 512, 3, 2, 1), (512, 512, 3, 1, 0), (512, 512, 1, 1, 0),
        ])  # fmt: skip
        self.audio_encoder = _blocks([
            (1, 32, 3, 1, 1), (32, 32, 3, 1, 1, r), (32, 32, 3, 1, 1, r),
            (32, 64, 3, (3, 1), 1), (64, 64, 3, 1, 1, r), (64, 64, 3, 1, 1, r),
            (64, 128, 3, 3, 1), (128, 128, 3, 1, 1, r), (128, 128, 3, 1, 1, r),
            (128, 256, 3, (3, 2), 1), (256, 256, 3, 1, 1, r), (256, 256, 3, 1, 1, r),
            (256, 512, 3, 1, 0), (512, 512, 1, 1, 0),
        ])  # fmt: skip

    def embed_audio(self, audio: Tensor) -> Tensor:
        return F.normalize(self.audio_encoder(audio).flatten(1), p=2, dim=1)

    def embed_video(self, video: Tensor) -> Tensor:
        return F.normalize(self.face_encoder(video).flatten(1), p=2, dim=1)

    def forward(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
        if audio.shape[1:] != (1, 80, MEL_STEP) or video.shape[1:] != (15, 48, FACE_SIZE):
            raise ValueError(f"Wav2LipSyncNet: expected audio [B, 1, 80, 16] and video [B, 15, 48, 96], found {list(audio.shape)} and {list(video.shape)}")
        return self.embed_audio(audio), self.embed_video(video)


# ----------------------------------------------------------------------------------------------
# audio: Wav2Lip's audio.melspectrogram (hparams.py defaults), re-implemented without librosa


def _hz_to_mel(f: np.ndarray) -> np.ndarray:  # Slaney's scale (librosa's default, htk=False)
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def _mel_basis(sr: int = 16000, n_fft: int = 800, n_mels: int = 80, fmin: float = 55.0, fmax: float = 7600.0) -> np.ndarray:
    """``librosa.filters.mel`` (Slaney scale and area normalisation): ``[n_mels, 1 + n_fft // 2]``."""
    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]


def wav2lip_mel(samples: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """Wav2Lip's ``audio.melspectrogram(wav)``: ``float32 [80, N]`` at 80 columns/s in [-4, 4].

    ``samples``: mono float audio at 16 kHz. Pre-emphasis 0.97, STFT (Hann 800, hop 200, centred with
    reflection padding as librosa), magnitude, Slaney mel 55-7600 Hz, ``20 log10(max(1e-5, x)) - 20``,
    then ``clip(8 (S + 100) / 100 - 4, -4, 4)``.
    """
    from scipy.signal import lfilter

    if sample_rate != 16000:
        raise ValueError(f"wav2lip_mel: Wav2Lip's expert works on 16 kHz audio, found {sample_rate} Hz; resample first")
    x = lfilter([1, -0.97], [1], np.asarray(samples, np.float64).reshape(-1))
    n_fft, hop = 800, 200
    x = np.pad(x, n_fft // 2, mode="reflect")
    n = 1 + (len(x) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    mag = np.abs(np.fft.rfft(x[idx] * window, n_fft, axis=1)).T  # [401, N]
    s = 20 * np.log10(np.maximum(1e-5, _mel_basis() @ mag)) - 20.0
    return np.clip(8.0 * (s + 100.0) / 100.0 - 4.0, -4.0, 4.0).astype(np.float32)


def wav2lip_audio_windows(samples: np.ndarray, n_frames: int, fps: float = 25.0, sample_rate: int = 16000) -> np.ndarray:
    """``float32 [T, 80, 16]``: for each frame ``t`` the 16 mel columns starting at ``int(80 t / fps)``
    (``crop_audio_window`` of the expert's training script; zero-padded at -4 past the end).
    A 5-frame window starting at frame ``s`` uses row ``s``."""
    mel = wav2lip_mel(samples, sample_rate)
    out = np.full((n_frames, mel.shape[0], MEL_STEP), -4.0, np.float32)
    for t in range(n_frames):
        a = int(MEL_FPS * (t / float(fps)))
        chunk = mel[:, a : a + MEL_STEP]
        out[t, :, : chunk.shape[1]] = chunk
    return out


# ----------------------------------------------------------------------------------------------
# video


def lower_face_crops(frames: Any, landmarks: np.ndarray) -> np.ndarray:
    """``uint8 [T, 48, 96, 3]`` **BGR**: the lower half of each frame's 96 x 96 face crop, Wav2Lip's
    expert input (face box: the mesh's bounding box, :func:`talkgs.eval.syncnet.face_boxes`, padded
    10 px at the bottom as Wav2Lip's ``--pads 0 10 0 0``, clamped to the image).

    ``frames``: ``uint8 [H, W, 3]`` RGB each; ``landmarks [T, 478, >=2]`` pixels."""
    import cv2

    from talkgs.eval.syncnet import face_boxes

    boxes = face_boxes(landmarks)
    out = []
    for f, (x0, y0, x1, y1) in zip(frames, boxes):
        f = np.asarray(f)
        h, w = f.shape[:2]
        xa, xb = max(0, int(x0)), min(w, int(np.ceil(x1)))
        ya, yb = max(0, int(y0)), min(h, int(np.ceil(y1)) + BOTTOM_PAD)
        face = cv2.resize(np.ascontiguousarray(f[ya:yb, xa:xb]), (FACE_SIZE, FACE_SIZE))
        out.append(cv2.cvtColor(face, cv2.COLOR_RGB2BGR)[FACE_SIZE // 2 :])
    return np.stack(out)
