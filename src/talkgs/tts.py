"""Offline speech synthesis through the espeak-ng C API (ctypes), with word/phoneme timing.

The library and its voice data come from the ``espeakng-loader`` wheel (PyPI, bundles
``libespeak-ng.so`` and ``espeak-ng-data``). ``TALKGS_ESPEAK_LIB`` / ``TALKGS_ESPEAK_DATA``
point at another build (e.g. Debian's ``libespeak-ng1`` + ``espeak-ng-data``) instead.

:func:`synthesize_speech` returns the waveform and the synthesiser's own events: sentence
and word starts and every phoneme (IPA) with its start time, which is what drives the
mouth of the built-in demo subject (:mod:`talkgs.demo`).

espeak-ng keeps global state that carries over from one synthesis to the next (the same text
comes out a few samples different on a second call in the same process, even after
``espeak_Terminate``), so by default each call runs in a fresh Python subprocess
(``isolate=True``, ~0.3 s overhead): the same text and settings then always give the same
samples, which keeps DVC outputs reproducible. In-process calls are serialised by a lock; the
library is loaded and initialised once per process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["SpeechEvent", "TTSError", "synthesize_speech", "espeak_paths"]


class TTSError(RuntimeError):
    """Speech synthesis failed; the message names the library/data path and the fix."""


@dataclass(frozen=True)
class SpeechEvent:
    """One synthesiser event, timed on the returned waveform."""

    kind: str
    """``"sentence"``, ``"word"``, ``"phoneme"`` or ``"end"``."""
    time: float
    """Start time in seconds from the first sample."""
    text_position: int
    """1-based character position in the input text (espeak's convention)."""
    length: int
    """Word length in characters (``"word"`` events; 0 otherwise)."""
    phoneme: str = ""
    """IPA of the phoneme (``"phoneme"`` events), stress marks included (``ˈaʊ``); ``""`` is a pause."""


# --- espeak-ng C API (speak_lib.h) ------------------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_INIT_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EV_LIST_TERMINATED, _EV_WORD, _EV_SENTENCE, _EV_END, _EV_MSG_TERMINATED, _EV_PHONEME = 0, 1, 2, 5, 6, 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def espeak_paths() -> tuple[Path, Path]:
    """``(library, data folder)`` used for synthesis: env overrides, else espeakng-loader's."""
    lib_env, data_env = os.environ.get("TALKGS_ESPEAK_LIB"), os.environ.get("TALKGS_ESPEAK_DATA")
    if lib_env and data_env:
        return Path(lib_env), Path(data_env)
    try:
        import espeakng_loader
    except ImportError as e:
        raise TTSError(
            "speech synthesis needs espeak-ng: `pip install espeakng-loader` (bundles libespeak-ng and its "
            "voice data), or set TALKGS_ESPEAK_LIB=/path/libespeak-ng.so.1 and "
            "TALKGS_ESPEAK_DATA=/path/espeak-ng-data (e.g. Debian's libespeak-ng1 + espeak-ng-data)"
        ) from e
    lib = Path(lib_env) if lib_env else Path(espeakng_loader.get_library_path())
    if data_env:
        data = Path(data_env)
    else:
        data = Path(espeakng_loader.__file__).parent / "espeak-ng-data"
    return lib, data


def _init() -> tuple[ctypes.CDLL, int]:
    """Load and initialise libespeak-ng once (caller holds ``_LOCK``)."""
    if "lib" in _STATE:
        return _STATE["lib"], _STATE["rate"]  # type: ignore[return-value]
    lib_path, data_path = espeak_paths()
    if not lib_path.is_file():
        raise TTSError(f"espeak-ng library {lib_path} does not exist; reinstall espeakng-loader or fix TALKGS_ESPEAK_LIB")
    if not (data_path / "phontab").is_file():
        raise TTSError(
            f"espeak-ng data folder {data_path} has no 'phontab'; reinstall espeakng-loader or point "
            "TALKGS_ESPEAK_DATA at an espeak-ng-data folder"
        )
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as e:
        raise TTSError(
            f"cannot load the espeak-ng library {lib_path}: {e}. Reinstall it (`pip install --force-reinstall "
            "espeakng-loader`) or set TALKGS_ESPEAK_LIB to a working libespeak-ng.so"
        ) from e
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_Callback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    options = _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), options)
    if rate <= 0:
        raise TTSError(
            f"espeak_Initialize failed (returned {rate}) with data {data_path}; the data folder may not match "
            f"the library {lib_path} — reinstall espeakng-loader"
        )
    _STATE.update(lib=lib, rate=rate)
    return lib, rate


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x
    from scipy.signal import resample_poly

    g = gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def synthesize_speech(
    text: str,
    sample_rate: int = 16000,
    *,
    voice: str = "en-us",
    rate_wpm: int = 165,
    pitch: int | None = None,
    pitch_range: int | None = None,
    isolate: bool = True,
) -> tuple[np.ndarray, int, list[SpeechEvent]]:
    """Synthesise ``text`` with espeak-ng, offline and deterministically.

    Args:
        text: UTF-8 text (plain, not SSML).
        sample_rate: output rate in Hz (espeak-ng synthesises at 22050 Hz; resampled).
        voice: espeak-ng voice name, optionally with a variant (``"en-us"``, ``"en-us+f3"``).
        rate_wpm: speaking rate in words per minute (80-450).
        pitch: base pitch 0-100 (espeak default 50); ``None`` keeps the voice's.
        pitch_range: pitch range 0-100; ``None`` keeps the voice's.
        isolate: synthesise in a fresh subprocess so the result does not depend on earlier
            calls in this process (espeak-ng state carries over); ``False`` is faster.

    Returns:
        ``(samples float32 [S] in [-1, 1], sample_rate, events)`` with events sorted by time.
    """
    if not text.strip():
        raise ValueError("synthesize_speech: text is empty")
    if not 80 <= rate_wpm <= 450:
        raise ValueError(f"synthesize_speech: rate_wpm must be in [80, 450], found {rate_wpm}")
    kwargs = dict(voice=voice, rate_wpm=int(rate_wpm), pitch=pitch, pitch_range=pitch_range)
    if isolate:
        return _synthesize_in_subprocess(text, int(sample_rate), kwargs)
    chunks: list[np.ndarray] = []
    raw_events: list[tuple[int, int, int, int, int, bytes]] = []

    def _cb(wav: ctypes.POINTER(ctypes.c_short), n: int, ev: ctypes.POINTER(_Event)) -> int:  # type: ignore[valid-type]
        if n > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while ev[i].type != _EV_LIST_TERMINATED:
            e = ev[i]
            name = bytes(e.id.string).split(b"\0")[0] if e.type == _EV_PHONEME else b""
            raw_events.append((e.type, e.text_position, e.length, e.audio_position, e.sample, name))
            i += 1
        return 0

    with _LOCK:
        lib, native = _init()
        callback = _Callback(_cb)  # keep a reference while espeak may call it
        lib.espeak_SetSynthCallback(callback)
        err = lib.espeak_SetVoiceByName(voice.encode())
        if err != 0:
            raise TTSError(f"espeak-ng has no voice {voice!r} (error {err}); try 'en-us', 'en', or 'en-us+f3'")
        lib.espeak_SetParameter(_PARAM_RATE, int(rate_wpm), 0)
        lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        if pitch is not None:
            lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        if pitch_range is not None:
            lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
        if hasattr(lib, "espeak_ng_SetRandSeed"):  # voice variants (+f3, ...) add random noise
            lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
        data = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        lib.espeak_SetSynthCallback(_Callback())  # drop our closure
        if pitch is not None:  # restore defaults for the next caller (global state)
            lib.espeak_SetParameter(_PARAM_PITCH, 50, 0)
        if pitch_range is not None:
            lib.espeak_SetParameter(_PARAM_RANGE, 50, 0)
    if err != 0:
        raise TTSError(f"espeak_Synth failed with error {err} for text {text[:60]!r}")
    if not chunks:
        raise TTSError(f"espeak-ng produced no audio for text {text[:60]!r}")
    pcm = np.concatenate(chunks).astype(np.float32) / 32768.0
    samples = _resample(pcm, native, int(sample_rate))
    samples = np.clip(samples, -1.0, 1.0).astype(np.float32)

    kinds = {_EV_WORD: "word", _EV_SENTENCE: "sentence", _EV_PHONEME: "phoneme", _EV_END: "end"}
    events = []
    for typ, pos, length, _ms, sample, name in raw_events:
        if typ not in kinds:
            continue
        events.append(
            SpeechEvent(
                kind=kinds[typ],
                time=sample / native,
                text_position=pos,
                length=length if typ == _EV_WORD else 0,
                phoneme=name.decode("utf-8", "replace") if typ == _EV_PHONEME else "",
            )
        )
    events.sort(key=lambda e: e.time)  # stable: keeps espeak's order at equal times
    return samples, int(sample_rate), events


