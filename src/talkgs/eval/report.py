"""Metrics files, paper-style tables and the CI comparison.

Files (flat JSON objects, written atomically; DVC ``metrics``)::

    metrics/<subject>/<variant>.json                 self-driven + cross-driven + efficiency of a variant
    metrics/<subject>/<variant>@fewshot<sec>.json    the variant trained on the first <sec> s only
                                                     (self-driven on the same test split)
    metrics/<subject>/ground_truth.json              the real test frames' sync / motion measures
    metrics/tables/self_driven.md|csv                GaussianTalker Table 1 shape
    metrics/tables/cross_driven.md|csv               GaussianTalker Table 2 shape (per driving audio + mean)
    metrics/tables/few_shot.md|csv                   D3-Talker Table 2 shape (metrics x variant@seconds)
    metrics/tables/all_metrics.csv                   long format: subject, variant, metric, value

Variant names must not contain ``@``. Each metrics file holds ``subject``, ``variant``, the
``protocol`` text and keys such as ``self.psnr_face``, ``cross.<audio>.lse_c``, ``cross.lse_c``,
``train.time_s``, ``render.fps``; a metric that could not be computed is ``{"status":
"unavailable", "reason": ...}``. Tables average each metric over the subjects that have it; a
value missing for some subjects is marked, one unavailable everywhere is ``n/a`` with a numbered
footnote giving the reason(s).

:func:`compare_metrics` compares headline metrics of two runs (e.g. after ``dvc metrics diff
--json``, see :func:`metrics_from_dvc_diff`) with a direction and a tolerance per metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkgs.eval.metrics import is_unavailable, unavailable
from talkgs.io.atomic import write_json, write_text

__all__ = [
    "GROUND_TRUTH",
    "HEADLINE",
    "DEFAULT_TOLERANCES",
    "metrics_path",
    "parse_metrics_name",
    "write_metrics",
    "load_metrics",
    "build_tables",
    "self_driven_table",
    "cross_driven_table",
    "few_shot_table",
    "compare_metrics",
    "metrics_from_dvc_diff",
]

GROUND_TRUTH = "ground_truth"
_FEWSHOT = re.compile(r"^(?P<variant>[^@]+)@fewshot(?P<sec>\d+(?:\.\d+)?)$")

HEADLINE: dict[str, str] = {
    "self.psnr_face": "higher",
    "self.psnr_full": "higher",
    "self.ssim_face": "higher",
    "self.lpips_face": "lower",
    "self.fid": "lower",
    "self.lmd_mouth": "lower",
    "self.lmd68_mouth": "lower",
    "self.csim": "higher",
    "self.aue_lower": "lower",
    "self.aue_upper": "lower",
    "self.lse_c": "higher",
    "self.lse_d": "lower",
    "self.mouth_corr": "higher",
    "cross.lse_c": "higher",
    "cross.lse_d": "lower",
    "cross.mouth_env_corr": "higher",
    "cross.csim": "higher",
    "train.time_s": "lower",
    "render.fps": "higher",
}
"""Headline metrics and which direction is better."""

DEFAULT_TOLERANCES: dict[str, float | str] = {
    "self.psnr_face": 0.1,
    "self.psnr_full": 0.1,
    "self.ssim_face": 0.002,
    "self.lpips_face": 0.002,
    "self.fid": 1.0,
    "self.lmd_mouth": 0.1,
    "self.lmd68_mouth": 0.1,
    "self.csim": 0.005,
    "self.aue_lower": 0.05,
    "self.aue_upper": 0.05,
    "self.lse_c": 0.1,
    "self.lse_d": 0.1,
    "self.mouth_corr": 0.05,
    "cross.lse_c": 0.1,
    "cross.lse_d": 0.1,
    "cross.mouth_env_corr": 0.05,
    "cross.csim": 0.005,
    "train.time_s": "25%",
    "render.fps": "25%",
}
"""Worsening allowed before :func:`compare_metrics` calls it a regression: absolute, or ``"x%"`` of the old value."""


# ----------------------------------------------------------------------------------------------
# files


def metrics_path(metrics_dir: str | os.PathLike[str], subject: str, variant: str, fewshot_s: float | None = None) -> Path:
    """``metrics/<subject>/<variant>.json`` or ``.../<variant>@fewshot<sec>.json``."""
    if "@" in variant or "/" in variant or "/" in subject:
        raise ValueError(f"subject/variant names may not contain '@' or '/': {subject!r}, {variant!r}")
    return Path(metrics_dir) / subject / f"{run_name(variant, fewshot_s)}.json"


def run_name(variant: str, fewshot_s: float | None = None) -> str:
    """The name of a run's model/renders/metrics: ``variant`` or ``<variant>@fewshot<sec>``."""
    return variant if fewshot_s is None else f"{variant}@fewshot{fewshot_s:g}"


