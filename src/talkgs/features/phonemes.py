"""The ``phonemes`` audio encoder: phone (or viseme) labels from pocketsphinx's pretrained
US-English acoustic model, as smoothed one-hot vectors at 50 Hz.

The papers drive their heads with features of a pretrained speech network (DeepSpeech in
AD-NeRF / ER-NeRF / TalkingGaussian, HuBERT / wav2vec2 in later work), which carry *what is
said* rather than *who says it*; log-mel carries both. Those networks' weights cannot be fetched
here, but pocketsphinx ships a real pretrained acoustic model (CMU Sphinx en-us continuous HMM)
and a phone language model inside its wheel (:mod:`talkgs.pretrained`). This encoder runs its
phone-loop ("allphone") decoder and turns the decoded phone segments into a feature sequence:

1. **Decoding.** 16 kHz audio, 100 Hz frames (pocketsphinx's ``frate``; frame ``f`` is computed
   from samples ``[160 f, 160 f + 410)``), allphone search with the phone LM, language weight 2
   and beams 1e-20 (the settings of CMU's phoneme-recognition tutorial; the defaults lw 6.5 /
   1e-48 favour the LM). Long audio is decoded in chunks of ``chunk_s`` seconds with
   ``context_s`` of overlap on each side, whose phones are kept only inside the chunk: a single
   60 s utterance lost track of the speech (104 phones, against 565 in 8 s chunks). Cepstral
   mean normalisation is per decoded chunk (pocketsphinx's ``batch`` CMN).
2. **Labels.** Each 100 Hz frame gets the class of the phone segment it lies in (frames below
   -60 dBFS RMS are silence: the decoder labels digital silence as phones): 39 CMUdict
   phones + ``SIL`` (fillers such as ``+NSN+`` / ``+SPN+`` count as silence) with
   ``phone_set: phones`` (40 classes), or one of 13 visual classes with ``phone_set: visemes``
   (the IBM viseme set of Neti et al. 2000, "Audio-visual speech recognition", JHU workshop
   report: four vowel groups, alveolar semivowels / fricatives / stops, palato-alveolars,
   bilabials, dentals, labio-dentals, velars + w, silence).
3. **50 Hz frames.** Encoder frame ``n`` (samples ``[320 n, 320 n + 320)``, the grid every
   talkgs encoder shares) is the mean one-hot of the two 100 Hz frames whose centres fall in
   it, then smoothed over time with a Gaussian of ``smoothing_ms`` (coarticulation: the mouth
   moves towards a phone before it sounds). Rows sum to 1.

The phone set is English; on other languages the decoder still labels every stretch of speech
with the closest English phone, which is a mouth-shape signal (bilabial closures, open vowels,
rounding) rather than a transcription (measured on the German and French clips: README, audio
encoders). Each chunk is decoded by a fresh decoder, so the result is deterministic and a
chunk's phones do not depend on the chunks decoded before it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from talkgs.features.audio import HOP, PHONE_SETS, SAMPLE_RATE, AudioEncoder, AudioEncoderParams, register_audio_encoder

log = logging.getLogger(__name__)

PHONES: tuple[str, ...] = (
    "SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY",
    "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH",
)  # fmt: skip
"""The 39 CMUdict phones of pocketsphinx's en-us model + silence (class 0)."""

VISEMES: dict[str, tuple[str, ...]] = {
    "sil": ("SIL",),
    "v_open": ("AO", "AH", "AA", "ER", "OY", "AW", "HH"),  # lip-rounding / open vowels
    "v_round": ("UW", "UH", "OW"),
    "v_mid": ("AE", "EH", "EY", "AY"),
    "v_spread": ("IH", "IY"),
    "alv_semivowel": ("L", "R", "Y"),
    "alv_fricative": ("S", "Z"),
    "alveolar": ("T", "D", "N"),
    "palato_alveolar": ("SH", "ZH", "CH", "JH"),
    "bilabial": ("P", "B", "M"),
    "dental": ("TH", "DH"),
    "labiodental": ("F", "V"),
    "velar": ("NG", "K", "G", "W"),
}
"""Neti et al. (2000) viseme classes over the CMUdict phones (``ax``/``el``/``en`` of their
table are not in CMUdict)."""

