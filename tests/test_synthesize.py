"""Synthesis and test-split rendering on a tiny trained model: valid H.264 + AAC mp4s; the
subject-folder loader reads the pipeline layout."""

from __future__ import annotations

import talkgs  # noqa: F401
import pytest
import torch

from talkgs.io.video import probe
from talkgs.synthesize import render_test, synthesize
from talkgs.train.data import DataError, load_subject
from talkgs.train.loop import train


@pytest.fixture(scope="module")
def tiny_model(tiny_subject_dir, tmp_path_factory):
    from conftest import tiny_variant_of

    out = tmp_path_factory.mktemp("models") / "gaussiantalker"
    train(tiny_subject_dir, out, tiny_variant_of("gaussiantalker", steps_per_phase=2), progress=False)
    return out


def test_load_subject_folder(tiny_subject_dir, tiny_subject) -> None:
    d = load_subject(tiny_subject_dir)
    assert d.n_frames == tiny_subject.n_frames and d.audio.shape[1:] == (4, 8)
    assert torch.allclose(d.viewmats, tiny_subject.viewmats) and torch.allclose(d.au45, tiny_subject.au45)
    assert len(d.test_idx) == 2 and d.audio_path is not None and d.audio_path.is_file()
    half = load_subject(tiny_subject_dir, resolution=16)
    assert half.images.shape[1:3] == (16, 16) and torch.allclose(half.K[0, 0], d.K[0, 0] / 2)
    # frames resized as they are read == the whole clip loaded, then resized
    ref = d.resized(16)
    for k in ("images", "backgrounds", "plate", "labels", "K", "landmarks"):
        assert torch.equal(getattr(half, k), getattr(ref, k)), k
    with pytest.raises(DataError, match="features stage"):
        load_subject(tiny_subject_dir, audio_feature="hubert")


def test_load_subject_names_the_missing_stage(tmp_path) -> None:
    (tmp_path / "s" / "extract").mkdir(parents=True)
    with pytest.raises(DataError, match="segment"):
        load_subject(tmp_path / "s")


def test_synthesize_writes_video_with_audio(tiny_model, tiny_subject_dir, tmp_path) -> None:
    from conftest import speech_like_wav

    wav = speech_like_wav(tmp_path / "other.wav", 1.0, seed=5)  # longer than the 14 training frames: loops back and forth
    res = synthesize(tiny_subject_dir, tiny_model, wav, tmp_path / "out.mp4", progress=False)
    assert res["frames"] == 25 and res["fps"] > 0
    info = probe(tmp_path / "out.mp4")
    assert info.video_codec == "h264" and info.has_audio and info.audio_codec == "aac"
    assert (info.width, info.height) == (32, 32)
    assert info.duration_s is not None and abs(info.duration_s - 1.0) < 0.15


def test_render_test_split(tiny_model, tiny_subject_dir, tmp_path) -> None:
    res = render_test(tiny_subject_dir, tiny_model, tmp_path / "test.mp4", frames_dir=tmp_path / "frames", progress=False)
    assert res["frames"] == 2 and sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["000014.png", "000015.png"]
    info = probe(tmp_path / "test.mp4")
    assert (info.width, info.height) == (64, 32) and info.has_audio  # ground truth | render


def test_synthesize_from_precomputed_audio_features(tiny_model, tiny_subject_dir, tmp_path) -> None:
    """The ``audio_features`` stage's parquet of a foreign audio drives the model directly."""
    from conftest import speech_like_wav

    from talkgs.features import AudioEncoderParams, featurize_audio

    wav = speech_like_wav(tmp_path / "foreign.wav", 0.6, seed=9)
    featurize_audio(wav, tmp_path / "audio_mel.parquet", AudioEncoderParams(window=4, n_mels=8), progress=False)
    res = synthesize(tiny_subject_dir, tiny_model, wav, tmp_path / "o.mp4", audio_features=tmp_path / "audio_mel.parquet", progress=False)
    assert res["frames"] == 15 and probe(tmp_path / "o.mp4").has_audio
    featurize_audio(wav, tmp_path / "bad.parquet", AudioEncoderParams(window=2, n_mels=8), progress=False)
    with pytest.raises(ValueError, match=r"trained on windows \[4, 8\]"):
        synthesize(tiny_subject_dir, tiny_model, wav, tmp_path / "b.mp4", audio_features=tmp_path / "bad.parquet", progress=False)


def test_lazy_frames_read_what_the_arrays_hold(tiny_subject_dir) -> None:
    from talkgs.train.frames import LazyFrames

    eager, lazy = load_subject(tiny_subject_dir), load_subject(tiny_subject_dir, lazy=True)
    assert isinstance(lazy.images, LazyFrames) and lazy.images.shape == eager.images.shape
    for k in ("images", "backgrounds", "labels"):
        a, b = getattr(lazy, k), getattr(eager, k)
        assert torch.equal(a[3], b[3]) and torch.equal(a[::4], b[::4]) and torch.equal(a[torch.tensor([1, 2])], b[torch.tensor([1, 2])]), k
    small = lazy.resized(16)
    assert isinstance(small.images, LazyFrames) and torch.equal(small.images[2], eager.resized(16).images[2])
    with pytest.raises(IndexError):
        lazy.images[len(lazy.images)]
