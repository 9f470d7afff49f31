"""The stage functions: what each DVC stage (and the matching CLI command) does.

Each takes the loaded :class:`~talkgs.config.Params`, a subject name and the repository
root, resolves paths with :mod:`talkgs.paths` and calls one library function. The
``stages/*.py`` scripts and ``talkgs <command>`` are thin wrappers over these.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from talkgs import paths
from talkgs.config import Params

log = logging.getLogger(__name__)


def _under(root: Path, path: str) -> Path:
    """A params path: absolute as is, else relative to the repository root."""
    p = Path(path)
    return p if p.is_absolute() else root / p


def make_demo(params: Params, root: Path, out: Path | None = None, *, progress: bool = True) -> dict:
    """The demo clip (``data/raw/demo.mp4``) and, with the default output, its second utterance
    (``data/raw/demo_speech2.wav``, another voice: the demo's cross-driving audio)."""
    from talkgs.demo import make_demo as _make_demo
    from talkgs.demo import make_demo_speech2
    from talkgs.io.atomic import sweep_temp

    sweep_temp(out or root / paths.DEMO_VIDEO, *(() if out else (root / paths.DEMO_SPEECH2,)))
    info = _make_demo(out or root / paths.DEMO_VIDEO, params.demo, progress=progress)
    log.info("demo clip written to %s", out or root / paths.DEMO_VIDEO)
    if out is None:
        info["speech2"] = make_demo_speech2(root / paths.DEMO_SPEECH2, params.demo)
        log.info("second utterance written to %s", root / paths.DEMO_SPEECH2)
    return info


def extract(params: Params, subject: str, root: Path, *, progress: bool = True) -> dict:
    from talkgs.io.atomic import sweep_temp
    from talkgs.preprocess.extract import extract as _extract

    video = _under(root, params.subject(subject).video)
    out = paths.extract_dir(subject, root)
    sweep_temp(out)
    meta = _extract(video, out, params.extract_for(subject), progress=progress)
    log.info("extract %s: %d frames -> %s", subject, meta["frame_count"], out)
    return meta


def segment(params: Params, subject: str, root: Path, *, progress: bool = True) -> dict:
    from talkgs.io.atomic import sweep_temp
    from talkgs.preprocess.segment import segment as _segment

    out = paths.segment_dir(subject, root)
    sweep_temp(out)
    info = _segment(paths.extract_dir(subject, root), out, params.segment, progress=progress)
    log.info("segment %s -> %s", subject, out)
    return info


def track(params: Params, subject: str, root: Path, *, progress: bool = True) -> dict:
    from talkgs.io.atomic import sweep_temp
    from talkgs.preprocess.track import track as _track

    out = paths.track_dir(subject, root)
    timings = paths.timings_file("track", subject, root)
    sweep_temp(out, timings)
    tp = params.track
    refine = params.subject(subject).track_refine
    if refine is not None and refine != tp.refine:
        import dataclasses

        tp = dataclasses.replace(tp, refine=refine)
        log.info("track %s: refine=%s (subjects.%s.track_refine)", subject, refine, subject)
    report = _track(paths.extract_dir(subject, root), out, tp, progress=progress, timings=timings)
    log.info("track %s -> %s", subject, out)
    return report


def features(params: Params, subject: str, root: Path, *, progress: bool = True) -> dict:
    from talkgs.features.build import build_features
    from talkgs.io.atomic import sweep_temp

    out = paths.features_dir(subject, root)
    timings = paths.timings_file("features", subject, root)
    sweep_temp(out, timings)
    summary = build_features(
        paths.extract_dir(subject, root), paths.track_dir(subject, root), out, params.features, progress=progress,
        timings=timings,
    )  # fmt: skip
    log.info("features %s -> %s", subject, out)
    return summary


def audio_features(params: Params, audio: str, root: Path, *, progress: bool = True) -> dict:
    """Featurise a foreign audio with every encoder of ``features.audio_encoders`` into
    ``data/audio/<audio>/audio_<encoder>.parquet`` (the same featurisation as a subject's own audio)."""
    from talkgs.features.build import featurize_audio
    from talkgs.io.atomic import atomic_dir, sweep_temp

    src = _under(root, params.audio(audio).path)
    out = paths.audio_dir(audio, root)
    sweep_temp(out)
    summary: dict = {}
    with atomic_dir(out) as tmp:
        for enc in params.features.audio_encoders:
            summary[enc] = featurize_audio(
                src, tmp / f"audio_{enc}.parquet", params.features.audio_params(enc),
                device=params.features.device, progress=progress,
            )  # fmt: skip
    log.info("audio %s -> %s", audio, out)
    return summary


def train(params: Params, subject: str, variant: str, root: Path, *, progress: bool = True, fewshot: float | None = None) -> dict:
    """Train ``variant`` (``train.variants`` with ``train.preset`` applied) on ``subject`` into
    ``models/<S>/<V>/``; resumes from its checkpoint if a previous run was killed.

    ``fewshot``: the few-shot protocol (D3-Talker Table 2): train on the first ``fewshot`` seconds
    only, into ``models/<S>/<V>@fewshot<sec>/``. A clip whose training split is shorter gets
    ``unavailable.json`` (the reason) there instead of a model, and its metrics say so.
    """
    from talkgs.eval.report import run_name
    from talkgs.io.atomic import atomic_dir, sweep_temp, write_bytes, write_json
    from talkgs.train.data import FewShotUnavailable, check_fewshot
    from talkgs.train.loop import train as _train

    v = params.train.variant(variant)
    init = _init_from(v, variant, root)
    run = run_name(variant, fewshot)
    out = paths.model_dir(subject, run, root)
    timings = paths.timings_file("train", f"{subject}/{run}", root)
    sweep_temp(out, timings, *(() if fewshot is not None else (paths.train_plot(subject, variant, root),)))
    if fewshot is not None:
        try:
            check_fewshot(paths.subject_dir(subject, root), fewshot)
        except FewShotUnavailable as e:
            with atomic_dir(out) as tmp:
                write_json(tmp / "unavailable.json", {"seconds": fewshot, "reason": str(e)})
            write_json(timings, {"elapsed_s": None, "reason": f"not trained: {e}"})
            log.warning("train %s/%s: not trained: %s", subject, out.name, e)
            return {"unavailable": str(e)}
    (out / "unavailable.json").unlink(missing_ok=True)  # a clip that became long enough
    result = _train(
        paths.subject_dir(subject, root), out, v, resume=True, progress=progress,
        seed=params.train.seed, device=params.train.device, train_seconds=fewshot, init_from=init, timings=timings,
        assets=_variant_assets(v, variant, root),
    )  # fmt: skip
    if fewshot is None:  # the training curves as a DVC plot (outside the persisted model folder)
        write_bytes(paths.train_plot(subject, variant, root), (out / "curves.csv").read_bytes())
    log.info("train %s/%s -> %s", subject, out.name, out)
    return result


def _init_from(v, variant: str, root: Path) -> Path | None:  # noqa: ANN001 - VariantParams
    """The checkpoint a variant's per-subject training starts from (``init_from``), or None."""
    from talkgs.train.data import DataError
    from talkgs.train.params import PRETRAIN

    if v.init_from is None:
        return None
    if v.init_from == PRETRAIN:
        ck = paths.pretrain_dir(variant, root) / "checkpoint.pt"
        if not ck.is_file():
            raise DataError(f"{ck} not found: variant {variant!r} starts from its cross-subject model; run `dvc repro pretrain@{variant}` first")
        return ck
    ck = _under(root, v.init_from)
    if not ck.is_file():
        raise DataError(f"{ck} not found (train.variants.{variant}.init_from); give the path of a talkgs checkpoint.pt")
    return ck


def _asset_source(name: str, root: Path) -> Path:
    """The file a stage produced for pipeline asset ``name`` (:data:`talkgs.models.registry.ASSETS`)."""
    from talkgs.train.data import DataError

    if name == "sync_expert":
        out = root / paths.SYNC_EXPERT
        ck = out / "checkpoint.pt"
        if (out / "none.json").is_file() or not ck.is_file():
            raise DataError(f"{ck} not found: the sync expert has not been trained; run `dvc repro sync_expert` (it trains when an evaluated variant needs it)")
        return ck
    raise ValueError(f"no stage produces the asset {name!r}")


def _variant_assets(v, variant: str, root: Path) -> dict[str, Path]:  # noqa: ANN001 - VariantParams
    """Where ``variant``'s ``pretrain@<V>`` stage copied its assets (``models/pretrain/<V>/assets/``);
    the trainer checks that they are there."""
    return {name: paths.pretrain_dir(variant, root) / "assets" / f"{name}.pt" for name in v.required_assets()}


def _copy_assets(v, dest: Path, root: Path) -> dict[str, str]:  # noqa: ANN001 - VariantParams
    """Copy the assets the variant requires into ``dest/assets/`` (atomic per file); name -> source."""
    from talkgs.io.atomic import atomic_path

    copied = {}
    for name in v.required_assets():
        src = _asset_source(name, root)
        (dest / "assets").mkdir(parents=True, exist_ok=True)
        with atomic_path(dest / "assets" / f"{name}.pt") as tmp:
            shutil.copyfile(src, tmp)
        copied[name] = str(src.relative_to(root)) if src.is_relative_to(root) else str(src)
    return copied


def pretrain(params: Params, variant: str, root: Path, *, progress: bool = True) -> dict:
    """Stage ``pretrain@<V>``: train ``variant`` across the subjects of its ``pretrain.subjects``
    (one identity each) into ``models/pretrain/<V>/``. A variant without pretraining gets
    ``none.json`` there instead (every evaluated variant has this stage, so ``train@S-V``
    depends on it uniformly); it takes a second. Either way the pipeline assets the variant is
    built from (the sync expert) are copied into ``assets/`` there: ``train@S-V`` reruns when
    they change, and only for the variants that use them."""
    from talkgs.io.atomic import atomic_dir, sweep_temp, write_json

    out = paths.pretrain_dir(variant, root)
    timings = paths.timings_file("pretrain", variant, root)
    sweep_temp(out, timings)
    v = params.train.variant(variant)
    if not v.pretrain.subjects:
        with atomic_dir(out) as tmp:
            copied = _copy_assets(v, tmp, root)
            write_json(tmp / "none.json", {"variant": variant, "pretrained": False, "reason": f"train.variants.{variant} has no pretrain.subjects",
                                          **({"assets": copied} if copied else {})})  # fmt: skip
        write_json(timings, {"elapsed_s": None, "reason": f"not pretrained: train.variants.{variant} has no pretrain.subjects"})
        log.info("pretrain %s: no pretrain.subjects, nothing to train", variant)
        return {"pretrained": False}
    from talkgs.train.loop import train as _train

    for s in v.pretrain.subjects:
        params.subject(s)  # enabled (a clear error otherwise)
    (out / "none.json").unlink(missing_ok=True)
    _copy_assets(v, out, root)
    result = _train(
        [paths.subject_dir(s, root) for s in v.pretrain.subjects], out, v.pretraining(), resume=True, progress=progress,
        seed=params.train.seed, device=params.train.device, timings=timings, assets=_variant_assets(v, variant, root),
    )  # fmt: skip
    log.info("pretrain %s on %s -> %s", variant, ", ".join(v.pretrain.subjects), out)
    return result


def _foreign_audios(params: Params, root: Path, feature: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """Enabled foreign audios: name -> file, and name -> its cached ``audio_<feature>.parquet``
    (the variant's audio feature; the audio_features stage writes one per features.audio_encoders)."""
    wavs, feats = {}, {}
    for name, a in params.audios.items():
        wavs[name] = _under(root, a.path)
        feats[name] = paths.audio_dir(name, root) / f"audio_{feature}.parquet"
    return wavs, feats


def evaluate(params: Params, subject: str, variant: str, root: Path, *, progress: bool = True, fewshot: float | None = None) -> dict:
    """Render the test split and the foreign audios, measure, write ``metrics/subjects/<S>/<V>.json``
    and ``renders/<S>/<V>/`` (test frames, comparison.mp4, cross_<audio>.mp4).

    ``fewshot``: evaluate ``<V>@fewshot<sec>`` (self-driven only, the same test split) into
    ``metrics/subjects/<S>/<V>@fewshot<sec>.json``.
    """
    from talkgs.eval.run import evaluate_variant
    from talkgs.io.atomic import sweep_temp

    e = params.evaluate
    if fewshot is not None:
        return _evaluate_fewshot(params, subject, variant, root, fewshot, progress=progress)
    sweep_temp(paths.renders_dir(subject, variant, root), paths.metrics_file(subject, variant, root))
    wavs, feats = _foreign_audios(params, root, params.train.variant(variant).audio_feature) if e.cross_driven else ({}, {})
    metrics = evaluate_variant(
        paths.subject_dir(subject, root), paths.model_dir(subject, variant, root),
        paths.renders_dir(subject, variant, root), paths.metrics_file(subject, variant, root),
        subject=subject, variant=variant, foreign_audios=wavs, foreign_features=feats,
        resolution=e.resolution, weights=e.weights, device=params.train.device, fid=e.fid,
        comparison_video=e.comparison_video, progress=progress, identity=e.identity,
        train_timings=paths.timings_file("train", f"{subject}/{variant}", root),
    )  # fmt: skip
    log.info("evaluate %s/%s: face PSNR %s, mouth LMD %s", subject, variant, metrics.get("self.psnr_face"), metrics.get("self.lmd_mouth"))
    return metrics


def _evaluate_fewshot(params: Params, subject: str, variant: str, root: Path, fewshot: float, *, progress: bool) -> dict:
    import json

    from talkgs.eval.metrics import unavailable
    from talkgs.eval.report import FEWSHOT_ROWS, run_name, write_metrics
    from talkgs.eval.run import evaluate_variant
    from talkgs.io.atomic import atomic_dir, sweep_temp, write_json
    from talkgs.train.data import FewShotUnavailable, check_fewshot

    e = params.evaluate
    run = run_name(variant, fewshot)
    model, renders = paths.model_dir(subject, run, root), paths.renders_dir(subject, run, root)
    metrics_json = paths.metrics_file(subject, variant, root, fewshot)
    sweep_temp(renders, metrics_json)
    facts: dict = {"fewshot.seconds": fewshot}
    try:
        facts["fewshot.train_frames"] = check_fewshot(paths.subject_dir(subject, root), fewshot)
    except FewShotUnavailable as err:
        reason = str(err)
        marker = model / "unavailable.json"
        if not marker.is_file():  # the clip is too short now but a stale model exists: retrain first
            raise FileNotFoundError(f"{marker} not found: the model folder is stale; rerun `dvc repro train_fewshot@{subject}-{variant}-{fewshot:g}`") from err
        with atomic_dir(renders) as tmp:
            write_json(tmp / "unavailable.json", json.loads(marker.read_text()))
        log.warning("evaluate %s/%s: %s", subject, run, reason)
        why = f"not trained: {reason}"
        return write_metrics(metrics_json, {c.key: unavailable(why) for c in FEWSHOT_ROWS if c.key}, facts, subject=subject, variant=variant)
    metrics = evaluate_variant(
        paths.subject_dir(subject, root), model, renders, metrics_json, subject=subject, variant=variant,
        resolution=e.resolution, weights=e.weights, device=params.train.device, fid=e.fid,
        comparison_video=e.comparison_video, progress=progress, extra=facts, identity=e.identity,
        train_timings=paths.timings_file("train", f"{subject}/{run}", root),
    )  # fmt: skip
    log.info("evaluate %s/%s: face PSNR %s, mouth LMD %s", subject, run, metrics.get("self.psnr_face"), metrics.get("self.lmd_mouth"))
    return metrics


def ground_truth(params: Params, subject: str, root: Path, *, progress: bool = True) -> dict:
    """The tables' ground-truth row for ``subject`` (sync and mouth motion of the real test frames)."""
    from talkgs.eval.report import GROUND_TRUTH
    from talkgs.eval.run import evaluate_subject_ground_truth
    from talkgs.io.atomic import sweep_temp

    sweep_temp(paths.metrics_file(subject, GROUND_TRUTH, root))
    return evaluate_subject_ground_truth(
        paths.subject_dir(subject, root), paths.metrics_file(subject, GROUND_TRUTH, root), subject=subject,
        syncnet_weights=params.evaluate.weights.syncnet, device=params.train.device, identity=params.evaluate.identity,
    )  # fmt: skip


def report(params: Params, root: Path, *, progress: bool = True) -> dict:
    """Paper-style tables (markdown + csv) over every subject x variant in ``metrics/tables/``."""
    from talkgs.eval.report import build_tables
    from talkgs.io.atomic import sweep_temp

    sweep_temp(root / paths.TABLES)
    written = build_tables(root / paths.METRICS_RUNS, root / paths.TABLES, variants=params.evaluate.variants, subjects=list(params.subjects))
    log.info("tables: %s", ", ".join(str(p) for p in written.values()))
    return {k: str(v) for k, v in written.items()}


def asset_users(params: Params, asset: str) -> list[str]:
    """The evaluated variants (``evaluate.variants`` and the few-shot ones) built from ``asset``."""
    names = dict.fromkeys([*params.evaluate.variants, *params.evaluate.few_shot.variants])
    return [n for n in names if asset in params.train.variant(n).required_assets()]


def sync_expert(params: Params, root: Path, *, progress: bool = True, always: bool = False) -> dict:
    """Stage ``sync_expert``: the audio-visual sync expert (:mod:`talkgs.sync`) trained on the training
    splits of ``sync_expert.subjects`` (or loaded from ``sync_expert.weights``) into
    ``models/sync_expert/``; its held-out sync accuracy into ``metrics/sync_expert.json`` (on the test
    splits of the enabled ``eval_subjects``; none: of the training subjects, labelled so).
    ``sync_expert.train: auto`` (unless ``always``): only when an evaluated variant is built from it
    (:func:`asset_users`); otherwise ``none.json`` and metrics saying why."""
    from talkgs.io.atomic import sweep_temp
    from talkgs.sync.train import run_sync_expert

    se = params.sync_expert
    out, metrics, timings = root / paths.SYNC_EXPERT, root / paths.SYNC_EXPERT_METRICS, root / paths.SYNC_EXPERT_TIMINGS
    sweep_temp(out, metrics, timings)
    from talkgs.config import ConfigError, closest_hint

    users = asset_users(params, "sync_expert")
    if se.train == "auto" and not users and not always:
        from talkgs.io.atomic import write_json

        reason = ("sync_expert.train is auto and no evaluated variant (evaluate.variants, evaluate.few_shot.variants) is built "
                  "from the sync expert: not trained (set sync_expert.train: always to train it anyway)")  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)  # a persisted folder: an earlier finished checkpoint stays for when it is needed again
        write_json(out / "none.json", {"trained": False, "reason": reason})
        write_json(metrics, {"trained": False, "reason": reason})
        write_json(timings, {"elapsed_s": None, "reason": f"not trained: {reason}"})
        log.info("sync_expert: %s", reason)
        return {"trained": False}
    (out / "none.json").unlink(missing_ok=True)
    if users:
        log.info("sync_expert: needed by %s", ", ".join(users))
    for s in se.subjects:  # checked here, not when params.yaml loads: disabling a subject must not break the file
        if s not in params.subjects:
            hint = f" It is in the catalog: run `talkgs subjects enable {s}`." if s in params.catalog else closest_hint(s, list(params.subjects))
            raise ConfigError(f"sync_expert.subjects names {s!r}, not an enabled subject ({', '.join(sorted(params.subjects))}).{hint}")
    for s in se.eval_subjects:
        if s not in params.subjects and s not in params.catalog:
            raise ConfigError(f"sync_expert.eval_subjects names {s!r}, neither an enabled subject nor in the catalog.{closest_hint(s, [*params.subjects, *params.catalog])}")
    enabled = [s for s in se.eval_subjects if s in params.subjects]
    skipped = [s for s in se.eval_subjects if s not in params.subjects]
    if skipped:
        log.warning("sync_expert: eval_subjects %s are not enabled (`talkgs subjects enable NAME`): not evaluated", skipped)
    return run_sync_expert(
        se, [paths.subject_dir(s, root) for s in se.subjects], [paths.subject_dir(s, root) for s in enabled], out, metrics,
        weights=_under(root, se.weights) if se.weights else None, skipped_eval=skipped, timings=timings, progress=progress,
    )  # fmt: skip


STAGES = {"make_demo", "extract", "segment", "track", "features", "audio_features", "pretrain", "train", "evaluate",
          "ground_truth", "report", "sync_expert"}  # fmt: skip


def stage_main(stage: str, argv: list[str] | None = None) -> None:
    """Entry point of ``stages/<stage>.py``: parse ``--subject``, load params.yaml, run the stage.

    Exits with status 2 and a one-line error (no traceback) for invalid input or config.
    """
    import argparse
    import sys

    from talkgs import interrupt
    from talkgs.config import ConfigError, load_params
    from talkgs.io.media import MediaError
    from talkgs.logs import setup_logging
    from talkgs.preprocess.errors import InputError
    from talkgs.train.data import DataError

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {sorted(STAGES)}")
    parser = argparse.ArgumentParser(prog=f"stages/{stage}.py", description=f"DVC stage {stage}")
    if stage == "audio_features":
        parser.add_argument("--audio", required=True)
    elif stage == "pretrain":
        parser.add_argument("--variant", required=True)
    elif stage not in ("make_demo", "report", "sync_expert"):
        parser.add_argument("--subject", required=True)
    if stage in ("train", "evaluate"):
        parser.add_argument("--variant", required=True)
        parser.add_argument("--fewshot", type=float, default=None, metavar="SECONDS",
                            help="few-shot protocol: the run trained on the first SECONDS of the clip")  # fmt: skip
    parser.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    setup_logging()
    interrupt.install_sigterm()
    try:
        params = load_params(args.root / "params.yaml")
        if stage in ("make_demo", "report", "sync_expert"):
            globals()[stage](params, args.root)
        elif stage in ("train", "evaluate"):
            globals()[stage](params, args.subject, args.variant, args.root, fewshot=args.fewshot)
        elif stage == "audio_features":
            audio_features(params, args.audio, args.root)
        elif stage == "pretrain":
            pretrain(params, args.variant, args.root)
        else:
            globals()[stage](params, args.subject, args.root)
    except (ConfigError, InputError, MediaError, DataError) as e:
        log.error("%s", e)
        sys.exit(2)
    except KeyboardInterrupt as e:
        log.error("%s", interrupt.message(e, f"stage {stage}"))
        sys.exit(interrupt.exit_code(e))