SPHINX_HOP = 160
"""pocketsphinx frame hop in samples (100 Hz at 16 kHz)."""
SPHINX_WLEN = 410
"""pocketsphinx analysis window in samples (0.025625 s)."""


def class_names(phone_set: str) -> tuple[str, ...]:
    if phone_set == "phones":
        return PHONES
    if phone_set == "visemes":
        return tuple(VISEMES)
    raise ValueError(f"phonemes encoder: phone_set must be one of {PHONE_SETS}, got {phone_set!r}")


def phone_to_class(phone_set: str) -> dict[str, int]:
    """Map a decoded phone label to its class index (unknown labels and fillers → silence, 0)."""
    if phone_set == "phones":
        return {p: i for i, p in enumerate(PHONES)}
    class_names(phone_set)
    return {p: i for i, members in enumerate(VISEMES.values()) for p in members}


def labels_to_frames(labels: np.ndarray, n_frames: int, n_classes: int, smoothing_frames: float) -> np.ndarray:
    """100 Hz class indices ``int [F]`` → ``float32 [n_frames, n_classes]`` at 50 Hz (see the
    module docstring, step 3): frame ``n`` = mean one-hot of the 100 Hz frames centred in
    ``[320 n, 320 n + 320)``, Gaussian-smoothed with ``smoothing_frames`` (50 Hz frames, sigma)."""
    out = np.zeros((n_frames, n_classes), np.float64)
    centres = np.arange(len(labels)) * SPHINX_HOP + SPHINX_WLEN // 2
    n = centres // HOP
    ok = n < n_frames
    np.add.at(out, (n[ok], labels[ok]), 1.0)
    empty = out.sum(1) == 0  # frames no 100 Hz frame is centred in (the very end): silence
    out[empty, 0] = 1.0
    out /= out.sum(1, keepdims=True)
    if smoothing_frames > 0:
        from scipy.ndimage import gaussian_filter1d

        out = gaussian_filter1d(out, smoothing_frames, axis=0, mode="nearest", truncate=3.0)
        out /= out.sum(1, keepdims=True)
    return out.astype(np.float32)


def _frame_rms(x: np.ndarray, n100: int) -> np.ndarray:
    """RMS of each 100 Hz frame's analysis window ``[160 f, 160 f + 410)`` (zero-padded), ``[n100]``."""
    pad = np.zeros(n100 * SPHINX_HOP + SPHINX_WLEN, np.float64)
    pad[: len(x)] = x
    c = np.concatenate([[0.0], np.cumsum(pad * pad)])
    starts = np.arange(n100) * SPHINX_HOP
    return np.sqrt((c[starts + SPHINX_WLEN] - c[starts]) / SPHINX_WLEN)


