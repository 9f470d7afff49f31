"""Where every stage reads and writes, relative to the repository root.

```
data/raw/<subject>.<ext>          user videos (`talkgs add-subject`, tracked by `dvc add`)
data/raw/demo.mp4                 the built-in demo clip (stage make_demo)
data/<subject>/extract/           frames/, audio.wav, meta.json           (stage extract)
data/<subject>/segment/           labels/, torso/, background.png, ...    (stage segment)
data/<subject>/track/             track.npz, report.json, report.png      (stage track)
data/<subject>/features/          frames.parquet, audio_<enc>.parquet      (stage features)
data/audio/<audio>/               audio_<enc>.parquet of a foreign audio   (stage audio_features)
models/<subject>/<variant>/       checkpoint.pt, config.yaml, curves.csv   (stage train)
models/<subject>/<variant>@fewshot<sec>/  the same, trained on the first <sec> s  (stage train_fewshot)
models/pretrain/<variant>/        the cross-subject model (or none.json)   (stage pretrain)
models/sync_expert/               checkpoint.pt, config.yaml, metrics.json (stage sync_expert)
plots/train/<subject>/<variant>.csv  the training curves as a DVC plot      (stage train)
renders/<subject>/<variant>/      test/, comparison.mp4, cross_<audio>.mp4 (stage evaluate)
renders/<subject>/<variant>@fewshot<sec>/  test/, comparison.mp4            (stage evaluate_fewshot)
metrics/subjects/<subject>/       <variant>.json, ground_truth.json        (stages evaluate, ground_truth)
                                  <variant>@fewshot<sec>.json              (stage evaluate_fewshot)
metrics/sync_expert.json          the sync expert's held-out sync accuracy (stage sync_expert)
metrics/tables/                   self_driven, cross_driven, few_shot .md/.csv (stage report)
metrics/timings/<stage>/...json   wall-clock times of track, features, train, pretrain (and
                                  sync_expert.json of stage sync_expert) (cache: false;
                                  never in the outputs above, so a rerun gives the same bytes)
```
"""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw")
DEMO_VIDEO = RAW / "demo.mp4"
DEMO_SPEECH2 = RAW / "demo_speech2.wav"
METRICS_RUNS = Path("metrics/subjects")
TABLES = Path("metrics/tables")
TIMINGS = Path("metrics/timings")
SYNC_EXPERT = Path("models/sync_expert")
SYNC_EXPERT_METRICS = Path("metrics/sync_expert.json")
SYNC_EXPERT_TIMINGS = TIMINGS / "sync_expert.json"


def subject_dir(subject: str, root: Path = Path(".")) -> Path:
    return root / "data" / subject


def extract_dir(subject: str, root: Path = Path(".")) -> Path:
    return subject_dir(subject, root) / "extract"


def segment_dir(subject: str, root: Path = Path(".")) -> Path:
    return subject_dir(subject, root) / "segment"


def track_dir(subject: str, root: Path = Path(".")) -> Path:
    return subject_dir(subject, root) / "track"


def features_dir(subject: str, root: Path = Path(".")) -> Path:
    return subject_dir(subject, root) / "features"


def audio_dir(audio: str, root: Path = Path(".")) -> Path:
    return root / "data" / "audio" / audio


def model_dir(subject: str, variant: str, root: Path = Path(".")) -> Path:
    return root / "models" / subject / variant


def pretrain_dir(variant: str, root: Path = Path(".")) -> Path:
    """``models/pretrain/<variant>/``: the variant's cross-subject pretrained model."""
    return root / "models" / "pretrain" / variant


def renders_dir(subject: str, variant: str, root: Path = Path(".")) -> Path:
    return root / "renders" / subject / variant


def metrics_file(subject: str, variant: str, root: Path = Path("."), fewshot: float | None = None) -> Path:
    from talkgs.eval.report import metrics_path

    return metrics_path(root / METRICS_RUNS, subject, variant, fewshot)


def timings_file(stage: str, name: str, root: Path = Path(".")) -> Path:
    """``metrics/timings/<stage>/<name>.json``: a stage's wall-clock times, outside its outputs
    (``name``: the subject, ``<subject>/<run>`` for train, the variant for pretrain)."""
    return root / TIMINGS / stage / f"{name}.json"


def train_plot(subject: str, variant: str, root: Path = Path(".")) -> Path:
    return root / "plots" / "train" / subject / f"{variant}.csv"
