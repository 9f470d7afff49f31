"""Typed configuration mirroring ``params.yaml``, loaded strictly.

Every section of ``params.yaml`` is a frozen dataclass (the section dataclasses live next to
the code that reads them, e.g. :class:`talkgs.preprocess.extract.ExtractParams`). Loading is
strict: an unknown key is an error naming the closest valid key, a value of the wrong type is
an error naming the key path, expected and found types. Defaults are the dataclass defaults,
so a ``params.yaml`` only has to say what differs.

Subjects: ``subjects`` holds the subjects the pipeline builds (``dvc.yaml`` runs a ``foreach``
over it); ``catalog`` holds opt-in subjects (the real clips in ``../shared/data``) that
``talkgs subjects enable NAME`` moves into ``subjects``. Foreign audios work the same way with
``audios`` / ``audio_catalog`` and ``talkgs audios enable NAME``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml

from talkgs.configlib import FRAME_PIXELS, NON_NEGATIVE, PIXELS, ConfigError, Range, closest_hint, dump_yaml, from_dict, to_dict
from talkgs.demo import DemoParams
from talkgs.eval.identity import IdentityParams
from talkgs.eval.run import EvalWeights
from talkgs.features.build import FeaturesParams
from talkgs.preprocess.extract import ExtractParams
from talkgs.preprocess.segment import SegmentParams
from talkgs.preprocess.track import TrackParams
from talkgs.sync.train import SyncExpertParams
from talkgs.train.params import TrainParams

__all__ = [
    "ConfigError", "closest_hint", "from_dict", "to_dict", "dump_yaml", "Params", "SubjectParams", "AudioParams",
    "EvaluateParams", "FewShotParams", "load_params", "parse_params", "validate", "SUBJECT_NAME", "RESERVED_NAMES",
]  # fmt: skip

SUBJECT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass(frozen=True)
class SubjectParams:
    """One talking-portrait subject."""

    video: str
    """Source video, relative to the repository root (or absolute)."""
    resolution: Annotated[int | None, FRAME_PIXELS] = None
    """Override of ``extract.resolution`` for this subject (square output size in pixels)."""
    note: str = ""
    """Free text: where the clip comes from, language, licence."""
    track_refine: bool | None = None
    """Override of ``track.refine`` for this subject: ``false`` tracks it without the optical-flow
    keypoint bundle adjustment (SyncGaussian's "w/o stable init" ablation, Table 6, as a second
    subject of the same clip); None: ``track.refine``."""


@dataclass(frozen=True)
class AudioParams:
    """A foreign (cross-driving) speech recording."""

    path: str
    """Audio or video file, relative to the repository root (or absolute)."""
    note: str = ""
    """Free text: speaker, language, source."""


@dataclass(frozen=True)
class FewShotParams:
    """``params.yaml: evaluate.few_shot``: the few-shot sweep (D3-Talker Table 2): each listed
    variant trained on the first N seconds of each listed subject, for every N in ``seconds``,
    and evaluated self-driven on the same test split as the full run (stages
    ``train_fewshot@<S>-<V>-<N>``, ``evaluate_fewshot@<S>-<V>-<N>``)."""

    subjects: list[str] = field(default_factory=list)
    """Subjects of the sweep (enabled ones, ``subjects``); empty: no few-shot stages. A clip whose
    training split is shorter than N seconds gets that run's metrics as unavailable, with the reason."""
    variants: list[str] = field(default_factory=lambda: ["gaussiantalker"])
    """Variants of the sweep (names from ``train.variants``)."""
    seconds: list[Annotated[int | float, Range(0, 3600, lo_open=True, unit="seconds")]] = field(default_factory=lambda: [5, 10, 15, 20])
    """Training budgets in seconds (the paper's 5/10/15/20), written as they appear in stage
    names and paths (``gaussiantalker@fewshot5``): whole seconds as integers (5, not 5.0)."""

    def __post_init__(self) -> None:
        for s in self.seconds:
            if s <= 0:
                raise ValueError(f"few_shot.seconds: budgets must be positive, found {s!r}")
            if isinstance(s, float) and s.is_integer():
                raise ValueError(f"few_shot.seconds: write {int(s)}, not {s!r} (the number names stages and files as written)")
            if isinstance(s, float) and (round(s, 3) != s or f"{s:g}" != str(s)):
                raise ValueError(f"few_shot.seconds: {s!r}: use at most 3 decimals")
        if len(set(self.seconds)) != len(self.seconds):
            raise ValueError(f"few_shot.seconds: {self.seconds} lists a budget twice")


