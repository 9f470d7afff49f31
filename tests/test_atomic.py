"""Atomic outputs: all or nothing, usual permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from talkgs.io.atomic import atomic_dir, atomic_path, write_json


def test_write_json_replaces_atomically_with_usual_mode(tmp_path: Path):
    f = tmp_path / "a" / "m.json"
    write_json(f, {"x": 1})
    write_json(f, {"x": 2})
    assert json.loads(f.read_text()) == {"x": 2}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in f.parent.iterdir()] == ["m.json"], "no temporary file left"


def test_failed_write_leaves_old_file(tmp_path: Path):
    f = tmp_path / "out.txt"
    f.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(f) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert f.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_swaps_whole_folder(tmp_path: Path):
    d = tmp_path / "stage"
    with atomic_dir(d) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (d / "a.txt").read_text() == "1"
    assert stat.S_IMODE(d.stat().st_mode) & 0o055, "readable by group/others like a normal folder"
    with pytest.raises(ValueError):
        with atomic_dir(d) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError("bad input")
    assert sorted(p.name for p in d.iterdir()) == ["a.txt"], "old output kept on failure"
    with atomic_dir(d) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in d.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"], "no temporary folders left"
