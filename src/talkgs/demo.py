"""The built-in demo subject: a real face photo animated to offline synthetic speech.

``make_demo`` turns the astronaut portrait that ships with scikit-image
(``skimage.data.astronaut()``, NASA, public domain) into a talking-portrait mp4
(H.264 + AAC): speech synthesised offline with espeak-ng (:mod:`talkgs.tts`), the mouth
driven by the synthesiser's own phoneme timing, small head motion and a few blinks, all
deterministic from a seed. Nothing is downloaded.

How a frame is made (one resampling of the photo per frame):

1. Once: MediaPipe face mesh on the photo (468 landmarks + depth), a grid of control
   points around the face, a Delaunay triangulation of all of them, and per-point weights
   (jaw, upper lip, lip width, eyelids, head).
2. Per frame, control points move: the jaw and lower lip drop with the mouth opening (the
   upper lip rises a little; lips round/spread with the viseme), upper eyelids slide down
   to the lower lids for blinks, and the head (face + hair, fading out into the
   background and neck) rotates in 3D about a pivot at the top of the neck (orthographic,
   landmark depth from MediaPipe) and translates a little. Background and torso stay still,
   as in a real talking-portrait recording.
3. A piecewise-affine backward map (triangle ids rasterised in the output, one affine per
   triangle) composed with the face-centred crop is applied with ``cv2.remap``.
4. Inside the inner-lip polygon the mouth is composited: a dark interior, a hint of tongue,
   the photo's own upper teeth moving rigidly with the head (the photo smiles with teeth
   showing), a faint lower-teeth band following the jaw. Closed eyelids get a lash line.

The mouth opening is a coarticulated viseme track (dominance blending of per-phoneme
targets, bilabials closing the lips) scaled by the smoothed speech loudness.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from talkgs.configlib import FPS, FRAME_PIXELS, SEED, Range
from talkgs.io.media import VideoWriter, write_wav
from talkgs.progress import iterate
from talkgs.tts import SpeechEvent, synthesize_speech

log = logging.getLogger(__name__)

__all__ = ["DemoParams", "DemoError", "make_demo", "mouth_track", "DEFAULT_TEXT"]

DEFAULT_TEXT = (
    "Hello! I was made by talk G S, offline. "
    "Gaussian splatting paints my head with thousands of soft, coloured blobs. "
    "Move them with my voice, and the face starts to talk."
)
"""About 11 s of speech at 165 words per minute ("talk G S" is how espeak says talkgs)."""


class DemoError(RuntimeError):
    """The demo clip cannot be made (no face found, bad parameters at run time, ...)."""


SECOND_TEXT = (
    "This sentence was never heard during training. The head you see now is driven by a new voice, "
    "one frame at a time."
)


@dataclass(frozen=True)
class DemoParams:
    """Parameters of the built-in demo clip (``params.yaml`` key ``demo``)."""

    seconds: Annotated[float, Range(2, 600, unit="seconds")] = 12.0
    """Clip duration in seconds; the speech is cut at a word boundary to fit, or padded with silence."""
    size: Annotated[int, FRAME_PIXELS] = 512
    """Square frame size in pixels (even)."""
    fps: Annotated[int, FPS] = 25
    """Frames per second."""
    seed: Annotated[int, SEED] = 0
    """Seed of head motion and blink timing (the speech itself is deterministic)."""
    text: str = DEFAULT_TEXT
    """What the subject says (English)."""
    voice: str = "en-us+f3"
    """espeak-ng voice (+ variant); ``en-us+f3`` is a female variant."""
    rate_wpm: Annotated[int, Range(80, 450, unit="words per minute")] = 165
    """Speaking rate in words per minute."""
    sample_rate: Annotated[int, Range(8000, 48000, unit="Hz")] = 16000
    """Audio sample rate in Hz (mono)."""
    lead_in: Annotated[float, Range(0, 60, unit="seconds")] = 0.4
    """Silence before the first word, in seconds."""
    mouth_scale: Annotated[float, Range(0, 1.5)] = 1.0
    """Scale of the mouth opening (1 = widest inner-lip gap of 0.13 face heights)."""
    head_motion: Annotated[float, Range(0, 3)] = 1.0
    """Scale of the head motion (1 = about +-3 deg yaw, +-2 deg pitch and roll, +-2 px)."""
    blink_interval: Annotated[float, Range(1, 600, unit="seconds")] = 3.0
    """Mean seconds between blinks (a 12 s clip gets 4)."""
    crop: Annotated[float, Range(1.8, 5)] = 2.7
    """Side of the face-centred crop of the photo, in face widths."""
    crf: Annotated[int, Range(0, 51)] = 18
    """x264 constant rate factor of the mp4 (lower = better quality)."""
    second_text: str = SECOND_TEXT
    """A second utterance, never seen in training: the demo's cross-driving audio (``demo_speech2.wav``)."""
    second_voice: str = "en-us+m3"
    """espeak-ng voice of the second utterance (another speaker, as in cross-driven evaluation)."""

    def __post_init__(self) -> None:
        if not 2.0 <= self.seconds <= 600.0:
            raise ValueError(f"demo.seconds must be in [2, 600], found {self.seconds}")
        if self.size < 64 or self.size % 2:
            raise ValueError(f"demo.size must be an even number >= 64, found {self.size}")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"demo.fps must be in [1, 120], found {self.fps}")
        if not self.text.strip():
            raise ValueError("demo.text is empty")
        if not 8000 <= self.sample_rate <= 48000:
            raise ValueError(f"demo.sample_rate must be in [8000, 48000], found {self.sample_rate}")
        if not 0.0 <= self.lead_in < self.seconds / 2:
            raise ValueError(f"demo.lead_in must be in [0, seconds/2), found {self.lead_in}")
        if not 0.0 <= self.mouth_scale <= 1.5:
            raise ValueError(f"demo.mouth_scale must be in [0, 1.5], found {self.mouth_scale}")
        if not 0.0 <= self.head_motion <= 3.0:
            raise ValueError(f"demo.head_motion must be in [0, 3], found {self.head_motion}")
        if self.blink_interval < 1.0:
            raise ValueError(f"demo.blink_interval must be >= 1 s, found {self.blink_interval}")
        if not 1.8 <= self.crop <= 5.0:
            raise ValueError(f"demo.crop must be in [1.8, 5], found {self.crop}")


