"""``import talkgs`` pins the thread policy and the SIMD kernels before numpy/torch load, so
results depend on the code, not on the machine; a value the user set is kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import talkgs, os, torch, numpy; "
    "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OPENBLAS_CORETYPE'), os.environ.get('ATEN_CPU_CAPABILITY'), "
    "torch.backends.cpu.get_cpu_capability())"
)


def _run(env: dict[str, str]) -> list[str]:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY")}


def _avx2() -> bool:
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    return " avx2" in flags and " fma" in flags


@pytest.mark.skipif(not _avx2(), reason="the SIMD pins apply to x86-64 CPUs with AVX2 and FMA only")
def test_import_pins_the_kernels_and_keeps_user_values() -> None:
    omp, blas, aten, cap = _run(_clean_env())
    assert (omp, blas, aten, cap) == ("PASSIVE", "Haswell", "avx2", "AVX2")
    omp, blas, aten, cap = _run({**_clean_env(), "OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_CORETYPE": "Sandybridge", "ATEN_CPU_CAPABILITY": "default"})
    assert (omp, blas, aten, cap) == ("ACTIVE", "Sandybridge", "default", "DEFAULT")
