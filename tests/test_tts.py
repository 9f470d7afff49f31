"""Offline speech synthesis through the espeak-ng C API (talkgs.tts)."""

from __future__ import annotations

import numpy as np
import pytest

from talkgs.tts import TTSError, espeak_paths, synthesize_speech


def test_speech_and_events() -> None:
    samples, sr, events = synthesize_speech("Hello world. Splat the head.", 16000)
    assert sr == 16000 and samples.dtype == np.float32 and samples.ndim == 1
    assert 1.0 < len(samples) / sr < 5.0
    assert np.abs(samples).max() <= 1.0 and np.sqrt(np.mean(samples**2)) > 0.01
    words = [e for e in events if e.kind == "word"]
    assert [e.length for e in words] == [5, 5, 5, 3, 4]
    assert [e.text_position for e in words] == [1, 7, 14, 20, 24]
    ph = [e for e in events if e.kind == "phoneme"]
    times = [e.time for e in events]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= len(samples) / sr + 1e-6
    symbols = "".join(e.phoneme for e in ph)
    assert "h" in symbols and "w" in symbols and "p" in symbols  # IPA of "hello world ... splat"
    assert sum(e.kind == "sentence" for e in events) == 2
    # speech energy sits between the first and the last word event
    first_word = words[0].time
    assert first_word < 0.2


def test_deterministic_across_calls() -> None:
    # the +f3 variant adds random breath noise: seeded, and each call runs in a fresh process
    a, _, ea = synthesize_speech("Gaussian splatting.", 16000, voice="en-us+f3")
    b, _, eb = synthesize_speech("Gaussian splatting.", 16000, voice="en-us+f3")
    assert np.array_equal(a, b) and ea == eb


def test_native_rate_and_resampling() -> None:
    a, sra, _ = synthesize_speech("One two three.", 22050)
    b, srb, _ = synthesize_speech("One two three.", 16000)
    assert (sra, srb) == (22050, 16000)
    assert abs(len(a) / sra - len(b) / srb) < 2e-3


def test_unknown_voice_is_a_clear_error() -> None:
    with pytest.raises(TTSError, match="no voice 'xx-none'"):
        synthesize_speech("Hello.", voice="xx-none")


def test_missing_library_names_the_file_and_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    _, data = espeak_paths()
    missing = tmp_path / "libespeak-ng.so.1"
    monkeypatch.setenv("TALKGS_ESPEAK_LIB", str(missing))
    monkeypatch.setenv("TALKGS_ESPEAK_DATA", str(data))
    with pytest.raises(TTSError, match="espeakng-loader") as e:
        synthesize_speech("Hello.")
    assert str(missing) in str(e.value)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        synthesize_speech("  ")
    with pytest.raises(ValueError, match="rate_wpm"):
        synthesize_speech("Hello.", rate_wpm=10)
