"""Checkpoints: versioned dicts, written atomically, loaded with ``weights_only=True``.

Layout of ``checkpoint.pt`` (format :data:`FORMAT_VERSION`)::

    format_version  int
    kind            "talkgs.train"
    variant         the resolved variant config (plain dict, as config.yaml)
    config_hash     sha256 of the variant config + seed + data fingerprint (resume only when equal)
    step            global steps done
    finished        bool: all phases done
    seed            int
    model           state dict of the TalkingModel (head + post modules; per-Gaussian tensors at
                    their current N)
    model_meta      {"sizes": {set: N}, "audio_window": W, "audio_dim": C, "expression_dim": E,
                     "n_identities": I, "extent": r, "identities": [subject names]}
    optimizer       state dict of the current phase's optimizer (None between phases and once finished)
    phase           index of the phase the optimizer belongs to
    callbacks       states of the phase's callbacks (densification statistics, ...) or None
    losses          state dicts of losses that own networks, and of their optimizers
    init_from       {"path", "config_hash"} of the model training started from, or None
    generator       torch RNG state (densification samples)
    curves          list of curve rows (dicts) so far (no timings)
    timing          {"elapsed_s", "phases": {name: seconds}} of the training so far, while unfinished
                    (resume); None once finished: the time is in the run's timings file, so a
                    finished checkpoint holds no wall-clock value (older ones had ``elapsed_s``)
    data            {"subject": ..., "resolution": ..., "n_frames": ..., "audio_feature": ...}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from talkgs.io.atomic import atomic_path

__all__ = ["FORMAT_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "config_hash"]

FORMAT_VERSION = 2
KIND = "talkgs.train"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or from an incompatible version."""


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(path: str | os.PathLike[str], ckpt: dict[str, Any]) -> None:
    """Write ``ckpt`` (plus format version and kind) atomically to ``path``."""
    data = {"format_version": FORMAT_VERSION, "kind": KIND, **ckpt}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: torch names the zip records "archive/...", not
            torch.save(data, f)  # after the (random) temp file, so equal checkpoints are equal bytes


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its version.

    Raises:
        CheckpointError: file missing, not a talkgs checkpoint, or another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint. Train the model first (`talkgs train` / `dvc repro train@...`).")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}). Delete it and retrain.") from e
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a talkgs training checkpoint")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {data.get('format_version')}, this talkgs reads {FORMAT_VERSION}. Retrain the model."
        )
    return data
