"""The ``phonemes`` audio encoder (pocketsphinx's real pretrained en-us model, no mocks) and
encoder concatenation (``mel+phonemes``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from talkgs.config import ConfigError, parse_params
from talkgs.features import audio as A
from talkgs.features import phonemes as P
from talkgs.features.build import FeaturesParams

SR = A.SAMPLE_RATE


def test_phone_sets_cover_every_phone_once() -> None:
    assert len(P.PHONES) == 40 and P.PHONES[0] == "SIL"
    members = [p for group in P.VISEMES.values() for p in group]
    assert sorted(members) == sorted(P.PHONES), "each phone in exactly one viseme class"
    vis = P.phone_to_class("visemes")
    assert vis["P"] == vis["B"] == vis["M"] != vis["F"] and vis["SIL"] == 0
    assert P.class_names("visemes")[vis["M"]] == "bilabial"
    with pytest.raises(ValueError, match="phone_set must be one of"):
        P.class_names("letters")


def test_labels_to_frames() -> None:
    # 100 Hz frame f is centred on sample 160 f + 205; 50 Hz frame n covers [320 n, 320 n + 320)
    labels = np.array([0, 0, 3, 3, 3, 5, 5, 5, 5, 5], np.int64)
    out = P.labels_to_frames(labels, 5, 8, smoothing_frames=0.0)
    assert out.shape == (5, 8) and np.allclose(out.sum(1), 1.0)
    # frame 0: 100 Hz frame 0 (centre 205); frame 1: frames 1, 2 (365, 525); frame 2: 3, 4; frame 3: 5, 6; frame 4: 7, 8
    expected = np.zeros((5, 8))
    expected[0, 0] = 1
    expected[1, [0, 3]] = 0.5
    expected[2, 3] = 1
    expected[3, 5] = 1
    expected[4, 5] = 1
    np.testing.assert_allclose(out, expected)
    smooth = P.labels_to_frames(labels, 5, 8, smoothing_frames=1.0)
    assert np.allclose(smooth.sum(1), 1.0)
    assert 0 < smooth[2, 5] < smooth[3, 5] and smooth[0, 3] > 0, "smoothing spreads a class to its neighbours"
    # a frame no 100 Hz centre falls in (beyond the labels) is silence
    np.testing.assert_allclose(P.labels_to_frames(labels[:2], 3, 8, 0.0)[2], np.eye(8)[0])


def test_params_and_concatenation_names() -> None:
    FeaturesParams(audio_encoders=["mel", "phonemes", "mel+phonemes"])
    with pytest.raises(ValueError, match="unknown audio encoder 'phonems'.*Did you mean 'phonemes'"):
        FeaturesParams(audio_encoders=["mel+phonems"])
    with pytest.raises(ValueError, match="names an encoder twice"):
        FeaturesParams(audio_encoders=["mel+mel"])
    with pytest.raises(ValueError, match="phone_set"):
        FeaturesParams(phone_set="letters")


def test_variant_feature_must_be_built() -> None:
    import yaml

    data = yaml.safe_load(Path("params.yaml").read_text())
    data["train"]["variants"][data["evaluate"]["variants"][0]]["audio_feature"] = "phonemes"
    data["features"] = {"audio_encoders": ["mel"]}
    with pytest.raises(ConfigError, match="audio_feature is 'phonemes', which features.audio_encoders"):
        parse_params(data)


@pytest.fixture(scope="module")
def obama(shared_data: Path) -> np.ndarray:
    return A.load_wav_16k(shared_data / "audio" / "obama_5s.wav")


def test_real_english_speech(obama: np.ndarray) -> None:
    """pocketsphinx's real model on real English speech: a normal phone rate, speech mostly not
    silence, a deterministic result, frames on the shared 50 Hz grid."""
    p = A.AudioEncoderParams(name="phonemes")
    enc = A.get_encoder(p)
    labels = enc.labels(obama)
    seconds = len(obama) / SR
    changes = np.count_nonzero(np.diff(labels)) / seconds
    assert 5.0 < changes < 20.0, f"{changes:.1f} phone changes per second (speech is ~8-12)"
    assert (labels != 0).mean() > 0.5, "most of a 5 s speech recording is speech"
    np.testing.assert_array_equal(labels, enc.labels(obama))
    feats = A.encode_samples(obama, p, encoder=enc)
    assert feats.shape == (A.frame_count(len(obama), 25.0), 16, 40)
    np.testing.assert_allclose(feats.sum(-1), 1.0, atol=1e-5)
    # silence decodes as silence
    quiet = enc.frames(np.zeros(SR, np.float32))
    assert quiet.argmax(1).max() == 0


def test_chunked_decoding_agrees(obama: np.ndarray) -> None:
    """Chunks of 1 s with 1 s of context label (nearly) every frame as one 5 s utterance does."""
    import dataclasses

    whole = A.get_encoder(A.AudioEncoderParams(name="phonemes", phone_chunk_s=10.0)).labels(obama)
    chunked = A.get_encoder(dataclasses.replace(A.AudioEncoderParams(name="phonemes"), phone_chunk_s=1.0)).labels(obama)
    assert len(whole) == len(chunked)
    assert (whole == chunked).mean() > 0.8


def test_visemes_and_concat(obama: np.ndarray) -> None:
    vis = A.encode_samples(obama, A.AudioEncoderParams(name="phonemes", phone_set="visemes"))
    assert vis.shape[-1] == len(P.VISEMES)
    mel = A.encode_samples(obama, A.AudioEncoderParams(name="mel"))
    both_p = A.AudioEncoderParams(name="mel+phonemes")
    both = A.encode_samples(obama, both_p)
    phon = A.encode_samples(obama, A.AudioEncoderParams(name="phonemes"))
    np.testing.assert_array_equal(both, np.concatenate([mel, phon], axis=2))
    enc = A.get_encoder(both_p)
    assert enc.dim == 120 and [d["encoder"] for d in enc.describe()["parts"]] == ["mel", "phonemes"]


def test_missing_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import subprocess
    import sys

    from talkgs.pretrained import PretrainedMissing

    missing = tmp_path / "no-such-hmm"
    monkeypatch.setenv("TALKGS_SPHINX_HMM", str(missing))
    with pytest.raises(PretrainedMissing, match=f"{missing}: pocketsphinx en-us acoustic model not found.*TALKGS_SPHINX_HMM"):
        A.get_encoder(A.AudioEncoderParams(name="phonemes"))
    # `make setup` runs this check: exit 2 with the message
    proc = subprocess.run([sys.executable, "-m", "talkgs.pretrained"], capture_output=True, text=True)
    assert proc.returncode == 2 and str(missing) in proc.stderr
    monkeypatch.delenv("TALKGS_SPHINX_HMM")
    proc = subprocess.run([sys.executable, "-m", "talkgs.pretrained"], capture_output=True, text=True)
    assert proc.returncode == 0 and "shape_predictor_68_face_landmarks.dat" in proc.stdout
