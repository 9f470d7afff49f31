"""Video probing and streaming decode with the bundled ffmpeg (no ffprobe needed).

- :func:`probe` -- container, duration, video/audio stream facts and rotation metadata, parsed
  from ``ffmpeg -i`` (the static ffmpeg of imageio-ffmpeg ships without ffprobe).
- :func:`packet_times` -- presentation timestamps and keyframe flags of every video packet,
  read by demuxing only (``-c copy -f framecrc``): cheap even for long 4K files. Used to spot
  variable frame rate and truncated files and to find the first frame's time.
- :class:`FrameReader` -- stream decoded ``uint8 [H, W, 3]`` RGB frames through a pipe, one
  at a time, with any ffmpeg filter chain (fps resampling, crop, scale); never holds the clip.
- :func:`read_audio` -- the first audio track as mono float32, sample 0 at the file's time 0
  (leading gaps padded with silence, encoder priming trimmed) so it lines up with the frames.

ffmpeg applies rotation metadata (display matrix) when decoding, so decoded frames come out
upright and :attr:`VideoProbe.display_size` is the size they have.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from talkgs.io.media import MediaError, ffmpeg_exe

log = logging.getLogger(__name__)

_NOPTS = -(2**63)


@dataclass(frozen=True)
class VideoProbe:
    """What ``ffmpeg -i`` says about a file (first video and first audio stream)."""

    path: Path
    container: str
    """Demuxer name(s), e.g. ``"mov,mp4,m4a,3gp,3g2,mj2"`` or ``"matroska,webm"``."""
    duration_s: float | None
    """Container duration in seconds (``None`` when the container does not say)."""
    start_s: float
    """Container start time in seconds."""
    video_codec: str
    width: int
    """Coded width in pixels (before rotation)."""
    height: int
    """Coded height in pixels (before rotation)."""
    fps: float | None
    """Average frame rate the container reports (``None`` when unknown)."""
    rotation: float
    """Display-matrix rotation in degrees as ffmpeg prints it (0 when absent)."""
    audio_codec: str | None
    """``None`` when the file has no audio stream."""
    audio_sample_rate: int | None
    audio_channels: int | None
    n_video_streams: int
    n_audio_streams: int

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    @property
    def quarter_turns(self) -> int:
        """Rotation rounded to quarter turns, 0..3."""
        return int(round(self.rotation / 90.0)) % 4

    @property
    def display_size(self) -> tuple[int, int]:
        """``(width, height)`` of decoded frames after ffmpeg's automatic rotation."""
        if self.quarter_turns % 2:
            return self.height, self.width
        return self.width, self.height


_DURATION = re.compile(r"Duration:\s*(?:(\d+):(\d+):([\d.]+)|N/A)(?:,\s*start:\s*(-?[\d.]+))?")
_INPUT = re.compile(r"^Input #0, (.+?), from ")
_STREAM = re.compile(r"^\s*Stream #0:(\d+)[^:]*: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_SIZE = re.compile(r", (\d{1,5})x(\d{1,5})(?=[ ,]|$)")
_FPS = re.compile(r", ([\d.]+)(k?) fps")
_TBR = re.compile(r", ([\d.]+)(k?) tbr")
_ROT_MATRIX = re.compile(r"rotation of (-?[\d.]+) degrees")
_ROT_TAG = re.compile(r"^\s*rotate\s*:\s*(-?[\d.]+)")
_RATE = re.compile(r", (\d+) Hz")
_CHANNELS = re.compile(r"Hz, ([^,]+)")


def _num(value: str, kilo: str) -> float:
    return float(value) * (1000.0 if kilo else 1.0)


def _channels(text: str) -> int | None:
    text = text.strip()
    named = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6, "6.1": 7, "7.1": 8}
    for key, n in named.items():
        if text.startswith(key):
            return n
    m = re.match(r"(\d+) channels", text)
    return int(m.group(1)) if m else None


