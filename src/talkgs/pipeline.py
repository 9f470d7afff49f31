"""The stage functions: what each DVC stage (and the matching CLI command) does.

Each takes the loaded :class:`~talkgs.config.Params`, a subject name and the repository
root, resolves paths with :mod:`talkgs.paths` and calls one library function. The
``stages/*.py`` scripts and ``talkgs <command>`` are thin wrappers over these.
"""

from __future__ import annotations

import logging
from pathlib import Path

from talkgs import paths
from talkgs.config import Params

log = logging.getLogger(__name__)


def resolve_video(params: Params, subject: str, root: Path) -> Path:
    video = Path(params.subject(subject).video)
    return video if video.is_absolute() else root / video


def make_demo(params: Params, root: Path, out: Path | None = None, *, progress: bool = True) -> dict:
    from talkgs.demo import make_demo as _make_demo

    out = out or root / paths.DEMO_VIDEO
    info = _make_demo(out, params.demo, progress=progress)
    log.info("demo clip written to %s", out)
    return info


def extract(params: Params, subject: str, root: Path, *, progress: bool = True) -> dict:
    from talkgs.preprocess.extract import extract as _extract

    video = resolve_video(params, subject, root)
    out = paths.extract_dir(subject, root)
    meta = _extract(video, out, params.extract_for(subject), progress=progress)
    log.info("extract %s: %s frames -> %s", subject, meta.get("frame_count", "?"), out)
    return meta


def segment(params: Params, subject: str, root: Path, *, progress: bool = True) -> dict:
    from talkgs.preprocess.segment import segment as _segment

    out = paths.segment_dir(subject, root)
    info = _segment(paths.extract_dir(subject, root), out, params.segment, progress=progress)
    log.info("segment %s -> %s", subject, out)
    return info


STAGES = {"make_demo", "extract", "segment"}


def stage_main(stage: str, argv: list[str] | None = None) -> None:
    """Entry point of ``stages/<stage>.py``: parse ``--subject``, load params.yaml, run the stage.

    Exits with status 2 and a one-line error (no traceback) for invalid input or config.
    """
    import argparse
    import sys

    from talkgs.config import ConfigError, load_params
    from talkgs.io.media import MediaError
    from talkgs.logs import setup_logging
    from talkgs.preprocess.errors import InputError

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {sorted(STAGES)}")
    parser = argparse.ArgumentParser(prog=f"stages/{stage}.py", description=f"DVC stage {stage}")
    if stage != "make_demo":
        parser.add_argument("--subject", required=True)
    parser.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    setup_logging()
    try:
        params = load_params(args.root / "params.yaml")
        if stage == "make_demo":
            make_demo(params, args.root)
        else:
            globals()[stage](params, args.subject, args.root)
    except (ConfigError, InputError, MediaError) as e:
        log.error("%s", e)
        sys.exit(2)
