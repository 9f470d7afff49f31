"""talkgs: audio-driven 3D Gaussian Splatting talking heads as reproducible pipelines.

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user already set it)
*before* torch or numba start their OpenMP pools. With the default (active) policy the
two pools spin on idle and steal the cores from each other: measured ~10x slower CPU
rendering on 2 cores. The variable is only read when a pool starts, so this must happen
before ``import torch``; ``talkgs`` is imported first by every entry point (CLI, stages,
flows, tests via conftest).

It also pins the SIMD kernels of OpenBLAS (``OPENBLAS_CORETYPE=Haswell``) and of PyTorch's CPU
operators (``ATEN_CPU_CAPABILITY=avx2``) on x86-64 CPUs with AVX2 and FMA, unless the user set
them: both otherwise pick kernels by CPU model (AVX-512 where present), numpy's SVD then differs
at 1e-6 and torch's reductions sum in another order, the bundle adjustment and training amplify
that, and the demo tier's face PSNR moved by 0.14-0.28 dB between machines (measured) -- results
would depend on the machine, not the code. Both variables are read when the libraries load.
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


def _cpu_has(*flags: str) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return all(fl in have for fl in flags)
    except OSError:
        pass
    return False


_PINS = {"OPENBLAS_CORETYPE": ("Haswell", "numpy"), "ATEN_CPU_CAPABILITY": ("avx2", "torch")}
"""Variable → (value, the library that reads it when it loads)."""

if any(k not in _os.environ for k in _PINS):
    import platform as _platform

    if _platform.machine() in ("x86_64", "AMD64") and _cpu_has("avx2", "fma"):
        for _k, (_v, _lib) in _PINS.items():
            if _k in _os.environ:
                continue
            if _lib in _sys.modules:  # pragma: no cover - import-order guard
                import warnings as _warnings

                _warnings.warn(
                    f"talkgs was imported after {_lib}: {_k} could not be pinned before it loaded; numeric "
                    f"results may differ slightly between machines. Import talkgs first or export {_k}={_v}.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            _os.environ[_k] = _v

__version__ = "0.1.0"
