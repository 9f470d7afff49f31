"""``talkgs`` command-line entry point.

Every command is a thin layer over library functions (:mod:`talkgs.pipeline`,
:mod:`talkgs.subjects`, :mod:`talkgs.orchestrate`). Run from the repository root (where
``params.yaml`` is) or pass ``--root``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import talkgs  # noqa: F401  (sets OMP_WAIT_POLICY before torch/numba load)

log = logging.getLogger("talkgs")


def _params(args: argparse.Namespace):
    from talkgs.config import load_params

    return load_params(args.root / "params.yaml")


def _check_options(args: argparse.Namespace, **ranges) -> None:  # noqa: ANN003 - option name -> talkgs.configlib.Range
    """Numeric options get the bounds of the settings they override (an error names the option)."""
    for name, bounds in ranges.items():
        bounds.check(getattr(args, name), f"--{name.replace('_', '-')}")


def cmd_make_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from talkgs import pipeline
    from talkgs.configlib import FRAME_PIXELS, SEED, Range

    _check_options(args, seconds=Range(2, 600, unit="seconds"), size=FRAME_PIXELS, seed=SEED)
    params = _params(args)
    overrides = {k: v for k, v in (("seconds", args.seconds), ("size", args.size), ("seed", args.seed)) if v is not None}
    if overrides:
        params = dataclasses.replace(params, demo=dataclasses.replace(params.demo, **overrides))
    info = pipeline.make_demo(params, args.root, args.out, progress=not args.quiet)
    print(f"wrote {args.out or args.root / 'data/raw/demo.mp4'}: {info['frames']} frames, {info['duration_s']} s")
    return 0


def cmd_add_subject(args: argparse.Namespace) -> int:
    from talkgs.configlib import FRAME_PIXELS
    from talkgs.subjects import add_subject

    _check_options(args, resolution=FRAME_PIXELS)
    dest = add_subject(
        args.name, args.video, resolution=args.resolution, force=args.force,
        params_file=args.root / "params.yaml", dvc_track=not args.no_dvc,
    )  # fmt: skip
    print(f"subject {args.name!r} registered: {dest} (run `dvc repro` or `make repro SUBJECT={args.name}`)")
    return 0


def cmd_subjects(args: argparse.Namespace) -> int:
    """`talkgs subjects ...` and `talkgs audios ...`: list / enable / disable."""
    from talkgs import subjects
    from talkgs.config import ConfigError

    kind = args.command  # "subjects" or "audios"
    built, catalog = subjects.GROUPS[kind]
    pf = args.root / "params.yaml"
    if args.action in ("enable", "disable", "remove") and not args.names and not args.all:
        raise ConfigError(f"`talkgs {kind} {args.action}` needs names" + (" (or --all with enable)" if args.action == "enable" else ""))
    if args.action == "remove":
        if kind != "subjects":
            raise ConfigError("`remove` is for subjects; foreign audios are disabled with `talkgs audios disable NAME`")
        if args.all:
            raise ConfigError("`talkgs subjects remove` takes names, not --all")
        plan = subjects.remove_subjects(args.names, pf, apply=args.yes)
        print("\n".join(f"  {line}" for line in plan))
        if not args.yes:
            print(f"nothing removed: rerun with --yes to remove {', '.join(args.names)} as listed above")
            return 2
        print(f"removed: {', '.join(args.names)}")
        return 0
    if args.action == "enable":
        names = sorted(getattr(_params(args), catalog)) if args.all else args.names
        moved = subjects.enable(names, pf, kind=kind)
        print(f"enabled: {', '.join(moved) or '(nothing new)'}")
        return 0
    if args.action == "disable":
        moved = subjects.disable(args.names, pf, kind=kind)
        print(f"disabled: {', '.join(moved)}")
        return 0
    params = _params(args)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"talkgs {kind}")
    for c in ("name", "status", "path", "note"):
        table.add_column(c)
    for group, status in ((getattr(params, built), "enabled"), (getattr(params, catalog), "catalog")):
        for name, entry in group.items():
            path = entry.video if kind == "subjects" else entry.path
            made_by_demo = path.startswith("data/raw/demo")
            exists = (args.root / path).exists() or made_by_demo
            table.add_row(name, status if exists else f"{status} (file missing)", path, entry.note)
    Console(width=160).print(table)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from talkgs import pipeline

    params = _params(args)
    fn = getattr(pipeline, args.command.replace("-", "_"))
    for name in args.subject if args.command != "audio-features" else args.audio:
        fn(params, name, args.root, progress=not args.quiet)
    return 0


def cmd_variant_stage(args: argparse.Namespace) -> int:
    """`talkgs train|evaluate --subject S --variant V`."""
    from talkgs import pipeline

    params = _params(args)
    getattr(pipeline, args.command)(params, args.subject, args.variant, args.root, progress=not args.quiet, fewshot=args.fewshot)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """`talkgs pretrain --variant V`."""
    from talkgs import pipeline

    pipeline.pretrain(_params(args), args.variant, args.root, progress=not args.quiet)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from talkgs import pipeline

    for name, path in pipeline.report(_params(args), args.root).items():
        print(f"{name}: {path}")
    return 0


def cmd_sync_expert(args: argparse.Namespace) -> int:
    from talkgs import pipeline

    m = pipeline.sync_expert(_params(args), args.root, progress=not args.quiet, always=True)
    print(f"sync expert: accuracy {m['accuracy']} (pairwise {m['pairwise_accuracy']}, chance {m['chance']}); {m['protocol']}")
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from talkgs import paths
    from talkgs.configlib import PIXELS
    from talkgs.synthesize import synthesize

    _check_options(args, resolution=PIXELS)
    params = _params(args)
    params.subject(args.subject)  # clear error for an unknown subject
    model = paths.model_dir(args.subject, args.variant, args.root)
    if not (model / "checkpoint.pt").is_file():
        raise FileNotFoundError(
            f"{model / 'checkpoint.pt'} not found: train it first with "
            f"`dvc repro train@{args.subject}-{args.variant}` (or `talkgs train --subject {args.subject} --variant {args.variant}`)"
        )
    out = synthesize(
        paths.subject_dir(args.subject, args.root), model, args.audio, args.out,
        resolution=args.resolution, device=params.train.device, progress=not args.quiet,
    )  # fmt: skip
    print(f"wrote {args.out}: {out['frames']} frames, {out['fps']:.1f} frames/s")
    return 0


def cmd_metrics_diff(args: argparse.Namespace) -> int:
    """Headline metrics of the workspace vs ``--rev`` (``dvc metrics diff``), as a markdown table."""
    import json
    import os
    import subprocess

    from talkgs.eval.report import compare_metrics, metrics_from_dvc_diff

    params = _params(args)
    cmd = [sys.executable, "-m", "dvc", "metrics", "diff", "--json", "--all", args.rev]
    proc = subprocess.run(cmd, cwd=args.root, capture_output=True, text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc metrics diff {args.rev}` failed: {proc.stderr.strip()}")
    old, new = metrics_from_dvc_diff(json.loads(proc.stdout or "{}"))
    table, regressions = compare_metrics(old, new, params.evaluate.tolerances)
    print(f"### Headline metrics: workspace vs {args.rev}\n\n{table}")
    if regressions:
        print("Regressions beyond tolerance (params.yaml evaluate.tolerances):\n- " + "\n- ".join(regressions))
        return 1 if args.fail_on_regression else 0
    print("No headline metric regressed beyond its tolerance.")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from talkgs.config import dump_yaml

    print(dump_yaml(_params(args)), end="")
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    from talkgs.orchestrate import LOCAL_STAGE_KINDS, reproduce

    local = tuple(args.local) if args.local else LOCAL_STAGE_KINDS
    result = reproduce(root=args.root, subjects=args.subject or None, dry_run=args.dry_run, pool=args.pool,
                       repo=args.repo, local_kinds=local)  # fmt: skip
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="talkgs",
        description="Audio-driven 3D Gaussian Splatting talking heads as reproducible DVC + Prefect pipelines.",
    )
    p.add_argument("--root", type=Path, default=Path("."), help="repository root holding params.yaml (default: .)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--version", action="version", version=f"talkgs {talkgs.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("make-demo", help="synthesise the built-in demo clip (astronaut photo + offline TTS)",
                       description="Write a 10-15 s talking-portrait mp4 (H.264 + AAC, 25 fps) made from the "
                       "scikit-image astronaut photo animated to offline espeak-ng speech. Defaults from params.yaml `demo`.")  # fmt: skip
    s.add_argument("--out", type=Path, default=None, help="output mp4 (default: data/raw/demo.mp4)")
    s.add_argument("--seconds", type=float, default=None, help="approximate duration (default: params demo.seconds)")
    s.add_argument("--size", type=int, default=None, help="square frame size in pixels (default: params demo.size)")
    s.add_argument("--seed", type=int, default=None, help="random seed for head motion and blinks")
    s.set_defaults(func=cmd_make_demo)

    s = sub.add_parser("add-subject", help="bring your own talking-portrait video in as a subject",
                       description="Check VIDEO (a readable video stream, long enough, an audio track that is not "
                       "silent: the checks extract makes before decoding frames), copy it to data/raw/NAME.<ext>, track it "
                       "with `dvc add`, and register it under `subjects` in params.yaml so `dvc repro` builds it. Nothing "
                       "is written when a check or a step fails.")  # fmt: skip
    s.add_argument("name", help="subject name: lower-case letters, digits, '_'")
    s.add_argument("video", type=Path, help="path of the video (mp4, mov, mkv, webm)")
    s.add_argument("--resolution", type=int, default=None, help="override extract.resolution for this subject")
    s.add_argument("--force", action="store_true",
                   help="replace an existing subject of that name (never a file another stage produces, e.g. the demo clip)")  # fmt: skip
    s.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` (e.g. outside a DVC repo)")
    s.set_defaults(func=cmd_add_subject)

    for kind, what, cat in (("subjects", "subjects (videos)", "catalog"), ("audios", "foreign audios", "audio_catalog")):
        s = sub.add_parser(kind, help=f"list {what}; enable/disable opt-in {cat} entries",
                           description=f"`talkgs {kind}` lists enabled and {cat} {what}; `enable NAME...` (or "
                           f"`enable --all`) moves {cat} entries into `{kind}` so `dvc repro` builds them; "
                           "`disable NAME...` moves them back."
                           + (" `remove NAME... --yes` deletes subjects: the params entry and, for a video "
                              "add-subject copied in, data/raw/NAME.<ext> and its .dvc file (without --yes: "
                              "what it would delete, exit 2)." if kind == "subjects" else ""))  # fmt: skip
        actions = ["list", "enable", "disable", *(["remove"] if kind == "subjects" else [])]
        s.add_argument("action", nargs="?", choices=actions, default="list")
        s.add_argument("names", nargs="*", help="names")
        s.add_argument("--all", action="store_true", help=f"with enable: every {cat} entry")
        if kind == "subjects":
            s.add_argument("--yes", action="store_true",
                           help="with remove: really remove (without it, remove lists what it would delete and exits 2)")  # fmt: skip
        s.set_defaults(func=cmd_subjects)

    for name, text in (
        ("extract", "stage extract: constant-25-fps face-centred frames, 16 kHz mono audio, meta.json"),
        ("segment", "stage segment: per-frame label maps, background plate, torso frames, contact sheet"),
        ("track", "stage track: 478 landmarks, focal search, head poses, optical-flow bundle adjustment"),
        ("features", "stage features: face signals + audio features into the Parquet cache"),
        ("audio-features", "stage audio_features: featurise a foreign audio like a subject's own"),
    ):
        s = sub.add_parser(name, help=text, description=f"Run {text}, outside DVC. "
                           "Prefer `dvc repro` (it caches); this is for debugging one stage.")  # fmt: skip
        if name == "audio-features":
            s.add_argument("--audio", action="append", required=True, help="audio name from params.yaml audios (repeatable)")
        else:
            s.add_argument("--subject", action="append", required=True, help="subject name (repeatable)")
        s.set_defaults(func=cmd_stage)

    for name, text in (
        ("train", "stage train: train a variant on a subject into models/<S>/<V>/ (resumes a killed run)"),
        ("evaluate", "stage evaluate: render test split + foreign audios, write metrics/subjects/<S>/<V>.json"),
    ):
        s = sub.add_parser(name, help=text, description=f"Run {text}, outside DVC (prefer `dvc repro`).")
        s.add_argument("--subject", required=True, help="subject name")
        s.add_argument("--variant", required=True, help="variant name from params.yaml train.variants")
        s.add_argument("--fewshot", type=float, default=None, metavar="SECONDS",
                       help="few-shot protocol: the run trained on the first SECONDS of the clip (<V>@fewshot<SECONDS>)")
        s.set_defaults(func=cmd_variant_stage)

    s = sub.add_parser("pretrain", help="stage pretrain: train a variant across its pretrain.subjects into models/pretrain/<V>/",
                       description="Run stage pretrain (cross-subject pretraining, one identity per subject), outside DVC "
                       "(prefer `dvc repro pretrain@V`). Resumes a killed run.")  # fmt: skip
    s.add_argument("--variant", required=True, help="variant name from params.yaml train.variants (with pretrain.subjects)")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("report", help="stage report: paper-style tables in metrics/tables/ from all metrics files")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("sync-expert", help="stage sync_expert: train the audio-visual sync expert into models/sync_expert/",
                       description="Run stage sync_expert outside DVC (prefer `dvc repro sync_expert`): train the "
                       "audio-window <-> mouth-crop sync expert on the training splits of sync_expert.subjects (or load "
                       "sync_expert.weights), write models/sync_expert/ and its held-out sync accuracy to "
                       "metrics/sync_expert.json. Resumes a killed run. Trains even when no evaluated variant needs it "
                       "(sync_expert.train: auto skips it then in `dvc repro`).")  # fmt: skip
    s.set_defaults(func=cmd_sync_expert)

    s = sub.add_parser("synthesize", help="drive a trained head with any audio into an mp4 (H.264 + AAC)",
                       description="Render the trained (subject, variant) driven by AUDIO: head poses and blinks "
                       "from the training track (looped back and forth), composited on the background + torso, "
                       "written as H.264 + AAC with the audio. Prints frames/s.")  # fmt: skip
    s.add_argument("--subject", required=True)
    s.add_argument("--variant", required=True)
    s.add_argument("--audio", type=Path, required=True, help="any audio file (wav, mp3, or a video's sound)")
    s.add_argument("--out", type=Path, required=True, help="output .mp4")
    s.add_argument("--resolution", type=int, default=None, help="render size (default: the subject's extracted size)")
    s.set_defaults(func=cmd_synthesize)

    s = sub.add_parser("metrics-diff", help="headline metrics vs a git revision (dvc metrics diff) as markdown",
                       description="Compare the workspace's metrics files with those committed at REV; print a "
                       "markdown table; with --fail-on-regression exit 1 when a headline metric got worse by more "
                       "than its tolerance (params.yaml evaluate.tolerances). CI runs this after the quick tier.")  # fmt: skip
    s.add_argument("--rev", default="HEAD", help="git revision to compare with (default: HEAD)")
    s.add_argument("--fail-on-regression", action="store_true", help="exit 1 on a regression")
    s.set_defaults(func=cmd_metrics_diff)

    s = sub.add_parser("params", help="print the fully resolved params.yaml (defaults filled in)")
    s.set_defaults(func=cmd_params)

    s = sub.add_parser("repro", help="run the DVC pipeline as a Prefect flow (one task run per stage)",
                       description="Run `dvc repro --single-item` for every stage of the chosen subjects, in "
                       "dependency order, as Prefect task runs (watch them with `make ui`). DVC decides what reruns.")  # fmt: skip
    s.add_argument("--subject", action="append", default=[], help="only this subject's stages (repeatable; default: all)")
    s.add_argument("--dry-run", action="store_true", help="list the planned stages and which of them would run (dvc status), run nothing")
    s.add_argument("--pool", default=None, help="fan out: run the stages on the workers of this Prefect work pool, "
                   "independent ones side by side, sharing outputs through the default DVC remote (README: Fan-out)")
    s.add_argument("--repo", default=None, help="with --pool: what workers git clone (default: this checkout's path, "
                   "for workers on this machine; a URL the commit is pushed to for other machines)")
    s.add_argument("--local", action="append", default=[], metavar="KIND",
                   help="with --pool: stage kinds run here instead (repeatable; default: make_demo, report)")
    s.set_defaults(func=cmd_repro)
    return p


def main(argv: list[str] | None = None) -> int:
    from talkgs.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "repro":  # the Prefect flow logs through Prefect's own console handler
        setup_logging(args.verbose)
    from talkgs.config import ConfigError
    from talkgs.io.media import MediaError

    from talkgs import interrupt
    from talkgs.preprocess.errors import InputError

    known = (ConfigError, MediaError, InputError, FileNotFoundError, RuntimeError)
    if args.command != "repro":  # the Prefect flow handles its own cancellation
        interrupt.install_sigterm()
    try:
        return int(args.func(args) or 0)
    except known as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt as e:
        log.error("%s", interrupt.message(e, f"talkgs {args.command}"))
        return interrupt.exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
