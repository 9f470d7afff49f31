"""Preprocessing: a talking-portrait video → training data.

- :mod:`talkgs.preprocess.extract` -- constant-25-fps face-centred frames, 16 kHz mono audio
  aligned to them, ``meta.json`` (crop, train/test split).
- :mod:`talkgs.preprocess.segment` -- per-frame label maps (background, torso+neck, face,
  hair, eyes+brows, lips, mouth interior), background plate, torso-only frames, contact sheet.
- :mod:`talkgs.preprocess.facemesh` -- MediaPipe face mesh wrapper and landmark index groups
  shared with head tracking.
- :class:`talkgs.preprocess.errors.InputError` -- bad input, with what is wrong and the fix.
"""

from talkgs.preprocess.errors import InputError

__all__ = ["InputError"]