# --- MediaPipe face-mesh landmark groups ---------------------------------------------------
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]  # fmt: skip
LIPS_UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
# per eye (image-left = subject's right, image-right = subject's left):
# lid edge upper/lower (corners are the first/last of the lower list), then the rings above/below
EYES = (
    dict(upper0=[246, 161, 160, 159, 158, 157, 173], lower0=[33, 7, 163, 144, 145, 153, 154, 155, 133],
         upper1=[247, 30, 29, 27, 28, 56, 190], upper2=[113, 225, 224, 223, 222, 221, 189],
         lower1=[130, 25, 110, 24, 23, 22, 26, 112, 243]),
    dict(upper0=[466, 388, 387, 386, 385, 384, 398], lower0=[263, 249, 390, 373, 374, 380, 381, 382, 362],
         upper1=[467, 260, 259, 257, 258, 286, 414], upper2=[342, 445, 444, 443, 442, 441, 413],
         lower1=[359, 255, 339, 254, 253, 252, 256, 341, 463]),
)  # fmt: skip
N_MESH = 468  # the 10 iris landmarks (468-477) are not used as control points

# widest inner-lip gap, in face heights (landmark 10 to 152)
MAX_GAP = 0.13


def _smoothstep(x: np.ndarray | float, e0: float, e1: float) -> np.ndarray:
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --- speech -> mouth -------------------------------------------------------------------------
# IPA symbol -> (jaw opening 0..1, rounding -1 (spread) .. 1 (round), dominance)
_VISEME: dict[str, tuple[float, float, float]] = {
    "a": (0.95, -0.2, 1.0), "ɑ": (1.0, 0.0, 1.0), "æ": (0.9, -0.4, 1.0), "ɐ": (0.7, 0.0, 0.9),
    "ʌ": (0.75, 0.0, 1.0), "ɒ": (0.9, 0.5, 1.0), "ɛ": (0.7, -0.4, 1.0), "e": (0.55, -0.6, 1.0),
    "ə": (0.5, 0.0, 0.6), "ɜ": (0.55, 0.0, 1.0), "ɚ": (0.45, 0.4, 0.8), "ɔ": (0.75, 0.8, 1.0),
    "o": (0.55, 0.9, 1.0), "i": (0.3, -0.9, 1.0), "ɪ": (0.4, -0.5, 0.8), "u": (0.25, 1.0, 1.0),
    "ʊ": (0.35, 0.8, 0.9), "ᵻ": (0.35, -0.3, 0.8), "y": (0.3, 0.8, 1.0), "ɯ": (0.3, -0.3, 1.0),
    "p": (0.0, 0.0, 4.0), "b": (0.0, 0.0, 4.0), "m": (0.0, 0.0, 4.0),
    "f": (0.08, -0.2, 2.5), "v": (0.08, -0.2, 2.5), "θ": (0.25, -0.2, 1.5), "ð": (0.25, -0.2, 1.5),
    "t": (0.22, -0.2, 0.7), "d": (0.22, -0.2, 0.7), "n": (0.22, -0.2, 0.7), "l": (0.3, -0.1, 0.6),
    "ɾ": (0.3, -0.1, 0.5), "s": (0.14, -0.5, 1.6), "z": (0.14, -0.5, 1.6),
    "ʃ": (0.2, 0.7, 1.6), "ʒ": (0.2, 0.7, 1.6), "ʧ": (0.2, 0.7, 1.6), "ʤ": (0.2, 0.7, 1.6),
    "k": (0.3, 0.0, 0.5), "ɡ": (0.3, 0.0, 0.5), "g": (0.3, 0.0, 0.5), "ŋ": (0.3, 0.0, 0.5),
    "x": (0.3, 0.0, 0.5), "h": (0.45, 0.0, 0.2), "ɹ": (0.3, 0.5, 0.8), "r": (0.3, 0.3, 0.8),
    "w": (0.12, 1.0, 2.0), "j": (0.25, -0.6, 0.8), "ʔ": (0.3, 0.0, 0.3),
}  # fmt: skip
_REST = (0.12, 0.0, 1.0)  # pauses: lips nearly together
_MODIFIERS = set("ˈˌːˑ̃ʲʰ̩-_")


def _phoneme_segments(events: list[SpeechEvent], end_time: float) -> list[tuple[float, float, str]]:
    """``(start, end, symbol)`` per phoneme, diphthongs split into their parts; ``""`` = pause."""
    ph = [e for e in events if e.kind == "phoneme"]
    bounds = [e for e in events if e.kind == "end"]
    segs: list[tuple[float, float, str]] = []
    for i, e in enumerate(ph):
        t1 = ph[i + 1].time if i + 1 < len(ph) else end_time
        for b in bounds:  # a sentence end closes the previous phoneme
            if e.time < b.time < t1:
                t1 = b.time
        if t1 <= e.time:
            continue
        sym = "".join(c for c in e.phoneme if c not in _MODIFIERS)
        sym = sym.replace("tʃ", "ʧ").replace("dʒ", "ʤ")
        parts = [c for c in sym if c in _VISEME] or [""]
        step = (t1 - e.time) / len(parts)
        for k, c in enumerate(parts):
            segs.append((e.time + k * step, e.time + (k + 1) * step, c))
    return segs