def parse_metrics_name(stem: str) -> tuple[str, float | None]:
    """``"gaussiantalker@fewshot10"`` → ``("gaussiantalker", 10.0)``; ``"static"`` → ``("static", None)``."""
    m = _FEWSHOT.match(stem)
    if m:
        return m["variant"], float(m["sec"])
    if "@" in stem:
        raise ValueError(f"metrics file {stem!r}: unknown '@' suffix (expected <variant>@fewshot<seconds>)")
    return stem, None


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return unavailable("not a number (nothing could be measured)")
    return v


def write_metrics(path: str | os.PathLike[str], *parts: Mapping[str, Any], subject: str, variant: str) -> dict[str, Any]:
    """Merge flat metric dicts (e.g. self-driven, cross-driven, efficiency) into one file, atomically.

    ``protocol`` texts of the parts are joined; any other key present twice is an error.
    NaN values become :func:`unavailable` (JSON has no NaN); ``inf`` (identical images' PSNR) is
    written as ``Infinity`` (Python's json reads it).
    """
    out: dict[str, Any] = {"subject": subject, "variant": variant}
    protocols: list[str] = []
    for part in parts:
        for k, v in part.items():
            if k == "protocol":
                protocols.append(str(v))
                continue
            if k in out:
                raise ValueError(f"write_metrics: key {k!r} given twice")
            out[k] = _json_safe(v)
    if protocols:
        out["protocol"] = " | ".join(protocols)
    write_json(path, out)
    return out