@dataclass(frozen=True)
class EvaluateParams:
    """``params.yaml: evaluate``: which variants each subject trains and how they are measured."""

    variants: list[str] = field(default_factory=lambda: ["static", "gaussiantalker"])
    """Variants trained and evaluated for every subject (the DVC train/evaluate matrix); names
    from ``train.variants``. ``static`` is the floor every variant must beat."""
    cross_driven: bool = True
    """Also drive each subject with every enabled foreign audio (``audios``)."""
    resolution: Annotated[int | None, PIXELS] = None
    """Render and evaluate at this size (None: the subject's extracted resolution)."""
    fid: bool = True
    """Compute FID (needs the Inception weights; unavailable with the reason otherwise)."""
    comparison_video: bool = True
    """Write ``renders/<S>/<V>/comparison.mp4`` (ground truth | render | error heatmap, with sound)."""
    weights: EvalWeights = field(default_factory=EvalWeights)
    """Weight files of LPIPS (AlexNet + linear heads), SyncNet and Inception; None = the default
    location (torch hub cache). Absent weights make that metric unavailable, with the reason."""
    identity: IdentityParams = field(default_factory=IdentityParams)
    """CSIM and LMD-68 (dlib's descriptor and 68-point models): frames measured per render, the
    cross-driven reference frames (:mod:`talkgs.eval.identity`)."""
    few_shot: FewShotParams = field(default_factory=FewShotParams)
    """The few-shot sweep (D3-Talker Table 2 → ``metrics/tables/few_shot.md``)."""
    tolerances: dict[str, Annotated[float, NON_NEGATIVE] | str] = field(default_factory=dict)
    """Worsening of a headline metric allowed by ``talkgs metrics-diff`` before CI fails: absolute,
    or ``"x%"`` of the old value; merged over ``talkgs.eval.report.DEFAULT_TOLERANCES``."""

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if "@" in v or "-" in v or "/" in v]
        if bad:
            raise ValueError(f"evaluate.variants: names may not contain '@', '-' or '/': {bad}")


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``."""

    subjects: dict[str, SubjectParams] = field(default_factory=dict)
    """Subjects the pipeline builds (``dvc repro`` runs every stage for each)."""
    catalog: dict[str, SubjectParams] = field(default_factory=dict)
    """Opt-in subjects, not built until ``talkgs subjects enable NAME``."""
    audios: dict[str, AudioParams] = field(default_factory=dict)
    """Foreign speech the pipeline featurises (cross-driven synthesis and evaluation)."""
    audio_catalog: dict[str, AudioParams] = field(default_factory=dict)
    """Opt-in foreign audios, not built until ``talkgs audios enable NAME``."""
    demo: DemoParams = field(default_factory=DemoParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    segment: SegmentParams = field(default_factory=SegmentParams)
    track: TrackParams = field(default_factory=TrackParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    sync_expert: SyncExpertParams = field(default_factory=SyncExpertParams)
    """The audio-visual sync expert (stage ``sync_expert``, :mod:`talkgs.sync`)."""

    def subject(self, name: str) -> SubjectParams:
        if name not in self.subjects:
            hint = ""
            if name in self.catalog:
                hint = f" It is in the catalog: run `talkgs subjects enable {name}`."
            else:
                hint = closest_hint(name, list(self.subjects))
            raise ConfigError(f"unknown subject {name!r} (enabled: {sorted(self.subjects)}).{hint}")
        return self.subjects[name]

    def audio(self, name: str) -> AudioParams:
        if name not in self.audios:
            hint = (
                f" It is in the audio catalog: run `talkgs audios enable {name}`."
                if name in self.audio_catalog
                else closest_hint(name, list(self.audios))
            )
            raise ConfigError(f"unknown audio {name!r} (enabled: {sorted(self.audios)}).{hint}")
        return self.audios[name]

    def extract_for(self, name: str) -> ExtractParams:
        """``extract`` params with the subject's overrides applied."""
        s = self.subject(name)
        if s.resolution is None:
            return self.extract
        return dataclasses.replace(self.extract, resolution=s.resolution)


