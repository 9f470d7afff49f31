"""ffmpeg-backed media I/O: the bundled static ffmpeg of ``imageio-ffmpeg`` (libx264 + aac).

- :func:`ffmpeg_exe` -- path of the ffmpeg binary (``TALKGS_FFMPEG`` overrides).
- :class:`VideoWriter` -- stream RGB frames into an H.264 mp4 (optionally muxed with a wav as
  AAC), written atomically.
- :func:`load_audio` -- decode any container's audio to mono float32 at a given rate.
- :func:`read_wav` / :func:`write_wav` -- 16-bit PCM wav files.
"""

from __future__ import annotations

import logging
import os
import subprocess
import wave
from pathlib import Path
from types import TracebackType

import numpy as np

from talkgs.io.atomic import atomic_path

log = logging.getLogger(__name__)


class MediaError(RuntimeError):
    """A media file cannot be read or written; the message names the file and the fix."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$TALKGS_FFMPEG`` or the one bundled in imageio-ffmpeg."""
    env = os.environ.get("TALKGS_FFMPEG")
    if env:
        return env
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args: list[str], what: str, stdin: bytes | None = None) -> bytes:
    cmd = [ffmpeg_exe(), "-hide_banner", *([] if stdin is not None else ["-nostdin"]), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-8:]
        raise MediaError(f"ffmpeg failed while {what}:\n  " + "\n  ".join(err))
    return proc.stdout


class VideoWriter:
    """Stream ``uint8 [H, W, 3]`` RGB frames into an H.264 (yuv420p) mp4.

    With ``audio`` (a wav or any file ffmpeg decodes) the sound is muxed as AAC; the
    output is cut to the shorter of the two streams. The mp4 appears at ``path`` only
    when :meth:`close` succeeds (temp file + rename)::

        with VideoWriter("out.mp4", fps=25, audio="speech.wav") as w:
            for frame in frames:
                w.write(frame)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        audio: str | os.PathLike[str] | None = None,
        crf: int = 18,
        preset: str = "medium",
    ) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.audio = Path(audio) if audio is not None else None
        if self.audio is not None and not self.audio.is_file():
            raise MediaError(f"audio file {self.audio} does not exist")
        self.crf = crf
        self.preset = preset
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctx = atomic_path(self.path)
        self._tmp: Path | None = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def _start(self, h: int, w: int) -> None:
        if h % 2 or w % 2:
            raise ValueError(f"H.264 yuv420p needs even frame sizes, got {w}x{h}")
        self._tmp = self._ctx.__enter__()
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{self.fps:g}", "-i", "-",
        ]  # fmt: skip
        if self.audio is not None:
            cmd += ["-i", str(self.audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k", "-shortest"]
        cmd += [
            "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", str(self._tmp),
        ]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self._size = (h, w)

    def write(self, frame: np.ndarray) -> None:
        """Append one frame, ``uint8 [H, W, 3]`` RGB (all frames the same size)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [H, W, 3] RGB frame, got {frame.dtype} {frame.shape}")
        if self._proc is None:
            self._start(frame.shape[0], frame.shape[1])
        elif frame.shape[:2] != self._size:
            raise ValueError(f"frame {self.frames_written} is {frame.shape[:2]}, earlier frames were {self._size}")
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError as e:
            raise MediaError(f"ffmpeg stopped while writing {self.path}: {self._stderr()}") from e
        self.frames_written += 1

    def _stderr(self) -> str:
        if self._proc is None or self._proc.stderr is None:
            return ""
        return self._proc.stderr.read().decode("utf-8", "replace").strip()

    def close(self) -> None:
        if self._proc is None:
            raise MediaError(f"no frame was written to {self.path}")
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        err = self._stderr()
        rc = self._proc.wait()
        if rc != 0:
            self._ctx.__exit__(MediaError, MediaError(err), None)
            raise MediaError(f"ffmpeg failed writing {self.path} (exit {rc}): {err}")
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            exc = RuntimeError("aborted")
            try:
                self._ctx.__exit__(RuntimeError, exc, None)
            except RuntimeError:
                pass

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono float32 in [-1, 1] at ``sample_rate``.

    Returns ``float32 [S]``. Raises :class:`MediaError` if the file has no audio stream.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path} does not exist")
    try:
        raw = _run_ffmpeg(
            ["-i", str(path), "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "s16le", "-acodec", "pcm_s16le", "-"],
            f"decoding the audio of {path}",
        )
    except MediaError as e:
        if "matches no streams" in str(e) or "does not contain any stream" in str(e):
            raise MediaError(f"{path} has no audio track: talkgs needs the speech that goes with the video") from e
        raise
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> None:
    """Write mono ``float [S]`` samples in [-1, 1] as a 16-bit PCM wav, atomically."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples [S], got shape {samples.shape}")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm.tobytes())


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM wav as mono ``float32 [S]`` (channels averaged) and its rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise MediaError(f"{path}: expected 16-bit PCM, found {8 * w.getsampwidth()}-bit; use load_audio()")
        n, ch, sr = w.getnframes(), w.getnchannels(), w.getframerate()
        data = np.frombuffer(w.readframes(n), dtype="<i2").astype(np.float32) / 32768.0
    return data.reshape(-1, ch).mean(axis=1), sr
