"""Stage ``extract``: a talking-portrait video → constant-fps face-centred frames + audio.

Output folder (written atomically: it appears complete or not at all)::

    frames/000000.jpg ...   RGB frames, ``resolution`` x ``resolution``, constant ``fps``
    audio.wav               16-bit mono PCM at ``sample_rate``, exactly frames / fps seconds,
                            sample ``i * sample_rate / fps`` is the time of frame ``i``
    meta.json               source (path, sha256, streams, timing), crop box, face detection,
                            audio levels, train/test split, warnings, params

How it works (two decoding passes, both streamed through a pipe; the clip is never in memory):

1. Probe with ``ffmpeg -i`` and demux the video packets (no decoding) to get timestamps: this
   finds truncated files, variable frame rate and the first frame's time.
2. Decode the audio (mono, resampled, aligned to the file's time 0) and check it is not silent.
3. Face detection pass: ≤ ``detect_samples`` evenly spaced frames, downscaled inside ffmpeg
   (keyframes only when the file has enough of them) → MediaPipe face detection (short-range
   model, full-range where it finds nothing) → one square crop for the whole clip, centred on the median face box, sized
   ``crop_scale`` x the median face size (head and shoulders), grown to hold every sampled
   face position, clamped to the frame.
4. Frame pass: ffmpeg resamples to ``fps`` (``setpts=PTS-STARTPTS,fps=...``: each output
   tick takes the latest source frame shown at that time), crops and scales; Python only
   JPEG-encodes.

Input policy (every error is an :class:`~talkgs.preprocess.errors.InputError` reading
``"<file>: <what is wrong>. <how to fix>"``, raised before anything is written; the checks that
need no frame decoded are :func:`probe_input`, which ``talkgs add-subject`` runs too):

- no audio track, silent audio, shorter than ``min_duration_s``, unreadable/corrupt or
  truncated file, no face (or a face in too few frames), several faces of similar size: error.
- several faces where one is clearly the largest (area ratio ≥ ``multi_face_ratio``): the
  largest is used, with a warning.
- rotation metadata (phones): applied, as players do (ffmpeg rotates while decoding);
  recorded in ``meta.json``.
- variable frame rate: resampled to constant ``fps`` with a warning giving the irregularity
  of the frame intervals; any other frame rate (e.g. 30 fps): resampled silently.
- audio shorter than the video: padded with silence (warning above 0.2 s; error when it
  covers less than half the video); longer: trimmed.
- audio that is not speech (noise, a steady tone: ``speech_check``, checked after the faces):
  error, or a warning with ``speech_check.on_fail: warning``
  (:mod:`talkgs.preprocess.quality`); the measures are in ``meta.json["speech_activity"]``.

Warnings are logged and listed in ``meta.json["warnings"]``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from talkgs.configlib import COUNT, FPS, FRAME_PIXELS, MAX_PIXELS, PROBABILITY, Range
from talkgs.io.atomic import atomic_dir, write_json
from talkgs.io.digest import sha256_file
from talkgs.io.media import MediaError, write_wav
from talkgs.io.video import FrameReader, PacketTimes, VideoProbe, packet_times, probe, read_audio
from talkgs.preprocess.errors import InputError
from talkgs.preprocess.quality import SpeechCheckParams, speech_activity, speech_problems
from talkgs.progress import Rate, progress_bar

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FRAME_PATTERN = "frames/{:06d}.jpg"
"""Frame file names inside the output folder (``str.format`` with the frame index)."""

_REENCODE = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -crf 18 -c:a aac OUT.mp4`"


@dataclass(frozen=True)
class ExtractParams:
    """Parameters of the ``extract`` stage (``params.yaml: extract``)."""

    fps: Annotated[int, FPS] = 25
    """Output frame rate; any input rate (or variable rate) is resampled to it."""
    sample_rate: Annotated[int, Range(8000, 96000, unit="Hz")] = 16000
    """Output audio sample rate in Hz (mono 16-bit wav)."""
    resolution: Annotated[int, FRAME_PIXELS] = 512
    """Side of the square output frames in pixels (256 is the CPU/demo preset)."""
    crop_scale: Annotated[float, Range(1, 10, lo_open=True)] = 2.8
    """Crop side = this x the median face box side of MediaPipe's face detector (box ≈ brows
    to chin): 2.8 shows the head with hair and the shoulders."""
    face_center_y: Annotated[float, PROBABILITY] = 0.45
    """Vertical position of the face box centre in the crop (0 = top, 1 = bottom)."""
    motion_margin: Annotated[float, Range(0, 5)] = 0.15
    """Every sampled face box, grown by this fraction of the face size, must lie inside the
    crop: the crop grows (up to the frame) when the head moves a lot."""
    jpeg_quality: Annotated[int, Range(1, 100)] = 95
    """JPEG quality of the frames (OpenCV's scale; ER-NeRF/TalkingGaussian store jpgs)."""
    test_fraction: Annotated[float, PROBABILITY] = 1 / 11
    """Fraction of frames held out for test, taken from the end of the clip (papers: 1/11)."""
    min_duration_s: Annotated[float, Range(0, 3600, lo_open=True, unit="seconds")] = 2.0
    """Shorter videos are rejected."""
    silence_dbfs: Annotated[float, Range(-150, 0, unit="dBFS")] = -50.0
    """Audio whose loudest 50 ms window is below this level (dB full scale) is 'silent'."""
    face_confidence: Annotated[float, PROBABILITY] = 0.5
    """Minimum MediaPipe face detection score."""
    face_model: Annotated[int, Range(0, 1)] = 0
    """MediaPipe face detector tried first: 0 = short range (close-ups, faces within ~2 m),
    1 = full range (small faces, ~5 m); frames where it finds nothing are retried with the other."""
    detect_samples: Annotated[int, Range(5, 100_000)] = 100
    """At most this many evenly spaced frames are searched for faces to place the crop."""
    detect_size: Annotated[int, Range(128, MAX_PIXELS, unit="pixels")] = 640
    """Longest side (pixels) the detection frames are downscaled to."""
    keyframe_sampling_min: Annotated[int, COUNT] = 40
    """Sample keyframes only (no full decode: fast for long 4K files) when the video has at
    least this many keyframes; otherwise decode all frames at a reduced rate."""
    min_face_fraction: Annotated[float, Range(0, 1, lo_open=True)] = 0.9
    """Error when fewer sampled frames than this fraction show a face."""
    multi_face_ratio: Annotated[float, Range(1, 1000)] = 1.5
    """With several faces, the largest is used (with a warning) when its area is at least
    this x the next one's; otherwise the input is ambiguous (error)."""
    vfr_tolerance: Annotated[float, Range(0, 10, lo_open=True)] = 0.1
    """Frame intervals deviating from the median by more than this fraction (and more than
    one timestamp tick) mark the video as variable frame rate (resampled, with a warning)."""
    speech_check: SpeechCheckParams = field(default_factory=SpeechCheckParams)
    """Is the audio track speech (voiced fraction, spectral flatness, level variation)? An
    error or a warning (:mod:`talkgs.preprocess.quality`)."""

    def __post_init__(self) -> None:
        checks = [
            (self.fps > 0, "fps must be > 0"),
            (self.sample_rate >= 8000, "sample_rate must be >= 8000"),
            (self.resolution >= 64 and self.resolution % 2 == 0, "resolution must be even and >= 64"),
            (self.crop_scale > 1.0, "crop_scale must be > 1"),
            (0.0 < self.face_center_y < 1.0, "face_center_y must be in (0, 1)"),
            (self.motion_margin >= 0.0, "motion_margin must be >= 0"),
            (1 <= self.jpeg_quality <= 100, "jpeg_quality must be in 1..100"),
            (0.0 < self.test_fraction < 1.0, "test_fraction must be in (0, 1)"),
            (self.min_duration_s > 0, "min_duration_s must be > 0"),
            (0.0 < self.face_confidence < 1.0, "face_confidence must be in (0, 1)"),
            (self.face_model in (0, 1), "face_model must be 0 (short range) or 1 (full range)"),
            (self.detect_samples >= 5, "detect_samples must be >= 5"),
            (self.detect_size >= 128, "detect_size must be >= 128"),
            (0.0 < self.min_face_fraction <= 1.0, "min_face_fraction must be in (0, 1]"),
            (self.multi_face_ratio >= 1.0, "multi_face_ratio must be >= 1"),
            (self.vfr_tolerance > 0.0, "vfr_tolerance must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"extract params: {msg} (got {dataclasses.asdict(self)})")


# ----------------------------------------------------------------------------------------------
# small helpers


def split_indices(n_frames: int, test_fraction: float) -> tuple[int, int]:
    """``(n_train, n_test)``: the last ``test_fraction`` of the frames is the test split.

    Matches the papers' ``int(n * 10 / 11)`` train frames for ``test_fraction = 1/11``
    (exact fractions, so 11 frames give 10 + 1, not 9 + 2 by float rounding).
    """
    frac = Fraction(test_fraction).limit_denominator(10_000)
    n_train = n_frames * (frac.denominator - frac.numerator) // frac.denominator
    return int(n_train), int(n_frames - n_train)


# ----------------------------------------------------------------------------------------------
# checks


@dataclass(frozen=True)
class Timing:
    """Video timing from the packet timestamps."""

    start_s: float
    """Time of the first frame on ffmpeg's timeline (audio sample 0 is at time 0)."""
    duration_s: float
    """From the first frame to the end of the last one."""
    n_packets: int
    measured_fps: float
    interval_ms: dict[str, float]
    vfr: bool
    irregular_fraction: float
    n_irregular: int
    n_keyframes: int


def analyse_timing(video: Path, pk: PacketTimes, params: ExtractParams) -> Timing:
    """Frame-interval statistics; ``vfr`` when intervals deviate from the median by more than
    ``vfr_tolerance`` (relative) and more than one timestamp tick (containers with a 1 ms
    timebase store 30 fps as 33/34 ms intervals: that is not VFR)."""
    t = pk.pts_s
    if len(t) < 2:
        raise InputError(
            f"{video}: the video stream has {len(t)} frame(s). It is not a video clip or it is damaged; "
            f"use a talking-portrait video of at least {params.min_duration_s:g} s."
        )
    d = np.diff(t)
    d = d[d > 0]  # duplicates (same pts) are dropped by the decoder's output anyway
    if len(d) == 0:
        raise InputError(f"{video}: all {len(t)} video frames carry the same timestamp. The file is damaged; {_REENCODE}.")
    med = float(np.median(d))
    tol = max(params.vfr_tolerance * med, 1.5 * pk.timebase_s)
    irregular = np.abs(d - med) > tol
    start = float(t[0])
    end = pk.end_s if pk.last_duration_s > 0 else float(t[-1] + med)
    return Timing(
        start_s=start,
        duration_s=end - start,
        n_packets=len(t),
        measured_fps=(len(t) - 1) / max(float(t[-1] - t[0]), 1e-9),
        interval_ms={
            "median": 1000 * med,
            "min": 1000 * float(d.min()),
            "max": 1000 * float(d.max()),
            "std": 1000 * float(d.std()),
        },
        vfr=bool(irregular.mean() > 0.01 or irregular.sum() > 2),
        irregular_fraction=float(irregular.mean()),
        n_irregular=int(irregular.sum()),
        n_keyframes=int(pk.keyframe.sum()),
    )


def _db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else -math.inf


def audio_levels(samples: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Loudness summary of mono ``float32 [S]``: whole-clip RMS, loudest 50 ms window, and the
    fraction of 50 ms windows within 40 dB of the loudest one (rough speech activity)."""
    win = max(1, int(0.05 * sample_rate))
    n = len(samples) // win
    if n == 0:
        return {"rms_dbfs": -math.inf, "loudest_window_dbfs": -math.inf, "active_fraction": 0.0}
    frames = samples[: n * win].astype(np.float64).reshape(n, win)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = float(rms.max())
    return {
        "rms_dbfs": _db(float(np.sqrt((frames**2).mean()))),
        "loudest_window_dbfs": _db(loud),
        "active_fraction": float((rms > loud * 10 ** (-40 / 20)).mean()) if loud > 0 else 0.0,
    }


# ----------------------------------------------------------------------------------------------
# face detection → crop


@dataclass(frozen=True)
class FaceSamples:
    boxes: np.ndarray
    """``float64 [F, 4]`` (x0, y0, w, h) of the chosen (largest) face in display pixels, one per
    sampled frame with a face."""
    times_s: np.ndarray
    """``float64 [F]`` approximate times of those frames."""
    n_samples: int
    missing_times_s: np.ndarray
    """Approximate times of sampled frames without a face."""
    n_multi: int
    """Sampled frames with two or more faces."""
    area_ratios: np.ndarray
    """Largest / second-largest face area, for frames with several faces."""
    keyframes_only: bool
    n_fallback: int
    """Frames where only the second detector model found a face."""


def detect_faces(video: Path, info: VideoProbe, timing: Timing, params: ExtractParams, *, progress: bool) -> FaceSamples:
    """Run MediaPipe face detection on ≤ ``detect_samples`` evenly spaced frames."""
    import mediapipe as mp

    dw, dh = info.display_size
    scale = min(1.0, params.detect_size / max(dw, dh))
    sw, sh = max(2, int(round(dw * scale / 2)) * 2), max(2, int(round(dh * scale / 2)) * 2)
    keyframes_only = timing.n_keyframes >= params.keyframe_sampling_min
    if keyframes_only:
        step = max(1, math.ceil(timing.n_keyframes / params.detect_samples))
        vf = f"select='not(mod(n\\,{step}))',scale={sw}:{sh}:flags=area"
        expected = math.ceil(timing.n_keyframes / step)
        period = timing.duration_s / max(timing.n_keyframes, 1) * step
    else:
        rate = min(float(params.fps), params.detect_samples / max(timing.duration_s, 1e-3))
        vf = f"setpts=PTS-STARTPTS,fps={rate:.6f},scale={sw}:{sh}:flags=area"
        expected = max(1, int(round(timing.duration_s * rate)))
        period = 1.0 / rate
    boxes, times, missing, ratios = [], [], [], []
    n_multi = 0
    i = 0
    detectors = [
        mp.solutions.face_detection.FaceDetection(model_selection=m, min_detection_confidence=params.face_confidence)
        for m in (params.face_model, 1 - params.face_model)
    ]
    n_fallback = 0
    try:
        with progress_bar(progress) as bar, FrameReader(video, width=sw, height=sh, vf=vf, keyframes_only=keyframes_only) as reader:
            task = bar.add_task("face detection", total=expected, rate=0.0)
            rate_meter = Rate()
            for i, frame in enumerate(reader):
                t = i * period
                found = detectors[0].process(frame).detections
                if not found:  # e.g. the full-range model misses faces filling the frame, and vice versa
                    found = detectors[1].process(frame).detections
                    n_fallback += bool(found)
                dets = []
                for det in found or []:
                    bb = det.location_data.relative_bounding_box
                    x0, y0 = bb.xmin * dw, bb.ymin * dh
                    w, h = bb.width * dw, bb.height * dh
                    # clip to the frame: MediaPipe boxes can stick out at the edges
                    x1, y1 = min(x0 + w, dw), min(y0 + h, dh)
                    x0, y0 = max(x0, 0.0), max(y0, 0.0)
                    if x1 > x0 and y1 > y0:
                        dets.append((x0, y0, x1 - x0, y1 - y0))
                if not dets:
                    missing.append(t)
                else:
                    dets.sort(key=lambda b: b[2] * b[3], reverse=True)
                    boxes.append(dets[0])
                    times.append(t)
                    if len(dets) > 1:
                        n_multi += 1
                        ratios.append(dets[0][2] * dets[0][3] / max(dets[1][2] * dets[1][3], 1e-9))
                if rate_meter.due():
                    bar.update(task, completed=i + 1, rate=rate_meter.rate(i + 1))
            bar.update(task, completed=i + 1, rate=rate_meter.rate(i + 1))
    except MediaError as e:
        raise InputError(f"{video}: decoding failed while looking for the face ({e}). The file is damaged; {_REENCODE}.") from e
    finally:
        for fd in detectors:
            fd.close()
    n = len(boxes) + len(missing)
    if n == 0:
        raise InputError(f"{video}: no frame could be decoded. The file is damaged or not a video; {_REENCODE}.")
    return FaceSamples(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        times_s=np.asarray(times, dtype=np.float64),
        n_samples=n,
        missing_times_s=np.asarray(missing, dtype=np.float64),
        n_multi=n_multi,
        area_ratios=np.asarray(ratios, dtype=np.float64),
        keyframes_only=keyframes_only,
        n_fallback=n_fallback,
    )


def _fmt_times(times: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(f"{t:.1f} s" for t in times[:limit])
    return shown + (f" and {len(times) - limit} more" if len(times) > limit else "")


def check_faces(video: Path, faces: FaceSamples, params: ExtractParams, warnings: list[str]) -> None:
    """Apply the no-face / several-faces policy (errors, or warnings appended to ``warnings``)."""
    n_face = len(faces.boxes)
    frac = n_face / faces.n_samples
    if n_face == 0:
        raise InputError(
            f"{video}: no face found in any of {faces.n_samples} sampled frames (MediaPipe face detection, "
            f"score >= {params.face_confidence:g}). Use a video showing one person's face, frontal and "
            "unobstructed; if the face is small in a wide shot, crop the video around the person first."
        )
    if frac < params.min_face_fraction:
        raise InputError(
            f"{video}: a face was found in only {n_face} of {faces.n_samples} sampled frames ({100 * frac:.0f}%, "
            f"need {100 * params.min_face_fraction:.0f}%); no face near {_fmt_times(faces.missing_times_s)}. "
            "Trim the video to the part where the face is visible (ffmpeg -ss START -to END -i IN OUT.mp4) "
            "or lower extract.min_face_fraction."
        )
    if len(faces.missing_times_s):
        msg = f"no face in {len(faces.missing_times_s)} of {faces.n_samples} sampled frames (near {_fmt_times(faces.missing_times_s)})"
        warnings.append(msg)
        log.warning("%s: %s", video, msg)
    if faces.n_multi:
        multi_frac = faces.n_multi / faces.n_samples
        ratio = float(np.median(faces.area_ratios))
        if ratio < params.multi_face_ratio and multi_frac > 0.1:
            raise InputError(
                f"{video}: {faces.n_multi} of {faces.n_samples} sampled frames show several faces of similar size "
                f"(largest / next area ratio {ratio:.2f} < extract.multi_face_ratio={params.multi_face_ratio:g}), "
                "so it is ambiguous whose head to model. Crop the video to one person "
                "(ffmpeg -i IN -vf crop=W:H:X:Y OUT.mp4)."
            )
        msg = (
            f"several faces in {faces.n_multi} of {faces.n_samples} sampled frames; using the largest "
            f"(median area ratio {ratio:.1f}x the next)"
        )
        warnings.append(msg)
        log.warning("%s: %s", video, msg)


@dataclass(frozen=True)
class Crop:
    x: int
    y: int
    size: int
    requested_size: int
    clamped: bool


def _audio_too_short(video: Path, audio_s: float, video_s: float) -> InputError:
    return InputError(
        f"{video}: the audio track covers only {audio_s:.2f} s of the {video_s:.2f} s video. "
        "Use a recording whose sound spans the whole video."
    )


def check_speech(video: Path, m: dict[str, float], p: SpeechCheckParams, warn) -> None:  # noqa: ANN001 - warn(str)
    """The speech-activity gate on the measures ``m`` (:func:`~talkgs.preprocess.quality.speech_activity`):
    an :class:`InputError` (``on_fail: error``) or ``warn(message)``."""
    problems = speech_problems(m, p)
    if not problems:
        return
    what = f"the audio track does not sound like speech ({'; '.join(problems)})"
    if p.on_fail == "warning":
        warn(f"{what}; the head will not learn lip motion from it")
        return
    raise InputError(
        f"{video}: {what}. talkgs learns lip motion from the person's own speech: use the original recording "
        "with its sound, or mux the speech in: ffmpeg -i VIDEO -i SPEECH.wav -map 0:v -map 1:a -c:v copy -c:a aac "
        "-shortest OUT.mp4. If this audio is what you want, set extract.speech_check.on_fail: warning in params.yaml."
    )


def choose_crop(faces: FaceSamples, frame_w: int, frame_h: int, params: ExtractParams) -> Crop:
    """One square crop for the clip from the sampled face boxes (display pixels).

    Side = ``crop_scale`` x median face size, face centre at (0.5, ``face_center_y``) of the
    crop; the side grows so that every sampled face box (+ ``motion_margin``) fits, then the
    crop is shifted (and if needed shrunk) to lie inside the frame.
    """
    b = faces.boxes
    cx = np.median(b[:, 0] + b[:, 2] / 2)
    cy = np.median(b[:, 1] + b[:, 3] / 2)
    face = float(np.median(np.maximum(b[:, 2], b[:, 3])))
    side = params.crop_scale * face
    m = params.motion_margin * face
    # extent all sampled faces cover (+margin)
    ex0, ey0 = float((b[:, 0]).min() - m), float((b[:, 1]).min() - m)
    ex1, ey1 = float((b[:, 0] + b[:, 2]).max() + m), float((b[:, 1] + b[:, 3]).max() + m)
    side = max(side, ex1 - ex0, ey1 - ey0)
    requested = side
    side_i = int(min(side, frame_w, frame_h)) // 2 * 2

    def place(ideal: float, lo: float, hi: float, limit: int) -> int:
        # contain [lo, hi] if it fits (else centre on it), then stay inside [0, limit]
        start = min(max(ideal, hi - side_i), lo) if hi - lo <= side_i else (lo + hi - side_i) / 2
        return int(round(min(max(start, 0.0), limit - side_i)))

    x = place(cx - side_i / 2, ex0, ex1, frame_w)
    y = place(cy - params.face_center_y * side_i, ey0, ey1, frame_h)
    return Crop(x=x, y=y, size=side_i, requested_size=int(round(requested)), clamped=side_i + 1 < requested)


# ----------------------------------------------------------------------------------------------
# the stage


@dataclass(frozen=True)
class ProbedInput:
    """What :func:`probe_input` learnt about a video (nothing decoded but the audio)."""

    info: VideoProbe
    timing: Timing
    audio: np.ndarray
    """``float32 [S]`` mono at ``sample_rate``, sample 0 = the time of the first video frame."""
    levels: dict[str, float]
    """:func:`audio_levels` of the audio over the video's duration."""


def probe_input(video: Path, params: ExtractParams) -> ProbedInput:
    """The input checks of the extract stage that need no frame decoded: a readable video
    stream, not truncated, at least ``min_duration_s`` long, an audio track that decodes and
    is not silent. ``talkgs add-subject`` runs them before copying a video in.

    Raises :class:`~talkgs.preprocess.errors.InputError` (``"<file>: <what>. <fix>"``).
    """
    video = Path(video)
    if not video.is_file():
        raise InputError(f"{video}: file not found. Check the subject's `video` path in params.yaml.")
    try:
        info = probe(video)
    except MediaError as e:
        raise InputError(f"{video}: cannot be read as a video ({e}). The file is corrupt, truncated or not a video; re-download it or {_REENCODE}.") from e
    if not info.has_audio:
        raise InputError(
            f"{video}: has no audio track. talkgs learns from the speech that goes with the video: use the "
            "original recording with sound, or mux a speech track in: "
            "ffmpeg -i VIDEO -i SPEECH.wav -map 0:v -map 1:a -c:v copy -c:a aac -shortest OUT.mp4."
        )
    try:
        pk = packet_times(video)
    except MediaError as e:
        raise InputError(f"{video}: cannot be read as a video ({e}). Re-download it or {_REENCODE}.") from e
    if any("partial file" in err for err in pk.errors):
        have = pk.end_s
        raise InputError(
            f"{video}: the file is truncated (its video data stops at {have:.2f} s"
            + (f" of {info.duration_s:.2f} s" if info.duration_s else "")
            + "). Re-download or re-copy it completely."
        )
    timing = analyse_timing(video, pk, params)
    if timing.duration_s < params.min_duration_s:
        raise InputError(
            f"{video}: the video is {timing.duration_s:.2f} s long, shorter than extract.min_duration_s="
            f"{params.min_duration_s:g} s. Use a longer clip (a few seconds to minutes of one person talking)."
        )
    # audio: decode, check, align (sample 0 of the output = time of frame 0)
    try:
        audio_full = read_audio(video, params.sample_rate)
    except MediaError as e:
        raise InputError(f"{video}: the audio track cannot be decoded ({e}). {_REENCODE[0].upper() + _REENCODE[1:]}.") from e
    offset = int(round(timing.start_s * params.sample_rate))
    audio = audio_full[offset:] if offset >= 0 else np.concatenate([np.zeros(-offset, np.float32), audio_full])
    del audio_full
    expected_frames = max(1, int(round(timing.duration_s * params.fps)))
    levels = audio_levels(audio[: int(round(expected_frames * params.sample_rate / params.fps))], params.sample_rate)
    if levels["loudest_window_dbfs"] < params.silence_dbfs:
        raise InputError(
            f"{video}: the audio track is silent (loudest 50 ms window {levels['loudest_window_dbfs']:.1f} dBFS < "
            f"extract.silence_dbfs={params.silence_dbfs:g}). talkgs needs the person's speech: use the original "
            "recording with sound."
        )
    return ProbedInput(info=info, timing=timing, audio=audio, levels=levels)


def extract(video: Path, out_dir: Path, params: ExtractParams, *, progress: bool = True) -> dict[str, Any]:
    """Extract frames, audio and ``meta.json`` from ``video`` into ``out_dir`` (atomically).

    Returns the meta dict (also written to ``out_dir/meta.json``). Raises
    :class:`~talkgs.preprocess.errors.InputError` for unusable input; nothing is written then.
    """
    import cv2

    t_start = time.perf_counter()
    video, out_dir = Path(video), Path(out_dir)
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log.warning("%s: %s", video, msg)

    probed = probe_input(video, params)
    info, timing, audio, levels = probed.info, probed.timing, probed.audio, probed.levels
    if info.quarter_turns:
        log.info("%s: rotation metadata %+g° applied (frames come out upright, as players show them)", video, info.rotation)
    if timing.vfr:
        iv = timing.interval_ms
        warn(
            f"variable frame rate: frame intervals {iv['min']:.1f}-{iv['max']:.1f} ms (median {iv['median']:.1f}, "
            f"std {iv['std']:.1f} ms; {timing.n_irregular} of {timing.n_packets - 1} intervals off the median by more "
            f"than {100 * params.vfr_tolerance:g}%); resampled to constant "
            f"{params.fps} fps (each output frame shows the source frame on screen at its time)"
        )
    elif abs(timing.measured_fps - params.fps) > 0.01 * params.fps:
        log.info("%s: %.3f fps resampled to %d fps", video, timing.measured_fps, params.fps)
    expected_frames = max(1, int(round(timing.duration_s * params.fps)))
    if levels["active_fraction"] < 0.2:
        warn(f"audio is mostly quiet: only {100 * levels['active_fraction']:.0f}% of 50 ms windows are within 40 dB of the loudest")

    # face detection → crop
    dw, dh = info.display_size
    faces = detect_faces(video, info, timing, params, progress=progress)
    check_faces(video, faces, params, warnings)
    crop = choose_crop(faces, dw, dh, params)
    if crop.clamped:
        log.info(
            "%s: head-and-shoulders crop would be %d px, the frame allows %d px (face already fills the frame)",
            video, crop.requested_size, crop.size,
        )
    expected_samples = int(round(expected_frames * params.sample_rate / params.fps))
    if len(audio) < expected_samples / 2:  # before the speech check: a short track is the clearer diagnosis
        raise _audio_too_short(video, len(audio) / params.sample_rate, expected_frames / params.fps)
    speech = speech_activity(audio[:expected_samples], params.sample_rate)
    check_speech(video, speech, params.speech_check, warn)

    res = params.resolution
    if crop.size < res:
        warn(
            f"the face crop is {crop.size} px and is upsampled to {res} px (blurry frames); use a higher-resolution "
            "video or a lower extract.resolution"
        )
    flags = "area" if crop.size > res else "bicubic"
    vf = f"setpts=PTS-STARTPTS,fps={params.fps},crop={crop.size}:{crop.size}:{crop.x}:{crop.y}"
    if crop.size != res:
        vf += f",scale={res}:{res}:flags={flags}"

    source_sha = sha256_file(video)
    n_frames = 0
    decode_warnings: list[str] = []
    t_frames = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        (tmp / "frames").mkdir()
        enc = [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality]
        try:
            with progress_bar(progress) as bar, FrameReader(video, width=res, height=res, vf=vf) as reader:
                task = bar.add_task("extract frames", total=expected_frames, rate=0.0)
                meter = Rate()
                for frame in reader:
                    ok, buf = cv2.imencode(".jpg", frame[:, :, ::-1], enc)
                    if not ok:  # pragma: no cover - OpenCV failure
                        raise RuntimeError(f"OpenCV could not JPEG-encode frame {n_frames}")
                    (tmp / FRAME_PATTERN.format(n_frames)).write_bytes(buf.tobytes())
                    n_frames += 1
                    if meter.due():
                        bar.update(task, completed=n_frames, rate=meter.rate(n_frames))
                bar.update(task, completed=n_frames, rate=meter.rate(n_frames))
                decode_warnings = [w for w in reader.warnings if w.strip()]
        except MediaError as e:
            raise InputError(f"{video}: decoding failed after {n_frames} frames ({e}). The file is damaged; {_REENCODE}.") from e
        frames_s = time.perf_counter() - t_frames
        if n_frames < max(1, int(0.9 * expected_frames)):
            raise InputError(
                f"{video}: only {n_frames} of the expected {expected_frames} frames could be decoded "
                f"({n_frames / params.fps:.2f} of {timing.duration_s:.2f} s); the file is damaged or truncated. "
                f"Re-download it or {_REENCODE}."
            )
        if n_frames / params.fps < params.min_duration_s:
            raise InputError(
                f"{video}: only {n_frames / params.fps:.2f} s of frames decoded, shorter than "
                f"extract.min_duration_s={params.min_duration_s:g} s. Use a longer clip."
            )
        if decode_warnings:
            warn(f"ffmpeg reported {len(decode_warnings)} decode problem(s), first: {decode_warnings[0]!r}")

        # audio → exactly n_frames / fps seconds
        n_samples = int(round(n_frames * params.sample_rate / params.fps))
        missing = n_samples - len(audio)
        if missing > 0:
            if missing > n_samples / 2:
                raise _audio_too_short(video, len(audio) / params.sample_rate, n_frames / params.fps)
            if missing > 0.2 * params.sample_rate:
                warn(f"audio ends {missing / params.sample_rate:.2f} s before the video; padded with silence")
            audio = np.concatenate([audio, np.zeros(missing, np.float32)])
        elif -missing > 0.2 * params.sample_rate:
            log.info("%s: audio runs %.2f s past the last frame; trimmed", video, -missing / params.sample_rate)
        audio = audio[:n_samples]
        write_wav(tmp / "audio.wav", audio, params.sample_rate)

        n_train, n_test = split_indices(n_frames, params.test_fraction)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "frame_count": n_frames,
            "fps": params.fps,
            "resolution": res,
            "source": {
                "path": str(video),
                "sha256": source_sha,
                "size_bytes": video.stat().st_size,
                "container": info.container,
                "video_codec": info.video_codec,
                "width": info.width,
                "height": info.height,
                "rotation_deg": info.rotation,
                "display_width": dw,
                "display_height": dh,
                "fps": info.fps,
                "measured_fps": round(timing.measured_fps, 4),
                "frames": timing.n_packets,
                "keyframes": timing.n_keyframes,
                "first_frame_s": round(timing.start_s, 6),
                "video_duration_s": round(timing.duration_s, 4),
                "container_duration_s": info.duration_s,
                "vfr": timing.vfr,
                "frame_interval_ms": {k: round(v, 3) for k, v in timing.interval_ms.items()},
                "audio_codec": info.audio_codec,
                "audio_sample_rate": info.audio_sample_rate,
                "audio_channels": info.audio_channels,
            },
            "output": {
                "fps": params.fps,
                "frames": n_frames,
                "width": res,
                "height": res,
                "duration_s": n_frames / params.fps,
                "frame_pattern": "frames/%06d.jpg",
                "audio": "audio.wav",
                "sample_rate": params.sample_rate,
                "audio_samples": n_samples,
                "samples_per_frame": params.sample_rate / params.fps,
            },
            "crop": {
                "x": crop.x,
                "y": crop.y,
                "size": crop.size,
                "requested_size": crop.requested_size,
                "clamped_to_frame": crop.clamped,
                "scale": res / crop.size,
                "coordinates": "display pixels of the (rotated) source frame, top-left origin",
            },
            "face_detection": {
                "model": "mediapipe face_detection " + ("full-range" if params.face_model == 1 else "short-range"),
                "fallback_model_frames": faces.n_fallback,
                "sampled_frames": faces.n_samples,
                "keyframes_only": faces.keyframes_only,
                "face_fraction": len(faces.boxes) / faces.n_samples,
                "multi_face_frames": faces.n_multi,
                "median_box": [round(float(v), 1) for v in np.median(faces.boxes, axis=0)],
            },
            "audio": {k: (round(v, 2) if math.isfinite(v) else None) for k, v in levels.items()},
            "speech_activity": {k: (round(v, 4) if math.isfinite(v) else None) for k, v in speech.items()},
            "split": {
                "test_fraction": params.test_fraction,
                "n_train": n_train,
                "n_test": n_test,
                "train": [0, n_train],
                "test": [n_train, n_frames],
                "ranges": "half-open [start, end) frame index ranges; the test frames are the end of the clip",
            },
            "warnings": warnings,
            "params": dataclasses.asdict(params),
        }
        write_json(tmp / "meta.json", meta)
    total_s = time.perf_counter() - t_start
    log.info(
        "%s: %d frames %dx%d at %d fps (crop %d px at %d,%d), %.1f s audio; %.1f s (frames %.0f/s)",
        video, n_frames, res, res, params.fps, crop.size, crop.x, crop.y, n_samples / params.sample_rate,
        total_s, n_frames / max(frames_s, 1e-9),
    )
    return meta


def main(argv: list[str] | None = None) -> int:
    """``python -m talkgs.preprocess.extract VIDEO OUT_DIR [--resolution N] ...``"""
    import argparse
    import sys

    from talkgs.logs import setup_logging

    ap = argparse.ArgumentParser(prog="python -m talkgs.preprocess.extract", description=__doc__.split("\n")[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--resolution", type=int, default=ExtractParams.resolution)
    ap.add_argument("--fps", type=int, default=ExtractParams.fps)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    try:
        extract(args.video, args.out_dir, ExtractParams(resolution=args.resolution, fps=args.fps), progress=not args.no_progress)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
