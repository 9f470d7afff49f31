"""Subjects: add a user's video (checked, copied, `dvc add`, params), remove one, enable/disable
catalog clips. A rejected add or remove exits 2 with the file/key and the fix, and leaves the
workspace as it was: no copy, no .dvc file, params.yaml byte for byte unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from badclips import base_clip, no_audio, short, silent, with_audio
from talkgs.cli import main
from talkgs.config import ConfigError, load_params
from talkgs.preprocess.errors import InputError
from talkgs.subjects import add_subject, disable, enable, remove_subjects

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(may_video: Path, ffmpeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2.5 s of may_5s at 128² with its speech."""
    return base_clip(ffmpeg, may_video, tmp_path_factory.mktemp("clips") / "My Clip.MP4", seconds=2.5, size=128)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with the project's params.yaml and dvc.yaml (it says which files
    stages own), made once: `dvc init` takes seconds."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("template") / "repo"
    root.mkdir()
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    subprocess.run(["git", "init", "-q"], cwd=root, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, env=env, check=True, capture_output=True)
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / f, root / f)
    return root


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of :func:`template`."""
    return Path(shutil.copytree(template, tmp_path / "repo", symlinks=True))


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the workspace but DVC's own folder (its cache may keep what `dvc add` stored)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and ".dvc" not in p.relative_to(root).parts[:1] and ".git" not in p.relative_to(root).parts[:1]}


def _position(text: str, *needles: str) -> list[int]:
    return [text.index(n) for n in needles]


def test_enable_disable_keeps_comments(repo: Path):
    pf = repo / "params.yaml"
    assert enable(["may", "trump"], pf) == ["may", "trump"]
    p = load_params(pf)
    assert {"demo", "may", "trump"} <= set(p.subjects) and "may" not in p.catalog
    assert "# Opt-in subjects" in pf.read_text()
    assert enable(["may"], pf) == []  # idempotent
    assert disable(["may"], pf) == ["may"]
    assert "may" in load_params(pf).catalog
    with pytest.raises(ConfigError, match="no subject 'nope'"):
        enable(["nope"], pf)


def test_disabling_a_subject_takes_it_out_of_the_few_shot_sweep(repo: Path):
    pf = repo / "params.yaml"
    enable(["may", "trump"], pf)
    pf.write_text(pf.read_text().replace("    subjects: []", "    subjects: [may, trump]"))
    assert load_params(pf).evaluate.few_shot.subjects == ["may", "trump"]
    disable(["may"], pf)
    p = load_params(pf)
    assert p.evaluate.few_shot.subjects == ["trump"] and "may" in p.catalog


def test_enable_disable_keep_entries_inside_their_groups(repo: Path):
    """The comment heading a section stays above it: entries land inside their group, not under
    the next section's heading (ruamel keeps that heading on the group's last entry)."""
    pf = repo / "params.yaml"
    enable(["radio2", "may"], pf)  # radio2 is the catalog's last entry: it carries the audios heading
    t = pf.read_text()
    a = _position(t, "subjects:", "  radio2:", "  may:", "# Opt-in subjects", "catalog:", "# Foreign speech", "audios:")
    assert a == sorted(a), t[:1500]
    assert t.index("# Foreign speech") > t.index("  markey:"), "the audios heading follows the catalog's new last entry"
    disable(["radio2", "may", "demo"], pf)
    t = pf.read_text()
    a = _position(t, "subjects: {}", "# Opt-in subjects", "catalog:", "  radio2:", "# Foreign speech", "audios:")
    assert a == sorted(a), t[:1500]
    enable(sorted(load_params(pf).catalog), pf)
    t = pf.read_text()
    a = _position(t, "subjects:", "  demo:", "# Opt-in subjects", "catalog: {}", "# Foreign speech", "audios:")
    assert a == sorted(a), t[:1500]
    assert len(load_params(pf).subjects) == 9


def test_add_subject_checks_copies_tracks_and_registers(repo: Path, clip: Path):
    pf = repo / "params.yaml"
    dest = add_subject("mine", clip, resolution=128, params_file=pf)
    assert dest == repo / "data/raw/mine.mp4" and dest.read_bytes() == clip.read_bytes()
    assert (repo / "data/raw/mine.mp4.dvc").is_file(), "tracked with dvc add"
    assert "/mine.mp4" in (repo / "data/raw/.gitignore").read_text()
    s = load_params(pf).subjects["mine"]
    assert s.video == "data/raw/mine.mp4" and s.resolution == 128
    t = pf.read_text()
    a = _position(t, "subjects:", "  demo:", "  mine:", "# Opt-in subjects", "catalog:")
    assert a == sorted(a), "the entry lands inside `subjects`, above the catalog's heading"
    with pytest.raises(ConfigError, match="already exists.*--force"):
        add_subject("mine", clip, params_file=pf)


def _silent(ff, src: Path, d: Path) -> Path:
    return silent(ff, src, d, layout="mono")


def _pink_noise(ff, src: Path, d: Path) -> Path:
    return with_audio(ff, src, "anoisesrc=color=pink:amplitude=0.3:r=48000", d / "x.mp4")


def _text(ff, src: Path, d: Path) -> Path:
    (d / "x.mp4").write_text("x\n")  # `echo x > t.mp4`
    return d / "x.mp4"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_text, r"x\.mp4: cannot be read as a video .*re-encode it"),
        (no_audio, r"x\.mp4: has no audio track.*ffmpeg -i VIDEO -i SPEECH\.wav"),
        (_silent, r"x\.mp4: the audio track is silent.*use the original recording with sound"),
        (_pink_noise, r"x\.mp4: the audio track does not sound like speech.*extract\.speech_check\.on_fail: warning"),
        (short, r"x\.mp4: the video is 1\.\d+ s long, shorter than extract\.min_duration_s=2 s\. Use a longer clip"),
    ],
)
def test_add_subject_rejects_a_bad_clip_before_copying(repo: Path, clip: Path, ffmpeg, tmp_path: Path, caplog, make, message):  # noqa: ANN001
    bad = make(ffmpeg, clip, tmp_path)
    before = _snapshot(repo)
    assert main(["--root", str(repo), "add-subject", "t", str(bad)]) == 2
    assert __import__("re").search(message, caplog.text), caplog.text
    assert _snapshot(repo) == before and not (repo / "data").exists(), "no copy, no .dvc file, params.yaml unchanged"
    with pytest.raises(InputError):
        add_subject("t", bad, params_file=repo / "params.yaml")


@pytest.mark.parametrize("name", ["raw", "audio", "pretrain"])
def test_reserved_names_are_refused_up_front(repo: Path, tmp_path: Path, caplog, name: str):
    junk = tmp_path / "junk.mp4"
    junk.write_text("x\n")  # the name is checked first: the file is never looked at
    before = _snapshot(repo)
    assert main(["--root", str(repo), "add-subject", name, str(junk)]) == 2
    assert f"subject name {name!r} is reserved" in caplog.text and f"e.g. '{name}_1'" in caplog.text
    assert ".tmp" not in caplog.text and "cannot be read" not in caplog.text
    assert _snapshot(repo) == before and not (repo / "data").exists()


def test_force_never_overwrites_a_stage_output(repo: Path, clip: Path, caplog):
    demo = repo / "data/raw/demo.mp4"
    demo.parent.mkdir(parents=True)
    demo.write_bytes(b"the make_demo stage's clip")
    before = _snapshot(repo)
    assert main(["--root", str(repo), "add-subject", "demo", str(clip), "--force"]) == 2
    assert "data/raw/demo.mp4 is the output of stage 'make_demo' (dvc.yaml); add-subject never overwrites it (also with --force)" in caplog.text
    assert _snapshot(repo) == before


def test_resolution_option_is_checked(repo: Path, clip: Path, caplog):
    before = _snapshot(repo)
    assert main(["--root", str(repo), "add-subject", "x", str(clip), "--resolution", "-5"]) == 2
    assert "--resolution: -5 is out of range: use an even integer in 64..4096 (pixels)" in caplog.text
    with pytest.raises(ConfigError, match=r"subjects\.x\.resolution: 100000 is out of range"):
        add_subject("x", clip, resolution=100000, params_file=repo / "params.yaml")
    assert _snapshot(repo) == before


def test_a_failing_step_undoes_the_others(repo: Path, clip: Path, monkeypatch):
    """`dvc add` fails after the copy: the copy goes, a replaced copy comes back, params.yaml stays."""
    import talkgs.subjects as subjects

    pf = repo / "params.yaml"
    add_subject("mine", clip, params_file=pf)
    before = _snapshot(repo)

    def fail(args, cwd):  # noqa: ANN001
        (cwd / "data/raw/.gitignore").write_text("/mine.mp4\n/half-written\n")  # dvc got half-way
        raise RuntimeError("`dvc add` failed: simulated")

    monkeypatch.setattr(subjects, "_dvc", fail)
    other = clip.with_name("other.mp4")
    shutil.copy(clip, other)
    with other.open("ab") as f:
        f.write(b"\0" * 16)  # another file, still a valid mp4
    with pytest.raises(RuntimeError, match="simulated"):
        add_subject("mine", other, force=True, params_file=pf)
    with pytest.raises(RuntimeError, match="simulated"):
        add_subject("second", other, params_file=pf)
    assert _snapshot(repo) == before
    assert not [p for p in (repo / "data/raw").iterdir() if p.name.startswith(".") and p.name != ".gitignore"], "no backups left"


def test_remove_lists_then_deletes_with_yes(repo: Path, clip: Path, capsys):
    pf = repo / "params.yaml"
    add_subject("mine", clip, params_file=pf)
    (repo / "data/mine/extract").mkdir(parents=True)
    before = _snapshot(repo)
    assert main(["--root", str(repo), "subjects", "remove", "mine"]) == 2
    out = capsys.readouterr().out
    for line in ("removes subjects.mine from params.yaml", "deletes data/raw/mine.mp4.dvc", "deletes data/raw/mine.mp4",
                 "keeps the pipeline outputs data/mine/", "nothing removed: rerun with --yes"):  # fmt: skip
        assert line in out, out
    assert _snapshot(repo) == before, "without --yes nothing changes"
    assert main(["--root", str(repo), "subjects", "remove", "mine", "--yes"]) == 0
    assert "removed: mine" in capsys.readouterr().out
    assert "mine" not in load_params(pf).subjects
    assert not (repo / "data/raw/mine.mp4").exists() and not (repo / "data/raw/mine.mp4.dvc").exists()
    assert not (repo / "data/raw/.gitignore").exists(), "its line was the only one (as `dvc remove` leaves it)"
    head = lambda f: f.read_text().split("\ntrain:")[0]  # noqa: E731 - ruamel re-wraps long strings below
    assert head(pf) == head(REPO / "params.yaml"), "add then remove: the subject groups as they were, comments in place"


def test_remove_never_deletes_files_it_did_not_copy(repo: Path, capsys):
    pf = repo / "params.yaml"
    demo = repo / "data/raw/demo.mp4"
    demo.parent.mkdir(parents=True)
    demo.write_bytes(b"made by make_demo")
    plan = remove_subjects(["demo", "may"], pf, apply=True)
    assert "keeps data/raw/demo.mp4: the output of stage 'make_demo'" in plan
    assert "keeps ../shared/data/videos/may_5s.mp4: not a copy made by add-subject" in plan
    p = load_params(pf)
    assert "demo" not in p.subjects and "may" not in p.catalog and demo.read_bytes() == b"made by make_demo"


def test_remove_errors_leave_everything(repo: Path, caplog):
    pf = repo / "params.yaml"
    before = _snapshot(repo)
    assert main(["--root", str(repo), "subjects", "remove", "mey", "--yes"]) == 2
    assert "no subject 'mey' in subjects or catalog. Did you mean 'may'?" in caplog.text
    # a variant pretrains on the subject: removing it would leave params.yaml invalid
    pf.write_text(pf.read_text().replace("    gaussiantalker_lite:\n", "    gaussiantalker_lite:\n      pretrain: {subjects: [demo]}\n"))
    pf.write_text(pf.read_text().replace("variants: [static, gaussiantalker]", "variants: [static, gaussiantalker, gaussiantalker_lite]"))
    before = _snapshot(repo)
    assert main(["--root", str(repo), "subjects", "remove", "demo", "--yes"]) == 2
    assert "cannot remove demo:" in caplog.text and "train.variants.gaussiantalker_lite.pretrain.subjects names 'demo'" in caplog.text
    assert _snapshot(repo) == before


@pytest.mark.parametrize(
    ("name", "path", "match"),
    [
        ("Bad-Name", "clip.mp4", "lower-case letters.*'bad_name'"),
        ("ok", "missing.mp4", "no such file"),
        ("ok", "clip.txt", "unsupported extension"),
    ],
)
def test_add_subject_bad_input(repo: Path, tmp_path: Path, name: str, path: str, match: str):
    (tmp_path / "clip.mp4").write_bytes(b"x")
    (tmp_path / "clip.txt").write_bytes(b"x")
    before = (repo / "params.yaml").read_text()
    with pytest.raises(ConfigError, match=match):
        add_subject(name, tmp_path / path, params_file=repo / "params.yaml")
    assert (repo / "params.yaml").read_text() == before
    assert not (repo / "data").exists()
