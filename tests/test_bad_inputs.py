"""Bad inputs to ``extract`` (and ``segment``), each built here with ffmpeg from may_5s or
synthetic frames: a clear error naming the file, what is wrong and what to do, and nothing
left behind; or, for what can be handled (rotation, VFR, a clearly largest face), a warning."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from talkgs.preprocess.errors import InputError
from badclips import X264, base_clip, no_audio, short, silent
from talkgs.preprocess.extract import ExtractParams, extract
from talkgs.preprocess.segment import SegmentParams, segment

PARAMS = ExtractParams(resolution=96)
@pytest.fixture(scope="module")
def base(may_video: Path, ffmpeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of may_5s at 160² with its speech (AAC)."""
    return base_clip(ffmpeg, may_video, tmp_path_factory.mktemp("bad") / "base.mp4")


def _truncated(ff, base: Path, d: Path) -> Path:
    ff("-i", str(base), "-c", "copy", "-movflags", "+faststart", str(d / "full.mp4"))  # index first
    data = (d / "full.mp4").read_bytes()
    (d / "x.mp4").write_bytes(data[: int(len(data) * 0.6)])
    return d / "x.mp4"


def _truncated_no_index(ff, base: Path, d: Path) -> Path:
    data = base.read_bytes()  # ffmpeg's default mp4 puts the index (moov) at the end
    (d / "x.mp4").write_bytes(data[: len(data) // 2])
    return d / "x.mp4"


def _garbage(ff, base: Path, d: Path) -> Path:
    (d / "x.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    return d / "x.mp4"


def _no_face(ff, base: Path, d: Path) -> Path:
    ff("-f", "lavfi", "-i", "color=c=0x707880:s=160x160:r=25:d=3", "-f", "lavfi", "-i", "sine=f=220:d=3",
       *X264, "-c:a", "aac", "-shortest", str(d / "x.mp4"))  # fmt: skip
    return d / "x.mp4"


def _face_then_gone(ff, base: Path, d: Path) -> Path:
    # the face for the first second, then a heavily blurred / grey picture for two seconds
    ff("-i", str(base), "-vf", "drawbox=x=0:y=0:w=iw:h=ih:color=gray:t=fill:enable='gte(t,1)'",
       *X264, "-c:a", "copy", str(d / "x.mp4"))  # fmt: skip
    return d / "x.mp4"


def _two_faces(ff, base: Path, d: Path) -> Path:
    ff("-i", str(base), "-filter_complex", "[0:v]split[a][b];[b]hflip[c];[a][c]hstack",
       *X264, "-c:a", "copy", str(d / "x.mp4"))  # fmt: skip
    return d / "x.mp4"


def _audio_too_short(ff, base: Path, d: Path) -> Path:
    ff("-i", str(base), "-f", "lavfi", "-i", "sine=f=300:d=1", "-map", "0:v", "-map", "1:a",
       "-c:v", "copy", "-c:a", "aac", str(d / "x.mp4"))  # fmt: skip
    return d / "x.mp4"


CASES: dict[str, tuple[Callable[..., Path], str]] = {
    "no_audio": (no_audio, "has no audio track"),
    "silent_audio": (silent, "audio track is silent"),
    "too_short": (short, "shorter than extract.min_duration_s"),
    "truncated": (_truncated, "truncated"),
    "truncated_no_index": (_truncated_no_index, "cannot be read as a video"),
    "garbage": (_garbage, "cannot be read as a video"),
    "no_face": (_no_face, "no face found"),
    "face_mostly_missing": (_face_then_gone, "a face was found in only"),
    "two_similar_faces": (_two_faces, "several faces of similar size"),
    "audio_too_short": (_audio_too_short, "audio track covers only"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_rejected_cleanly(case: str, base: Path, ffmpeg, tmp_path: Path) -> None:
    build, expected = CASES[case]
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    video = build(ffmpeg, base, src_dir)
    out_parent = tmp_path / "data"
    out_parent.mkdir()
    with pytest.raises(InputError) as err:
        extract(video, out_parent / "extract", PARAMS, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{video}: "), msg  # names the file
    assert expected in msg, msg  # says what is wrong
    assert msg.rstrip().endswith("."), msg  # ... and what to do: a full sentence after it
    assert len(msg.split(". ")) >= 2, msg
    assert list(out_parent.iterdir()) == []  # no partial output, no temporary folder


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        extract(tmp_path / "nope.mp4", tmp_path / "out", PARAMS, progress=False)
    assert not (tmp_path / "out").exists()


def test_failed_run_keeps_previous_output(base: Path, ffmpeg, tmp_path: Path) -> None:
    """A good earlier output survives a later failing run untouched (atomic replace)."""
    out = tmp_path / "extract"
    extract(base, out, PARAMS, progress=False)
    before = (out / "meta.json").read_text()
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(InputError):
        extract(no_audio(ffmpeg, base, src), out, PARAMS, progress=False)
    assert (out / "meta.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extract", "src"]


def test_largest_face_is_used_with_warning(base: Path, ffmpeg, tmp_path: Path) -> None:
    """A small second face (a picture on the wall, someone far behind): warning, largest used."""
    video = tmp_path / "x.mp4"
    ffmpeg("-i", str(base), "-filter_complex",
           "[0:v]split[a][b];[b]scale=96:96,hflip,pad=160:160:32:32[c];[a][c]hstack",
           *X264, "-c:a", "copy", str(video))  # fmt: skip
    meta = extract(video, tmp_path / "out", PARAMS, progress=False)
    assert any("several faces" in w and "using the largest" in w for w in meta["warnings"]), meta["warnings"]
    crop = meta["crop"]
    assert crop["x"] + crop["size"] / 2 < 160  # centred on the big face (left half of 320x160)


def test_vfr_is_resampled_with_warning(may_video: Path, ffmpeg, tmp_path: Path) -> None:
    """Irregular timestamps (20/60 ms intervals alternating): constant 25 fps out + warning."""
    video = tmp_path / "vfr.mp4"
    ffmpeg(
        "-i", str(may_video), "-t", "3",
        "-vf", "scale=160:160,settb=1/1000,setpts='(N*0.04+0.02*mod(N\\,2))/TB'",
        "-fps_mode", "vfr", "-enc_time_base:v", "1:1000", *X264, "-c:a", "aac", str(video),
    )  # fmt: skip
    meta = extract(video, tmp_path / "out", PARAMS, progress=False)
    assert meta["source"]["vfr"] is True
    warning = next(w for w in meta["warnings"] if "variable frame rate" in w)
    assert "20.0-60.0 ms" in warning and "resampled to constant 25 fps" in warning
    assert meta["output"]["frames"] in (74, 75, 76)
    assert meta["output"]["audio_samples"] == meta["output"]["frames"] * 640


def test_segment_rejects_a_folder_that_is_not_an_extract(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no meta.json.*Run the extract stage first"):
        segment(tmp_path / "empty", tmp_path / "seg", SegmentParams(), progress=False)
    assert not (tmp_path / "seg").exists()


def test_segment_rejects_missing_frames(may_extract: Path, tmp_path: Path) -> None:
    broken = tmp_path / "extract"
    broken.mkdir()
    meta = json.loads((may_extract / "meta.json").read_text())
    (broken / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="missing .*Re-run the extract stage"):
        segment(broken, tmp_path / "seg", SegmentParams(), progress=False)
