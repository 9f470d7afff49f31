"""MediaPipe face mesh (478 landmarks with irises) and the landmark index groups used by the
segmentation and head-tracking stages.

Landmark indices follow MediaPipe's canonical face mesh. "Left"/"right" are the *subject's*
left/right (MediaPipe's naming): the subject's left eye is on the image's right side for a
frontal face. Every polygon below is an ordered closed loop (consecutive indices are edges of
MediaPipe's ``FACEMESH_*`` connection sets; the brows' two closing edges are added here),
ready for ``cv2.fillPoly``.

Use :class:`FaceMesh` for video: it runs MediaPipe in tracking mode
(``static_image_mode=False``), which re-detects the face only when tracking is lost: about
5x faster than per-frame detection and temporally smoother.
"""

from __future__ import annotations

import logging
from types import TracebackType

import numpy as np

log = logging.getLogger(__name__)

NUM_LANDMARKS = 478
"""Landmarks per face with ``refine_landmarks=True`` (468 mesh + 10 iris points)."""

FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
"""Face outline, clockwise in the image from the top of the forehead (10) via the chin (152)."""

LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
"""Outer lip contour from the subject's right mouth corner (61), lower lip first."""

LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
"""Inner lip contour (the mouth opening) from the right inner corner (78), lower lip first."""

RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
"""Subject's right eye opening (image left): outer corner 33, inner corner 133."""

LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
"""Subject's left eye opening (image right): outer corner 263, inner corner 362."""

RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
"""Subject's right eyebrow: upper edge outer→inner, then lower edge inner→outer."""

LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
"""Subject's left eyebrow: upper edge outer→inner, then lower edge inner→outer."""

RIGHT_IRIS = (469, 470, 471, 472)
"""Subject's right iris ring (centre: :data:`RIGHT_IRIS_CENTER`)."""
LEFT_IRIS = (474, 475, 476, 477)
"""Subject's left iris ring (centre: :data:`LEFT_IRIS_CENTER`)."""
RIGHT_IRIS_CENTER = 468
LEFT_IRIS_CENTER = 473

# Single points used for measurements.
FOREHEAD_TOP = 10
CHIN = 152
NOSE_TIP = 1
UPPER_LIP_INNER = 13
"""Middle of the upper lip's inner edge (lip gap = distance to :data:`LOWER_LIP_INNER`)."""
LOWER_LIP_INNER = 14
MOUTH_CORNERS = (61, 291)
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
RIGHT_EYE_LIDS = ((159, 145), (158, 153), (160, 144))
"""(upper, lower) eyelid pairs of the right eye, for the eye aspect ratio."""
LEFT_EYE_LIDS = ((386, 374), (385, 380), (387, 373))
"""(upper, lower) eyelid pairs of the left eye, for the eye aspect ratio."""

GROUPS: dict[str, tuple[int, ...]] = {
    "face_oval": FACE_OVAL,
    "lips_outer": LIPS_OUTER,
    "lips_inner": LIPS_INNER,
    "right_eye": RIGHT_EYE,
    "left_eye": LEFT_EYE,
    "right_brow": RIGHT_BROW,
    "left_brow": LEFT_BROW,
    "right_iris": RIGHT_IRIS,
    "left_iris": LEFT_IRIS,
}
"""All polygons by name."""


def polygon(landmarks: np.ndarray, group: tuple[int, ...] | str) -> np.ndarray:
    """Pixel polygon ``int32 [K, 2]`` (x, y) of a landmark group, for ``cv2.fillPoly``.

    ``landmarks`` is ``float [478, 2 or 3]`` in pixels (as :meth:`FaceMesh.process` returns).
    """
    idx = GROUPS[group] if isinstance(group, str) else group
    return np.round(landmarks[list(idx), :2]).astype(np.int32)


def lip_gap(landmarks: np.ndarray) -> float:
    """Inner-lip opening divided by the mouth width (0 when closed). ``landmarks [478, >=2]``."""
    gap = np.linalg.norm(landmarks[UPPER_LIP_INNER, :2] - landmarks[LOWER_LIP_INNER, :2])
    width = np.linalg.norm(landmarks[MOUTH_CORNERS[0], :2] - landmarks[MOUTH_CORNERS[1], :2])
    return float(gap / max(width, 1e-6))


def eye_aspect_ratio(landmarks: np.ndarray) -> float:
    """Mean eye aspect ratio (lid distance / eye width) of both eyes; drops towards 0 on blinks."""
    ratios = []
    for corners, lids in ((RIGHT_EYE_CORNERS, RIGHT_EYE_LIDS), (LEFT_EYE_CORNERS, LEFT_EYE_LIDS)):
        width = np.linalg.norm(landmarks[corners[0], :2] - landmarks[corners[1], :2])
        opening = np.mean([np.linalg.norm(landmarks[u, :2] - landmarks[d, :2]) for u, d in lids])
        ratios.append(opening / max(width, 1e-6))
    return float(np.mean(ratios))


class FaceMesh:
    """MediaPipe face mesh on RGB frames, one face, 478 landmarks.

    ``process(frame)`` takes ``uint8 [H, W, 3]`` RGB and returns ``float32 [478, 3]``
    landmarks: x, y in pixels, z in pixels at the same scale as x (MediaPipe's relative depth
    times the image width; smaller is closer to the camera), or ``None`` when no face is found.
    ``static=False`` (default) tracks across consecutive frames of one video; use a new
    instance per video. Use as a context manager (it frees the MediaPipe graph).
    """

    def __init__(
        self,
        *,
        static: bool = False,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )

    def process(self, frame: np.ndarray) -> np.ndarray | None:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [H, W, 3] RGB frame, got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        res = self._mesh.process(frame)
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        out = np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float32)
        out[:, 0] *= w
        out[:, 1] *= h
        out[:, 2] *= w
        return out

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMesh:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