def _synthesize_in_subprocess(text: str, sample_rate: int, kwargs: dict) -> tuple[np.ndarray, int, list[SpeechEvent]]:
    import talkgs

    src = str(Path(talkgs.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]))
    with tempfile.TemporaryDirectory(prefix="talkgs-tts-") as tmp:
        out = Path(tmp) / "speech.npz"
        request = json.dumps({"text": text, "sample_rate": sample_rate, "kwargs": kwargs, "out": str(out)})
        proc = subprocess.run(
            [sys.executable, "-m", "talkgs.tts"], input=request.encode(), capture_output=True, env=env, check=False
        )
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()
            last = err.splitlines()[-1] if err else f"exit status {proc.returncode}"
            if last.startswith("TTSError: "):
                raise TTSError(last[len("TTSError: ") :])
            raise TTSError(f"speech synthesis subprocess ({sys.executable} -m talkgs.tts) failed: {err[-2000:]}")
        with np.load(out) as z:
            samples = z["samples"].astype(np.float32)
            events = [SpeechEvent(**e) for e in json.loads(str(z["events"]))]
    return samples, sample_rate, events


def _worker() -> None:
    """``python -m talkgs.tts``: one synthesis request (JSON on stdin) -> npz file."""
    req = json.loads(sys.stdin.read())
    try:
        samples, _, events = synthesize_speech(req["text"], req["sample_rate"], isolate=False, **req["kwargs"])
    except (TTSError, ValueError) as e:
        print(f"TTSError: {e}", file=sys.stderr)
        sys.exit(3)
    ev = json.dumps([e.__dict__ for e in events])
    np.savez(req["out"], samples=samples, events=np.array(ev))


if __name__ == "__main__":
    _worker()