@register_audio_encoder("phonemes")
class PhonemeEncoder(AudioEncoder):
    """Smoothed one-hot phone / viseme classes from pocketsphinx (see the module docstring)."""

    name = "phonemes"
    receptive = HOP
    silence_level = 1e-3
    """100 Hz frames whose RMS is below this (-60 dBFS) are silence whatever the decoder says (it
    labels digital silence, e.g. the zeros before and after the audio, as phones)."""
    lw = 2.0
    beam = 1e-20
    pbeam = 1e-20

    def __init__(self, params: AudioEncoderParams, device: torch.device) -> None:
        from talkgs import pretrained

        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise pretrained.PretrainedMissing(f"phonemes audio encoder: cannot import pocketsphinx ({e}). Run `make setup` (it installs pocketsphinx==5.1.1).") from e
        self.phone_set = params.phone_set
        self.classes = class_names(self.phone_set)
        self.to_class = phone_to_class(self.phone_set)
        self.dim = len(self.classes)
        self.chunk_s = float(params.phone_chunk_s)
        self.context_s = float(params.context_s)
        self.smoothing_ms = float(params.phone_smoothing_ms)
        self.hmm = pretrained.sphinx_hmm()
        self.phone_lm = pretrained.sphinx_phone_lm()
        self._decoder_cls = Decoder
        self.unknown: set[str] = set()

    def _new_decoder(self) -> Any:
        # a fresh decoder per utterance: pocketsphinx carries state from one utterance to the next
        # (the same audio decoded twice by one decoder gives other phones), which would make a
        # chunk's phones depend on the chunks before it. Loading the model takes ~0.14 s.
        return self._decoder_cls(
            hmm=str(self.hmm), allphone=str(self.phone_lm), lw=self.lw, beam=self.beam, pbeam=self.pbeam,
            samprate=float(SAMPLE_RATE), loglevel="FATAL",
        )  # fmt: skip

    def decode(self, samples: np.ndarray) -> list[tuple[str, int, int]]:
        """Phone segments ``(label, first 100 Hz frame, last frame inclusive)`` of one utterance."""
        pcm = (np.clip(np.asarray(samples, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
        d = self._new_decoder()
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        return [(seg.word, int(seg.start_frame), int(seg.end_frame)) for seg in d.seg()]

    def labels(self, samples: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """Class index per 100 Hz frame ``int64 [F]``, ``F = ceil(len / 160)``, decoded in chunks."""
        x = np.asarray(samples, np.float32)
        n100 = -(-len(x) // SPHINX_HOP)
        out = np.zeros(n100, np.int64)
        chunk = max(1, int(round(self.chunk_s * SAMPLE_RATE / SPHINX_HOP)))
        ctx = int(round(self.context_s * SAMPLE_RATE / SPHINX_HOP))
        starts = list(range(0, n100, chunk))
        from talkgs.progress import progress_bar

        with progress_bar(progress and len(starts) > 1, "chunks") as bar:
            task = bar.add_task("phonemes encoder", total=len(starts), rate=0.0)
            for c0 in starts:
                c1 = min(n100, c0 + chunk)
                s0, e0 = max(0, c0 - ctx), min(n100, c1 + ctx)
                seg = x[s0 * SPHINX_HOP : e0 * SPHINX_HOP]
                local = np.zeros(e0 - s0, np.int64)
                for word, f0, f1 in self.decode(seg) if np.abs(seg).max(initial=0.0) > self.silence_level else ():
                    cls = self.to_class.get(word)
                    if cls is None:
                        if not word.startswith("+") and word not in ("<s>", "</s>", "<sil>"):
                            self.unknown.add(word)
                        cls = 0
                    local[max(0, f0) : f1 + 1] = cls
                out[c0:c1] = local[c0 - s0 : c1 - s0]
                bar.advance(task)
        out[_frame_rms(x, n100) < self.silence_level] = 0
        if self.unknown:
            log.warning("phonemes encoder: labels %s are not in the phone set; counted as silence", sorted(self.unknown))
        return out

    def frames(self, samples: np.ndarray, *, progress: bool = False) -> np.ndarray:
        x = np.asarray(samples, np.float32)
        n_total = (len(x) - self.receptive) // HOP + 1
        if n_total < 1:
            raise ValueError(f"{self.name}: need at least {self.receptive} samples, got {len(x)}")
        labels = self.labels(x, progress=progress)
        return labels_to_frames(labels, n_total, self.dim, self.smoothing_ms / (1000.0 * HOP / SAMPLE_RATE))

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.name, "dim": self.dim, "model": "pocketsphinx en-us (allphone, en-us-phone.lm.bin)",
            "phone_set": self.phone_set, "classes": list(self.classes), "smoothing_ms": self.smoothing_ms,
            "chunk_s": self.chunk_s, "context_s": self.context_s, "lw": self.lw, "beam": self.beam, "pbeam": self.pbeam,
        }  # fmt: skip
