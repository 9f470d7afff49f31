"""Benchmark: a sweep run serially vs fanned out to two Prefect process workers.

    python benchmarks/fanout.py [--sleep 25]

Runs ``tests/test_orchestrate.py::test_sweep_fans_out_to_two_workers_same_lock`` (a real Prefect
server on a free port, a process work pool, two workers, a local-directory DVC remote; a toy
sweep of 2 subjects × 2 variants whose trainings sleep ``--sleep`` seconds) and prints its wall
times: serial vs fan-out, and when each child flow run started. The test checks the result
(same ``dvc.lock`` as the serial run); the speed-up is read here, not asserted in the suite.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sleep", type=float, default=25.0, help="seconds each toy training sleeps (default 25)")
    args = ap.parse_args()
    env = dict(os.environ, TALKGS_SWEEP_SLEEP_S=str(args.sleep))
    test = "tests/test_orchestrate.py::test_sweep_fans_out_to_two_workers_same_lock"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("sweep of", "  train@", "stopped the Prefect"))]
    print("\n".join(lines) if lines else proc.stdout[-3000:])
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
