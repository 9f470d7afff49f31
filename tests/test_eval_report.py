"""Metrics files and paper-style tables (unavailable → "n/a" + footnote), few-shot naming, the CI
comparison with directions and tolerances, and dvc metrics diff parsing."""

from __future__ import annotations

import talkgs  # noqa: F401
import csv
import io
import json
import math

import pytest

from talkgs.eval.metrics import unavailable
from talkgs.eval.report import (
    build_tables,
    compare_metrics,
    load_metrics,
    metrics_from_dvc_diff,
    metrics_path,
    parse_metrics_name,
    write_metrics,
)

NO_SYNC = "SyncNet weights not found at /x/syncnet_v2.model"
NO_LPIPS = "LPIPS needs the torchvision AlexNet weights"


def _self(psnr: float, lmd: float, lpips=None, lse=None) -> dict:
    return {
        "protocol": "self-driven: test",
        "self.psnr_face": psnr,
        "self.ssim_face": 0.9,
        "self.lpips_face": unavailable(NO_LPIPS) if lpips is None else lpips,
        "self.fid": unavailable("FID Inception weights not found"),
        "self.lmd_mouth": lmd,
        "self.lmd68_mouth": lmd + 1.0,
        "self.csim": 0.95,
        "self.aue_lower": 0.5,
        "self.aue_upper": 0.25,
        "self.lse_c": unavailable(NO_SYNC) if lse is None else lse,
        "self.lse_d": unavailable(NO_SYNC),
        "self.mouth_corr": 0.8,
    }


def _cross(c: float) -> dict:
    return {
        "protocol": "cross-driven: test",
        "cross.obama.lse_c": unavailable(NO_SYNC),
        "cross.obama.lse_d": unavailable(NO_SYNC),
        "cross.obama.mouth_env_corr": c,
        "cross.obama.csim": 0.9,
        "cross.lse_c": unavailable(NO_SYNC),
        "cross.lse_d": unavailable(NO_SYNC),
        "cross.mouth_env_corr": c,
        "cross.mouth_open_std": 0.05,
        "cross.csim": 0.9,
    }


@pytest.fixture
def metrics_dir(tmp_path):
    root = tmp_path / "metrics"
    for subj, off in (("may", 0.0), ("trump", 2.0)):
        write_metrics(metrics_path(root, subj, "static"), _self(25.0 + off, 4.0), _cross(0.1), {"train.time_s": 60.0, "render.fps": 50.0}, subject=subj, variant="static")
        write_metrics(metrics_path(root, subj, "gaussiantalker"), _self(30.0 + off, 2.0, lse=6.0 if subj == "may" else None), _cross(0.5),
                      {"train.time_s": 5400.0, "render.fps": 20.0}, subject=subj, variant="gaussiantalker")  # fmt: skip
        write_metrics(root / subj / "ground_truth.json", {"gt.lse_c": 8.0, "gt.lse_d": 6.5, "gt.mouth_env_corr": 0.7, "gt.mouth_open_std": 0.06, "gt.csim_ref": 0.98}, subject=subj, variant="ground_truth")
        for sec in (5, 10):
            write_metrics(metrics_path(root, subj, "gaussiantalker", sec), _self(27.0 + sec / 5 + off, 3.0), subject=subj, variant="gaussiantalker")
    return root


def test_metrics_file_naming() -> None:
    assert metrics_path("metrics", "may", "gaussiantalker").as_posix() == "metrics/may/gaussiantalker.json"
    assert metrics_path("metrics", "may", "gaussiantalker", 10).as_posix() == "metrics/may/gaussiantalker@fewshot10.json"
    assert parse_metrics_name("gaussiantalker@fewshot12.5") == ("gaussiantalker", 12.5)
    assert parse_metrics_name("static") == ("static", None)
    with pytest.raises(ValueError, match="fewshot"):
        parse_metrics_name("x@other")
    with pytest.raises(ValueError, match="'@'"):
        metrics_path("m", "may", "a@b")


def test_write_metrics_merges_parts_atomically(tmp_path) -> None:
    p = tmp_path / "m" / "may" / "v.json"
    d = write_metrics(p, {"protocol": "A", "self.x": 1.0, "self.y": float("nan")}, {"protocol": "B", "self.z": math.inf}, subject="may", variant="v")
    back = json.loads(p.read_text())
    assert back == d and back["protocol"] == "A | B" and back["self.z"] == math.inf
    assert back["self.y"]["status"] == "unavailable"  # JSON has no NaN
    assert not [f for f in p.parent.iterdir() if f.name.startswith(".")]  # no temp file left
    with pytest.raises(ValueError, match="given twice"):
        write_metrics(p, {"self.x": 1}, {"self.x": 2}, subject="may", variant="v")


