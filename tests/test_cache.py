"""The Parquet feature cache: schemas, round trips, validation errors that say how to fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from talkgs.features.cache import (
    FORMAT_VERSION,
    META_KEY,
    AudioTable,
    CacheError,
    FramesTable,
    check_aligned,
    read_audio_table,
    read_frames_table,
    write_audio_table,
    write_frames_table,
)

NAMES = ["a", "b", "c"]


def make_frames(t: int = 7, seed: int = 0) -> FramesTable:
    rng = np.random.default_rng(seed)
    w2c = np.tile(np.eye(4, dtype=np.float32), (t, 1, 1))
    w2c[:, :3, 3] = rng.normal(size=(t, 3))
    return FramesTable(
        time_s=np.arange(t) / 25.0,
        split=np.array(["train"] * (t - 2) + ["test"] * 2, dtype=object),
        detected=np.arange(t) != 3,
        world_to_camera=w2c,
        intrinsics=np.tile(np.array([500, 500, 128, 128], np.float32), (t, 1)),
        landmarks=rng.normal(size=(t, 478, 3)).astype(np.float32),
        landmark_motion=rng.normal(size=(t, 478, 3)).astype(np.float32) * 1e-3,
        blink=rng.uniform(0, 5, t).astype(np.float32),
        eye_aspect_ratio=rng.uniform(0.1, 0.3, t).astype(np.float32),
        expression=rng.normal(size=(t, len(NAMES))).astype(np.float32),
        mouth_open=rng.uniform(0, 0.5, t).astype(np.float32),
        reproj_error_px=rng.uniform(0, 1, t).astype(np.float32),
        meta={"expression_names": NAMES, "fps": 25.0},
    )


def test_frames_round_trip_and_plain_pandas(tmp_path: Path) -> None:
    tab = make_frames()
    path = tmp_path / "frames.parquet"
    write_frames_table(path, tab)
    assert [p.name for p in tmp_path.iterdir()] == ["frames.parquet"]  # atomic: no temp file left
    back = read_frames_table(path, n_frames=7)
    assert len(back) == 7
    for name in ("time_s", "detected", "world_to_camera", "intrinsics", "landmarks", "landmark_motion", "blink",
                 "eye_aspect_ratio", "expression", "mouth_open", "reproj_error_px"):  # fmt: skip
        np.testing.assert_array_equal(getattr(back, name), getattr(tab, name), err_msg=name)
    assert list(back.split) == list(tab.split)
    assert back.world_to_camera.shape == (7, 4, 4) and back.landmarks.shape == (7, 478, 3)
    assert back.meta["format_version"] == FORMAT_VERSION and back.meta["expression_names"] == NAMES
    # plain pandas, no talkgs
    df = pd.read_parquet(path)
    assert list(df.columns)[:4] == ["frame", "time_s", "split", "detected"]
    assert len(df) == 7 and df["split"].iloc[-1] == "test"
    np.testing.assert_allclose(np.stack(df["world_to_camera"].to_numpy()).reshape(7, 4, 4), tab.world_to_camera)


def test_frames_write_checks_shapes(tmp_path: Path) -> None:
    tab = make_frames()
    tab.landmarks = tab.landmarks[:, :468]
    with pytest.raises(ValueError, match=r"landmarks: expected shape \(7, 478, 3\)"):
        write_frames_table(tmp_path / "f.parquet", tab)
    tab = make_frames()
    tab.split[0] = "val"
    with pytest.raises(ValueError, match="split"):
        write_frames_table(tmp_path / "f.parquet", tab)
    assert not list(tmp_path.iterdir())


def _rewrite_meta(path: Path, **changes: object) -> None:
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta.update(changes)
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), path)


def test_frames_reader_validation(tmp_path: Path) -> None:
    path = tmp_path / "frames.parquet"
    with pytest.raises(CacheError, match="not found"):
        read_frames_table(path)
    write_frames_table(path, make_frames())
    with pytest.raises(CacheError, match=r"has 7 frames but the video has 9.*Rerun the track and features"):
        read_frames_table(path, n_frames=9)
    with pytest.raises(CacheError, match="holds a 'frames' table, expected 'audio'"):
        read_audio_table(path)
    _rewrite_meta(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(CacheError, match=f"version {FORMAT_VERSION + 1}.*Rebuild it"):
        read_frames_table(path)
    # schema drift: a column dropped
    write_frames_table(path, make_frames())
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["mouth_open"]).replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(CacheError, match="mouth_open: expected float, found absent"):
        read_frames_table(path)
    # rows removed behind the writer's back
    write_frames_table(path, make_frames())
    table = pq.read_table(path)
    pq.write_table(table.slice(1).replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(CacheError, match="altered"):
        read_frames_table(path)
    # not written by talkgs
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(CacheError, match="no talkgs metadata"):
        read_frames_table(path)


def test_audio_round_trip_and_alignment_errors(tmp_path: Path) -> None:
    feats = np.random.default_rng(1).normal(size=(7, 16, 5)).astype(np.float32)
    path = tmp_path / "audio_mel.parquet"
    write_audio_table(path, feats, {"encoder": "mel", "fps": 25.0})
    back = read_audio_table(path, n_frames=7, encoder="mel")
    np.testing.assert_array_equal(back.features, feats)
    assert back.meta["window"] == 16 and back.meta["dim"] == 5
    df = pd.read_parquet(path)
    assert len(df) == 7 and len(df["features"].iloc[0]) == 80
    with pytest.raises(CacheError, match=r"has 7 audio frames but the video has 10 \(3 fewer; 0.12 s\).*Rerun the features stage"):
        read_audio_table(path, n_frames=10)
    with pytest.raises(CacheError, match=r"holds 'mel' features, expected 'hubert'.*audio_hubert.parquet"):
        read_audio_table(path, encoder="hubert")
    frames = make_frames(7)
    check_aligned(frames, back)
    with pytest.raises(CacheError, match="6 audio frames vs 7 video frames"):
        check_aligned(frames, AudioTable(feats[:6], {"fps": 25.0}))
    with pytest.raises(CacheError, match="30.0 fps"):
        check_aligned(frames, AudioTable(feats, {"fps": 30.0}))
    with pytest.raises(ValueError, match=r"expected \[T, W, C\]"):
        write_audio_table(path, feats[0], {"encoder": "mel", "fps": 25.0})
    with pytest.raises(ValueError, match="needs 'encoder'"):
        write_audio_table(path, feats, {"fps": 25.0})
    bad = feats.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_audio_table(path, bad, {"encoder": "mel", "fps": 25.0})
