"""talkgs: audio-driven 3D Gaussian Splatting talking heads as reproducible pipelines.

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user already set it)
*before* torch or numba start their OpenMP pools. With the default (active) policy the
two pools spin on idle and steal the cores from each other: measured ~10x slower CPU
rendering on 2 cores. The variable is only read when a pool starts, so this must happen
before ``import torch``; ``talkgs`` is imported first by every entry point (CLI, stages,
flows, tests via conftest).
"""

from __future__ import annotations

import os as _os
import sys as _sys

if "OMP_WAIT_POLICY" not in _os.environ:
    if "torch" in _sys.modules or "numba" in _sys.modules:  # pragma: no cover - import-order guard
        import warnings as _warnings

        _warnings.warn(
            "talkgs was imported after torch/numba: OMP_WAIT_POLICY=PASSIVE could not be applied "
            "before their thread pools started; CPU rendering may be much slower. Import talkgs "
            "first or export OMP_WAIT_POLICY=PASSIVE.",
            RuntimeWarning,
            stacklevel=2,
        )
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__version__ = "0.1.0"