def mouth_track(
    events: list[SpeechEvent], samples: np.ndarray, sample_rate: int, times: np.ndarray, *, lead: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """Mouth opening ``[T]`` in 0..1 and rounding ``[T]`` in -1..1 at ``times`` (seconds).

    Coarticulation by dominance blending (Cohen & Massaro): each phoneme pulls the mouth
    towards its viseme target with a weight that decays exponentially outside the phoneme
    (bilabials and labiodentals dominate, so /m b p/ close the lips). The opening is then
    scaled by the smoothed loudness, and the mouth leads the sound by ``lead`` seconds.
    """
    end_time = len(samples) / sample_rate
    segs = _phoneme_segments(events, end_time)
    t = np.asarray(times, dtype=np.float64) + lead
    num_o = np.full_like(t, _REST[0] * 1e-3)
    num_r = np.zeros_like(t)
    den = np.full_like(t, 1e-3)
    tau = 0.045
    for t0, t1, sym in segs:
        o, r, dom = _VISEME.get(sym, _REST) if sym else _REST
        c, half = 0.5 * (t0 + t1), 0.5 * (t1 - t0)
        d = dom * np.exp(-np.maximum(0.0, np.abs(t - c) - half) / tau)
        num_o += d * o
        num_r += d * r
        den += d
    opening, rounding = num_o / den, num_r / den
    # loudness: RMS in 20 ms windows, dB mapped to 0..1 (-40 dB .. peak), smoothed
    win = max(1, int(0.02 * sample_rate))
    n = len(samples) // win
    rms = np.sqrt(np.mean(samples[: n * win].reshape(n, win).astype(np.float64) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms / (rms.max() + 1e-12))
    loud = np.clip((db + 40.0) / 40.0, 0.0, 1.0)
    k = np.exp(-0.5 * (np.arange(-5, 6) / 2.0) ** 2)
    loud = np.convolve(loud, k / k.sum(), mode="same")
    lt = (np.arange(n) + 0.5) * win / sample_rate
    loud_t = np.interp(t, lt, loud, left=0.0, right=0.0)
    opening = 1.3 * opening * (0.55 + 0.45 * loud_t)
    return np.clip(opening, 0.0, 1.0), np.clip(rounding, -1.0, 1.0)


def _fit_speech(
    samples: np.ndarray, sr: int, events: list[SpeechEvent], text: str, max_len: float
) -> tuple[np.ndarray, list[SpeechEvent], str]:
    """Cut the speech at the last word boundary that fits in ``max_len`` seconds."""
    if len(samples) <= max_len * sr:
        return samples, events, text
    words = [e for e in events if e.kind == "word" and 0 < e.time <= max_len]
    if not words:
        raise DemoError(f"the first word of demo.text does not fit in {max_len:.2f} s; make demo.seconds longer")
    cut_ev = words[-1]
    # prefer the end of a sentence when it keeps most of the speech
    ends = [e for e in events if e.kind == "end" and e.time <= max_len]
    if ends and ends[-1].time >= 0.6 * max_len:
        cut = ends[-1].time
        nxt = [e for e in events if e.kind == "word" and e.time >= cut]
        spoken = text[: nxt[0].text_position - 1] if nxt else text
    else:
        cut = cut_ev.time
        spoken = text[: cut_ev.text_position - 1]
    n = int(round(cut * sr))
    out = samples[:n].copy()
    fade = min(n, int(0.03 * sr))
    out[n - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    kept = [e for e in events if e.time < cut]
    kept.append(SpeechEvent(kind="end", time=cut, text_position=len(spoken) + 1, length=0))
    return out, kept, spoken.strip()


# --- motion ----------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, t: np.ndarray, freqs: tuple[float, float], n: int = 3) -> np.ndarray:
    """Sum of ``n`` random sinusoids in the band ``freqs`` (Hz), normalised to peak 1."""
    f = rng.uniform(*freqs, size=n)
    ph = rng.uniform(0, 2 * np.pi, size=n)
    a = rng.uniform(0.5, 1.0, size=n)
    x = (a[:, None] * np.sin(2 * np.pi * f[:, None] * t[None, :] + ph[:, None])).sum(0)
    return x / (np.abs(x).max() + 1e-9)


def _head_pose(rng: np.random.Generator, t: np.ndarray, events: list[SpeechEvent], scale: float) -> np.ndarray:
    """``[T, 5]``: yaw, pitch, roll (degrees), tx, ty (source pixels)."""
    yaw = 3.0 * _smooth_noise(rng, t, (0.07, 0.35))
    pitch = 1.6 * _smooth_noise(rng, t, (0.1, 0.4))
    roll = 2.0 * _smooth_noise(rng, t, (0.06, 0.3))
    tx = 2.0 * _smooth_noise(rng, t, (0.05, 0.25))
    ty = 1.2 * _smooth_noise(rng, t, (0.08, 0.3))
    # small nods on stressed syllables (speakers nod on emphasis)
    for e in events:
        if e.kind == "phoneme" and "ˈ" in e.phoneme:
            pitch += 1.0 * np.exp(-0.5 * ((t - e.time - 0.08) / 0.12) ** 2)
    return scale * np.stack([yaw, pitch, roll, tx, ty], axis=1)


def _blinks(rng: np.random.Generator, n_frames: int, fps: float, interval: float) -> tuple[np.ndarray, list[int]]:
    """Per-frame eyelid closure ``[T]`` in 0..1 and the frame of each full closure."""
    dur = n_frames / fps
    n = max(1, int(round(dur / interval)))
    margin = min(0.4, dur / 4)
    edges = np.linspace(margin, dur - margin, n + 1)
    closure = np.zeros(n_frames)
    peaks = []
    t = (np.arange(n_frames) + 0.5) / fps
    for i in range(n):
        a, b = edges[i], edges[i + 1]
        tc = rng.uniform(a + 0.2 * (b - a), b - 0.2 * (b - a))
        k = int(np.clip(np.floor(tc * fps), 1, n_frames - 2))
        tk = (k + 0.5) / fps
        # close in 90 ms, closed 40 ms (frame k inside), open in 150 ms
        t0 = tk - 0.1
        x = t - t0
        c = np.where(x < 0.09, _smoothstep(x, 0.0, 0.09), np.where(x < 0.13, 1.0, 1.0 - _smoothstep(x, 0.13, 0.28)))
        c[x < 0] = 0.0
        closure = np.maximum(closure, c)
        peaks.append(k)
    return closure, peaks


# --- face rig ----------------------------------------------------------------------------------
def _detect_landmarks(image: np.ndarray) -> np.ndarray:
    """MediaPipe face mesh on an RGB uint8 image -> ``[478, 3]`` pixels (z in pixels, + = away)."""
    import mediapipe as mp

    h, w = image.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        res = fm.process(image)
    if not res.multi_face_landmarks:
        raise DemoError("MediaPipe face mesh found no face in the demo photo (skimage.data.astronaut())")
    lm = res.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h, p.z * w] for p in lm], dtype=np.float64)


