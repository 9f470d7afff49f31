"""The `talkgs` command line: every subcommand has --help; errors are one clear line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from talkgs.cli import build_parser, main

COMMANDS = [
    "make-demo", "add-subject", "subjects", "audios", "extract", "segment", "track", "features", "audio-features",
    "pretrain", "train", "evaluate", "report", "sync-expert", "synthesize", "metrics-diff", "params", "repro",
]


def test_every_command_has_help(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) == set(sub.choices)
    for c in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([c, "--help"])
        assert e.value.code == 0
        assert "usage: talkgs" in capsys.readouterr().out


def test_console_script_installed():
    exe = Path(sys.executable).parent / "talkgs"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "make-demo" in out and "add-subject" in out


def test_params_prints_resolved_defaults(dvc_repo: Path, capsys):
    assert main(["--root", str(dvc_repo), "params"]) == 0
    out = capsys.readouterr().out
    assert "extract:" in out and "resolution:" in out and "catalog:" in out


def test_config_error_is_one_line_exit_2(dvc_repo: Path, caplog):
    assert main(["--root", str(dvc_repo), "extract", "--subject", "may"]) == 2
    assert "talkgs subjects enable may" in caplog.text


def test_subjects_enable_then_list(dvc_repo: Path, capsys):
    assert main(["--root", str(dvc_repo), "subjects", "enable", "--all"]) == 0
    assert "enabled: aoc, german" in capsys.readouterr().out
    assert main(["--root", str(dvc_repo), "subjects"]) == 0
    out = capsys.readouterr().out
    assert "radio2" in out and "enabled" in out

    from talkgs.config import load_params

    p = load_params(dvc_repo / "params.yaml")
    assert len(p.subjects) == 9 and not p.catalog


def test_make_demo_command_writes_mp4(dvc_repo: Path, tmp_path: Path, capsys):
    out = tmp_path / "d.mp4"
    assert main(["-q", "--root", str(dvc_repo), "make-demo", "--out", str(out), "--seconds", "2", "--size", "128"]) == 0
    assert out.stat().st_size > 10_000 and "50 frames" in capsys.readouterr().out


def test_synthesize_without_model_says_how_to_train(dvc_repo: Path, tmp_path: Path, caplog):
    rc = main(["--root", str(dvc_repo), "synthesize", "--subject", "demo", "--variant", "gaussiantalker",
               "--audio", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o.mp4")])  # fmt: skip
    assert rc == 2 and "dvc repro train@demo-gaussiantalker" in caplog.text
    assert not (tmp_path / "o.mp4").exists()


def test_python_dash_m_talkgs_is_the_command() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "talkgs", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "add-subject" in out.stdout, out.stderr
