"""Progress when stderr is not a terminal (DVC piped, Prefect, CI logs): plain lines every
TALKGS_PROGRESS_SECONDS and at the end, from the one progress_bar every long loop uses; a rich
bar on a terminal."""

from __future__ import annotations

import io
import re

import pytest

from talkgs.configlib import ConfigError
from talkgs.progress import PlainProgress, iterate, progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_stderr_is_not_a_terminal(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv("TALKGS_PROGRESS_SECONDS", "0")
    with progress_bar(True, "steps", fields="phase {phase}, loss {loss:.3f}", count="step") as bar:
        assert isinstance(bar, PlainProgress)
        task = bar.add_task("train demo/gaussiantalker", total=4, completed=1, phase="", loss=0.0, rate=0.0)
        for s in (2, 3, 4):
            bar.update(task, completed=s, phase="deformation", loss=0.5 / s)
        bar.update(task, completed=4)  # a repeated final update prints nothing more
    lines = err.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(r"train demo/gaussiantalker: step 2/4 \(50%\), [\d.]+ steps/s, eta \d+s, phase deformation, loss 0\.250", lines[0]), lines[0]
    assert re.fullmatch(r"train demo/gaussiantalker: step 4/4 \(100%\), [\d.]+ steps/s, done in \d+s, phase deformation, loss 0\.125", lines[2]), lines[2]


def test_plain_lines_are_throttled_and_the_end_is_always_printed(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.delenv("TALKGS_PROGRESS_SECONDS", raising=False)
    assert list(iterate(range(500), True, "segment may")) == list(range(500))
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"segment may: 500/500 \(100%\), \d+ frames/s, done in \d+s", lines[0]), lines
    err.truncate(0), err.seek(0)
    with progress_bar(True, "chunks") as bar:  # a loop left early: its last state at the end
        t = bar.add_task("hubert encoder", total=10, rate=0.0)
        bar.advance(t)
        bar.advance(t)
    assert re.fullmatch(r"hubert encoder: 2/10 \(20%\), [\d.]+ chunks/s, done in \d+s\n", err.getvalue()), err.getvalue()


def test_rich_bar_on_a_terminal_and_silence_when_disabled(monkeypatch) -> None:
    from rich.progress import Progress

    monkeypatch.setattr("sys.stderr", _Tty())
    assert isinstance(progress_bar(True), Progress)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = progress_bar(False)
    assert isinstance(bar, Progress) and bar.disable


def test_a_bad_interval_names_the_variable(monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setenv("TALKGS_PROGRESS_SECONDS", "soon")
    with pytest.raises(ConfigError, match="TALKGS_PROGRESS_SECONDS='soon'.*seconds >= 0"):
        progress_bar(True)


def test_training_and_synthesis_print_lines_into_a_log(tiny_subject_dir, tiny_variant, tmp_path, monkeypatch) -> None:
    """The real loops, stderr captured as a log would be."""
    from talkgs.synthesize import synthesize
    from talkgs.train.loop import train

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv("TALKGS_PROGRESS_SECONDS", "0")
    v = tiny_variant("gaussiantalker", steps_per_phase=2)
    out = tmp_path / "gaussiantalker"
    train(tiny_subject_dir, out, v, progress=True)
    synthesize(tiny_subject_dir, out, tiny_subject_dir / "extract" / "audio.wav", tmp_path / "o.mp4", max_frames=3, progress=True)
    lines = err.getvalue().splitlines()
    n = v.total_iterations
    step = re.compile(rf"train {tiny_subject_dir.name}/gaussiantalker: step (\d+)/{n} \(\d+%\), [\d.]+ steps/s, (eta|done in) \w+, phase \w+, loss [\d.]+, \d+ Gaussians")
    steps = [int(m.group(1)) for m in map(step.fullmatch, lines) if m]
    assert steps == list(range(1, n + 1)), lines
    assert "done in" in next(x for x in lines if x.startswith(f"train {tiny_subject_dir.name}/gaussiantalker: step {n}/"))
    assert any(re.fullmatch(r"synthesize o\.mp4: frame 3/3 \(100%\), [\d.]+ frames/s, done in \d+s", x) for x in lines), lines
