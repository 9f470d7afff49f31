"""Evaluation protocols: self-driven (test split vs ground truth), cross-driven (foreign audio),
the ground-truth reference row, and the side-by-side comparison video.

- :func:`evaluate_self_driven` -- the held-out test frames (the last 1/11 of the clip, rendered
  with their own audio, poses, blinks and torso by :func:`talkgs.synthesize.render_test`) against
  the ground-truth frames: PSNR / SSIM / LPIPS (face crop and full frame), FID, LMD (mouth, face),
  AUE-L / AUE-U, mouth-opening correlation with the ground truth and with the speech envelope,
  SyncNet LSE-C / LSE-D, and with dlib's models (:mod:`talkgs.eval.identity`) CSIM and the
  68-point mouth LMD-68.
- :func:`evaluate_cross_driven` -- renders driven by foreign audios (no ground truth): SyncNet
  LSE-C / LSE-D and the mouth-motion measures (correlation with the speech envelope, amount of
  mouth motion), CSIM vs the subject's training frames, per audio and averaged over audios.
- :func:`evaluate_ground_truth` -- the same sync / motion measures (and CSIM vs the training
  frames) on the real test frames (the "Ground Truth" row of the papers' tables).
- :func:`write_comparison_video` -- ground truth | render | error heatmap, with sound.

Every returned dict is flat (``self.psnr_face``, ``cross.<audio>.lse_c``, ...) and carries a
``protocol`` text. A metric that cannot be computed here (weights absent, no face found) is
``{"status": "unavailable", "reason": ...}`` (:func:`talkgs.eval.metrics.unavailable`). dlib's
model files are a hard dependency (installed by ``make setup``): without them the protocols raise
:class:`talkgs.pretrained.PretrainedMissing` instead.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np

from talkgs.eval import identity as idn
from talkgs.eval import landmarks as lmk
from talkgs.eval.identity import IdentityParams
from talkgs.eval.metrics import (
    FACE_CLASSES,
    LPIPSMetric,
    WeightsMissing,
    crop,
    face_box,
    face_mask,
    psnr,
    ssim,
    unavailable,
)

log = logging.getLogger(__name__)

__all__ = [
    "FrameSource",
    "read_frames",
    "evaluate_self_driven",
    "evaluate_ground_truth",
    "evaluate_cross_driven",
    "write_comparison_video",
    "SELF_DRIVEN_PROTOCOL",
    "CROSS_DRIVEN_PROTOCOL",
]

FrameSource = Union[str, os.PathLike, Iterable[np.ndarray], Iterable[tuple[int, np.ndarray]]]
"""Frames: a folder of ``%06d.png|jpg`` (file stem = frame index of the clip), an mp4 (frames
0..N-1), or an iterable of ``uint8 [H, W, 3]`` RGB arrays or ``(frame index, array)`` pairs."""

SELF_DRIVEN_PROTOCOL = (
    "self-driven: the test split (last 1/11 of the clip's frames) rendered with its own audio, head poses, "
    "blinks and torso, compared with the ground-truth frames (ground truth resized to the render's size if they "
    "differ). Per-frame values averaged over frames. face = the bounding box of the segment stage's face-skin + "
    "eyes/brows + lips + mouth-interior labels of the ground-truth frame (a crop, as the papers crop the face; "
    "psnr_face_mask: those label pixels only); full = the whole frame. PSNR: data range 1, mean of per-frame dB. "
    "SSIM: Wang et al. 2004, 11-tap Gaussian (sigma 1.5), valid region, as skimage gaussian_weights=True. "
    "LPIPS: v0.1 AlexNet. FID: pytorch-fid Inception pool3 on full frames, rendered vs ground-truth test frames. "
    "LMD: MediaPipe landmarks per frame (static mode), mean-centred, mean point distance in pixels at the "
    "evaluated resolution; mouth = 40 lip points, face = 468 mesh points. AUE: landmark action-unit proxies "
    "(0-5-like scale, not OpenFace) vs ground truth; lower = AU25/26/20/12, upper = AU01/02/04/05/45. "
    "mouth_corr: Pearson correlation of rendered vs ground-truth mouth opening (max over lags of +-2 frames); "
    "mouth_env_corr: rendered mouth opening vs the speech RMS envelope (+-3 frames). LSE-C/LSE-D: SyncNet, "
    "official syncnet_python procedure (vshift 15) on MediaPipe face-box crops. Frames where the track stage's "
    "face mesh found no face (excluded_frames) are rendered but left out of the image and landmark metrics; "
    "the sync measures use the whole continuous clip. " + idn.IDENTITY_PROTOCOL
)
CROSS_DRIVEN_PROTOCOL = (
    "cross-driven: the subject driven by foreign audios (poses, blinks, torso from the training frames), no "
    "ground truth: SyncNet LSE-C/LSE-D (official procedure, MediaPipe face-box crops), mouth_env_corr "
    "(rendered mouth opening vs the driving speech's RMS envelope, max over +-3 frame lags), mouth_open_std "
    "(std of the mouth opening: amount of mouth motion), csim (dlib descriptors of the render vs the mean descriptor of "
    "evenly spaced training frames of the subject, face box from the render's MediaPipe landmarks); per audio and the "
    "mean over audios."
)

_IMG_EXT = (".png", ".jpg", ".jpeg")


# ----------------------------------------------------------------------------------------------
# frame I/O


def _read_image(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_labels(segment_dir: Path, idx: int) -> np.ndarray:
    import cv2

    p = Path(segment_dir) / "labels" / f"{idx:06d}.png"
    lab = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise ValueError(f"{p}: label map not found or unreadable (run the segment stage of this subject)")
    if lab.ndim != 2:
        raise ValueError(f"{p}: expected a single-channel label map, found shape {lab.shape}")
    return lab


def read_frames(source: FrameSource, indices: Iterable[int] | None = None) -> list[tuple[int, np.ndarray]]:
    """``[(frame index, uint8 [H, W, 3] RGB)]`` from a :data:`FrameSource`, sorted by index.

    ``indices``: restrict to these frames (folders), or the indices of a plain array iterable /
    mp4 (default 0..N-1).
    """
    idx_list = None if indices is None else [int(i) for i in indices]
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = {}
            for f in sorted(p.iterdir()):
                if f.suffix.lower() in _IMG_EXT and re.fullmatch(r"\d+", f.stem):
                    files[int(f.stem)] = f
            if not files:
                raise ValueError(f"{p}: no %06d.png/.jpg frames")
            want = sorted(files) if idx_list is None else idx_list
            missing = [i for i in want if i not in files]
            if missing:
                raise ValueError(f"{p}: frames {missing[:8]}{'...' if len(missing) > 8 else ''} are missing")
            return [(i, _read_image(files[i])) for i in want]
        if p.is_file():
            from talkgs.io.video import FrameReader, probe

            info = probe(p)
            w, h = info.display_size
            with FrameReader(p, width=w, height=h) as r:
                frames = [np.array(f) for f in r]
            ids = list(range(len(frames))) if idx_list is None else idx_list
            if len(ids) != len(frames):
                raise ValueError(f"{p}: {len(frames)} frames, {len(ids)} indices given")
            return list(zip(ids, frames))
        raise ValueError(f"{p}: neither a folder of frames nor a video file")
    items = list(source)
    out: list[tuple[int, np.ndarray]] = []
    for k, it in enumerate(items):
        if isinstance(it, tuple):
            i, f = it
        else:
            i, f = (k if idx_list is None else idx_list[k]), it
        f = np.asarray(f)
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {i}: expected uint8 [H, W, 3] RGB, found {f.dtype} {f.shape}")
        out.append((int(i), f))
    if idx_list is not None and not all(isinstance(it, tuple) for it in items) and len(idx_list) != len(items):
        raise ValueError(f"{len(items)} frames, {len(idx_list)} indices given")
    return sorted(out, key=lambda t: t[0])


def _resize(img: np.ndarray, hw: tuple[int, int], labels: bool = False) -> np.ndarray:
    import cv2

    if img.shape[:2] == hw:
        return img
    interp = cv2.INTER_NEAREST if labels else (cv2.INTER_AREA if img.shape[0] > hw[0] else cv2.INTER_LINEAR)
    return cv2.resize(img, (hw[1], hw[0]), interpolation=interp)


def _audio_segment(audio: str | os.PathLike[str] | np.ndarray | None, first: int, n: int, fps: float, sample_rate: int = 16000) -> np.ndarray | None:
    """Samples of frames ``first .. first + n - 1`` of a clip whose audio starts at frame 0."""
    if audio is None:
        return None
    if isinstance(audio, np.ndarray):
        x = audio.astype(np.float32)
    else:
        from talkgs.io.media import load_audio

        x = load_audio(audio, sample_rate)
    a, b = int(round(first / fps * sample_rate)), int(round((first + n) / fps * sample_rate))
    seg = x[a:b]
    if len(seg) < b - a:
        seg = np.concatenate([seg, np.zeros(b - a - len(seg), np.float32)])
    return seg


def _contiguous(idx: list[int]) -> bool:
    return all(b == a + 1 for a, b in zip(idx, idx[1:]))


def _weights_error(e: Exception) -> bool:
    from talkgs.models.perceptual import LPIPSWeightsMissing

    return isinstance(e, (WeightsMissing, LPIPSWeightsMissing))


def _sync_metrics(frames: list[np.ndarray], lm: np.ndarray, audio: np.ndarray | None, fps: float, syncnet: Any, prefix: str, why_no_audio: str) -> dict[str, Any]:
    """LSE-C/D and mouth-envelope correlation of one clip (frames, their landmarks, aligned audio)."""
    out: dict[str, Any] = {}
    if audio is None:
        for k in ("lse_c", "lse_d", "lse_offset", "mouth_env_corr", "mouth_env_lag"):
            out[prefix + k] = unavailable(why_no_audio)
        return out
    opening = lmk.mouth_opening(lm)
    env = lmk.speech_envelope(audio, 16000, fps, n_frames=len(frames))
    c, lag, _ = lmk.lagged_correlation(opening, env, max_lag=3)
    if np.isfinite(c):
        out[prefix + "mouth_env_corr"], out[prefix + "mouth_env_lag"] = round(c, 4), lag
    else:
        why = "too few frames with a detected face (need 8) or constant mouth opening / silence"
        out[prefix + "mouth_env_corr"] = out[prefix + "mouth_env_lag"] = unavailable(why)
    if isinstance(syncnet, dict):  # unavailable
        out[prefix + "lse_c"] = out[prefix + "lse_d"] = out[prefix + "lse_offset"] = syncnet
        return out
    from talkgs.eval.syncnet import lse

    try:
        r = lse(syncnet, frames, audio, fps=fps, landmarks=lm)
    except ValueError as e:  # too short / no face at all
        for k in ("lse_c", "lse_d", "lse_offset"):
            out[prefix + k] = unavailable(str(e))
        return out
    out[prefix + "lse_c"], out[prefix + "lse_d"], out[prefix + "lse_offset"] = round(r["lse_c"], 4), round(r["lse_d"], 4), r["offset"]
    return out


def _load_syncnet_or_reason(weights: str | os.PathLike[str] | None, device: Any) -> Any:
    from talkgs.eval.syncnet import load_syncnet

    try:
        return load_syncnet(weights, device=device)
    except Exception as e:  # noqa: BLE001 - only a missing file becomes "unavailable"
        if _weights_error(e):
            return unavailable(str(e))
        raise


def _mean(values: list[float]) -> float:
    """Mean without NaNs (frames that could not be measured); ``inf`` (identical frames' PSNR) stays."""
    v = [x for x in values if not np.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def _num(x: float, nd: int = 4) -> Any:
    return round(float(x), nd) if np.isfinite(x) else (float(x) if np.isinf(x) else unavailable("no frame could be measured"))


# ----------------------------------------------------------------------------------------------
# self-driven


def evaluate_self_driven(
    gt_frames_dir: str | os.PathLike[str],
    rendered: FrameSource,
    segment_dir: str | os.PathLike[str],
    *,
    frames: Iterable[int] | None = None,
    audio: str | os.PathLike[str] | np.ndarray | None = None,
    fps: float = 25.0,
    alexnet_weights: str | os.PathLike[str] | None = None,
    lpips_linear_weights: str | os.PathLike[str] | None = None,
    syncnet_weights: str | os.PathLike[str] | None = None,
    inception_weights: str | os.PathLike[str] | None = None,
    fid: bool = True,
    device: Any = "cpu",
    static_landmarks: bool = True,
    prefix: str = "self.",
    exclude: Iterable[int] = (),
    identity: IdentityParams = IdentityParams(),
) -> dict[str, Any]:
    """Self-driven metrics of rendered test frames against the ground truth.

    Args:
        gt_frames_dir: the extract stage's ``frames/`` (``%06d.jpg``, index = frame of the clip).
        rendered: the rendered test frames (:data:`FrameSource`; a folder as
            :func:`talkgs.synthesize.render_test` writes with ``frames_dir``). Their indices pick
            the ground-truth frames and labels.
        segment_dir: the segment stage's output (``labels/%06d.png``).
        frames: the frame indices of ``rendered`` when it is a plain iterable / mp4 (default: all
            frames of a folder; 0..N-1 otherwise).
        audio: the clip's audio (``extract/audio.wav``, sample 0 = frame 0) or samples at 16 kHz;
            None: the sync metrics are unavailable.
        *_weights: weight files (None: the default locations, see each metric's module).
        fid: compute FID (Inception on every frame; the slowest metric).
        exclude: frame indices left out of the image and landmark metrics (where the track
            stage found no face: :attr:`talkgs.train.data.SubjectData.excluded`); the sync
            measures still use every frame (they need a continuous clip).
        identity: CSIM / LMD-68 settings (frames measured); dlib's models must be installed
            (:class:`talkgs.pretrained.PretrainedMissing` otherwise).

    Returns:
        Flat dict: ``protocol`` and ``self.<metric>`` (see :data:`SELF_DRIVEN_PROTOCOL`).
    """
    idn.models()  # a missing model file fails here, before anything is measured
    pairs_r = read_frames(rendered, frames)
    if not pairs_r:
        raise ValueError("evaluate_self_driven: no rendered frames")
    idx = [i for i, _ in pairs_r]
    ren = [f for _, f in pairs_r]
    hw = ren[0].shape[:2]
    if any(f.shape[:2] != hw for f in ren):
        raise ValueError("evaluate_self_driven: rendered frames differ in size")
    skip = {int(i) for i in exclude}
    keep = [k for k, i in enumerate(idx) if i not in skip]
    if not keep:
        raise ValueError(f"evaluate_self_driven: every rendered frame ({idx[0]}..{idx[-1]}) is excluded (no face tracked there)")
    all_ren, ren, idx_m = ren, [ren[k] for k in keep], [idx[k] for k in keep]
    gt = [_resize(f, hw) for _, f in read_frames(gt_frames_dir, idx_m)]
    labels = [_resize(_read_labels(Path(segment_dir), i), hw, labels=True) for i in idx_m]
    p = prefix
    out: dict[str, Any] = {"protocol": SELF_DRIVEN_PROTOCOL, p + "frames": len(idx), p + "first_frame": idx[0], p + "last_frame": idx[-1], p + "resolution": f"{hw[1]}x{hw[0]}"}
    out[p + "excluded_frames"] = len(idx) - len(keep)

    # --- image metrics (frames with a tracked face)
    boxes = [face_box(lab) for lab in labels]
    no_face = [i for i, b in zip(idx_m, boxes) if b is None]
    if no_face:
        log.warning("self-driven: no face label in ground-truth frames %s; face metrics skip them", no_face[:10])
    out[p + "face_frames"] = len(idx_m) - len(no_face)
    vals: dict[str, list[float]] = {k: [] for k in ("psnr_full", "psnr_face", "psnr_face_mask", "ssim_full", "ssim_face")}
    for r, g, lab, b in zip(ren, gt, labels, boxes):
        vals["psnr_full"].append(psnr(r, g))
        vals["ssim_full"].append(ssim(r, g))
        if b is not None:
            rc, gc = crop(r, b), crop(g, b)
            vals["psnr_face"].append(psnr(rc, gc))
            vals["ssim_face"].append(ssim(rc, gc) if min(rc.shape[:2]) >= 11 else float("nan"))
            vals["psnr_face_mask"].append(psnr(r, g, face_mask(lab, FACE_CLASSES)))
    for k, v in vals.items():
        out[p + k] = _num(_mean(v)) if v else unavailable("no ground-truth frame has face labels")
    try:
        lp = LPIPSMetric(alexnet_weights, lpips_linear_weights, device=device)
    except Exception as e:  # noqa: BLE001
        if not _weights_error(e):
            raise
        out[p + "lpips_full"] = out[p + "lpips_face"] = unavailable(str(e))
    else:
        out[p + "lpips_full"] = _num(_mean([lp(r, g) for r, g in zip(ren, gt)]))
        lf = [lp(crop(r, b), crop(g, b)) for r, g, b in zip(ren, gt, boxes) if b is not None]
        out[p + "lpips_face"] = _num(_mean(lf)) if lf else unavailable("no ground-truth frame has face labels")
    if fid:
        out[p + "fid"] = _fid_or_reason(ren, gt, inception_weights, device)

    # --- landmarks: LMD, AUE, mouth correlation (frames with a tracked face)
    lm_all = lmk.detect_landmarks(all_ren, static=static_landmarks)
    lm_r = lm_all[keep]
    lm_g = lmk.detect_landmarks(gt, static=static_landmarks)
    det_r, det_g = lmk.detected(lm_r), lmk.detected(lm_g)
    out[p + "face_detected_render"] = round(float(det_r.mean()), 4)
    out[p + "face_detected_gt"] = round(float(det_g.mean()), 4)
    both = det_r & det_g
    if not both.any():
        why = f"no frame where MediaPipe finds the face in both the render ({int(det_r.sum())}/{len(idx_m)}) and the ground truth ({int(det_g.sum())}/{len(idx_m)})"
        for k in ("lmd_mouth", "lmd_face", "aue_lower", "aue_upper", "mouth_corr", "mouth_corr_lag"):
            out[p + k] = unavailable(why)
    else:
        out[p + "lmd_mouth"] = round(lmk.lmd(lm_r, lm_g, "mouth"), 4)
        out[p + "lmd_face"] = round(lmk.lmd(lm_r, lm_g, "face"), 4)
        ref = lmk.au_reference(lm_g)
        errs = lmk.aue(lmk.action_units(lm_r, ref), lmk.action_units(lm_g, ref))
        out.update({p + k: _num(v) for k, v in errs.items()})
        c, lag, _ = lmk.lagged_correlation(lmk.mouth_opening(lm_r), lmk.mouth_opening(lm_g), max_lag=2)
        if np.isfinite(c):
            out[p + "mouth_corr"], out[p + "mouth_corr_lag"] = round(c, 4), lag
        else:
            out[p + "mouth_corr"] = out[p + "mouth_corr_lag"] = unavailable("fewer than 8 frames with a face in both, or a constant mouth opening")

    # --- identity (dlib): CSIM and LMD-68, in the ground-truth frame's box
    out.update(_identity_self(ren, gt, lm_g, identity, p))

    # --- sync (the whole continuous clip)
    seg, why = _sync_audio(audio, idx, fps)
    syncnet = _load_syncnet_or_reason(syncnet_weights, device) if seg is not None else None
    out.update(_sync_metrics(all_ren, lm_all, seg, fps, syncnet, p, why))
    return out


def _identity_self(ren: list[np.ndarray], gt: list[np.ndarray], lm_g: np.ndarray, params: IdentityParams, p: str) -> dict[str, Any]:
    """CSIM (render vs its ground truth) and LMD-68 on at most ``params.max_frames`` evenly spaced
    frames where MediaPipe found the face in the ground truth (its box serves both images)."""
    boxes = [idn.box_from_landmarks(lm) for lm in lm_g]
    have = [k for k, b in enumerate(boxes) if b is not None]
    if not have:
        why = f"MediaPipe found no face in any of the {len(gt)} ground-truth frames (the face box of CSIM / LMD-68)"
        return {p + "csim": unavailable(why), p + "lmd68_mouth": unavailable(why), p + "identity_frames": 0}
    pick = [have[j] for j in idn.subsample(len(have), params.max_frames)]
    sims, lr, lg = [], [], []
    for k in pick:
        r, g = idn.analyze(ren[k], boxes[k]), idn.analyze(gt[k], boxes[k])
        sims.append(idn.csim(r.descriptor, g.descriptor))
        lr.append(r.landmarks68)
        lg.append(g.landmarks68)
    d68 = idn.lmd68_per_frame(np.stack(lr), np.stack(lg))
    return {p + "csim": _num(float(np.mean(sims))), p + "lmd68_mouth": _num(float(np.mean(d68))), p + "identity_frames": len(pick)}


def _identity_vs_reference(frames: list[np.ndarray], lm: np.ndarray, ref: np.ndarray | None, params: IdentityParams, why_no_ref: str) -> tuple[Any, int]:
    """``(CSIM, frames measured)``: mean cosine of the descriptors of ``frames`` (boxes from their own
    landmarks ``lm``, at most ``params.max_frames`` evenly spaced) vs the reference descriptor."""
    if ref is None:
        return unavailable(why_no_ref), 0
    boxes = [idn.box_from_landmarks(x) for x in lm]
    have = [k for k, b in enumerate(boxes) if b is not None]
    if not have:
        return unavailable(f"MediaPipe found no face in any of the {len(frames)} frames"), 0
    pick = [have[j] for j in idn.subsample(len(have), params.max_frames)]
    sims = [idn.csim(idn.descriptor(frames[k], boxes[k]), ref) for k in pick]
    return _num(float(np.mean(sims))), len(pick)


def _reference(reference: FrameSource | np.ndarray | None) -> tuple[np.ndarray | None, int, str]:
    """``(descriptor [128] or None, frames used, why none)``: the subject's reference descriptor from
    frames (mean over those where MediaPipe finds a face) or as given."""
    if reference is None:
        return None, 0, "no reference frames of the subject given"
    if isinstance(reference, np.ndarray) and reference.ndim == 1:
        if reference.shape != (128,):
            raise ValueError(f"identity reference: expected a [128] descriptor, found {reference.shape}")
        return reference.astype(np.float64), 0, ""
    imgs = [f for _, f in read_frames(reference)]
    lm = lmk.detect_landmarks(imgs, static=True)
    if not lmk.detected(lm).any():
        return None, 0, f"MediaPipe found no face in any of the {len(imgs)} reference (training) frames"
    desc, n = idn.reference_descriptor(imgs, lm)
    return desc, n, ""


def _sync_audio(audio: Any, idx: list[int], fps: float) -> tuple[Any, str]:
    """The audio under frames ``idx`` for the sync metrics, or ``(None, why not)``."""
    if audio is None:
        return None, "no audio given"
    if not _contiguous(idx):
        return None, "the frames are not contiguous: sync needs a continuous clip"
    return _audio_segment(audio, idx[0], len(idx), fps), ""


def _fid_or_reason(a: list[np.ndarray], b: list[np.ndarray], weights: Any, device: Any) -> Any:
    from talkgs.eval.fid import fid_from_frames, load_fid_inception

    try:
        net = load_fid_inception(weights, device=device)
    except Exception as e:  # noqa: BLE001
        if _weights_error(e):
            return unavailable(str(e))
        raise
    if min(len(a), len(b)) < 2:
        return unavailable("FID needs at least 2 frames per set")
    return round(fid_from_frames(net, a, b, device=device), 4)


# ----------------------------------------------------------------------------------------------
# ground truth and cross-driven


def evaluate_ground_truth(
    gt_frames_dir: str | os.PathLike[str],
    frames: Iterable[int],
    audio: str | os.PathLike[str] | np.ndarray | None,
    *,
    fps: float = 25.0,
    syncnet_weights: str | os.PathLike[str] | None = None,
    device: Any = "cpu",
    static_landmarks: bool = True,
    prefix: str = "gt.",
    reference: FrameSource | np.ndarray | None = None,
    identity: IdentityParams = IdentityParams(),
) -> dict[str, Any]:
    """Sync and mouth-motion measures of the real frames ``frames`` (the test split): the
    "Ground Truth" reference row (LSE-C/D, mouth_env_corr, mouth_open_std), and ``csim_ref``: CSIM
    of these frames vs ``reference`` (the subject's training frames or their mean descriptor, as
    :func:`evaluate_cross_driven`; None: unavailable), the ceiling of the cross-driven CSIM."""
    if reference is not None:
        idn.models()
    pairs = read_frames(gt_frames_dir, frames)
    idx = [i for i, _ in pairs]
    imgs = [f for _, f in pairs]
    lm = lmk.detect_landmarks(imgs, static=static_landmarks)
    out: dict[str, Any] = {"protocol": "ground truth: " + SELF_DRIVEN_PROTOCOL, prefix + "frames": len(idx), prefix + "first_frame": idx[0]}
    out[prefix + "face_detected"] = round(float(lmk.detected(lm).mean()), 4)
    opening = lmk.mouth_opening(lm)
    out[prefix + "mouth_open_std"] = _num(float(np.nanstd(opening)) if np.isfinite(opening).any() else float("nan"))
    seg, why = _sync_audio(audio, idx, fps)
    syncnet = _load_syncnet_or_reason(syncnet_weights, device) if seg is not None else None
    out.update(_sync_metrics(imgs, lm, seg, fps, syncnet, prefix, why))
    ref, n_ref, why_ref = _reference(reference)
    out[prefix + "csim_ref"], out[prefix + "identity_frames"] = _identity_vs_reference(imgs, lm, ref, identity, why_ref)
    if ref is not None and n_ref:
        out[prefix + "identity_reference_frames"] = n_ref
    return out


def evaluate_cross_driven(
    renders: Mapping[str, FrameSource],
    audios: Mapping[str, str | os.PathLike[str] | np.ndarray | None] | None = None,
    *,
    fps: float = 25.0,
    syncnet_weights: str | os.PathLike[str] | None = None,
    device: Any = "cpu",
    static_landmarks: bool = True,
    prefix: str = "cross.",
    reference: FrameSource | np.ndarray | None = None,
    identity: IdentityParams = IdentityParams(),
) -> dict[str, Any]:
    """Cross-driven metrics of renders driven by foreign audios.

    Args:
        renders: audio name → the render (an mp4 from :func:`talkgs.synthesize.synthesize`, a
            folder or frames; frame 0 = audio time 0).
        audios: audio name → the driving audio (file or 16 kHz samples); missing / None: the
            render's own sound track (mp4).
        reference: the subject's identity for CSIM: its training frames (:data:`FrameSource`,
            e.g. :attr:`IdentityParams.reference_frames` evenly spaced ones; their mean dlib
            descriptor) or that mean descriptor ``[128]``; None: CSIM unavailable.
        identity: CSIM settings (frames measured per render); dlib's models must be installed
            (:class:`talkgs.pretrained.PretrainedMissing` otherwise).

    Returns:
        Flat dict: ``protocol``, ``cross.<audio>.<metric>`` and the means over audios
        ``cross.<metric>`` (``lse_c``, ``lse_d``, ``mouth_env_corr``, ``mouth_open_std``, ``csim``).
    """
    if not renders:
        raise ValueError("evaluate_cross_driven: no renders")
    idn.models()  # a missing model file fails here, before anything is rendered or measured
    audios = dict(audios or {})
    ref, n_ref, why_ref = _reference(reference)
    syncnet = _load_syncnet_or_reason(syncnet_weights, device)
    out: dict[str, Any] = {"protocol": CROSS_DRIVEN_PROTOCOL}
    if ref is not None and n_ref:
        out[prefix + "identity_reference_frames"] = n_ref
    for name, src in renders.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ValueError(f"audio name {name!r}: use letters, digits, '_' or '-' (it becomes a metric key)")
        pairs = read_frames(src)
        imgs = [f for _, f in pairs]
        a = audios.get(name)
        if a is None:
            if isinstance(src, (str, os.PathLike)) and Path(src).is_file():
                a = src  # the render's own sound track
            else:
                raise ValueError(f"cross-driven {name}: no audio given and the render is not a video file with sound")
        seg = _audio_segment(a, 0, len(imgs), fps)
        lm = lmk.detect_landmarks(imgs, static=static_landmarks)
        q = f"{prefix}{name}."
        out[q + "frames"] = len(imgs)
        out[q + "face_detected"] = round(float(lmk.detected(lm).mean()), 4)
        opening = lmk.mouth_opening(lm)
        out[q + "mouth_open_std"] = _num(float(np.nanstd(opening)) if np.isfinite(opening).any() else float("nan"))
        out.update(_sync_metrics(imgs, lm, seg, fps, syncnet, q, "no audio"))
        out[q + "csim"], out[q + "identity_frames"] = _identity_vs_reference(imgs, lm, ref, identity, why_ref)
    for k in ("lse_c", "lse_d", "mouth_env_corr", "mouth_open_std", "csim"):
        vals = [out[f"{prefix}{n}.{k}"] for n in renders]
        nums = [float(v) for v in vals if isinstance(v, (int, float))]
        if len(nums) == len(vals):
            out[prefix + k] = round(float(np.mean(nums)), 4)
        else:
            reasons = sorted({v["reason"] for v in vals if isinstance(v, dict)})
            out[prefix + k] = unavailable("; ".join(reasons))
    return out


# ----------------------------------------------------------------------------------------------
# comparison video


def error_heatmap(render: np.ndarray, gt: np.ndarray, max_error: float = 0.25) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB heatmap (JET) of the per-pixel mean absolute error, 0 → blue,
    ``max_error`` (fraction of the range) and above → red."""
    import cv2

    err = np.abs(render.astype(np.float32) - gt.astype(np.float32)).mean(-1) / 255.0
    u8 = np.clip(err / max_error * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def write_comparison_video(
    gt_frames_dir: str | os.PathLike[str],
    rendered: FrameSource,
    out_mp4: str | os.PathLike[str],
    *,
    frames: Iterable[int] | None = None,
    audio: str | os.PathLike[str] | np.ndarray | None = None,
    fps: float = 25.0,
    max_error: float = 0.25,
) -> dict[str, Any]:
    """Side-by-side video ``ground truth | render | error heatmap`` (H.264 + AAC when ``audio``, the
    clip's audio with sample 0 = frame 0, is given), written atomically."""
    import tempfile

    from talkgs.io.media import VideoWriter, write_wav

    pairs_r = read_frames(rendered, frames)
    idx = [i for i, _ in pairs_r]
    hw = pairs_r[0][1].shape[:2]
    gt = [_resize(f, hw) for _, f in read_frames(gt_frames_dir, idx)]
    with tempfile.TemporaryDirectory() as td:
        wav = None
        if audio is not None:
            if not _contiguous(idx):
                raise ValueError("write_comparison_video: frames are not contiguous, cannot align the audio")
            wav = Path(td) / "seg.wav"
            write_wav(wav, _audio_segment(audio, idx[0], len(idx), fps), 16000)
        with VideoWriter(out_mp4, fps, audio=wav) as w:
            for (_, r), g in zip(pairs_r, gt):
                w.write(np.ascontiguousarray(np.concatenate([g, r, error_heatmap(r, g, max_error)], axis=1)))
    return {"out": str(out_mp4), "frames": len(idx), "layout": "ground truth | render | |error| heatmap (JET, red >= %.2f)" % max_error}