def test_tables_cover_the_enabled_subjects_only(metrics_dir, tmp_path) -> None:
    """A disabled subject's metrics files stay on disk but leave the tables."""
    subjects = sorted({r["_subject"] for r in load_metrics(metrics_dir)})
    assert len(subjects) == 2
    both = build_tables(metrics_dir, tmp_path / "both", variants=["static", "gaussiantalker"])
    one = build_tables(metrics_dir, tmp_path / "one", variants=["static", "gaussiantalker"], subjects=subjects[:1])
    assert both["self_driven.md"].read_text() != one["self_driven.md"].read_text()
    rows = [r for r in _read_csv(one["all_metrics.csv"].read_text())[1:]]
    assert rows and {r[0] for r in rows} == {subjects[0]}


def _read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_tables_have_the_paper_shapes(metrics_dir, tmp_path) -> None:
    out = build_tables(metrics_dir, metrics_dir / "tables", variants=["static", "gaussiantalker"])
    assert set(out) == {"self_driven.md", "self_driven.csv", "cross_driven.md", "cross_driven.csv", "few_shot.md", "few_shot.csv", "all_metrics.csv"}
    assert len(load_metrics(metrics_dir)) == 2 * 5  # tables/ is not read back as metrics

    rows = _read_csv(out["self_driven.csv"].read_text())
    header = rows[0]
    assert header[:5] == ["Method", "PSNR ↑", "SSIM ↑", "LPIPS ↓", "FID ↓"] and "Training time ↓" in header and "FPS ↑" in header
    assert [r[0] for r in rows[1:]] == ["Ground Truth", "static", "gaussiantalker"]  # ground truth first, the static floor, variants
    gt, static, gtalk = rows[1], rows[2], rows[3]
    col = header.index
    assert float(static[col("PSNR ↑")]) == pytest.approx(26.0) and float(gtalk[col("PSNR ↑")]) == pytest.approx(31.0)
    assert gtalk[col("LPIPS ↓")] == "n/a" and gt[col("Sync (LSE-C) ↑")] == "8.0"
    assert float(gtalk[col("Sync (LSE-C) ↑")]) == pytest.approx(6.0)  # one subject has it
    assert header.index("LMD-68 ↓") < header.index("LMD-MP ↓") and gt[col("CSIM ↑")] == "1" and gt[col("LMD-68 ↓")] == "0"
    assert float(gtalk[col("LMD-68 ↓")]) == pytest.approx(3.0) and float(gtalk[col("CSIM ↑")]) == pytest.approx(0.95)
    md = out["self_driven.md"].read_text()
    assert "| gaussiantalker | 31.000 |" in md and "n/a [" in md and "1.5 h" in md and "(1/2 subj.)" in md
    assert NO_LPIPS in md and NO_SYNC in md  # the footnotes give the reasons

    cross = _read_csv(out["cross_driven.csv"].read_text())
    assert cross[0][:4] == ["Method", "obama Sync ↑", "obama LSE-D ↓", "obama Corr ↑"]
    assert [r[0] for r in cross[1:]] == ["Ground Truth (own audio)", "static", "gaussiantalker"]
    assert float(cross[3][3]) == pytest.approx(0.5) and cross[3][1] == "n/a"
    assert cross[0][4] == "obama CSIM ↑" and float(cross[3][4]) == pytest.approx(0.9)
    mean_csim = cross[0].index("Mean CSIM ↑")
    assert float(cross[1][mean_csim]) == pytest.approx(0.98) and float(cross[3][mean_csim]) == pytest.approx(0.9)  # ground truth: test vs training frames

    few = _read_csv(out["few_shot.csv"].read_text())
    assert few[0] == ["Metric", "gaussiantalker @5s", "gaussiantalker @10s", "gaussiantalker @all"]
    assert few[1][0] == "PSNR ↑" and float(few[1][1]) == pytest.approx(29.0) and float(few[1][2]) == pytest.approx(30.0)
    assert float(few[1][3]) == pytest.approx(31.0)  # the full-split runs of the same subjects
    assert few[-3] == ["Subjects", "2", "2", "2"]
    assert few[-2][0] == "PSNR ↑ may" and float(few[-2][1]) == pytest.approx(28.0)  # per subject
    assert few[-1][0] == "PSNR ↑ trump" and float(few[-1][3]) == pytest.approx(32.0)
    assert "static" not in out["few_shot.md"].read_text()

    long = _read_csv(out["all_metrics.csv"].read_text())
    assert long[0] == ["subject", "variant", "metric", "value", "reason"]
    assert ["may", "gaussiantalker@fewshot5", "self.psnr_face", "28.0", ""] in long
    assert ["may", "static", "self.csim", "0.95", ""] in long and ["may", "ground_truth", "gt.csim_ref", "0.98", ""] in long
    assert any(r[3] == "n/a" and r[4] == NO_SYNC for r in long)


