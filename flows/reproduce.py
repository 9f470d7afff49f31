"""Prefect flow: reproduce the talkgs DVC pipeline, one task run per DVC stage.

    python flows/reproduce.py                    # every subject in params.yaml
    python flows/reproduce.py --subject demo     # the demo's stages (+ what they depend on)
    python flows/reproduce.py --dry-run          # print the stage order only

With `make ui` running (a local Prefect server on 127.0.0.1:4200) and PREFECT_API_URL pointing at
it (the Makefile exports it), the run and each stage show up in the UI; without a server Prefect
runs with a temporary local one. DVC decides what reruns; see talkgs.orchestrate.
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
    p.add_argument("--dry-run", action="store_true", help="print the stage order, run nothing")
    args = p.parse_args(argv)
    result = reproduce(args.root, subjects=args.subject or None, dry_run=args.dry_run)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
