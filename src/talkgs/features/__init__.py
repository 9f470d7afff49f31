"""Features: everything training needs per frame, cached in Parquet.

- :mod:`talkgs.features.signals` -- face signals from the tracked landmarks (AU45-like blink,
  upper-face expression vector, mouth opening, pose-removed landmark motion).
- :mod:`talkgs.features.audio` -- audio encoders behind one registry (``mel``, ``hubert``,
  ``wav2vec2``, ``phonemes`` from :mod:`talkgs.features.phonemes`, and concatenations such as
  ``mel+phonemes``), features aligned to the video frames with a context window.
- :mod:`talkgs.features.cache` -- the Parquet schemas, writers and validating readers.
- :mod:`talkgs.features.build` -- the ``features`` stage (:func:`build_features`) and the
  foreign-audio featurisation (:func:`featurize_audio`).
"""

from talkgs.features.audio import (
    AudioEncoder,
    AudioEncoderParams,
    AudioModelError,
    available_encoders,
    encode_samples,
    encode_wav,
    get_encoder,
    register_audio_encoder,
)
from talkgs.features import phonemes  # noqa: F401  (registers the ``phonemes`` encoder)
from talkgs.features.build import FeaturesParams, build_features, featurize_audio
from talkgs.features.cache import (
    FORMAT_VERSION,
    AudioTable,
    CacheError,
    FramesTable,
    read_audio_table,
    read_frames_table,
    write_audio_table,
    write_frames_table,
)

__all__ = [
    "FORMAT_VERSION",
    "AudioEncoder",
    "AudioEncoderParams",
    "AudioModelError",
    "AudioTable",
    "CacheError",
    "FeaturesParams",
    "FramesTable",
    "available_encoders",
    "build_features",
    "encode_samples",
    "encode_wav",
    "featurize_audio",
    "get_encoder",
    "read_audio_table",
    "read_frames_table",
    "register_audio_encoder",
    "write_audio_table",
    "write_frames_table",
]
