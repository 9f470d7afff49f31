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
