"""Audio encoders: registry, alignment to video frames, transformers models loaded from a local
folder (tiny random-weight models built here), offline failure messages, foreign audio."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from talkgs.features import audio as A
from talkgs.features.build import FeaturesParams, featurize_audio
from talkgs.features.cache import read_audio_table
from talkgs.io.media import write_wav

SR = A.SAMPLE_RATE


def _tiny_config(kind: str):  # noqa: ANN202
    from transformers import HubertConfig, Wav2Vec2Config

    cls = HubertConfig if kind == "hubert" else Wav2Vec2Config
    return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
               num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=12)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-weight HuBERT and wav2vec2 models (hidden 32, 2 layers) saved like hub downloads."""
    from transformers import HubertModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("audio_models")
    out = {}
    for kind, cls in (("hubert", HubertModel), ("wav2vec2", Wav2Vec2Model)):
        d = root / kind
        cls(_tiny_config(kind)).save_pretrained(d)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True).save_pretrained(d)
        out[kind] = d
    return out


def test_mel_filterbank() -> None:
    fb = A.mel_filterbank(80, 512, SR, 55.0, 7600.0)
    assert fb.shape == (80, 257) and (fb >= 0).all()
    assert (fb.sum(1) > 0).all(), "every band must cover at least one FFT bin"
    peaks = fb.argmax(1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > peaks[0]


def test_mel_frames_contract() -> None:
    enc = A.get_encoder(A.AudioEncoderParams(), "cpu")
    for n in (512, 512 + 319, 512 + 320, SR):
        out = enc.frames(np.zeros(n, np.float32))
        assert out.shape == ((n - enc.receptive) // A.HOP + 1, 80)


@pytest.mark.parametrize("frame", [0, 7, 24])
def test_window_is_centred_on_the_video_frame(frame: int) -> None:
    """A 20 ms burst inside video frame i lands in the middle of frame i's window (index W/2 for
    the second 50 Hz frame of the video frame) and shifts by 2 encoder frames per video frame."""
    x = np.zeros(SR, np.float32)  # 1 s = 25 frames
    m = 2 * frame + 1  # second 50 Hz frame of video frame `frame`
    t = np.arange(A.HOP) / SR
    x[m * A.HOP : (m + 1) * A.HOP] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    feats = A.encode_samples(x, A.AudioEncoderParams(window=16))
    assert feats.shape == (25, 16, 80)
    energy = feats.mean(-1)
    assert int(energy[frame].argmax()) == 8
    if frame + 1 < 25:
        assert int(energy[frame + 1].argmax()) == 6
    # window 2: exactly the two encoder frames inside the video frame
    f2 = A.encode_samples(x, A.AudioEncoderParams(window=2))
    assert f2.shape == (25, 2, 80) and int(f2[frame].mean(-1).argmax()) == 1
    np.testing.assert_allclose(f2[frame, 1], feats[frame, 8], atol=1e-5)


def test_frame_count_and_edges() -> None:
    x = np.random.default_rng(0).normal(0, 0.1, int(2.02 * SR)).astype(np.float32)
    feats = A.encode_samples(x, A.AudioEncoderParams())
    assert feats.shape[0] == 50 and np.isfinite(feats).all()
    # outside the audio the encoder sees silence: the first window's left half is the floor value
    assert np.allclose(feats[0, :4], np.log(1e-5))
    assert A.encode_samples(x, A.AudioEncoderParams(), n_frames=60).shape[0] == 60


def test_registry() -> None:
    assert {"mel", "hubert", "wav2vec2"} <= set(A.available_encoders())
    with pytest.raises(ValueError, match="unknown audio encoder 'hubbert'.*Did you mean 'hubert'"):
        A.get_encoder(A.AudioEncoderParams(name="hubbert"))

    @A.register_audio_encoder("_test_const")
    class Const(A.AudioEncoder):
        name = "_test_const"
        dim = 3
        receptive = 400

        def __init__(self, params: A.AudioEncoderParams, device: torch.device) -> None:
            pass

        def frames(self, samples: np.ndarray, *, progress: bool = False) -> np.ndarray:
            n = (len(samples) - self.receptive) // A.HOP + 1
            return np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 3))

    try:
        feats = A.encode_samples(np.ones(SR, np.float32), A.AudioEncoderParams(name="_test_const", window=4))
        # frame index on the 50 Hz grid: window of video frame i starts at 2i + 1 - 2 → consecutive windows step 2
        np.testing.assert_array_equal(np.diff(feats[:, 0, 0]), 2.0)
        np.testing.assert_array_equal(np.diff(feats[0, :, 0]), 1.0)
        with pytest.raises(ValueError, match="already registered"):
            A.register_audio_encoder("_test_const")(Const)
    finally:
        A._REGISTRY.pop("_test_const", None)


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2"])
def test_transformers_encoder_from_local_folder(kind: str, tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModel

    params = A.AudioEncoderParams(name=kind, model=str(tiny_models[kind]))
    enc = A.get_encoder(params, "cpu")
    assert enc.dim == 32 and enc.receptive == 400
    x = np.random.default_rng(0).normal(0, 0.1, 2 * SR).astype(np.float32)
    feats = A.encode_samples(x, params, encoder=enc)
    assert feats.shape == (50, 16, 32) and np.isfinite(feats).all()
    # the encoder's frames are the model's hidden states on the same (normalised) samples
    seg = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    seg = seg[: (len(seg) - 400) // A.HOP * A.HOP + 400]  # whole frames only (base models group-norm over time)
    model = AutoModel.from_pretrained(tiny_models[kind]).eval()
    with torch.no_grad():
        ref = model(torch.as_tensor(seg)[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(enc.frames(seg), ref, atol=1e-5)
    # another layer
    f0 = A.encode_samples(x, A.AudioEncoderParams(name=kind, model=str(tiny_models[kind]), layer=0))
    assert f0.shape == feats.shape and not np.allclose(f0, feats)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        A.get_encoder(A.AudioEncoderParams(name=kind, model=str(tiny_models[kind]), layer=5))


def test_chunked_long_audio(tiny_models: dict[str, Path]) -> None:
    """Chunks with context reproduce the whole-clip frames away from chunk edges' influence
    closely, and exactly in shape; every frame is filled."""
    x = np.random.default_rng(1).normal(0, 0.1, int(3.5 * SR)).astype(np.float32)
    whole = A.get_encoder(A.AudioEncoderParams(name="hubert", model=str(tiny_models["hubert"]), chunk_s=10.0))
    chunked = A.get_encoder(A.AudioEncoderParams(name="hubert", model=str(tiny_models["hubert"]), chunk_s=1.0, context_s=0.5))
    a, b = whole.frames(x), chunked.frames(x)
    assert a.shape == b.shape and np.isfinite(b).all() and np.abs(b).sum(1).min() > 0
    # random-weight attention is global, so chunking changes values somewhat, but not wholesale
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr > 0.9


def test_missing_model_fails_fast_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    t0 = time.perf_counter()
    with pytest.raises(A.AudioModelError) as e:
        A.get_encoder(A.AudioEncoderParams(name="hubert"))
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert "facebook/hubert-large-ls960-ft" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "huggingface-cli download facebook/hubert-large-ls960-ft --local-dir models/hubert-large-ls960-ft" in msg
    assert "features.audio_models.hubert" in msg
    with pytest.raises(A.AudioModelError, match="model folder not found"):
        A.get_encoder(A.AudioEncoderParams(name="wav2vec2", model=str(tmp_path / "nope")))


def test_wrong_model_kind_and_missing_extractor(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(A.AudioModelError, match="is a 'wav2vec2' model, the hubert encoder expects hubert"):
        A.get_encoder(A.AudioEncoderParams(name="hubert", model=str(tiny_models["wav2vec2"])))
    from transformers import HubertModel

    d = tmp_path / "no_extractor"
    HubertModel(_tiny_config("hubert")).save_pretrained(d)
    with pytest.raises(A.AudioModelError, match="preprocessor_config.json"):
        A.get_encoder(A.AudioEncoderParams(name="hubert", model=str(d)))


def test_featurize_foreign_audio(tmp_path: Path, tiny_models: dict[str, Path], ffmpeg) -> None:  # noqa: ANN001
    rng = np.random.default_rng(2)
    wav = tmp_path / "speech.wav"
    write_wav(wav, rng.normal(0, 0.1, int(1.3 * SR)).astype(np.float32), SR)
    out = tmp_path / "audio_mel.parquet"
    info = featurize_audio(wav, out, FeaturesParams().audio_params("mel"), progress=False)
    tab = read_audio_table(out, encoder="mel")
    assert info["frames"] == 32 == len(tab) and tab.features.shape == (32, 16, 80)
    assert tab.meta["source"] == str(wav) and tab.meta["fps"] == 25.0
    # a 44.1 kHz stereo file is decoded and resampled through ffmpeg
    wav44 = tmp_path / "speech44.wav"
    ffmpeg("-i", str(wav), "-ar", "44100", "-ac", "2", str(wav44))
    out44 = tmp_path / "audio_hubert.parquet"
    params = FeaturesParams(audio_encoders=["hubert"], audio_models={"hubert": str(tiny_models["hubert"])})
    featurize_audio(wav44, out44, params.audio_params("hubert"), progress=False)
    assert read_audio_table(out44, encoder="hubert").features.shape == (32, 16, 32)
    silent = tmp_path / "silent.wav"
    write_wav(silent, np.zeros(SR, np.float32), SR)
    with pytest.raises(A.InputError, match="empty or silent"):
        featurize_audio(silent, tmp_path / "x.parquet", FeaturesParams().audio_params("mel"), progress=False)


def test_real_speech_mel(shared_data: Path) -> None:
    wav = shared_data / "audio" / "obama_5s.wav"
    feats = A.encode_wav(wav, A.AudioEncoderParams())
    x = A.load_wav_16k(wav)
    assert feats.shape == (A.frame_count(len(x), 25.0), 16, 80)
    # speech has structure over time: frame-to-frame change well above zero, values finite
    assert np.isfinite(feats).all() and np.abs(np.diff(feats[:, 8].mean(-1))).mean() > 0.05
