"""Prefect flow: reproduce the talkgs DVC pipeline, one task run per DVC stage.

    python flows/reproduce.py                    # every subject in params.yaml
    python flows/reproduce.py --subject demo     # the demo's stages, what they depend on, and report
    python flows/reproduce.py --dry-run          # what `dvc status` says would run; runs nothing
    python flows/reproduce.py --pool talkgs      # fan out to the workers of Prefect work pool `talkgs`

With `make ui` running (a local Prefect server on 127.0.0.1:4200), set PREFECT_API_URL to it
(`PREFECT_API_URL=http://127.0.0.1:4200/api make repro`; the Makefile does not set it, so that
without a server Prefect runs against a temporary local one) and the run shows up in the UI:
the stages as the DVC graph, those DVC skipped as Cached, the run named and tagged after its
subjects, git revision and params.yaml hash. DVC decides what reruns; see talkgs.orchestrate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import talkgs  # noqa: F401  (first: sets OMP_WAIT_POLICY)
from talkgs.orchestrate import reproduce


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subject", action="append", default=[], help="subject (repeatable; default: all)")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="repository root")
    p.add_argument("--dry-run", action="store_true", help="print which stages would run (dvc status), run nothing")
    p.add_argument("--pool", default=None, help="run the stages on this Prefect work pool's workers (README: Fan-out)")
    p.add_argument("--repo", default=None, help="with --pool: what workers git clone (default: --root)")
    args = p.parse_args(argv)
    result = reproduce(args.root, subjects=args.subject or None, dry_run=args.dry_run, pool=args.pool, repo=args.repo)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