def test_compare_metrics_directions_and_tolerances() -> None:
    old = {"self.psnr_face": 30.0, "self.lpips_face": 0.05, "self.lmd_mouth": 3.0, "render.fps": 100.0, "self.lse_c": 5.0, "self.fid": 20.0, "other.thing": 1.0}
    new = {"self.psnr_face": 29.5, "self.lpips_face": 0.0505, "self.lmd_mouth": 2.5, "render.fps": 80.0, "self.lse_c": unavailable(NO_SYNC), "self.mouth_corr": 0.7}
    md, reg = compare_metrics(old, new, {"self.lpips_face": 0.001})
    assert any(r.startswith("self.psnr_face: 30 → 29.5") for r in reg)
    assert any(r.startswith("self.lse_c: was 5") and NO_SYNC in r for r in reg)  # lost metric
    assert any(r.startswith("self.fid: was 20") and "absent" in r for r in reg)
    assert not any("lpips" in r or "lmd" in r or "render.fps" in r for r in reg)  # within tolerance / improved / within 25%
    assert "| self.lmd_mouth | 3 | 2.5 | -0.5 | ↓ | 0.1 | improved |" in md
    assert "| self.mouth_corr | – | 0.7 |" in md and "other.thing" not in md
    _, reg = compare_metrics({"render.fps": 100.0}, {"render.fps": 70.0})
    assert reg and "render.fps" in reg[0]
    _, reg = compare_metrics(old, new, missing_is_regression=False, tolerances={"self.psnr_face": 1.0})
    assert reg == []


def test_dvc_metrics_diff_is_flattened() -> None:
    diff = {
        "metrics/may/gt.json": {
            "self.psnr_face": {"old": 30.0, "new": 29.0, "diff": -1.0},
            "self.lse_c.status": {"old": None, "new": "unavailable"},
            "self.lse_c.reason": {"old": None, "new": NO_SYNC},
        }
    }
    old, new = metrics_from_dvc_diff(diff)
    assert old == {"metrics/may/gt.json:self.psnr_face": 30.0}
    assert new["metrics/may/gt.json:self.lse_c"] == unavailable(NO_SYNC)
    md, reg = compare_metrics(old, new)
    assert len(reg) == 1 and reg[0].startswith("metrics/may/gt.json:self.psnr_face")


def test_few_shot_budget_longer_than_a_clip_is_unavailable_for_it(metrics_dir) -> None:
    from talkgs.eval.report import FEWSHOT_ROWS, few_shot_table

    why = "trump: the training split is 9.1 s (227 frames at 25 fps), shorter than the 20 s few-shot budget"
    write_metrics(metrics_path(metrics_dir, "may", "gaussiantalker", 20), _self(33.0, 2.5), subject="may", variant="gaussiantalker")
    write_metrics(metrics_path(metrics_dir, "trump", "gaussiantalker", 20), {c.key: unavailable(f"not trained: {why}") for c in FEWSHOT_ROWS},
                  {"fewshot.seconds": 20.0}, subject="trump", variant="gaussiantalker")  # fmt: skip
    md, cv = few_shot_table(load_metrics(metrics_dir), ["static", "gaussiantalker"])
    rows = _read_csv(cv)
    col = rows[0].index("gaussiantalker @20s")
    subjects = [r for r in rows if r[0] == "Subjects"][0]
    assert float(rows[1][col]) == pytest.approx(33.0) and subjects[col] == "1"  # may only
    assert [r[col] for r in rows if r[0] == "PSNR ↑ trump"] == ["n/a"]
    assert "(1/2 subj.)" in md and why in md  # the footnote says why trump is missing
