"""Stage ``segment``: per-frame label maps, background plate, torso frames, contact sheet.

Replaces the papers' BiSeNet face parsing + EasyPortrait + AD-NeRF background tooling with
the MediaPipe models bundled in the wheel (offline, CPU, no custom CUDA):

- person vs background: MediaPipe selfie segmentation (probability > ``person_threshold``);
- face parts: polygons of the MediaPipe face mesh (tracking mode), see
  :mod:`talkgs.preprocess.facemesh`.

Class ids (``labels/NNNNNN.png`` are single-channel uint8 PNGs holding these ids)::

    0 BACKGROUND  not the person
    1 TORSO       torso, clothes and neck: person pixels that are not head
    2 FACE        face skin: inside the face-oval polygon, plus skin-coloured person pixels
                  above mouth level around it (forehead above the mesh, ears)
    3 HAIR        person pixels in the head region around/above the face oval that are not
                  face skin (heuristic, below)
    4 EYES        eye openings (eye polygons grown by ``eye_margin``) and eyebrows
    5 LIPS        outer-lip polygon minus the inner-lip polygon
    6 MOUTH       mouth interior (teeth, tongue): the inner-lip polygon, so the whole opening
                  is covered whenever the mouth is open (area ~ 0 when closed)

Paint order (later wins): background → torso (person mask) → hair/skin (head region) → face
oval → eyes + brows → lips → mouth interior. Face parts are painted from the mesh even where
the selfie mask disagrees (``segment.json`` reports how often the face oval lies inside the
person mask, a sanity check of both models).

Hair heuristic (MediaPipe has no hair model). In face-aligned coordinates (origin at the
centroid of the face oval, ``v`` up along chin→forehead in units of half the face height,
``h`` sideways in units of the oval's half-width on that side) the *head region* is
``|h| <= hair_width``, ``-1 <= v <= hair_height`` (from chin level, for hair hanging beside
the face, up past any hairdo: the person mask bounds it), minus a notch under the chin
(``|h| < 0.75``, ``v < -0.5``: neck and collar). Two Gaussian colour models, refreshed every
few frames: *skin* (YCrCb chroma of the cheeks and nose) and *hair* (YCrCb of the non-skin
person pixels over the top of the head, ``v > 0.5``), tabulated on quantised colours. Person
pixels of the head region outside the face oval are then:

- skin-coloured (closer to skin than to hair, distance < ``skin_threshold``): FACE above
  ``skin_cut`` (forehead above the mesh, ears), else TORSO (neck);
- otherwise above the oval centre (``v > 0``): HAIR;
- otherwise (beside the lower face): HAIR if hair-coloured (distance < ``hair_threshold``),
  else TORSO (shoulders and collars at chin height).

Inside the oval's outer rim (``rim_width``), hair-coloured non-skin pixels above ``skin_cut``
become HAIR (strands over the cheek of a turned head). Hair must be one piece with the hair
above the oval centre (8-connected): detached blobs (a dark suit at chin height, speckles)
stay TORSO / FACE. Known limits: fringes over the middle
of the forehead stay FACE; hair below chin level is TORSO; hair coloured like the skin (some
blond/grey) may become FACE; hands in the head region become HAIR or FACE. Without a hair
model (a bald head: no non-skin pixels on top) only pixels above the oval centre become HAIR.

Background plate (AD-NeRF style, streaming, O(1) frames in memory): on ≤
``background_samples`` evenly spaced frames, every pixel farther than ``background_distance``
x resolution from the person (a generous person mask, probability >
``background_person_threshold``) contributes its colour with a weight rising with that
distance; the weighted mean is the plate. Pixels never far from the person take the mean of
the samples where they are background at all; pixels never background are filled with
OpenCV inpainting (Telea).

Torso frames: each ground-truth frame with the head (face, hair, eyes, lips, mouth; grown by
``head_dilate`` x resolution) replaced by the background plate: the papers render the head
onto background + torso.

Output folder (atomic)::

    labels/000000.png   uint8 class ids
    torso/000000.jpg    torso frames
    background.png      background plate (RGB)
    contact_sheet.png   sampled frames with the labels overlaid, widest mouth, lowest eye
                        opening, the plate and a torso frame, for a person to look at
    frame_stats.csv     per frame: face found, class areas, lip gap, eye aspect ratio, label
                        change vs the previous frame
    segment.json        class table, params, summary statistics, warnings
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from talkgs.configlib import FRACTION, MAX_PIXELS, PROBABILITY, Range
from talkgs.io.atomic import atomic_dir, write_json
from talkgs.preprocess import facemesh as fmesh
from talkgs.preprocess.errors import InputError
from talkgs.preprocess.extract import FRAME_PATTERN
from talkgs.progress import Rate, progress_bar

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

BACKGROUND = 0
TORSO = 1
FACE = 2
HAIR = 3
EYES = 4
LIPS = 5
MOUTH = 6

LABELS: dict[int, str] = {
    BACKGROUND: "background",
    TORSO: "torso",
    FACE: "face",
    HAIR: "hair",
    EYES: "eyes",
    LIPS: "lips",
    MOUTH: "mouth",
}
"""Class id → name."""

DESCRIPTIONS: dict[int, str] = {
    BACKGROUND: "not the person (MediaPipe selfie segmentation)",
    TORSO: "torso, clothes and neck: person pixels that are not head",
    FACE: "face skin: face-oval polygon + skin-coloured forehead/ears above mouth level",
    HAIR: "person pixels in the head region around/above the face oval that are not skin",
    EYES: "eye openings (grown by eye_margin) and eyebrows",
    LIPS: "outer-lip polygon minus inner-lip polygon",
    MOUTH: "mouth interior (teeth, tongue): the inner-lip polygon",
}

HEAD_CLASSES = (FACE, HAIR, EYES, LIPS, MOUTH)
"""Classes removed from the torso frames."""

COLORS: dict[int, tuple[int, int, int]] = {
    BACKGROUND: (0, 0, 0),
    TORSO: (60, 110, 255),
    FACE: (255, 200, 120),
    HAIR: (150, 70, 20),
    EYES: (0, 230, 90),
    LIPS: (255, 40, 90),
    MOUTH: (255, 255, 0),
}
"""RGB colour of each class in the contact sheet."""

SKIN_UPDATE_EVERY = 10
"""Frames between updates of the skin colour model (an exponential moving average)."""

LABEL_PATTERN = "labels/{:06d}.png"
TORSO_PATTERN = "torso/{:06d}.jpg"


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of the ``segment`` stage (``params.yaml: segment``)."""

    person_threshold: Annotated[float, PROBABILITY] = 0.5
    """Selfie-segmentation probability above which a pixel is the person."""
    selfie_model: Annotated[int, Range(0, 1)] = 1
    """MediaPipe selfie segmentation model: 0 = general (256x256 input), 1 = landscape
    (144x256 input): 3x cheaper, masks agree with the general model at IoU 0.97-0.99 on the
    real clips."""
    mask_smoothing: Annotated[float, Range(0, 1, hi_open=True)] = 0.3
    """Temporal smoothing of the person probability: weight of the previous frame's (0 = off)."""
    face_confidence: Annotated[float, PROBABILITY] = 0.5
    """MediaPipe face mesh minimum detection confidence."""
    tracking_confidence: Annotated[float, PROBABILITY] = 0.5
    """MediaPipe face mesh minimum tracking confidence (below it the face is re-detected)."""
    hair_width: Annotated[float, Range(1, 10)] = 1.7
    """Half-width of the head region in units of the face oval's half-width (per side)."""
    hair_height: Annotated[float, Range(1, 10)] = 3.5
    """Top of the head region above the oval's centre in units of half the face height
    (the forehead top is at about 1; the person mask bounds the hair anyway)."""
    color_models: bool = True
    """Split the head region with skin and hair colour models (else: all of it is hair)."""
    skin_threshold: Annotated[float, Range(0, 100, lo_open=True)] = 3.5
    """Mahalanobis distance (YCrCb chroma) to the cheeks' skin colour under which a pixel is skin."""
    hair_threshold: Annotated[float, Range(0, 100, lo_open=True)] = 2.5
    """Mahalanobis distance (Y, Cr, Cb) to the hair colour (sampled over the top of the head)
    under which a pixel is hair-coloured."""
    rim_width: Annotated[float, Range(0, 1, hi_open=True)] = 0.15
    """Outer fraction of the face oval where hair-coloured, non-skin pixels are relabelled hair
    (strands over the cheeks of a turned head); 0 disables."""
    skin_cut: Annotated[float, Range(-1, 1)] = -0.6
    """Skin-coloured head-region pixels above this ``v`` (≈ mouth level) are face, below torso."""
    eye_margin: Annotated[float, Range(0, 2)] = 0.15
    """Eye polygons are grown by this fraction about their centre (eyelid margin)."""
    mouth_margin: Annotated[float, Range(0, 2)] = 0.05
    """The inner-lip polygon is grown by this fraction about its centre."""
    head_dilate: Annotated[float, Range(0, 0.1, hi_open=True)] = 0.006
    """Head mask growth (fraction of the resolution) when cutting the head out of torso frames."""
    background_samples: Annotated[int, Range(1, 100_000)] = 100
    """Frames (evenly spaced) used to estimate the background plate."""
    background_person_threshold: Annotated[float, PROBABILITY] = 0.2
    """Person probability above which a pixel is excluded from the plate (generous mask)."""
    background_distance: Annotated[float, Range(0, 0.5, hi_open=True)] = 0.03
    """Pixels must be this far from the person (fraction of the resolution) to count fully."""
    inpaint_radius: Annotated[int, Range(1, 256, unit="pixels")] = 5
    """OpenCV inpainting radius (pixels) for the never-seen part of the background."""
    torso_jpeg_quality: Annotated[int, Range(1, 100)] = 95
    """JPEG quality of the torso frames."""
    png_compression: Annotated[int, Range(0, 9)] = 1
    """zlib level of the label PNGs (1 = fast; label maps compress well anyway)."""
    contact_frames: Annotated[int, Range(1, 100)] = 6
    """Evenly spaced frames on the contact sheet (plus widest mouth, lowest eye opening, the
    background plate and a torso frame)."""
    contact_tile: Annotated[int, Range(64, MAX_PIXELS, unit="pixels")] = 256
    """Tile size of the contact sheet in pixels."""
    max_missing_fraction: Annotated[float, FRACTION] = 0.2
    """Error when the face mesh finds no face in more than this fraction of frames (frames
    without a face reuse the nearest frame's landmarks, with a warning)."""

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.person_threshold < 1.0, "person_threshold must be in (0, 1)"),
            (self.selfie_model in (0, 1), "selfie_model must be 0 or 1"),
            (0.0 <= self.mask_smoothing < 1.0, "mask_smoothing must be in [0, 1)"),
            (0.0 < self.face_confidence < 1.0, "face_confidence must be in (0, 1)"),
            (0.0 < self.tracking_confidence < 1.0, "tracking_confidence must be in (0, 1)"),
            (self.hair_width >= 1.0, "hair_width must be >= 1"),
            (self.hair_height >= 1.0, "hair_height must be >= 1"),
            (self.skin_threshold > 0.0 and self.hair_threshold > 0.0, "skin_threshold and hair_threshold must be > 0"),
            (0.0 <= self.rim_width < 1.0, "rim_width must be in [0, 1)"),
            (-1.0 <= self.skin_cut <= 1.0, "skin_cut must be in [-1, 1]"),
            (self.eye_margin >= 0.0 and self.mouth_margin >= 0.0, "eye_margin and mouth_margin must be >= 0"),
            (0.0 <= self.head_dilate < 0.1, "head_dilate must be in [0, 0.1)"),
            (self.background_samples >= 1, "background_samples must be >= 1"),
            (0.0 < self.background_person_threshold < 1.0, "background_person_threshold must be in (0, 1)"),
            (0.0 <= self.background_distance < 0.5, "background_distance must be in [0, 0.5)"),
            (self.inpaint_radius >= 1, "inpaint_radius must be >= 1"),
            (1 <= self.torso_jpeg_quality <= 100, "torso_jpeg_quality must be in 1..100"),
            (0 <= self.png_compression <= 9, "png_compression must be in 0..9"),
            (self.contact_frames >= 1 and self.contact_tile >= 64, "contact_frames >= 1 and contact_tile >= 64"),
            (0.0 <= self.max_missing_fraction <= 1.0, "max_missing_fraction must be in [0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"segment params: {msg} (got {dataclasses.asdict(self)})")


# ----------------------------------------------------------------------------------------------
# geometry


def _scaled(poly: np.ndarray, factor: float) -> np.ndarray:
    """Polygon ``float [K, 2]`` grown by ``factor`` about its centroid."""
    c = poly.mean(axis=0)
    return c + (poly - c) * (1.0 + factor)


@dataclass(frozen=True)
class FaceFrame:
    """Face-aligned coordinates of one frame (see the module docstring)."""

    center: np.ndarray
    """``[2]`` centroid of the face oval (pixels)."""
    up: np.ndarray
    """``[2]`` unit vector chin → forehead."""
    right: np.ndarray
    """``[2]`` unit vector towards the image-right side of the face."""
    half_height: float
    half_width_right: float
    half_width_left: float

    def to_image(self, h: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Face coordinates → pixels ``[K, 2]`` (h scaled per side, v by half the height)."""
        hw = np.where(h >= 0, self.half_width_right, self.half_width_left)
        return self.center + np.outer(h * hw, self.right) + np.outer(v * self.half_height, self.up)

    def v_of(self, xy: np.ndarray) -> np.ndarray:
        """``v`` coordinate of pixel positions ``[..., 2]``."""
        return ((xy - self.center) @ self.up) / self.half_height


def face_frame(lm: np.ndarray) -> FaceFrame:
    """Face-aligned frame from ``landmarks [478, >=2]`` (pixels)."""
    oval = lm[list(fmesh.FACE_OVAL), :2].astype(np.float64)
    center = oval.mean(axis=0)
    up = lm[fmesh.FOREHEAD_TOP, :2].astype(np.float64) - lm[fmesh.CHIN, :2].astype(np.float64)
    half_h = max(float(np.linalg.norm(up)) / 2, 1.0)
    up = up / (2 * half_h)
    right = np.array([-up[1], up[0]])  # image y points down: (-uy, ux) is image-right for up=(0,-1)
    if right[0] < 0:
        right = -right
    hcoord = (oval - center) @ right
    return FaceFrame(
        center=center,
        up=up,
        right=right,
        half_height=half_h,
        half_width_right=max(float(hcoord.max()), 1.0),
        half_width_left=max(float(-hcoord.min()), 1.0),
    )


NECK_NOTCH = (0.75, -0.5)
"""``(h, v)`` corner of the notch cut out of the head region under the chin: the neck and
collar (``|h| < 0.75``, ``v < -0.5``) are never hair."""


def head_region(ff: FaceFrame, width: float, height: float) -> np.ndarray:
    """Polygon ``float [8, 2]`` of the head region: ``|h| <= width``, ``-1 <= v <= height``,
    minus the neck notch under the chin (:data:`NECK_NOTCH`)."""
    nh, nv = NECK_NOTCH
    h = np.array([-width, width, width, nh, nh, -nh, -nh, -width])
    v = np.array([height, height, -1.0, -1.0, nv, nv, -1.0, -1.0])
    return ff.to_image(h, v)


# ----------------------------------------------------------------------------------------------
# labelling


class ColorModel:
    """Gaussian colour model over linear features ``A @ (Y, Cr, Cb)`` (mean, covariance as an
    exponential moving average); :meth:`dist2` is the squared Mahalanobis distance of every
    pixel, computed by one ``cv2.transform`` (whitening) per image."""

    def __init__(self, features: np.ndarray, floor: float = 4.0, rate: float = 0.1) -> None:
        self.a = np.asarray(features, np.float64)  # [C, 3]
        self.floor, self.rate = floor, rate
        self.mean: np.ndarray | None = None
        self.cov: np.ndarray | None = None
        self.m: np.ndarray | None = None  # [C, 4] affine whitening map of YCrCb pixels

    def update(self, ycc: np.ndarray) -> None:
        """``ycc [N, 3]`` YCrCb samples; ignored when fewer than 50."""
        if len(ycc) < 50:
            return
        x = ycc.astype(np.float64) @ self.a.T
        mean = x.mean(axis=0)
        cov = np.cov(x, rowvar=False) + np.eye(x.shape[1]) * self.floor  # floor: JPEG noise, flat light
        if self.mean is None or self.cov is None:
            self.mean, self.cov = mean, cov
        else:
            self.mean = (1 - self.rate) * self.mean + self.rate * mean
            self.cov = (1 - self.rate) * self.cov + self.rate * cov
        w = np.linalg.cholesky(np.linalg.inv(self.cov)).T  # w.T @ w = inverse covariance
        self.m = np.hstack([w @ self.a, -(w @ self.mean)[:, None]]).astype(np.float32)

    def dist2_points(self, ycc: np.ndarray) -> np.ndarray:
        """``ycc [N, 3]`` float32 → ``float32 [N]`` squared distances (inf without a model)."""
        import cv2

        if self.m is None:
            return np.full(len(ycc), np.inf, np.float32)
        y = cv2.transform(ycc.reshape(-1, 1, 3), self.m).reshape(len(ycc), -1)
        return (y * y).sum(axis=1)

    def dist2(self, ycc: np.ndarray) -> np.ndarray:
        """``ycc [h, w, 3]`` (any dtype) → ``float32 [h, w]`` squared distances (inf: no model)."""
        import cv2

        if self.m is None:
            return np.full(ycc.shape[:2], np.inf, np.float32)
        y = cv2.transform(ycc.astype(np.float32), self.m)
        y = y.reshape(*ycc.shape[:2], -1)
        return np.einsum("hwc,hwc->hw", y, y)


LUT_SHIFT = 2
"""Colour decisions are tabulated on YCrCb quantised to 8 - LUT_SHIFT bits per channel."""


def _lut_grid() -> np.ndarray:
    """``float32 [(256 >> LUT_SHIFT)**3, 3]`` YCrCb bin centres, Y-major."""
    step = 1 << LUT_SHIFT
    c = np.arange(0, 256, step, dtype=np.float32) + (step - 1) / 2
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1).reshape(-1, 3)


def _lut_index(ycc: np.ndarray) -> np.ndarray:
    """``uint8 [h, w, 3]`` YCrCb → flat bin index into the :func:`_lut_grid` table."""
    bits = 8 - LUT_SHIFT
    q = (ycc >> LUT_SHIFT).astype(np.int32)
    return (q[..., 0] << (2 * bits)) | (q[..., 1] << bits) | q[..., 2]


SKIN_FEATURES = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
"""Skin colour: chroma only (Cr, Cb), robust to shading."""
HAIR_FEATURES = np.eye(3)
"""Hair colour: luma + chroma (dark vs light hair matters, and dark suits are darker than hair)."""


class Labeler:
    """Turns (frame, person probability, landmarks) into a label map; keeps the skin and hair
    colour models (smoothed across frames, updated every ``SKIN_UPDATE_EVERY`` frames)."""

    def __init__(self, params: SegmentParams, size: tuple[int, int]) -> None:
        self.p = params
        self.h, self.w = size
        self.skin = ColorModel(SKIN_FEATURES)
        self.hair = ColorModel(HAIR_FEATURES)
        self.calls = 0
        self._grid: np.ndarray | None = None
        self.lut: np.ndarray | None = None
        """``uint8`` per quantised YCrCb colour: bit 0 skin, bit 1 hair-coloured."""

    def _rebuild_lut(self) -> None:
        if self._grid is None:
            self._grid = _lut_grid()
        ds = self.skin.dist2_points(self._grid)
        dh = self.hair.dist2_points(self._grid)
        skin = (ds < self.p.skin_threshold**2) & (ds < dh)
        hair = (dh < self.p.hair_threshold**2) & ~skin
        self.lut = (skin.astype(np.uint8) | (hair.astype(np.uint8) << 1))

    def _update_skin(self, ycc: np.ndarray, lm: np.ndarray, ff: FaceFrame, origin: np.ndarray) -> None:
        import cv2

        # cheeks + nose: inside the oval, between eye and mouth level, away from eyes and lips
        mask = np.zeros(ycc.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(_scaled(lm[list(fmesh.FACE_OVAL), :2], -0.15) - origin).astype(np.int32)], 1)
        for g in (fmesh.RIGHT_EYE, fmesh.LEFT_EYE, fmesh.RIGHT_BROW, fmesh.LEFT_BROW, fmesh.LIPS_OUTER):
            cv2.fillPoly(mask, [np.round(_scaled(lm[list(g), :2], 0.3) - origin).astype(np.int32)], 0)
        ys, xs = np.nonzero(mask)
        v = ff.v_of(np.stack([xs + origin[0], ys + origin[1]], axis=1).astype(np.float64))
        keep = (v > -0.6) & (v < 0.3)
        self.skin.update(ycc[ys[keep], xs[keep]])

    def label(self, frame: np.ndarray, person_prob: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, float]:
        """``uint8 [H, W]`` label map and the fraction of the face oval inside the person mask."""
        import cv2

        p = self.p
        person = person_prob > p.person_threshold
        lab = person.astype(np.uint8) * TORSO
        ff = face_frame(lm)
        oval = np.round(lm[list(fmesh.FACE_OVAL), :2]).astype(np.int32)

        # head region (hair / skin), computed inside its bounding box only
        region = head_region(ff, p.hair_width, p.hair_height)
        x0, y0 = np.floor(region.min(axis=0)).astype(int)
        x1, y1 = np.ceil(region.max(axis=0)).astype(int) + 1
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, self.w), min(y1, self.h)
        rim_hair = None
        if x1 > x0 and y1 > y0:
            origin = np.array([x0, y0], dtype=np.float64)
            shift = np.array([x0, y0], np.int32)
            roi = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(roi, [np.round(region - origin).astype(np.int32)], 1)
            cv2.fillPoly(roi, [oval - shift], 0)
            head = (roi > 0) & person[y0:y1, x0:x1]
            sub = lab[y0:y1, x0:x1]
            if p.color_models:
                ycc = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2YCrCb)
                vx = (np.arange(x0, x1, dtype=np.float32) - ff.center[0]) * (ff.up[0] / ff.half_height)
                vy = (np.arange(y0, y1, dtype=np.float32) - ff.center[1]) * (ff.up[1] / ff.half_height)
                v = vy[:, None] + vx[None, :]
                update = self.calls % SKIN_UPDATE_EVERY == 0  # colours drift slowly: update sparsely
                self.calls += 1
                if update or self.lut is None:
                    self._update_skin(ycc, lm, ff, origin)
                    # hair: non-skin person pixels over the top of the head
                    top = head & (v > 0.5) & (self.skin.dist2(ycc) > p.skin_threshold**2)
                    self.hair.update(ycc[top])
                    self._rebuild_lut()
                assert self.lut is not None
                code = self.lut[_lut_index(ycc)]
                skin = cv2.medianBlur(code & 1, 5) > 0
                hairlike = ((code & 2) > 0) & ~skin
                upper = v > 0
                hair = head & ~skin & (upper | hairlike)  # below the eyes: only hair-coloured pixels
                cand = hair
                if p.rim_width > 0:  # hair falling over the edge of the face oval
                    rim = np.zeros_like(roi)
                    cv2.fillPoly(rim, [oval - shift], 1)
                    cv2.fillPoly(rim, [np.round(_scaled(oval.astype(np.float64), -p.rim_width) - origin).astype(np.int32)], 0)
                    rim_hair = hairlike & (rim > 0) & (v > p.skin_cut) & person[y0:y1, x0:x1]
                    cand = hair | rim_hair
                # hair is one piece with the hair over the head: drop blobs not connected to it
                # (dark suits at chin height, speckles)
                n_cc, cc = cv2.connectedComponents(cand.astype(np.uint8), connectivity=8)
                keep = np.zeros(n_cc, bool)
                keep[np.unique(cc[hair & upper])] = True
                keep[0] = False
                kept = keep[cc]
                sub[hair & kept] = HAIR
                sub[head & skin & (v > p.skin_cut)] = FACE  # forehead above the mesh, ears
                if rim_hair is not None:
                    rim_hair &= kept
            else:
                sub[head] = HAIR

        face_in_person = 1.0
        mask = np.zeros((self.h, self.w), np.uint8)
        cv2.fillPoly(mask, [oval], 1)
        if mask.any():
            face_in_person = float(person[mask > 0].mean())
        cv2.fillPoly(lab, [oval], FACE)
        if rim_hair is not None:
            sub = lab[y0:y1, x0:x1]
            sub[rim_hair & (mask[y0:y1, x0:x1] > 0)] = HAIR
        polys = [_scaled(lm[list(g), :2], p.eye_margin) for g in (fmesh.RIGHT_EYE, fmesh.LEFT_EYE)]
        polys += [lm[list(g), :2] for g in (fmesh.RIGHT_BROW, fmesh.LEFT_BROW)]
        cv2.fillPoly(lab, [np.round(q).astype(np.int32) for q in polys], EYES)
        cv2.fillPoly(lab, [np.round(lm[list(fmesh.LIPS_OUTER), :2]).astype(np.int32)], LIPS)
        inner_lips = _scaled(lm[list(fmesh.LIPS_INNER), :2], p.mouth_margin)
        cv2.fillPoly(lab, [np.round(inner_lips).astype(np.int32)], MOUTH)
        return lab, face_in_person


# ----------------------------------------------------------------------------------------------
# background plate


def background_plate(
    extract_dir: Path, indices: list[int], params: SegmentParams, size: tuple[int, int], *, progress: bool
) -> tuple[np.ndarray, float]:
    """Plate ``uint8 [H, W, 3]`` RGB from the frames ``indices`` and the inpainted fraction.

    Two tiers per pixel: the mean over samples where it is far from the person (weight
    ramping from 1x to 2x ``background_distance``); where it never is, the mean over samples
    where it is background at all (nearer the person: may carry some halo); where it never is
    background, OpenCV inpainting.
    """
    import cv2
    import mediapipe as mp

    h, w = size
    d0 = max(params.background_distance * max(h, w), 1.0)
    far_acc = np.zeros((h, w, 3), np.float32)
    far_w = np.zeros((h, w), np.float32)
    near_acc = np.zeros((h, w, 3), np.float32)
    near_w = np.zeros((h, w), np.float32)
    with (
        mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=params.selfie_model) as seg,
        progress_bar(progress) as bar,
    ):
        task = bar.add_task("background plate", total=len(indices), rate=0.0)
        meter = Rate()
        for k, i in enumerate(indices):
            frame_u8 = _read_rgb(extract_dir / FRAME_PATTERN.format(i))
            prob = seg.process(frame_u8).segmentation_mask
            frame = frame_u8.astype(np.float32)
            free = (prob <= params.background_person_threshold).astype(np.uint8)
            dist = cv2.distanceTransform(free, cv2.DIST_L2, 3)
            wf = np.clip(dist / d0 - 1.0, 0.0, 1.0)
            wn = (dist > 2.0).astype(np.float32)
            far_acc += frame * wf[..., None]
            far_w += wf
            near_acc += frame * wn[..., None]
            near_w += wn
            if meter.due():
                bar.update(task, completed=k + 1, rate=meter.rate(k + 1))
        bar.update(task, completed=len(indices), rate=meter.rate(len(indices)))
    far = far_w > 0.5
    near = ~far & (near_w > 0.5)
    plate = np.zeros((h, w, 3), np.float32)
    plate[far] = far_acc[far] / far_w[far][:, None]
    plate[near] = near_acc[near] / near_w[near][:, None]
    plate_u8 = np.clip(plate + 0.5, 0, 255).astype(np.uint8)
    unknown = (~(far | near)).astype(np.uint8)
    frac = float(unknown.mean())
    if 0.0 < frac < 1.0:
        plate_u8 = inpaint(plate_u8, unknown, params.inpaint_radius)
    return plate_u8, frac


def inpaint(img: np.ndarray, hole: np.ndarray, radius: int, work_size: int = 128) -> np.ndarray:
    """Fill ``hole`` (``uint8 [H, W]``, 1 = unknown) of ``img`` (``uint8 [H, W, 3]``).

    OpenCV Telea inpainting at ``work_size`` pixels (large holes: smooth fill, no long streaks,
    and fast), upsampled and lightly blurred inside the hole; known pixels are kept exactly.
    """
    import cv2

    h, w = hole.shape
    s = min(1.0, work_size / max(h, w))
    if s < 1.0:
        sw, sh = max(8, int(round(w * s))), max(8, int(round(h * s)))
        small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
        small_hole = (cv2.resize(hole.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0.01).astype(np.uint8)
        filled = cv2.inpaint(small, small_hole, max(1, int(round(radius * s * 2))), cv2.INPAINT_TELEA)
        filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_CUBIC)
        k = max(3, int(round(0.02 * max(h, w))) | 1)
        filled = cv2.GaussianBlur(filled, (k, k), 0)
    else:
        filled = cv2.inpaint(img, hole, radius, cv2.INPAINT_TELEA)
    out = img.copy()
    out[hole > 0] = filled[hole > 0]
    return out


# ----------------------------------------------------------------------------------------------
# I/O helpers


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{path}: cannot be read as an image. Re-run the extract stage (the file is missing or damaged).")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _write(path: Path, img: np.ndarray, params: list[int], *, rgb: bool = False) -> None:
    import cv2

    if rgb:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix, img, params)
    if not ok:  # pragma: no cover - OpenCV failure
        raise RuntimeError(f"OpenCV could not encode {path}")
    path.write_bytes(buf.tobytes())


def load_extract(extract_dir: Path) -> dict[str, Any]:
    """Read and check ``extract_dir/meta.json``; returns the meta dict."""
    meta_path = extract_dir / "meta.json"
    if not meta_path.is_file():
        raise InputError(f"{extract_dir}: no meta.json, this is not an extract output. Run the extract stage first.")
    try:
        meta = json.loads(meta_path.read_text())
        n = int(meta["output"]["frames"])
        size = (int(meta["output"]["height"]), int(meta["output"]["width"]))
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{meta_path}: unreadable or incomplete ({e}). Re-run the extract stage.") from e
    for i in (0, n - 1):
        if not (extract_dir / FRAME_PATTERN.format(i)).is_file():
            raise InputError(f"{extract_dir / FRAME_PATTERN.format(i)}: missing ({n} frames expected). Re-run the extract stage.")
    meta["_n"], meta["_size"] = n, size
    return meta


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB frame with the label colours blended in and class borders drawn (``uint8 [H, W, 3]``)."""
    import cv2

    lut = np.zeros((256, 3), np.uint8)
    for k, c in COLORS.items():
        lut[k] = c
    col = lut[labels]
    out = frame.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * col[fg]
    edges = cv2.morphologyEx(labels, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = col[edges] * 0.6 + 255 * 0.4
    return np.clip(out, 0, 255).astype(np.uint8)


def contact_sheet(
    tiles: list[tuple[np.ndarray, str]], tile: int, title: str
) -> np.ndarray:
    """Grid of captioned tiles plus a legend; ``uint8 [H, W, 3]`` RGB."""
    import cv2

    cols = min(5, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    cap = 22
    sheet = np.full((rows * (tile + cap) + 2 * cap, cols * tile, 3), 24, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(sheet, title, (6, 16), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    for k, (img, caption) in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x = cap + r * (tile + cap), c * tile
        sheet[y : y + tile, x : x + tile] = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        cv2.putText(sheet, caption, (x + 4, y + tile + 16), font, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    y = sheet.shape[0] - 8
    x = 6
    for k, name in LABELS.items():
        cv2.rectangle(sheet, (x, y - 11), (x + 12, y + 1), COLORS[k], -1)
        cv2.putText(sheet, f"{k} {name}", (x + 16, y), font, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
        x += 18 + 9 * len(f"{k} {name}") + 10
    return sheet


# ----------------------------------------------------------------------------------------------
# the stage


def segment(extract_dir: Path, out_dir: Path, params: SegmentParams, *, progress: bool = True) -> dict[str, Any]:
    """Label maps, background plate, torso frames and contact sheet for an extract output.

    Writes ``out_dir`` atomically (see the module docstring) and returns the summary dict
    also written to ``out_dir/segment.json``. Raises
    :class:`~talkgs.preprocess.errors.InputError` when ``extract_dir`` is not a complete
    extract output or no face is found.
    """
    import cv2
    import mediapipe as mp

    t_start = time.perf_counter()
    extract_dir, out_dir = Path(extract_dir), Path(out_dir)
    meta = load_extract(extract_dir)
    n, size = meta["_n"], meta["_size"]
    h, w = size
    res = max(h, w)
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log.warning("%s: %s", extract_dir, msg)

    bg_idx = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, params.background_samples))})
    plate, inpainted = background_plate(extract_dir, bg_idx, params, size, progress=progress)
    if inpainted >= 1.0:
        raise InputError(
            f"{extract_dir}: the person covers the whole frame in every sampled frame, so no background is visible. "
            "Use a video with some background around the person (a wider extract.crop_scale or a wider shot)."
        )
    if inpainted > 0.75:  # tight portrait crops hide ~50-60% of the background in every frame: normal
        warn(f"{100 * inpainted:.0f}% of the background plate was never visible and is inpainted")

    kernel_r = max(1, int(round(params.head_dilate * res)))
    head_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * kernel_r + 1, 2 * kernel_r + 1))
    head_lut = np.zeros(256, np.uint8)
    head_lut[list(HEAD_CLASSES)] = 1
    png = [cv2.IMWRITE_PNG_COMPRESSION, params.png_compression]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # 'up' filter: ~4x faster than adaptive on label maps
        png += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    jpg = [cv2.IMWRITE_JPEG_QUALITY, params.torso_jpeg_quality]
    labeler = Labeler(params, size)
    columns = ["frame", "face_found", *[f"area_{name}" for name in LABELS.values()], "lip_gap", "eye_aspect_ratio", "face_in_person", "label_change"]
    rows: list[list[Any]] = []
    lip_gaps = np.zeros(n)
    ears = np.zeros(n)
    found = np.zeros(n, bool)
    changes = np.zeros(n)
    fip = np.ones(n)

    def read(i: int) -> np.ndarray:
        frame = _read_rgb(extract_dir / FRAME_PATTERN.format(i))
        if frame.shape[:2] != (h, w):
            raise InputError(
                f"{extract_dir / FRAME_PATTERN.format(i)}: size {frame.shape[1]}x{frame.shape[0]}, meta.json says "
                f"{w}x{h}. Re-run the extract stage."
            )
        return frame

    with atomic_dir(out_dir) as tmp, ThreadPoolExecutor(max_workers=2, thread_name_prefix="segment-io") as pool:
        (tmp / "labels").mkdir()
        (tmp / "torso").mkdir()
        _write(tmp / "background.png", plate, [], rgb=True)

        def save(i: int, frame: np.ndarray, lab: np.ndarray) -> None:
            _write(tmp / LABEL_PATTERN.format(i), lab, png)
            head = cv2.dilate(head_lut[lab], head_kernel)
            torso = frame.copy()
            cv2.copyTo(plate, head, torso)
            _write(tmp / TORSO_PATTERN.format(i), torso, jpg, rgb=True)

        writes: deque[Future[None]] = deque()

        def finish(i: int, frame: np.ndarray, prob: np.ndarray, lm: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
            lab, fip[i] = labeler.label(frame, prob, lm)
            writes.append(pool.submit(save, i, frame, lab))
            while len(writes) > 4:  # bounded: at most a few frames in flight
                writes.popleft().result()
            lip_gaps[i] = fmesh.lip_gap(lm)
            ears[i] = fmesh.eye_aspect_ratio(lm)
            counts = np.bincount(lab.ravel(), minlength=len(LABELS))[: len(LABELS)] / lab.size
            changes[i] = float(np.count_nonzero(lab != prev)) / lab.size if prev is not None else 0.0
            rows.append([i, int(found[i]), *[round(float(c), 6) for c in counts], round(lip_gaps[i], 5), round(ears[i], 5), round(fip[i], 4), round(changes[i], 5)])
            return lab

        pending: list[int] = []  # frames without a face, waiting for the next found landmarks
        last_lm: np.ndarray | None = None
        prev_lab: np.ndarray | None = None
        smooth: np.ndarray | None = None
        t_loop = time.perf_counter()
        with (
            mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=params.selfie_model) as seg,
            fmesh.FaceMesh(min_detection_confidence=params.face_confidence, min_tracking_confidence=params.tracking_confidence) as mesh,
            progress_bar(progress) as bar,
        ):
            task = bar.add_task("segment", total=n, rate=0.0)
            meter = Rate()
            nxt = pool.submit(read, 0)
            for i in range(n):
                frame = nxt.result()
                if i + 1 < n:
                    nxt = pool.submit(read, i + 1)  # prefetch: decode the next JPEG meanwhile
                prob = seg.process(frame).segmentation_mask
                if params.mask_smoothing > 0 and smooth is not None:
                    prob = cv2.addWeighted(smooth, params.mask_smoothing, prob, 1.0 - params.mask_smoothing, 0.0)
                smooth = prob
                lm = mesh.process(frame)
                if lm is None:
                    if last_lm is None:
                        pending.append(i)
                    else:
                        prev_lab = finish(i, frame, prob, last_lm, prev_lab)
                else:
                    found[i] = True
                    for j in pending:  # leading frames without a face: use the first found face
                        fj = read(j)
                        finish(j, fj, seg.process(fj).segmentation_mask, lm, None)
                    pending.clear()
                    last_lm = lm
                    prev_lab = finish(i, frame, prob, lm, prev_lab)
                if meter.due():
                    bar.update(task, completed=i + 1, rate=meter.rate(i + 1))
            while writes:
                writes.popleft().result()
            bar.update(task, completed=n, rate=meter.rate(n))
        loop_s = time.perf_counter() - t_loop
        if last_lm is None:
            raise InputError(
                f"{extract_dir}: MediaPipe face mesh found no face in any of the {n} frames. Check the frames "
                "(and the crop in meta.json); the video must show one face, unobstructed."
            )
        missing = int((~found).sum())
        if missing / n > params.max_missing_fraction:
            raise InputError(
                f"{extract_dir}: the face mesh found no face in {missing} of {n} frames "
                f"({100 * missing / n:.0f}% > segment.max_missing_fraction={params.max_missing_fraction:g}), e.g. frames "
                f"{', '.join(str(int(k)) for k in np.nonzero(~found)[0][:8])}. Trim the video to the part where the "
                "face is visible."
            )
        if missing:
            warn(
                f"no face mesh in {missing} of {n} frames (e.g. {', '.join(str(int(k)) for k in np.nonzero(~found)[0][:8])}); "
                "they reuse the previous frame's landmarks"
            )
        rows.sort(key=lambda r: r[0])
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(columns)
        wr.writerows(rows)
        (tmp / "frame_stats.csv").write_text(buf.getvalue())

        # contact sheet: evenly spaced frames, widest mouth, lowest eye opening, plate, torso frame
        picks = [(int(round(x)), "") for x in np.linspace(0, n - 1, min(n, params.contact_frames))]
        picks.append((int(np.argmax(np.where(found, lip_gaps, -1))), "widest mouth"))
        picks.append((int(np.argmin(np.where(found, ears, np.inf))), "lowest eye opening"))
        tiles: list[tuple[np.ndarray, str]] = []
        for i, tag in picks:
            frame = _read_rgb(extract_dir / FRAME_PATTERN.format(i))
            lab = cv2.imread(str(tmp / LABEL_PATTERN.format(i)), cv2.IMREAD_UNCHANGED)
            tiles.append((overlay(frame, lab), f"#{i} {tag}".strip()))
        tiles.append((plate, "background plate"))
        mid = picks[len(picks) // 2 - 1][0] if len(picks) > 2 else 0
        tiles.append((_read_rgb(tmp / TORSO_PATTERN.format(mid)), f"torso #{mid}"))
        title = f"{meta['source']['path']}  {n} frames {w}x{h}  (segment: MediaPipe selfie seg + face mesh)"
        sheet = contact_sheet(tiles, params.contact_tile, title)
        _write(tmp / "contact_sheet.png", sheet, [], rgb=True)

        areas = np.array([r[2 : 2 + len(LABELS)] for r in rows], dtype=np.float64)
        summary: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "extract": str(extract_dir),
            "frames": n,
            "width": w,
            "height": h,
            "classes": [{"id": k, "name": LABELS[k], "description": DESCRIPTIONS[k], "color_rgb": list(COLORS[k])} for k in LABELS],
            "head_classes": list(HEAD_CLASSES),
            "files": {
                "labels": "labels/%06d.png (uint8 class ids)",
                "torso": "torso/%06d.jpg (frame with the head replaced by the background plate)",
                "background": "background.png",
                "contact_sheet": "contact_sheet.png",
                "frame_stats": "frame_stats.csv",
            },
            "stats": {
                "face_found_fraction": float(found.mean()),
                "mean_area": {LABELS[k]: float(areas[:, k].mean()) for k in LABELS},
                "face_in_person_mean": float(fip.mean()),
                "face_in_person_min": float(fip.min()),
                "label_change_mean": float(changes[1:].mean()) if n > 1 else 0.0,
                "label_change_max": float(changes[1:].max()) if n > 1 else 0.0,
                "background_samples": len(bg_idx),
                "background_inpainted_fraction": inpainted,
                "lip_gap_max": float(lip_gaps.max()),
                "eye_aspect_ratio_min": float(ears[found].min()),
                "eye_aspect_ratio_median": float(np.median(ears[found])),
            },
            "warnings": warnings,
            "params": dataclasses.asdict(params),
        }
        if summary["stats"]["face_in_person_mean"] < 0.9:
            warn(
                f"the face oval lies only {100 * summary['stats']['face_in_person_mean']:.0f}% inside the person mask on "
                "average: selfie segmentation and face mesh disagree; check the contact sheet"
            )
        write_json(tmp / "segment.json", summary)
    log.info(
        "%s: %d label maps, plate (%.0f%% inpainted), %.1f s (%.0f frames/s)",
        extract_dir, n, 100 * inpainted, time.perf_counter() - t_start, n / max(loop_s, 1e-9),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m talkgs.preprocess.segment EXTRACT_DIR OUT_DIR``"""
    import argparse
    import sys

    from talkgs.logs import setup_logging

    ap = argparse.ArgumentParser(prog="python -m talkgs.preprocess.segment", description=__doc__.split("\n")[0])
    ap.add_argument("extract_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    try:
        segment(args.extract_dir, args.out_dir, SegmentParams(), progress=not args.no_progress)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