def probe(path: str | os.PathLike[str]) -> VideoProbe:
    """Parse ``ffmpeg -i PATH``. Raises :class:`MediaError` if ffmpeg cannot open the file
    or it has no video stream (the message carries ffmpeg's own complaint)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path} does not exist")
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, check=False
    )
    text = proc.stderr.decode("utf-8", "replace")
    lines = text.splitlines()
    container = None
    for line in lines:
        m = _INPUT.match(line)
        if m:
            container = m.group(1)
            break
    if container is None:
        tail = [ln for ln in lines if ln.strip()][-3:]
        raise MediaError(f"ffmpeg cannot open {path}: " + " / ".join(s.strip() for s in tail))
    duration = None
    start = 0.0
    for line in lines:
        m = _DURATION.search(line)
        if m:
            if m.group(1) is not None:
                duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            if m.group(4) is not None:
                start = float(m.group(4))
            break
    # split into stream blocks: a stream line and the indented lines under it
    blocks: list[tuple[str, str, list[str]]] = []
    for line in lines:
        m = _STREAM.match(line)
        if m:
            blocks.append((m.group(2), m.group(3), []))
        elif blocks and line.startswith("      "):
            blocks[-1][2].append(line)
        elif blocks and not line.startswith("    "):
            blocks.append(("", "", []))  # end of the stream list
    videos = [b for b in blocks if b[0] == "Video" and "attached pic" not in b[1]]
    audios = [b for b in blocks if b[0] == "Audio"]
    if not videos:
        raise MediaError(f"{path} has no video stream (ffmpeg sees: {container})")
    _, vdesc, vextra = videos[0]
    size = _SIZE.search(vdesc)
    if size is None:
        raise MediaError(f"cannot read the frame size of {path} from ffmpeg's description: {vdesc!r}")
    fps_m = _FPS.search(vdesc) or _TBR.search(vdesc)
    rotation = 0.0
    for line in vextra:
        m = _ROT_MATRIX.search(line) or _ROT_TAG.match(line)
        if m:
            rotation = float(m.group(1))
    audio_codec = rate = channels = None
    if audios:
        adesc = audios[0][1]
        audio_codec = adesc.split(",")[0].split(" ")[0]
        rm = _RATE.search(adesc)
        rate = int(rm.group(1)) if rm else None
        cm = _CHANNELS.search(adesc)
        channels = _channels(cm.group(1)) if cm else None
    return VideoProbe(
        path=path,
        container=container,
        duration_s=duration,
        start_s=start,
        video_codec=vdesc.split(",")[0].split(" ")[0],
        width=int(size.group(1)),
        height=int(size.group(2)),
        fps=_num(fps_m.group(1), fps_m.group(2)) if fps_m else None,
        rotation=rotation,
        audio_codec=audio_codec,
        audio_sample_rate=rate,
        audio_channels=channels,
        n_video_streams=len(videos),
        n_audio_streams=len(audios),
    )


@dataclass(frozen=True)
class PacketTimes:
    """Timestamps of the first video stream's packets, in presentation order."""

    pts_s: np.ndarray
    """``float64 [P]`` presentation times in seconds, sorted (ffmpeg's timeline, file start = 0)."""
    keyframe: np.ndarray
    """``bool [P]`` keyframe flag of each packet (same order as ``pts_s``)."""
    last_duration_s: float
    """Duration of the last packet in seconds (0 when the container does not say)."""
    timebase_s: float
    """The stream's timestamp unit in seconds (e.g. 1/12800)."""
    errors: tuple[str, ...]
    """Demuxer complaints (e.g. ``partial file``): a sign of a truncated or corrupt file."""

    @property
    def end_s(self) -> float:
        """Time at which the last frame stops being shown."""
        return float(self.pts_s[-1] + self.last_duration_s) if len(self.pts_s) else 0.0


def packet_times(path: str | os.PathLike[str]) -> PacketTimes:
    """Demux (no decoding) the first video stream and return its packet timestamps."""
    path = Path(path)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:V:0", "-c", "copy", "-f", "framecrc", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    out = proc.stdout.decode("ascii", "replace").splitlines()
    err = [
        ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines()
        if re.search(r"partial file|corrupt|invalid|error", ln, re.IGNORECASE)
    ]  # fmt: skip
    if proc.returncode != 0 and not out:
        raise MediaError(f"ffmpeg cannot demux the video of {path}: " + " / ".join(err[-3:]))
    tb = None
    pts: list[int] = []
    dur: list[int] = []
    key: list[bool] = []
    for line in out:
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            tb = int(num) / int(den)
            continue
        if not line or line[0] == "#":
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 6:
            continue
        p, d = int(parts[2]), int(parts[3])
        flags = 1
        for extra in parts[6:]:
            if extra.startswith("F="):
                flags = int(extra[2:], 16)
        if p == _NOPTS or flags & 0x4:  # no timestamp, or marked discard (edit list)
            continue
        pts.append(p)
        dur.append(d)
        key.append(bool(flags & 0x1))
    if tb is None:
        raise MediaError(f"ffmpeg printed no timebase while demuxing {path}")
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    pts_a = np.asarray(pts, dtype=np.int64)[order]
    key_a = np.asarray(key, dtype=bool)[order]
    last_d = dur[int(order[-1])] if len(pts) else 0
    return PacketTimes(pts_s=pts_a * tb, keyframe=key_a, last_duration_s=max(last_d, 0) * tb, timebase_s=tb, errors=tuple(err))