def load_metrics(metrics_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every ``<subject>/<name>.json`` under ``metrics_dir`` (``tables/`` skipped), each with
    ``_subject``, ``_variant``, ``_fewshot`` (seconds or None) and ``_path`` added."""
    root = Path(metrics_dir)
    out = []
    for p in sorted(root.glob("*/*.json")):
        if p.parent.name == "tables":
            continue
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e}); rerun the evaluate stage for it") from e
        if not isinstance(d, dict):
            raise ValueError(f"{p}: expected a JSON object of metrics")
        variant, sec = parse_metrics_name(p.stem)
        d.update(_subject=p.parent.name, _variant=variant, _fewshot=sec, _path=str(p))
        out.append(d)
    return out


# ----------------------------------------------------------------------------------------------
# tables


@dataclass(frozen=True)
class Column:
    title: str
    key: str | None
    fmt: str = "{:.3f}"
    gt: str | None = None
    """Ground-truth row: a fixed text, or ``"@<key>"`` to read a ground_truth.json key."""


SELF_COLUMNS = (
    Column("PSNR ↑", "self.psnr_face", "{:.3f}", "N/A"),
    Column("SSIM ↑", "self.ssim_face", "{:.3f}", "1"),
    Column("LPIPS ↓", "self.lpips_face", "{:.4f}", "0"),
    Column("FID ↓", "self.fid", "{:.3f}", "0"),
    Column("LMD-68 ↓", "self.lmd68_mouth", "{:.3f}", "0"),
    Column("LMD-MP ↓", "self.lmd_mouth", "{:.3f}", "0"),
    Column("AUE-L ↓", "self.aue_lower", "{:.3f}", "0"),
    Column("AUE-U ↓", "self.aue_upper", "{:.3f}", "0"),
    Column("Sync (LSE-C) ↑", "self.lse_c", "{:.3f}", "@gt.lse_c"),
    Column("LSE-D ↓", "self.lse_d", "{:.3f}", "@gt.lse_d"),
    Column("CSIM ↑", "self.csim", "{:.3f}", "1"),
    Column("Mouth corr ↑", "self.mouth_corr", "{:.3f}", "1"),
    Column("Training time ↓", "train.time_s", "time", "N/A"),
    Column("FPS ↑", "render.fps", "{:.1f}", "N/A"),
)
"""Columns of the self-driven table (GaussianTalker Table 1; LMD as the papers' 68-point mouth LMD
and beside it the MediaPipe one; AUE split into lower/upper as SyncGaussian; CSIM with dlib's
descriptor; the weight-free mouth correlation added)."""

FEWSHOT_ROWS = (
    Column("PSNR ↑", "self.psnr_face", "{:.3f}"),
    Column("SSIM ↑", "self.ssim_face", "{:.3f}"),
    Column("LPIPS ↓", "self.lpips_face", "{:.4f}"),
    Column("LMD-68 ↓", "self.lmd68_mouth", "{:.3f}"),
    Column("LMD-MP ↓", "self.lmd_mouth", "{:.3f}"),
    Column("Sync-C ↑", "self.lse_c", "{:.3f}"),
    Column("Sync-D ↓", "self.lse_d", "{:.3f}"),
    Column("Mouth corr ↑", "self.mouth_corr", "{:.3f}"),
)
"""Rows of the few-shot table (D3-Talker Table 2 + the weight-free mouth correlation)."""


def _fmt(v: float, fmt: str) -> str:
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if fmt == "time":
        if v < 120:
            return f"{v:.0f} s"
        if v < 3600:
            return f"{v / 60:.0f} min"
        return f"{v / 3600:.1f} h"
    return fmt.format(v)


class _Notes:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def ref(self, reason: str) -> int:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return self.reasons.index(reason) + 1


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def _cell(records: Sequence[Mapping[str, Any]], key: str, fmt: str, notes: _Notes) -> tuple[str, float | str]:
    """Markdown text and CSV value of a metric averaged over ``records`` (subjects)."""
    vals = [r.get(key) for r in records]
    nums = [float(v) for v in vals if _numeric(v)]
    reasons = sorted({v["reason"] for v in vals if is_unavailable(v)})
    absent = sum(1 for v in vals if v is None)
    if not nums:
        if reasons:
            refs = ",".join(str(notes.ref(r)) for r in reasons)
            return f"n/a [{refs}]", "n/a"
        return "–", ""
    mean = sum(nums) / len(nums)
    text = _fmt(mean, fmt)
    if len(nums) < len(vals):
        why = reasons or [f"not measured for {absent} subject(s)"]
        refs = ",".join(str(notes.ref(r)) for r in why)
        text += f" ({len(nums)}/{len(vals)} subj.) [{refs}]"
    return text, round(mean, 6)


def _markdown(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: _Notes, caption: str) -> str:
    out = [f"### {title}", "", caption, "", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    if notes.reasons:
        out += ["", "n/a: not computed here, and why:", ""]
        out += [f"[{i}] {r}" for i, r in enumerate(notes.reasons, 1)]
    return "\n".join(out) + "\n"


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _group(records: Sequence[dict[str, Any]], variants: Sequence[str] | None) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["_variant"], []).append(r)
    order = [v for v in (variants or []) if v in by] + sorted(v for v in by if v not in (variants or []))
    return {v: by[v] for v in order}


def self_driven_table(records: Sequence[dict[str, Any]], variants: Sequence[str] | None = None) -> tuple[str, str]:
    """``(markdown, csv)`` of the self-driven table: rows = ground truth + variants (mean over subjects)."""
    gts = [r for r in records if r["_variant"] == GROUND_TRUTH and r["_fewshot"] is None]
    runs = [r for r in records if r["_variant"] != GROUND_TRUTH and r["_fewshot"] is None and any(k.startswith("self.") for k in r)]
    notes = _Notes()
    header = ["Method", *[c.title for c in SELF_COLUMNS], "Subjects"]
    md_rows, csv_rows = [], []
    if gts:
        md, cv = ["Ground Truth"], ["Ground Truth"]
        for c in SELF_COLUMNS:
            if c.gt and c.gt.startswith("@"):
                t, v = _cell(gts, c.gt[1:], c.fmt, notes)
            else:
                t = v = c.gt or "–"
            md.append(t)
            cv.append(v)
        md_rows.append([*md, str(len(gts))])
        csv_rows.append([*cv, len(gts)])
    for variant, recs in _group(runs, variants).items():
        cells = [_cell(recs, c.key or "", c.fmt, notes) for c in SELF_COLUMNS]
        md_rows.append([variant, *[t for t, _ in cells], str(len(recs))])
        csv_rows.append([variant, *[v for _, v in cells], len(recs)])
    subjects = sorted({r["_subject"] for r in runs})
    caption = (
        f"Self-driven (test split), mean over subjects: {', '.join(subjects) or 'none'}. PSNR/SSIM/LPIPS on the face crop; "
        "LMD-68: dlib 68-point mouth points (as the papers), LMD-MP: MediaPipe lip points, both in pixels at the evaluated "
        "resolution; AUE from landmark AU proxies (not OpenFace); Sync = SyncNet LSE-C; CSIM: cosine of dlib face descriptors "
        "(not the papers' embedding network, so not on their scale). "
        "Protocol: see `protocol` in each metrics file."
    )
    return _markdown("Self-driven", header, md_rows, notes, caption), _csv(header, csv_rows)


def cross_driven_table(records: Sequence[dict[str, Any]], variants: Sequence[str] | None = None) -> tuple[str, str]:
    """``(markdown, csv)`` of the cross-driven table: per driving audio Sync (LSE-C) / LSE-D / mouth-envelope
    correlation, then the mean over audios and the mouth motion; a ground-truth reference row (own audio)."""
    runs = [r for r in records if r["_variant"] != GROUND_TRUTH and r["_fewshot"] is None and any(k.startswith("cross.") for k in r)]
    audios = sorted({m.group(1) for r in runs for k in r if (m := re.match(r"^cross\.([^.]+)\.lse_c$", k))})
    cols: list[Column] = []
    for a in audios:
        cols += [Column(f"{a} Sync ↑", f"cross.{a}.lse_c"), Column(f"{a} LSE-D ↓", f"cross.{a}.lse_d"), Column(f"{a} Corr ↑", f"cross.{a}.mouth_env_corr"),
                 Column(f"{a} CSIM ↑", f"cross.{a}.csim")]  # fmt: skip
    cols += [Column("Mean Sync ↑", "cross.lse_c"), Column("Mean LSE-D ↓", "cross.lse_d"), Column("Mean Corr ↑", "cross.mouth_env_corr"),
             Column("Mean CSIM ↑", "cross.csim"), Column("Mouth std", "cross.mouth_open_std")]  # fmt: skip
    notes = _Notes()
    header = ["Method", *[c.title for c in cols], "Subjects"]
    md_rows, csv_rows = [], []
    gts = [r for r in records if r["_variant"] == GROUND_TRUTH and r["_fewshot"] is None]
    if gts:
        gt_keys = {"cross.lse_c": "gt.lse_c", "cross.lse_d": "gt.lse_d", "cross.mouth_env_corr": "gt.mouth_env_corr", "cross.mouth_open_std": "gt.mouth_open_std",
                   "cross.csim": "gt.csim_ref"}  # fmt: skip
        md, cv = ["Ground Truth (own audio)"], ["Ground Truth (own audio)"]
        for c in cols:
            if c.key in gt_keys:
                t, v = _cell(gts, gt_keys[c.key], c.fmt, notes)
            else:
                t, v = "–", ""
            md.append(t)
            cv.append(v)
        md_rows.append([*md, str(len(gts))])
        csv_rows.append([*cv, len(gts)])
    for variant, recs in _group(runs, variants).items():
        cells = [_cell(recs, c.key or "", c.fmt, notes) for c in cols]
        md_rows.append([variant, *[t for t, _ in cells], str(len(recs))])
        csv_rows.append([variant, *[v for _, v in cells], len(recs)])
    caption = (
        f"Cross-driven (foreign audios: {', '.join(audios) or 'none'}), mean over subjects. Sync = SyncNet LSE-C; "
        "Corr = rendered mouth opening vs the driving speech envelope (max over ±3 frames); CSIM = cosine of the render's dlib "
        "face descriptors vs the mean descriptor of the subject's training frames (ground truth: its real test frames); "
        "Mouth std = amount of mouth motion."
    )
    return _markdown("Cross-driven", header, md_rows, notes, caption), _csv(header, csv_rows)


def few_shot_table(records: Sequence[dict[str, Any]], variants: Sequence[str] | None = None) -> tuple[str, str]:
    """``(markdown, csv)`` of the few-shot table (D3-Talker Table 2): rows = metrics, columns =
    ``variant @ seconds`` from ``<variant>@fewshot<sec>.json`` files (mean over subjects), then
    ``variant @all``: the same variant trained on the whole training split of the same subjects
    (``<variant>.json``), the reference the budgets converge to."""
    runs = [r for r in records if r["_fewshot"] is not None]
    full = [r for r in records if r["_fewshot"] is None and r["_variant"] != GROUND_TRUTH]
    notes = _Notes()
    groups: list[tuple[str, list[dict[str, Any]]]] = []
    for variant, recs in _group(runs, variants).items():
        for sec in sorted({r["_fewshot"] for r in recs}):
            groups.append((f"{variant} @{sec:g}s", [r for r in recs if r["_fewshot"] == sec]))
        subjects = {r["_subject"] for r in recs}
        ref = [r for r in full if r["_variant"] == variant and r["_subject"] in subjects]
        if ref:
            groups.append((f"{variant} @all", ref))
    header = ["Metric", *[name for name, _ in groups]]
    md_rows, csv_rows = [], []
    for c in FEWSHOT_ROWS:
        cells = [_cell(recs, c.key or "", c.fmt, notes) for _, recs in groups]
        md_rows.append([c.title, *[t for t, _ in cells]])
        csv_rows.append([c.title, *[v for _, v in cells]])
    counts = [sorted(r["_subject"] for r in recs if _numeric(r.get("self.psnr_face"))) for _, recs in groups]
    md_rows.append(["Subjects", *[str(len(c)) for c in counts]])
    csv_rows.append(["Subjects", *[len(c) for c in counts]])
    subj = sorted({r["_subject"] for r in runs})
    # the means above cover different subjects where a clip is too short for a budget: per subject too
    psnr = FEWSHOT_ROWS[0]
    for name in subj if len(subj) > 1 else []:
        cells = [_cell([r for r in recs if r["_subject"] == name], psnr.key or "", psnr.fmt, notes) for _, recs in groups]
        md_rows.append([f"{psnr.title} {name}", *[t for t, _ in cells]])
        csv_rows.append([f"{psnr.title} {name}", *[v for _, v in cells]])
    caption = (
        f"Self-driven with the first N seconds of training video (same test split; `@all`: the whole training split), "
        f"mean over the subjects whose clip is long enough for N (Subjects row) of: {', '.join(subj) or 'none'}"
        + ("; the last rows give PSNR per subject." if len(subj) > 1 else ".")
    )
    return _markdown("Few-shot", header, md_rows, notes, caption), _csv(header, csv_rows)


def _all_metrics_csv(records: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        name = r["_variant"] + ("" if r["_fewshot"] is None else f"@fewshot{r['_fewshot']:g}")
        for k, v in r.items():
            if k.startswith("_") or k in ("subject", "variant", "protocol"):
                continue
            if _numeric(v):
                rows.append([r["_subject"], name, k, v, ""])
            elif is_unavailable(v):
                rows.append([r["_subject"], name, k, "n/a", v["reason"]])
            elif isinstance(v, str):
                rows.append([r["_subject"], name, k, v, ""])
    return _csv(["subject", "variant", "metric", "value", "reason"], rows)


def build_tables(
    metrics_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    variants: Sequence[str] | None = None,
    subjects: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write ``self_driven``, ``cross_driven``, ``few_shot`` (``.md`` + ``.csv``) and
    ``all_metrics.csv`` into ``out_dir`` from the metrics files under ``metrics_dir``, atomically.

    ``variants``: row order (others follow alphabetically). ``subjects``: only these subjects'
    files (the enabled ones: a disabled subject's metrics stay on disk but leave the tables).
    Returns name → path.
    """
    records = load_metrics(metrics_dir)
    if subjects is not None:
        keep = set(subjects)
        records = [r for r in records if r["_subject"] in keep]
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for name, fn in (("self_driven", self_driven_table), ("cross_driven", cross_driven_table), ("few_shot", few_shot_table)):
        md, cv = fn(records, variants)
        for ext, text in (("md", md), ("csv", cv)):
            p = out / f"{name}.{ext}"
            write_text(p, text)
            written[f"{name}.{ext}"] = p
    p = out / "all_metrics.csv"
    write_text(p, _all_metrics_csv(records))
    written["all_metrics.csv"] = p
    return written


# ----------------------------------------------------------------------------------------------
# CI comparison


def _metric_name(key: str) -> str:
    """``"metrics/may/gt.json:self.psnr_face"`` → ``"self.psnr_face"``."""
    return key.rsplit(":", 1)[-1]


def _tolerance(tol: float | str, old: float) -> float:
    if isinstance(tol, str):
        t = tol.strip()
        if t.endswith("%"):
            return abs(old) * float(t[:-1]) / 100.0
        return float(t)
    return float(tol)


def compare_metrics(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    tolerances: Mapping[str, float | str] | None = None,
    *,
    directions: Mapping[str, str] | None = None,
    missing_is_regression: bool = True,
) -> tuple[str, list[str]]:
    """Compare the headline metrics of two runs.

    Args:
        old, new: flat metrics (``{"self.psnr_face": 31.2, ...}``), or keys prefixed by a file
            (``"metrics/may/gt.json:self.psnr_face"``, as :func:`metrics_from_dvc_diff` gives).
        tolerances: allowed worsening per metric name (absolute, or ``"x%"`` of the old value);
            defaults: :data:`DEFAULT_TOLERANCES`.
        directions: ``"higher"``/``"lower"`` is better per metric name (default :data:`HEADLINE`);
            only these metrics are compared.
        missing_is_regression: a metric numeric before and unavailable/absent now is a regression.

    Returns:
        ``(markdown table, regressions)``: one table row per compared metric; ``regressions`` lists
        a sentence per metric that got worse by more than its tolerance (empty: pass).
    """
    dirs = dict(HEADLINE if directions is None else directions)
    tols = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    keys = sorted({k for k in (*old, *new) if _metric_name(k) in dirs})
    rows, regressions = [], []
    for k in keys:
        name = _metric_name(k)
        better = dirs[name]
        if better not in ("higher", "lower"):
            raise ValueError(f"compare_metrics: direction of {name} must be 'higher' or 'lower', found {better!r}")
        o, n = old.get(k), new.get(k)
        tol_spec = tols.get(name, 0.0)
        show = lambda v: "–" if v is None else ("n/a" if is_unavailable(v) else (f"{v:.4g}" if _numeric(v) else str(v)))  # noqa: E731
        if not _numeric(o) or not _numeric(n):
            if _numeric(o) and not _numeric(n):
                status = "REGRESSION (lost)" if missing_is_regression else "lost"
                if missing_is_regression:
                    why = n["reason"] if is_unavailable(n) else "absent"
                    regressions.append(f"{k}: was {o:.4g}, now not computed ({why})")
            elif _numeric(n):
                status = "new"
            else:
                status = "n/a"
            rows.append([k, show(o), show(n), "", "↑" if better == "higher" else "↓", str(tol_spec), status])
            continue
        o, n = float(o), float(n)
        if math.isinf(o) or math.isinf(n):
            delta = 0.0 if o == n else (n - o)
        else:
            delta = n - o
        worse = -delta if better == "higher" else delta
        tol = _tolerance(tol_spec, o)
        if worse > tol:
            status = "REGRESSION"
            regressions.append(f"{k}: {o:.4g} → {n:.4g} ({'+' if delta >= 0 else ''}{delta:.4g}; {better} is better, tolerance {tol_spec})")
        elif worse < 0 and -worse > tol:
            status = "improved"
        else:
            status = "ok"
        rows.append([k, f"{o:.4g}", f"{n:.4g}", f"{'+' if delta >= 0 else ''}{delta:.4g}", "↑" if better == "higher" else "↓", str(tol_spec), status])
    header = ["metric", "old", "new", "Δ", "better", "tolerance", "status"]
    md = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    if not rows:
        md.append("| (no headline metric in either run) |" + " |" * (len(header) - 1))
    return "\n".join(md) + "\n", regressions


def metrics_from_dvc_diff(diff: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``dvc metrics diff --json`` output (``{file: {metric: {"old", "new", "diff"}}}``) → flat
    ``(old, new)`` keyed ``"<file>:<metric>"``. DVC splits our unavailable dicts into
    ``<metric>.status`` / ``<metric>.reason``; they are put back together."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for path, metrics in diff.items():
        if not isinstance(metrics, Mapping):
            continue
        for metric, change in metrics.items():
            if not isinstance(change, Mapping):
                continue
            for side, dest in (("old", old), ("new", new)):
                if side not in change:
                    continue
                v = change[side]
                m = re.match(r"^(.*)\.(status|reason)$", metric)
                if m:
                    if v is not None:
                        entry = dest.setdefault(f"{path}:{m.group(1)}", {})
                        if isinstance(entry, dict):
                            entry[m.group(2)] = v
                    continue
                if v is not None:
                    dest[f"{path}:{metric}"] = v
    return old, new