def _poly_mask(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    """Anti-aliased float mask ``[H, W]`` in 0..1 of a polygon (pixel-centre coordinates)."""
    import cv2

    m = np.zeros(shape, np.uint8)
    p = np.round(np.asarray(pts) * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(m, [p], 255, lineType=cv2.LINE_AA, shift=4)
    return m.astype(np.float32) / 255.0


class _Rig:
    """Control points, triangulation and per-point weights of the photo (source pixel coords)."""

    def __init__(self, image: np.ndarray, size: int, crop_faces: float) -> None:
        import cv2
        from scipy.spatial import Delaunay

        self.image = image
        self.size = size
        lm = _detect_landmarks(image)
        self.lm = lm
        xy, z = lm[:N_MESH, :2], lm[:N_MESH, 2]
        oval = lm[FACE_OVAL, :2]
        self.H = float(np.linalg.norm(lm[10, :2] - lm[152, :2]))
        self.W = float(np.linalg.norm(lm[234, :2] - lm[454, :2]))
        eye_l = lm[EYES[0]["lower0"], :2].mean(0)
        eye_r = lm[EYES[1]["lower0"], :2].mean(0)
        ex = (eye_r - eye_l) / np.linalg.norm(eye_r - eye_l)
        ey = np.array([-ex[1], ex[0]])  # image "down" along the face
        self.ex, self.ey = ex, ey
        mouth = 0.5 * (lm[13, :2] + lm[14, :2])
        self.mouth = mouth
        face_c = oval.mean(0)

        # face-centred crop (square, inside the photo)
        side = min(crop_faces * self.W, image.shape[0], image.shape[1])
        c = face_c + 0.08 * self.H * ey
        x0 = float(np.clip(c[0] - side / 2, 0, image.shape[1] - side))
        y0 = float(np.clip(c[1] - side / 2, 0, image.shape[0] - side))
        self.crop = (x0, y0, side)
        self.s_out = size / side

        # grid of control points around the face, covering the crop with a margin
        step = side / 14
        gx = np.arange(x0 - 1.5 * step, x0 + side + 1.6 * step, step)
        gy = np.arange(y0 - 1.5 * step, y0 + side + 1.6 * step, step)
        grid = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
        cont = oval.astype(np.float32).reshape(-1, 1, 2)
        sd = np.array([cv2.pointPolygonTest(cont, (float(p[0]), float(p[1])), True) for p in grid])
        grid, sd = grid[sd < -0.45 * step], sd[sd < -0.45 * step]
        pts = np.concatenate([xy, grid])
        self.n_mesh = N_MESH
        self.P0 = pts
        self.tri = Delaunay(pts).simplices.astype(np.int32)

        # --- per-point weights
        n = len(pts)
        d_out = np.concatenate([np.zeros(N_MESH), -sd])  # distance outside the face oval (px)
        rel = pts - face_c
        u, v = rel @ ex, rel @ ey
        # head: face + hair (ellipse above ear level), fading into background and neck
        ch = -0.15 * self.H
        rho = np.sqrt((u / (0.8 * self.W)) ** 2 + ((v - ch) / (0.85 * self.H)) ** 2)
        w_ell = (1 - _smoothstep(rho, 1.0, 1.5)) * (1 - _smoothstep(v, 0.0, 0.35 * self.H))
        w_oval = 1 - _smoothstep(d_out, 0.0, 0.3 * self.H)
        self.w_head = np.maximum(w_ell, w_oval)
        z_rim = float(np.median(lm[[234, 454, 127, 356, 93, 323], 2]))
        # the face outline turns with the head outline: flatten depth towards the rim near it
        # (otherwise yaw folds the thin triangles along the silhouette)
        d_in = np.array([cv2.pointPolygonTest(cont, (float(p[0]), float(p[1])), True) for p in xy])
        z_face = z_rim + (z - z_rim) * _smoothstep(d_in, 0.0, 0.1 * self.H)
        self.z = np.concatenate([z_face, np.full(n - N_MESH, z_rim)])
        chin = lm[152, :2]
        self.pivot = np.array([*(chin + 0.1 * self.H * ey), z_rim])

        # jaw / upper lip / lip width, in the face frame around the mouth (units of H)
        mr = pts - mouth
        xf, yf = (mr @ ex) / self.H, (mr @ ey) / self.H
        up_in, lo_in = lm[LIPS_UPPER_INNER, :2], lm[LIPS_LOWER_INNER, :2]
        seam = 0.5 * (up_in + lo_in) - mouth
        sx, sy = (seam @ ex) / self.H, (seam @ ey) / self.H
        order = np.argsort(sx)
        seam_y = np.interp(xf, sx[order], sy[order])
        rel_m = yf - seam_y
        hw = 0.5 * abs(sx.max() - sx.min())
        lat_out = np.maximum(0.0, np.abs(xf) - hw)
        band = 0.02 + 0.5 * lat_out
        below = _smoothstep(rel_m, -band, band)
        lat = 1 - 0.65 * _smoothstep(np.abs(xf), hw, hw + 0.3)
        J = below * lat * (1 - _smoothstep(d_out, 0.0, 0.2 * self.H))
        U = (rel_m < 0) * (1 - _smoothstep(-rel_m, 0.03, 0.12)) * (1 - _smoothstep(np.abs(xf), hw, hw + 0.1))
        outer = np.concatenate([lm[LIPS_UPPER_OUTER, :2], lm[LIPS_LOWER_OUTER[::-1], :2]]).astype(np.float32)
        for i in range(N_MESH):
            if cv2.pointPolygonTest(outer.reshape(-1, 1, 2), (float(pts[i, 0]), float(pts[i, 1])), True) >= -1.0:
                J[i], U[i] = (1.0, 0.0) if rel_m[i] > 0 else (0.0, 1.0)
        lip_upper = set(LIPS_UPPER_INNER + LIPS_UPPER_OUTER) - {61, 291, 78, 308}
        lip_lower = set(LIPS_LOWER_INNER + LIPS_LOWER_OUTER) - {61, 291, 78, 308}
        for i in lip_upper:
            J[i], U[i] = 0.0, 1.0
        for i in lip_lower:
            J[i], U[i] = 1.0, 0.0
        self.J, self.U = J, U
        re = np.sqrt((xf / (hw + 0.05)) ** 2 + (rel_m / 0.12) ** 2)
        self.M = 1 - _smoothstep(re, 1.0, 2.2)
        self.xf_px = xf * self.H
        # lip taper along the mouth: closing scales the photo's local gap (so the lips meet
        # without crossing), opening follows a lens profile (0 at the corners)
        local = ((lo_in - up_in) @ ey) / max(float((lm[14, :2] - lm[13, :2]) @ ey), 1e-6)
        mx = ((0.5 * (up_in + lo_in) - mouth) @ ex) / self.H
        o2 = np.argsort(mx)
        close_t = np.clip(np.interp(xf, mx[o2], local[o2], left=0.0, right=0.0), 0.0, 1.5)
        open_t = np.clip(1.0 - (xf / hw) ** 2, 0.0, 1.0) ** 0.6
        self.taper_open = 1.0 - self.M * (1.0 - open_t)
        self.taper_close = 1.0 - self.M * (1.0 - close_t)
        self.gap0 = float(np.linalg.norm(lm[14, :2] - lm[13, :2]))  # the photo's inner-lip gap (px)

        # eyelids: displacement of every point at full closure
        blink = np.zeros((n, 2))
        self.lid_lines = []
        for eye in EYES:
            lo = lm[eye["lower0"], :2]
            up = lm[eye["upper0"], :2]
            lo_u, up_u = (lo - face_c) @ ex, (up - face_c) @ ex
            o_lo, o_up = np.argsort(lo_u), np.argsort(up_u)
            # vertical gap (along ey) lower - upper, at each upper point and at each lower point
            lo_v, up_v = (lo - face_c) @ ey, (up - face_c) @ ey
            gap_at_up = np.interp(up_u, lo_u[o_lo], lo_v[o_lo]) - up_v
            up_full = np.concatenate([[lo_u[o_lo][0]], up_u[o_up], [lo_u[o_lo][-1]]])
            up_full_v = np.concatenate([[lo_v[o_lo][0]], up_v[o_up], [lo_v[o_lo][-1]]])
            gap_at_lo = lo_v - np.interp(lo_u, up_full, up_full_v)
            for j, i in enumerate(eye["upper0"]):
                blink[i] = 0.8 * gap_at_up[j] * ey
            for j, i in enumerate(eye["lower0"]):
                blink[i] = -0.2 * gap_at_lo[j] * ey
            for ring, k in (("upper1", 0.45), ("upper2", 0.12)):
                for i in eye[ring]:
                    ui = (lm[i, :2] - face_c) @ ex
                    blink[i] = k * 0.8 * np.interp(ui, up_u[o_up], gap_at_up[o_up]) * ey
            for i in eye["lower1"]:
                ui = (lm[i, :2] - face_c) @ ex
                blink[i] = -0.1 * 0.2 * np.interp(ui, lo_u[o_lo], gap_at_lo[o_lo]) * ey
            self.lid_lines.append([eye["lower0"][0], *eye["upper0"], eye["lower0"][-1]])
        self.blink = blink

        # teeth: the photo's mouth interior (upper teeth showing), moved rigidly with the head
        inner = np.concatenate([lm[LIPS_UPPER_INNER, :2], lm[LIPS_LOWER_INNER[-2:0:-1], :2]])
        self.inner_idx = LIPS_UPPER_INNER + LIPS_LOWER_INNER[-2:0:-1]
        tm = _poly_mask(image.shape[:2], inner)
        # pull the lower edge up by 1 px: it is lower-lip coloured in the photo
        tm = np.minimum(tm, np.roll(tm, -1, axis=0))
        self.teeth_mask = tm
        tpx = image[tm > 0.9].astype(np.float32)
        self.teeth_color = np.median(tpx, axis=0) if len(tpx) else np.array([220.0, 210.0, 190.0])

        # static backward map for pixels no triangle covers (should be none)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        self.grid_out = (xs, ys)
        self.map_static = (self._out_to_src(xs, 0), self._out_to_src(ys, 1))

    def _out_to_src(self, a: np.ndarray, axis: int) -> np.ndarray:
        o = self.crop[axis]
        return ((a + 0.5) / self.s_out + o - 0.5).astype(np.float32)

    def src_to_out(self, p: np.ndarray) -> np.ndarray:
        o = np.array(self.crop[:2])
        return (p - o + 0.5) * self.s_out - 0.5

    def head_transform(self, pts: np.ndarray, z: np.ndarray, w: np.ndarray, pose: np.ndarray) -> np.ndarray:
        yaw, pitch, roll = np.deg2rad(pose[:3])
        cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
        Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        # rotation in the face frame (ex, ey, depth), expressed in image coordinates
        B = np.array([[self.ex[0], self.ey[0], 0], [self.ex[1], self.ey[1], 0], [0, 0, 1]])
        R = B @ (Rz @ Rx @ Ry) @ B.T
        p3 = np.concatenate([pts, z[:, None]], axis=1) - self.pivot
        moved = (p3 @ R.T + self.pivot)[:, :2] + pose[3:5]
        return pts + w[:, None] * (moved - pts)


@dataclass
class _FrameState:
    opening: float  # 0..1
    rounding: float  # -1..1
    blink: float  # 0..1
    pose: np.ndarray  # [5]


class _Renderer:
    def __init__(self, rig: _Rig, mouth_scale: float) -> None:
        self.rig = rig
        self.max_gap = MAX_GAP * rig.H * mouth_scale
        self.src = rig.image
        self.tri = rig.tri
        self.flips = 0  # folded triangles seen (diagnostic)

    def control_points(self, st: _FrameState) -> tuple[np.ndarray, float]:
        """Deformed control points ``[N, 2]`` in output pixels and the inner-lip gap (photo px)."""
        r = self.rig
        gap = st.opening * self.max_gap
        d = gap - r.gap0
        low, up = (0.8 * d, -0.2 * d) if d >= 0 else (0.6 * d, -0.4 * d)
        dy = (low * r.J + up * r.U) * (r.taper_open if d >= 0 else r.taper_close)
        sx = 1.0 - 0.09 * max(st.rounding, 0.0) + 0.03 * max(-st.rounding, 0.0) - 0.04 * st.opening
        dx = (sx - 1.0) * r.xf_px * r.M
        P = r.P0 + dx[:, None] * r.ex + dy[:, None] * r.ey + st.blink * r.blink
        P = r.head_transform(P, r.z, r.w_head, st.pose)
        return r.src_to_out(P), gap

    def render(self, st: _FrameState) -> np.ndarray:
        import cv2

        r, size = self.rig, self.rig.size
        P3, gap = self.control_points(st)
        T = self.tri
        Q = P3[T]  # [K, 3, 2] output triangles
        S = r.P0[T]  # [K, 3, 2] source triangles
        e1, e2 = Q[:, 1] - Q[:, 0], Q[:, 2] - Q[:, 0]
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        s1, s2 = S[:, 1] - S[:, 0], S[:, 2] - S[:, 0]
        det0 = s1[:, 0] * s2[:, 1] - s1[:, 1] * s2[:, 0]
        ok = np.abs(det) > 1e-6
        self.flips += int(np.sum(ok & (np.sign(det) != np.sign(det0)) & (np.abs(det0) > 1e-6)))
        inv = np.zeros((len(T), 2, 2))
        detc = np.where(ok, det, 1.0)
        inv[:, 0, 0], inv[:, 0, 1] = e2[:, 1] / detc, -e2[:, 0] / detc
        inv[:, 1, 0], inv[:, 1, 1] = -e1[:, 1] / detc, e1[:, 0] / detc
        # source = S0 + [s1 s2] @ inv @ (q - Q0)  ->  A [K, 2, 3]
        Ms = np.stack([s1, s2], axis=2) @ inv  # [K, 2, 2]
        A = np.concatenate([Ms, (S[:, 0] - np.einsum("kij,kj->ki", Ms, Q[:, 0]))[:, :, None]], axis=2)
        ids = np.full((size, size), 65535, np.uint16)
        pts = np.round(Q * 16).astype(np.int32)
        lo = np.floor(Q.min(1)).astype(int)
        hi = np.ceil(Q.max(1)).astype(int)
        vis = ok & (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < size) & (lo[:, 1] < size)
        # degenerate / folded triangles (collapsed lips and eyelids, silhouette slivers) first,
        # so that they only fill pixels no proper triangle claims
        good = np.abs(det) > 0.25
        good &= np.sign(det) == np.sign(det0)
        for k in np.concatenate([np.flatnonzero(vis & ~good), np.flatnonzero(vis & good)]):
            cv2.fillConvexPoly(ids, pts[k], int(k), lineType=cv2.LINE_8, shift=4)
        xs, ys = r.grid_out
        covered = ids != 65535
        idc = np.where(covered, ids, 0).astype(np.intp)
        # per-pixel affine: six gathers of float32 coefficients (A is [K, 2, 3])
        Af = A.reshape(len(A), 6).astype(np.float32).T.copy()  # [6, K]
        mx = Af[0].take(idc) * xs + Af[1].take(idc) * ys + Af[2].take(idc)
        my = Af[3].take(idc) * xs + Af[4].take(idc) * ys + Af[5].take(idc)
        if not covered.all():
            mx = np.where(covered, mx, r.map_static[0])
            my = np.where(covered, my, r.map_static[1])
        frame = cv2.remap(self.src, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
        frame = self._mouth(frame, P3, st, gap)
        frame = self._lids(frame, P3, st)
        return frame

    def _mouth(self, frame: np.ndarray, P3: np.ndarray, st: _FrameState, gap: float) -> np.ndarray:
        import cv2

        r, size = self.rig, self.rig.size
        poly = P3[r.inner_idx]
        lo, hi = np.floor(poly.min(0)).astype(int) - 3, np.ceil(poly.max(0)).astype(int) + 4
        lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
        if (hi - lo).min() <= 0:
            return frame
        x0, y0 = lo
        w, h = hi - lo
        mask = _poly_mask((h, w), poly - lo)
        if mask.max() <= 0:
            return frame
        # teeth (rigid with the head): affine fitted source -> output on the inner-lip points
        src_pts = r.lm[r.inner_idx, :2]
        rigid = r.src_to_out(r.head_transform(src_pts, r.lm[r.inner_idx, 2], np.ones(len(src_pts)), st.pose))
        X = np.concatenate([src_pts, np.ones((len(src_pts), 1))], axis=1)
        Aff, *_ = np.linalg.lstsq(X, rigid, rcond=None)
        Aff = Aff.T.copy()
        Aff[:, 2] -= lo  # into the ROI
        teeth = cv2.warpAffine(self.src, Aff, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
        tmask = cv2.warpAffine(r.teeth_mask, Aff, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        # interior: dark, a little lighter towards the lower lip (tongue) when wide open
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        up_y = np.interp(xs[0] + x0, *_sorted_xy(P3[LIPS_UPPER_INNER])) - y0
        lo_y = np.interp(xs[0] + x0, *_sorted_xy(P3[LIPS_LOWER_INNER])) - y0
        span = np.maximum(lo_y - up_y, 1e-3)[None, :]
        depth = np.clip((ys - up_y[None, :]) / span, 0, 1)  # 0 at upper lip .. 1 at lower lip
        cx = 0.5 * (poly[:, 0].min() + poly[:, 0].max()) - x0
        half = max(0.5 * (poly[:, 0].max() - poly[:, 0].min()), 1.0)
        lateral = np.clip(np.abs(xs - cx) / half, 0, 1)
        base = np.array([72.0, 30.0, 32.0], np.float32)
        dark = np.array([30.0, 10.0, 12.0], np.float32)
        interior = base + (dark - base) * ((1 - lateral) * (1 - np.abs(depth - 0.4)))[..., None]
        wide = float(_smoothstep(gap / self.max_gap, 0.45, 0.9)) if self.max_gap > 0 else 0.0
        tongue_w = wide * _smoothstep(depth, 0.55, 0.95) * (1 - _smoothstep(lateral, 0.4, 0.9)) * 0.55
        interior += (np.array([125.0, 52.0, 55.0], np.float32) - interior) * tongue_w[..., None]
        # lower teeth: a faint band along the lower lip, moving with the jaw, when open
        open_px = (lo_y - up_y)[None, :]
        band = _smoothstep(ys, lo_y[None, :] - 0.2 * open_px - 1.0, lo_y[None, :] - 0.1 * open_px)
        lt = wide * 0.6 * band * (1 - _smoothstep(lateral, 0.3, 0.75))
        interior += (0.8 * r.teeth_color.astype(np.float32) - interior) * lt[..., None]
        inside = interior + (teeth.astype(np.float32) - interior) * tmask[..., None]
        roi = frame[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        # soften the lip edge: the interior darkens the first pixel inside the lips
        m = cv2.GaussianBlur(mask, (0, 0), 0.5 * max(1.0, self.rig.s_out)) * (mask > 0)
        m = np.maximum(m, mask * 0.85)
        out = roi + (inside - roi) * m[..., None]
        # the lip seam: a soft dark line where the lips meet, fading as they part
        closeness = 1.0 - float(_smoothstep(gap * self.rig.s_out, 1.0, 6.0))
        if closeness > 0:
            seam = np.zeros((h, w), np.uint8)
            mid = 0.5 * (P3[LIPS_UPPER_INNER] + P3[LIPS_LOWER_INNER]) - lo
            cv2.polylines(seam, [np.round(mid * 16).astype(np.int32).reshape(-1, 1, 2)], False, 255,
                          max(1, int(round(0.6 * self.rig.s_out))), lineType=cv2.LINE_AA, shift=4)  # fmt: skip
            sm = cv2.GaussianBlur(seam.astype(np.float32) / 255.0, (0, 0), 0.5 * self.rig.s_out)
            a = (0.8 * closeness * np.clip(1.6 * sm, 0, 1))[..., None]
            out += (np.array([105.0, 52.0, 52.0], np.float32) - out) * a
        frame = frame.copy()
        frame[y0 : y0 + h, x0 : x0 + w] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        return frame

    def _lids(self, frame: np.ndarray, P3: np.ndarray, st: _FrameState) -> np.ndarray:
        import cv2

        a = float(_smoothstep(st.blink, 0.35, 1.0))
        if a <= 0:
            return frame
        r = self.rig
        overlay = np.zeros(frame.shape[:2], np.uint8)
        th = max(1, int(round(0.6 * r.s_out)))
        for line in r.lid_lines:
            p = np.round(P3[line] * 16).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(overlay, [p], False, 255, th, lineType=cv2.LINE_AA, shift=4)
        ov = cv2.GaussianBlur(overlay.astype(np.float32) / 255.0, (0, 0), 0.5 * r.s_out)
        alpha = (0.75 * a * np.clip(1.6 * ov, 0, 1))[..., None]
        f = frame.astype(np.float32)
        f += (np.array([58.0, 40.0, 34.0], np.float32) - f) * alpha  # lashes of the closed lid
        return np.clip(f + 0.5, 0, 255).astype(np.uint8)


def _sorted_xy(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    o = np.argsort(p[:, 0])
    return p[o, 0], p[o, 1]


def make_demo(
    out: Path, params: DemoParams = DemoParams(), *, progress: bool = True, wav: Path | None = None
) -> dict:
    """Write the demo talking-portrait mp4 (H.264 + AAC) to ``out`` atomically.

    Args:
        out: output ``.mp4`` path.
        params: see :class:`DemoParams`.
        progress: show a rich progress bar.
        wav: also write the speech as a 16-bit wav here (same samples as the mp4's audio).

    Returns:
        ``{"duration_s", "frames", "fps", "size", "sample_rate", "spoken_text", "blinks",
        "blink_frames", "mouth_open" [T] (0..1), "lip_gap" [T] (inner-lip gap / face height),
        "head_pose" [T][5] (yaw, pitch, roll deg; tx, ty px of the photo), "phonemes"
        [[time, ipa], ...], "seed", "generation_s"}``; frame ``i`` shows time ``(i + 0.5) / fps``.
    """
    import skimage.data

    t_start = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"make_demo writes an mp4; {out} should end in .mp4")
    p = params
    n_frames = int(round(p.seconds * p.fps))
    duration = n_frames / p.fps
    sr = p.sample_rate

    speech, _, events = synthesize_speech(p.text, sr, voice=p.voice, rate_wpm=p.rate_wpm)
    # trim espeak's trailing silence, then fit the speech into the clip
    max_len = duration - p.lead_in - 0.25
    speech, events, spoken = _fit_speech(speech, sr, events, p.text, max_len)
    lead = int(round(p.lead_in * sr))
    audio = np.zeros(int(round(duration * sr)), np.float32)
    n_sp = min(len(speech), len(audio) - lead)
    audio[lead : lead + n_sp] = speech[:n_sp]
    events = [
        SpeechEvent(e.kind, e.time + p.lead_in, e.text_position, e.length, e.phoneme) for e in events
    ]

    t = (np.arange(n_frames) + 0.5) / p.fps
    opening, rounding = mouth_track(events, audio, sr, t)
    rng = np.random.default_rng(p.seed)
    pose = _head_pose(rng, t, events, p.head_motion)
    closure, blink_frames = _blinks(rng, n_frames, p.fps, p.blink_interval)

    rig = _Rig(skimage.data.astronaut(), p.size, p.crop)
    renderer = _Renderer(rig, p.mouth_scale)
    lip_gap = []

    with tempfile.TemporaryDirectory(prefix="talkgs-demo-") as tmp:
        wav_tmp = Path(tmp) / "speech.wav"
        write_wav(wav_tmp, audio, sr)
        if wav is not None:
            write_wav(wav, audio, sr)
        with VideoWriter(out, fps=p.fps, audio=wav_tmp, crf=p.crf) as writer:
            for i in iterate(range(n_frames), progress, "make-demo: rendering frames"):
                st = _FrameState(float(opening[i]), float(rounding[i]), float(closure[i]), pose[i])
                writer.write(renderer.render(st))
                lip_gap.append(max(0.0, opening[i] * renderer.max_gap) / rig.H)
    if renderer.flips:
        log.debug("make-demo: %d folded triangles over the clip", renderer.flips)
    elapsed = time.perf_counter() - t_start
    info = {
        "duration_s": duration,
        "frames": n_frames,
        "fps": p.fps,
        "size": p.size,
        "sample_rate": sr,
        "seed": p.seed,
        "spoken_text": spoken,
        "speech_start_s": p.lead_in,
        "speech_end_s": p.lead_in + n_sp / sr,
        "blinks": len(blink_frames),
        "blink_frames": blink_frames,
        "mouth_open": [round(float(x), 4) for x in opening],
        "lip_gap": [round(float(x), 4) for x in lip_gap],
        "head_pose": [[round(float(v), 3) for v in row] for row in pose],
        "phonemes": [[round(e.time, 4), e.phoneme] for e in events if e.kind == "phoneme"],
        "generation_s": round(elapsed, 2),
    }
    log.info("make-demo: %s (%d frames, %.1f s, %d blinks) in %.1f s", out, n_frames, duration, len(blink_frames), elapsed)
    return info


def make_demo_speech2(out: Path, params: DemoParams = DemoParams()) -> dict:
    """Write the demo's second utterance (``params.second_text``, another voice) as a 16-bit wav.

    It drives the cross-driven synthesis of the demo subject: speech the model never saw.
    Returns ``{"duration_s", "sample_rate", "text"}``.
    """
    speech, sr, _ = synthesize_speech(params.second_text, params.sample_rate, voice=params.second_voice, rate_wpm=params.rate_wpm)
    write_wav(out, speech, sr)
    return {"duration_s": round(len(speech) / sr, 3), "sample_rate": sr, "text": params.second_text}
