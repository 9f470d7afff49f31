"""Stage commands run the Python of the environment dvc was started from: `.venv/bin/dvc repro`
works without the venv activated (dvc.yaml's commands go through stages/python.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HELLO = "import sys, talkgs\nopen('out.txt', 'w').write(sys.executable + '\\n' + talkgs.__file__ + '\\n')\n"


def _bare_env(**extra: str) -> dict[str, str]:
    """An environment without the venv: PATH has only the system folders, nothing activated."""
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "PYTHONPATH", "TMPDIR")}
    env.update(PATH="/usr/bin:/bin", DVC_NO_ANALYTICS="1", **extra)
    return env


def test_every_stage_command_uses_the_launcher():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        cmd = stage.get("do", stage)["cmd"]
        script = cmd.split()[2] if cmd.startswith("sh stages/python.sh ") else None
        assert script and (REPO / script).is_file(), f"stage {name}: {cmd!r} must run `sh stages/python.sh stages/<stage>.py`"


@pytest.fixture(scope="module")
def hello_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("launcher") / "repo"
    (root / "stages").mkdir(parents=True)
    shutil.copy(REPO / "stages/python.sh", root / "stages/python.sh")
    (root / "stages/hello.py").write_text(HELLO)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True, env=_bare_env())
    return root


@pytest.mark.skipif(not (VENV_BIN / "dvc").is_file(), reason=f"no dvc console script next to {sys.executable}")
@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_unactivated_venv_dvc_runs_stages_with_its_python(hello_repo: Path, shell: str):
    if not Path(shell).is_file():
        pytest.skip(f"{shell} not installed")
    dvc = str(VENV_BIN / "dvc")
    (hello_repo / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: python stages/hello.py\n    outs: [out.txt]\n")
    old = subprocess.run([dvc, "repro", "-f"], cwd=hello_repo, env=_bare_env(SHELL=shell), capture_output=True, text=True)
    assert old.returncode != 0, "a bare `python` is not the venv's without activation (the bug this fixes)"

    (hello_repo / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: sh stages/python.sh stages/hello.py\n    outs: [out.txt]\n")
    proc = subprocess.run([dvc, "repro", "-f"], cwd=hello_repo, env=_bare_env(SHELL=shell), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exe, pkg = (hello_repo / "out.txt").read_text().splitlines()
    assert Path(exe) == VENV_BIN / Path(sys.executable).name, "the interpreter of the venv dvc was started from (its path, not the base Python)"
    assert Path(pkg).parent.name == "talkgs"


def test_talkgs_python_overrides(hello_repo: Path):
    out = subprocess.run(
        ["sh", "stages/python.sh", "-c", "import sys; print(sys.executable)"], cwd=hello_repo,
        env=_bare_env(TALKGS_PYTHON=sys.executable), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert out == sys.executable
