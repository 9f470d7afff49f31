"""Bad clips made with ffmpeg from the real ones, shared by the bad-input tests
(``test_bad_inputs``, ``test_quality``, ``test_subjects``). Each maker writes ``d / "x.mp4"``
(or ``out``) from a source clip and returns its path."""

from __future__ import annotations

from pathlib import Path

X264 = ["-c:v", "libx264", "-preset", "ultrafast"]


def base_clip(ffmpeg, src: Path, out: Path, seconds: float = 3, size: int = 160) -> Path:  # noqa: ANN001
    """The first ``seconds`` of ``src`` at ``size``² with its speech (AAC)."""
    ffmpeg("-i", str(src), "-t", f"{seconds:g}", "-vf", f"scale={size}:{size}", *X264, "-c:a", "aac", "-f", "mp4", str(out))
    return out


def with_audio(ffmpeg, src: Path, lavfi: str, out: Path) -> Path:  # noqa: ANN001
    """``src``'s video with the audio track replaced by the lavfi source ``lavfi``."""
    ffmpeg("-i", str(src), "-f", "lavfi", "-i", lavfi, "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest", str(out))
    return out


def no_audio(ff, src: Path, d: Path) -> Path:  # noqa: ANN001
    ff("-i", str(src), "-an", "-c:v", "copy", str(d / "x.mp4"))
    return d / "x.mp4"


def silent(ff, src: Path, d: Path, layout: str = "stereo") -> Path:  # noqa: ANN001
    return with_audio(ff, src, f"anullsrc=r=48000:cl={layout}", d / "x.mp4")


def short(ff, src: Path, d: Path) -> Path:  # noqa: ANN001
    """The first second only."""
    ff("-i", str(src), "-t", "1", *X264, "-c:a", "aac", str(d / "x.mp4"))
    return d / "x.mp4"
