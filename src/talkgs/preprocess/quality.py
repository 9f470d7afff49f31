"""Data-quality gates: inputs that decode fine but would train a bad head.

- :func:`speech_activity` (stage ``extract``, ``extract.speech_check``): is the audio track
  speech? Three measures on 32 ms windows (10 ms hop) of the 16 kHz mono track: the *voiced
  fraction* (windows within 35 dB of the loudest whose normalised autocorrelation peaks above
  0.5 at a pitch lag of 70-400 Hz, as a fraction of all windows), the median *spectral
  flatness* (geometric / arithmetic mean of the 100-4000 Hz power spectrum) and the *level
  variation* (standard deviation in dB of the window levels: syllables come and go). Speech is
  partly voiced, has harmonic (non-flat) spectra and a level that moves; noise is unvoiced and
  flat, a tone is voiced all the time, both have a steady level.
- :func:`head_roll_deg` (stage ``track``, ``track.roll_check``): the in-plane angle of the line
  through the outer eye corners. Upright heads stay within about ±20°; a clip whose rotation
  tag is wrong comes out with the head lying on its side (about ±90°) or upside down.

Each gate is an error (``on_fail: error``, the stage exits 2 naming the file and the fix) or a
warning (``on_fail: warning``: logged and listed in the stage's ``warnings``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np

from talkgs.configlib import FRACTION, Range

OnFail = Literal["error", "warning"]


@dataclass(frozen=True)
class SpeechCheckParams:
    """``params.yaml: extract.speech_check``: is the audio track speech?"""

    on_fail: OnFail = "error"
    """``error``: the extract stage stops (exit 2) naming the file and the fix; ``warning``: it
    goes on, the warning lands in ``meta.json`` and the log."""
    min_voiced_fraction: Annotated[float, FRACTION] = 0.1
    """Fewer voiced windows than this fraction of the clip: no speech (noise, hum, silence + clicks)."""
    max_voiced_fraction: Annotated[float, FRACTION] = 0.9
    """More than this: a steady tone or music, not speech (which pauses between words)."""
    max_spectral_flatness: Annotated[float, Range(0, 1, lo_open=True)] = 0.2
    """Median spectral flatness above this: noise (flat spectrum), not harmonic speech."""
    min_level_std_db: Annotated[float, Range(0, 40, unit="dB")] = 3.0
    """Window levels varying less than this (dB, std): a steady sound, not syllables."""

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.min_voiced_fraction < self.max_voiced_fraction <= 1.0,
             "need 0 <= min_voiced_fraction < max_voiced_fraction <= 1"),
            (0.0 < self.max_spectral_flatness <= 1.0, "max_spectral_flatness must be in (0, 1]"),
            (0.0 <= self.min_level_std_db <= 40.0, "min_level_std_db must be in [0, 40]"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"speech_check: {msg}")


@dataclass(frozen=True)
class RollCheckParams:
    """``params.yaml: track.roll_check``: is the head upright in the extracted frames?"""

    on_fail: OnFail = "error"
    """``error``: the track stage stops (exit 2) naming the video, the rotation tag and the
    ffmpeg fix; ``warning``: it goes on, the warning lands in ``report.json`` and the log."""
    max_roll_deg: Annotated[float, Range(5, 90, unit="degrees")] = 45.0
    """Largest median head roll (angle of the eye line, degrees) accepted as upright."""

    def __post_init__(self) -> None:
        if not 5.0 <= self.max_roll_deg <= 90.0:
            raise ValueError(f"roll_check: max_roll_deg must be in [5, 90], found {self.max_roll_deg!r}")


# ----------------------------------------------------------------------------------------------
# speech activity

WINDOW_S = 0.032
HOP_S = 0.010
ACTIVE_DB = 35.0
"""Windows within this many dB of the loudest (99th percentile) are 'active'."""
PITCH_HZ = (70.0, 400.0)
VOICED_PEAK = 0.5
BAND_HZ = (100.0, 4000.0)


def speech_activity(samples: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Speech measures of mono ``float32 [S]`` (see the module docstring).

    Returns ``{"voiced_fraction", "spectral_flatness", "level_std_db", "active_fraction",
    "windows"}``; NaN measures when the clip is shorter than one window.
    """
    x = np.asarray(samples, np.float32)
    win, hop = int(round(WINDOW_S * sample_rate)), int(round(HOP_S * sample_rate))
    n = 1 + (len(x) - win) // hop if len(x) >= win else 0
    nan = float("nan")
    if n < 1:
        return {"voiced_fraction": nan, "spectral_flatness": nan, "level_std_db": nan, "active_fraction": 0.0, "windows": 0}
    taper = np.hanning(win).astype(np.float32)
    freqs = np.fft.rfftfreq(win, 1.0 / sample_rate)
    band = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
    lag0, lag1 = int(sample_rate / PITCH_HZ[1]), int(math.ceil(sample_rate / PITCH_HZ[0]))
    level = np.empty(n, np.float64)
    flat = np.empty(n, np.float64)
    peak = np.empty(n, np.float64)
    for a in range(0, n, 2048):  # in blocks: a long clip never holds all windows at once
        b = min(n, a + 2048)
        idx = np.arange(win)[None, :] + hop * np.arange(a, b)[:, None]
        fr = x[idx]
        fr = fr - fr.mean(axis=1, keepdims=True)
        level[a:b] = 10.0 * np.log10((fr.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
        tw = fr * taper
        spec = np.abs(np.fft.rfft(tw, axis=1)).astype(np.float64) ** 2 + 1e-12
        sb = spec[:, band]
        flat[a:b] = np.exp(np.log(sb).mean(axis=1)) / sb.mean(axis=1)
        ac = np.fft.irfft(np.abs(np.fft.rfft(tw, n=2 * win, axis=1)) ** 2, axis=1)[:, :win]
        peak[a:b] = ac[:, lag0 : min(lag1, win - 1)].max(axis=1) / np.maximum(ac[:, 0], 1e-12)
    loud = float(np.percentile(level, 99))
    active = level > loud - ACTIVE_DB
    voiced = active & (peak > VOICED_PEAK)
    return {
        "voiced_fraction": float(voiced.mean()),
        "spectral_flatness": float(np.median(flat[active])),
        "level_std_db": float(level[active].std()),
        "active_fraction": float(active.mean()),
        "windows": int(n),
    }


def speech_problems(m: dict[str, float], p: SpeechCheckParams, key: str = "extract.speech_check") -> list[str]:
    """What in the measures ``m`` (:func:`speech_activity`) says the audio is not speech (empty: speech)."""
    out = []
    if m["voiced_fraction"] < p.min_voiced_fraction:
        out.append(f"voiced fraction {m['voiced_fraction']:.3f} < {key}.min_voiced_fraction={p.min_voiced_fraction:g}")
    if m["voiced_fraction"] > p.max_voiced_fraction:
        out.append(f"voiced fraction {m['voiced_fraction']:.3f} > {key}.max_voiced_fraction={p.max_voiced_fraction:g} (a steady tone)")
    if m["spectral_flatness"] > p.max_spectral_flatness:
        out.append(f"spectral flatness {m['spectral_flatness']:.3f} > {key}.max_spectral_flatness={p.max_spectral_flatness:g} (noise)")
    if m["level_std_db"] < p.min_level_std_db:
        out.append(f"level variation {m['level_std_db']:.2f} dB < {key}.min_level_std_db={p.min_level_std_db:g} (a steady sound)")
    return out


# ----------------------------------------------------------------------------------------------
# head roll

RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
"""MediaPipe face-mesh indices of the subject's right (image left) and left outer eye corners."""


def head_roll_deg(landmarks: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Per-frame in-plane head roll in degrees, ``(-180, 180]``: the angle of the image vector from
    the subject's right to left outer eye corner (0 = upright, +90 = turned a quarter turn clockwise on screen; NaN where ``detected`` is false). ``landmarks [T, 478, >=2]``
    in pixels (y down)."""
    d = landmarks[:, LEFT_EYE_OUTER, :2].astype(np.float64) - landmarks[:, RIGHT_EYE_OUTER, :2].astype(np.float64)
    roll = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    return np.where(np.asarray(detected, bool), roll, np.nan)


def median_roll_deg(roll: np.ndarray) -> float:
    """Circular median-like summary of per-frame rolls (the mean direction, robust enough for
    the ±90° question; NaN-free input frames only)."""
    r = np.radians(roll[np.isfinite(roll)])
    if len(r) == 0:
        return float("nan")
    ref = math.atan2(float(np.sin(r).mean()), float(np.cos(r).mean()))
    dev = (r - ref + np.pi) % (2 * np.pi) - np.pi  # unwrap around the mean direction
    return float(np.degrees(ref + np.median(dev)))