RESERVED_NAMES = {"raw", "audio", "pretrain", "sync_expert"}  # folders of data/ and models/ that are not subjects


def validate(params: Params, source: str) -> Params:
    for group in ("subjects", "catalog", "audios", "audio_catalog"):
        for name in getattr(params, group):
            if not SUBJECT_NAME.match(name):
                raise ConfigError(
                    f"{source}: {group}.{name}: names are lower-case letters, digits and '_' "
                    f"(starting with a letter, at most 48 characters); rename it."
                )
            if group in ("subjects", "catalog") and name in RESERVED_NAMES:
                raise ConfigError(f"{source}: {group}.{name}: {sorted(RESERVED_NAMES)} are reserved folder names; rename it.")
    if not params.train.variants:
        raise ConfigError(f"{source}: train.variants is empty: define the variants there (the repository's params.yaml has them)")
    unknown = [v for v in params.evaluate.variants if v not in params.train.variants]
    if unknown:
        raise ConfigError(
            f"{source}: evaluate.variants names {unknown}, not in train.variants "
            f"({', '.join(sorted(params.train.variants))}).{closest_hint(unknown[0], list(params.train.variants))}"
        )
    fs = params.evaluate.few_shot
    unknown = [v for v in fs.variants if v not in params.train.variants]
    if unknown:
        raise ConfigError(
            f"{source}: evaluate.few_shot.variants names {unknown}, not in train.variants "
            f"({', '.join(sorted(params.train.variants))}).{closest_hint(unknown[0], list(params.train.variants))}"
        )
    for name in params.evaluate.variants:
        v = params.train.variants[name]
        if v.audio_feature not in params.features.audio_encoders:
            raise ConfigError(
                f"{source}: train.variants.{name}.audio_feature is {v.audio_feature!r}, which features.audio_encoders "
                f"({params.features.audio_encoders}) does not build: add {v.audio_feature!r} there, or pick one of those."
            )
        for s in v.pretrain.subjects:
            if s not in params.subjects:
                hint = f" Enable it first: `talkgs subjects enable {s}`." if s in params.catalog else closest_hint(s, list(params.subjects))
                raise ConfigError(f"{source}: train.variants.{name}.pretrain.subjects names {s!r}, not an enabled subject ({', '.join(sorted(params.subjects))}).{hint}")
    if fs.subjects:
        for name in fs.variants:
            if name not in params.evaluate.variants:
                raise ConfigError(
                    f"{source}: evaluate.few_shot.variants: {name!r} is not in evaluate.variants; few-shot runs are compared with "
                    f"the variant's full run (the @all column) and start from its pretrain@{name} stage: add {name!r} there too"
                )
    for name in fs.subjects:
        if name not in params.subjects:
            hint = f" Enable it first: `talkgs subjects enable {name}`." if name in params.catalog else closest_hint(name, list(params.subjects))
            raise ConfigError(f"{source}: evaluate.few_shot.subjects names {name!r}, not an enabled subject ({', '.join(sorted(params.subjects))}).{hint}")
    return params


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Load and validate ``params.yaml``. Raises :class:`ConfigError` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run talkgs from the repository root (where params.yaml is).")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_params(data, str(path))


def parse_params(data: object, source: str = "params.yaml") -> Params:
    """Validate already-parsed ``params.yaml`` data (e.g. an edit before it is written); errors
    read ``"<source>: <key path>: ..."`` with the key path as written in the file."""
    try:
        return validate(from_dict(Params, data, "params"), source)
    except ConfigError as e:
        msg = str(e)
        if msg.startswith(f"{source}:"):
            raise ConfigError(msg) from None
        raise ConfigError(f"{source}: {msg.removeprefix('params.')}") from None


