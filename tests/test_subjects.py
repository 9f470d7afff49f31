"""Subjects: add a user's video (copied + `dvc add` + params), enable/disable catalog clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkgs.config import ConfigError, load_params
from talkgs.subjects import add_subject, disable, enable


def test_enable_disable_keeps_comments(dvc_repo: Path):
    pf = dvc_repo / "params.yaml"
    assert enable(["may", "trump"], pf) == ["may", "trump"]
    p = load_params(pf)
    assert {"demo", "may", "trump"} <= set(p.subjects) and "may" not in p.catalog
    assert "# Opt-in subjects" in pf.read_text()
    assert enable(["may"], pf) == []  # idempotent
    assert disable(["may"], pf) == ["may"]
    assert "may" in load_params(pf).catalog
    with pytest.raises(ConfigError, match="no subject 'nope'"):
        enable(["nope"], pf)


def test_disabling_a_subject_takes_it_out_of_the_few_shot_sweep(dvc_repo: Path):
    pf = dvc_repo / "params.yaml"
    enable(["may", "trump"], pf)
    pf.write_text(pf.read_text().replace("    subjects: []", "    subjects: [may, trump]"))
    assert load_params(pf).evaluate.few_shot.subjects == ["may", "trump"]
    disable(["may"], pf)
    p = load_params(pf)
    assert p.evaluate.few_shot.subjects == ["trump"] and "may" in p.catalog


def test_add_subject_copies_tracks_and_registers(dvc_repo: Path, tmp_path: Path):
    video = tmp_path / "My Clip.MP4"
    video.write_bytes(b"\x00" * 1000)  # content is checked by the extract stage, not here
    dest = add_subject("mine", video, resolution=256, params_file=dvc_repo / "params.yaml")
    assert dest == dvc_repo / "data/raw/mine.mp4" and dest.read_bytes() == video.read_bytes()
    assert (dvc_repo / "data/raw/mine.mp4.dvc").is_file(), "tracked with dvc add"
    s = load_params(dvc_repo / "params.yaml").subjects["mine"]
    assert s.video == "data/raw/mine.mp4" and s.resolution == 256
    with pytest.raises(ConfigError, match="already exists"):
        add_subject("mine", video, params_file=dvc_repo / "params.yaml")


@pytest.mark.parametrize(
    ("name", "path", "match"),
    [
        ("Bad-Name", "clip.mp4", "lower-case letters.*'bad_name'"),
        ("ok", "missing.mp4", "no such file"),
        ("ok", "clip.txt", "unsupported extension"),
    ],
)
def test_add_subject_bad_input(dvc_repo: Path, tmp_path: Path, name: str, path: str, match: str):
    (tmp_path / "clip.mp4").write_bytes(b"x")
    (tmp_path / "clip.txt").write_bytes(b"x")
    before = (dvc_repo / "params.yaml").read_text()
    with pytest.raises(ConfigError, match=match):
        add_subject(name, tmp_path / path, params_file=dvc_repo / "params.yaml")
    assert (dvc_repo / "params.yaml").read_text() == before
    assert not (dvc_repo / "data").exists()
