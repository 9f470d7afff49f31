"""Shared fixtures. `import talkgs` first: it sets OMP_WAIT_POLICY before torch/numba load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import talkgs  # noqa: F401
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("TALKGS_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real clips and speech). Skips when absent, except in CI where
    ``TALKGS_REQUIRE_SHARED=1`` turns its absence into a failure."""
    d = shared_data_dir()
    if not (d / "videos").is_dir():
        msg = (
            f"real clips not found at {d} (../shared/data beside the checkout, or set TALKGS_SHARED_DATA); "
            "this test needs the talking-portrait clips"
        )
        if os.environ.get("TALKGS_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " — TALKGS_REQUIRE_SHARED=1 (CI) requires them")
        pytest.skip(msg)
    return d


def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """An empty git + DVC repository with the project's params.yaml."""
    root = tmp_path / "repo"
    root.mkdir()
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


# --- preprocessing (extract / segment) -------------------------------------------------------

PREPROCESS_RES = 256
"""Resolution of the shared may_5s extract/segment outputs used by the preprocessing tests."""


@pytest.fixture(scope="session")
def may_video(shared_data: Path) -> Path:
    """The 5 s, 125-frame May clip (512², 25 fps, AAC 48 kHz)."""
    path = shared_data / "videos" / "may_5s.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def may_extract(may_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``extract`` output of may_5s at 256² (built once per session)."""
    from talkgs.preprocess.extract import ExtractParams, extract

    out = tmp_path_factory.mktemp("may") / "extract"
    extract(may_video, out, ExtractParams(resolution=PREPROCESS_RES), progress=False)
    return out


@pytest.fixture(scope="session")
def may_segment(may_extract: Path) -> Path:
    """``segment`` output of :func:`may_extract` (built once per session)."""
    from talkgs.preprocess.segment import SegmentParams, segment

    out = may_extract.parent / "segment"
    segment(may_extract, out, SegmentParams(), progress=False)
    return out


def ffmpeg_run(*args: str) -> None:
    """Run the bundled ffmpeg (tests build their bad inputs with it); fail loudly."""
    from talkgs.io.media import ffmpeg_exe

    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr.decode(errors='replace')[-2000:]}")


@pytest.fixture(scope="session")
def ffmpeg():
    """:func:`ffmpeg_run`: run the bundled ffmpeg with the given arguments."""
    return ffmpeg_run


# --- training (talkgs.train) ------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_subject():
    """A synthetic 16-frame 32² subject (:func:`talkgs.train.synthetic.synthetic_subject`)."""
    from talkgs.train.synthetic import synthetic_subject

    return synthetic_subject(16, 32)


def repo_train_params():  # noqa: ANN201
    """``train`` of the repository's ``params.yaml`` (where the variants are defined, once)."""
    from talkgs.config import load_params

    return load_params(REPO / "params.yaml").train


def repo_variants() -> list[str]:
    """Every variant ``params.yaml`` defines (the suite trains each one)."""
    return sorted(repo_train_params().variants)


def tiny_variant_of(name: str, steps_per_phase: int = 3, **preset):  # noqa: ANN201
    """Variant ``name`` of ``params.yaml`` shrunk to ~``steps_per_phase`` steps per 8k-step
    phase, ≤300 Gaussians (the preset ``cpu`` is not applied: these knobs replace it)."""
    from talkgs.train.params import PresetParams, apply_preset

    kw = dict(init_points=150, max_gaussians=300, iteration_scale=steps_per_phase / 8000, loss_weights={"lpips": 0.0},
              sh_degree=1, triplane_resolution=8, checkpoint_every=2)  # fmt: skip
    kw.update(preset)
    return apply_preset(repo_train_params().variants[name], PresetParams(**kw))


def tiny_sync_expert(path: Path, audio_shape: tuple[int, int] = (8, 4), seed: int = 0) -> Path:
    """A small (untrained, seeded) sync expert checkpoint in the ``sync_expert`` stage's format, for
    mel windows of ``audio_shape`` = (channels, columns) (:func:`tiny_subject`'s: 8 x 4): the
    pipeline asset of the variants built from the expert, for training-loop tests."""
    import torch

    from talkgs.sync.model import SyncExpertNet, save_expert, talkgs_spec

    path.parent.mkdir(parents=True, exist_ok=True)
    spec = talkgs_spec(height=16, width=32, color="gray", frames=5, crop_scale=0.7, audio_shape=audio_shape)
    kw = {"spec": spec, "width": 4, "embed_dim": 8}
    torch.manual_seed(seed)
    net = SyncExpertNet(**kw)
    save_expert(path, {"arch": "talkgs", "net": kw, "spec": spec, "state_dict": net.state_dict(), "config": {}, "config_hash": "test",
                       "step": 0, "finished": True, "source": "tests"})  # fmt: skip
    return path


def tiny_assets(variant, tmp_path: Path) -> dict[str, Path]:  # noqa: ANN001 - VariantParams
    """The assets ``variant`` requires, made small (:func:`tiny_sync_expert`)."""
    makers = {"sync_expert": lambda: tiny_sync_expert(tmp_path / "tiny_sync_expert.pt")}
    return {name: makers[name]() for name in variant.required_assets()}


@pytest.fixture
def tiny_variant():
    """Factory: ``tiny_variant("gaussiantalker")`` → a few-step, few-Gaussian variant."""
    return tiny_variant_of


# --- track / features -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def may_track(may_extract: Path) -> Path:
    """``track`` output of :func:`may_extract` (256², default params; built once per session)."""
    from talkgs.preprocess.track import TrackParams, track

    out = may_extract.parent / "track"
    track(may_extract, out, TrackParams(), progress=False)
    return out


@pytest.fixture(scope="session")
def may_features(may_extract: Path, may_track: Path) -> Path:
    """``features`` output (mel audio) of :func:`may_extract` + :func:`may_track`."""
    from talkgs.features import FeaturesParams, build_features

    out = may_extract.parent / "features"
    build_features(may_extract, may_track, out, FeaturesParams(), progress=False)
    return out


@pytest.fixture(scope="session")
def astronaut_landmarks():  # noqa: ANN201 - float32 [478, 3]
    """MediaPipe landmarks ``float32 [478, 3]`` of scikit-image's astronaut (a real face, static mode)."""
    from skimage import data

    from talkgs.preprocess.facemesh import FaceMesh

    with FaceMesh(static=True) as mesh:
        lm = mesh.process(data.astronaut())
    assert lm is not None
    return lm


def speech_like_wav(path, seconds: float, sr: int = 16000, seed: int = 0):  # noqa: ANN001, ANN201
    """A 16 kHz wav of amplitude-modulated harmonics (speech-like energy changes), for tests."""
    import numpy as np

    from talkgs.io.media import write_wav

    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6))
    x = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 900, 2300), 1))
    write_wav(path, 0.2 * env * x / 3 + 0.01 * rng.standard_normal(len(t)), sr)
    return path


@pytest.fixture(scope="session")
def tiny_subject_dir(tiny_subject, tmp_path_factory):  # noqa: ANN001, ANN201
    """:func:`tiny_subject` written as a pipeline subject folder (extract/segment/features)."""
    from talkgs.train.synthetic import write_subject_folder

    root = tmp_path_factory.mktemp("subject") / "tiny"
    wav = speech_like_wav(tmp_path_factory.mktemp("wav") / "speech.wav", tiny_subject.n_frames / tiny_subject.fps + 0.1)
    write_subject_folder(tiny_subject, root, wav)
    return root