class FrameReader:
    """Stream decoded frames of ``path`` as ``uint8 [H, W, 3]`` RGB, one per iteration.

    ``vf`` is an ffmpeg filter chain (e.g. ``"setpts=PTS-STARTPTS,fps=25,crop=...,scale=..."``)
    whose output must be ``width`` x ``height``; rotation metadata is applied by ffmpeg before
    it. ``keyframes_only`` decodes keyframes alone (``-skip_frame nokey``, fast sampling).
    Use as a context manager; leaving early kills ffmpeg. After iteration, :attr:`frames`
    counts the frames read and :attr:`warnings` holds ffmpeg's decode complaints::

        with FrameReader(path, width=512, height=512, vf="fps=25") as reader:
            for frame in reader:
                ...
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        vf: str | None = None,
        keyframes_only: bool = False,
        threads: int = 0,
        extra_output_args: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "warning", "-threads", str(threads)]
        if keyframes_only:
            cmd += ["-skip_frame", "nokey"]
        cmd += ["-i", str(self.path), "-map", "0:V:0", "-an", "-sn", "-dn"]
        if vf:
            cmd += ["-vf", vf]
        cmd += ["-fps_mode", "passthrough", *extra_output_args, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        self.cmd = cmd
        self.frames = 0
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    def __enter__(self) -> FrameReader:
        self._proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=self.width * self.height * 3
        )
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        return self

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._proc is None:
            raise RuntimeError("use FrameReader as a context manager: `with FrameReader(...) as r: for f in r: ...`")
        assert self._proc.stdout is not None
        n = self.width * self.height * 3
        while True:
            buf = self._proc.stdout.read(n)
            if not buf:
                break
            if len(buf) != n:
                self._finish()
                raise MediaError(
                    f"ffmpeg sent a partial frame ({len(buf)} of {n} bytes) after {self.frames} frames of "
                    f"{self.path}; the filter output size is not {self.width}x{self.height}? "
                    + " / ".join(list(self._stderr)[-3:])
                )
            self.frames += 1
            yield np.frombuffer(buf, dtype=np.uint8).reshape(self.height, self.width, 3)
        rc = self._finish()
        if rc != 0:
            raise MediaError(f"ffmpeg failed decoding {self.path} (exit {rc}): " + " / ".join(list(self._stderr)[-5:]))

    def _finish(self) -> int:
        assert self._proc is not None
        rc = self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return rc

    @property
    def warnings(self) -> list[str]:
        """ffmpeg's warning/error lines (decode errors of a damaged file show up here)."""
        return list(self._stderr)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None:
            for f in (self._proc.stdout, self._proc.stderr):
                if f is not None:
                    f.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def read_audio(path: str | os.PathLike[str], sample_rate: int = 16000) -> np.ndarray:
    """First audio track of ``path`` as mono ``float32 [S]`` at ``sample_rate``.

    Sample 0 is at the file's time 0 (ffmpeg's timeline, the same one :func:`packet_times`
    reports): a track that starts late is padded with silence, encoder priming is trimmed.
    Raises :class:`MediaError` when there is no audio track or it cannot be decoded.
    """
    path = Path(path)
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
        "-map", "0:a:0", "-vn", "-sn", "-dn", "-af", "aresample=async=1:first_pts=0",
        "-ac", "1", "-ar", str(int(sample_rate)), "-f", "f32le", "-acodec", "pcm_f32le", "-",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        if any("matches no streams" in e or "does not contain any stream" in e for e in err):
            raise MediaError(f"{path} has no audio track")
        raise MediaError(f"ffmpeg failed decoding the audio of {path}: " + " / ".join(err[-3:]))
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
