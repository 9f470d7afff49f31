"""The training loop: every variant of params.yaml trains a few steps; resume = uninterrupted;
outputs (checkpoint, config.yaml, curves.csv); config round trip; schedules."""

from __future__ import annotations

import talkgs  # noqa: F401
import csv
import dataclasses

import pytest
import torch
import yaml

from conftest import repo_train_params, repo_variants, tiny_assets
from talkgs.config import ConfigError, from_dict, to_dict
from talkgs.train.checkpoint import CheckpointError, load_checkpoint
from talkgs.train.loop import train
from talkgs.train.params import LRParams, TrainParams, VariantParams
from talkgs.train.schedule import locate, lr_at


def _variant(name: str, preset: str | None = None) -> VariantParams:
    tp = repo_train_params()
    return tp.variants[name] if preset is None else dataclasses.replace(tp, preset=preset).variant(name)


@pytest.mark.parametrize("name", repo_variants())
def test_every_variant_trains_a_few_steps(name, tiny_subject, tiny_variant, tmp_path) -> None:
    """Every variant params.yaml defines (a new entry is tested the moment it exists)."""
    v = tiny_variant(name)
    seen: list[dict] = []
    assets = tiny_assets(v, tmp_path / "assets")  # e.g. the sync expert of syncgaussian
    res = train(tiny_subject, tmp_path, v, progress=False, on_step=lambda s, l: seen.append(l), assets=assets)
    assert res["finished"] and res["steps"] == v.total_iterations == len(seen) >= 4
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in seen)
    for f in ("checkpoint.pt", "config.yaml", "curves.csv"):
        assert (tmp_path / f).is_file(), f
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["finished"] and ck["step"] == v.total_iterations
    assert sum(ck["model_meta"]["sizes"].values()) == res["gaussians"]
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert from_dict(VariantParams, cfg["variant"]) == v  # the resolved config round-trips
    assert from_dict(VariantParams, yaml.safe_load(yaml.safe_dump(to_dict(v)))) == v
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert rows and {"step", "phase", "loss", "gaussians", "loss_l1"} <= set(rows[0]) and not {"it_s", "elapsed_s"} & set(rows[0])
    phases = {p.name for p in v.phases}
    assert {r["phase"] for r in rows} <= phases
    weighted = {n for p in v.phases for n, w in p.losses.items() if w > 0}
    assert weighted <= set().union(*(set(r) for r in seen)), "every weighted loss was computed"


def test_deformation_phase_trains_the_deformer_only_there(tiny_subject, tiny_variant, tmp_path) -> None:
    v = tiny_variant("gaussiantalker")
    train(tiny_subject, tmp_path / "init", v, progress=False, until_step=0)
    train(tiny_subject, tmp_path / "a", v, progress=False, until_step=v.phases[0].iterations)
    m0 = load_checkpoint(tmp_path / "init" / "checkpoint.pt")["model"]
    m1 = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    deformer = [k for k in m0 if k.startswith(("head.deformer.", "head.tokens."))]
    assert deformer and all(torch.equal(m0[k], m1[k]) for k in deformer)  # frozen in the canonical phase
    assert not torch.equal(m0["head.canonical.encoder.planes.0"], m1["head.canonical.encoder.planes.0"])
    train(tiny_subject, tmp_path / "a", v, progress=False)
    m2 = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    assert any(not torch.equal(m1[k], m2[k]) for k in deformer if k.startswith("head.deformer.heads."))
    assert torch.equal(m1["head.gaussians.params.means"], m2["head.gaussians.params.means"])  # positions frozen there


def test_killed_run_resumes_to_the_same_result(tiny_subject, tiny_variant, tmp_path) -> None:
    """Stopped twice (inside the densifying canonical phase and inside the deformation phase),
    resumed from its checkpoints: bitwise the same model as one uninterrupted run."""
    v = tiny_variant("gaussiantalker", steps_per_phase=4, checkpoint_every=100)
    full = train(tiny_subject, tmp_path / "full", v, progress=False, seed=3)
    a = tmp_path / "resumed"
    r1 = train(tiny_subject, a, v, progress=False, seed=3, until_step=3)
    assert not r1["finished"] and load_checkpoint(a / "checkpoint.pt")["step"] == 3
    train(tiny_subject, a, v, progress=False, seed=3, until_step=6)
    r3 = train(tiny_subject, a, v, progress=False, seed=3)
    assert r3["finished"] and r3["steps"] == full["steps"] == 8
    m_full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    m_res = load_checkpoint(a / "checkpoint.pt")["model"]
    assert m_full.keys() == m_res.keys()
    for k in m_full:
        assert torch.equal(m_full[k], m_res[k]), k
    # a finished run returns at once; another seed starts over
    again = train(tiny_subject, a, v, progress=False, seed=3)
    assert again["steps"] == 8 and again["wall_s_this_run"] < full["wall_s_this_run"] + 5
    for f in ("checkpoint.pt", "curves.csv", "config.yaml"):  # no timings in them: the same bytes
        assert (tmp_path / "full" / f).read_bytes() == (a / f).read_bytes(), f


def test_timings_go_to_their_own_file(tiny_subject, tiny_variant, tmp_path) -> None:
    """The training time is in the timings json, not in the outputs: two runs write identical
    outputs; a resumed finished run keeps the recorded time (or says why it has none)."""
    import json

    v = tiny_variant("gaussiantalker", steps_per_phase=3)
    t1, t2 = tmp_path / "t1.json", tmp_path / "t2.json"
    train(tiny_subject, tmp_path / "a", v, progress=False, timings=t1)
    train(tiny_subject, tmp_path / "b", v, progress=False, timings=t2)
    for f in ("checkpoint.pt", "curves.csv", "config.yaml"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    ck = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert ck["timing"] is None and "elapsed_s" not in ck and all("it_s" not in r for r in ck["curves"])
    rec = json.loads(t1.read_text())
    assert rec["elapsed_s"] > 0 and rec["steps"] == v.total_iterations and rec["finished"]
    assert set(rec["phases"]) == {p.name for p in v.phases} and sum(p["steps"] for p in rec["phases"].values()) == rec["steps"]
    before = t1.read_text()
    train(tiny_subject, tmp_path / "a", v, progress=False, timings=t1)  # finished: nothing to train
    assert t1.read_text() == before, "the time of the run that trained it is kept"
    t3 = tmp_path / "t3.json"
    train(tiny_subject, tmp_path / "a", v, progress=False, timings=t3)
    rec3 = json.loads(t3.read_text())
    assert rec3["elapsed_s"] is None and "had finished before this run" in rec3["reason"]


def test_checkpoint_is_versioned_and_checked(tmp_path) -> None:
    from talkgs.train.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "c.pt", {"step": 1})
    assert load_checkpoint(tmp_path / "c.pt")["format_version"] == 2
    torch.save({"format_version": 99, "kind": "talkgs.train"}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="Train the model first"):
        load_checkpoint(tmp_path / "missing.pt")


def test_params_yaml_variants_and_presets_parse_strictly() -> None:
    tp = repo_train_params()
    assert {"static", "gaussiantalker", "gaussiantalker_lite"} <= set(tp.variants) and "cpu" in tp.presets
    assert TrainParams().variants == {} and TrainParams().presets == {}, "variants and presets live in params.yaml only"
    gt = tp.variants["gaussiantalker"]
    assert gt == dataclasses.replace(VariantParams(), description=gt.description)  # defaults = GaussianTalker
    assert [p.name for p in gt.phases] == ["canonical", "deformation"] and gt.total_iterations == 16000
    assert gt.model.deformer.layers == 2 and tp.variants["gaussiantalker_lite"].model.deformer.layers == 1
    assert tp.variants["static"].model.deformer.name == "identity"
    assert gt.phases[1].losses == {"l1": 0.8, "dssim": 0.2, "lpips": 0.01, "lip": 0.8}
    cpu = dataclasses.replace(tp, preset="cpu").variant("gaussiantalker")
    assert cpu.render.resolution == 128 and all(p.losses.get("lpips", 0) == 0 for p in cpu.phases)
    # the cpu preset: 1/8 of the steps, 3/8 for the deformation phase; the static floor as long as both
    assert [p.iterations for p in cpu.phases] == [1000, 3000]
    static_cpu = dataclasses.replace(tp, preset="cpu").variant("static")
    assert [p.iterations for p in static_cpu.phases] == [cpu.total_iterations] == [4000]
    assert static_cpu.phases[0].densify.refine_stop == 2 * cpu.phases[0].densify.refine_stop == 1500
    with pytest.raises(ConfigError, match=r"phase_iteration_scale\.deformation: 0 is out of range: use a number in \(0, 1000\]"):
        from_dict(TrainParams, {"variants": {"v": {}}, "presets": {"x": {"phase_iteration_scale": {"deformation": 0}}}})
    with pytest.raises(ConfigError, match="Did you mean 'deformation'"):
        from_dict(TrainParams, {"variants": {"v": {}}, "presets": {"x": {"phase_iteration_scale": {"deformaton": 2.0}}}})
    # YAML round trip of everything
    assert from_dict(TrainParams, yaml.safe_load(yaml.safe_dump(to_dict(tp)))) == tp
    with pytest.raises(ConfigError, match="Did you mean 'deformer'"):
        from_dict(TrainParams, {"variants": {"x": {"model": {"deformr": {}}}}})
    with pytest.raises(ConfigError, match="no parameter group 'triplane'"):
        from_dict(TrainParams, {"variants": {"x": {"phases": [{"lr": {"triplane": {"start": 1.0}}}]}}})
    with pytest.raises(ConfigError, match="preset"):
        from_dict(TrainParams, {"preset": "gpu"})
    with pytest.raises(KeyError, match="gaussiantalker"):
        tp.variant("gaussiantalk")


def test_schedule() -> None:
    v = _variant("gaussiantalker")
    assert locate(v.phases, 0) == (0, 0) and locate(v.phases, 8000) == (1, 0) and locate(v.phases, 15999) == (1, 7999)
    with pytest.raises(ValueError):
        locate(v.phases, 16000)
    lr = LRParams(start=1e-2, end=1e-4)
    assert lr_at(lr, 0, 101) == pytest.approx(1e-2) and lr_at(lr, 100, 101) == pytest.approx(1e-4)
    assert lr_at(lr, 50, 101) == pytest.approx(1e-3)
    assert lr_at(LRParams(start=1e-3, warmup=10), 4, 100) == pytest.approx(5e-4)
    assert lr_at(LRParams(start=1e-3, relative_to_extent=True), 0, 10, extent=2.0) == pytest.approx(2e-3)


def test_densification_grows_to_the_cap(tiny_subject, tiny_variant, tmp_path) -> None:
    v = tiny_variant("static", init_points=100, max_gaussians=130, iteration_scale=8 / 16000)
    ph = v.phases[0]
    v = dataclasses.replace(v, phases=(dataclasses.replace(ph, densify=dataclasses.replace(ph.densify, grow_grad2d=0.0, prune_opa=0.0)),))
    res = train(tiny_subject, tmp_path, v, progress=False)
    assert res["gaussians"] == 130


def test_render_resolution_scales_the_dilation_and_densify_needs_positions() -> None:
    from talkgs.train.loop import render_eps2d
    from talkgs.train.params import DensifyParams, PhaseParams

    v = _variant("gaussiantalker", "cpu")
    assert render_eps2d(v, 128, 256) == pytest.approx(4 * v.render.eps2d)
    assert render_eps2d(v, 128, 128) == pytest.approx(v.render.eps2d)
    with pytest.raises(ValueError, match="densification needs trainable positions"):
        PhaseParams(lr={"spatial": LRParams()}, densify=DensifyParams(enabled=True))
    with pytest.raises(ValueError, match="densification needs renders"):
        PhaseParams(lr={"means": LRParams()}, densify=DensifyParams(enabled=True), render=False)


def test_few_shot_trains_on_the_first_seconds_only(tiny_subject, tiny_variant, tmp_path, monkeypatch) -> None:
    import talkgs.train.loop as loop
    from talkgs.train.data import FewShotUnavailable

    seen: list[int] = []
    real = loop.make_batch
    monkeypatch.setattr(loop, "make_batch", lambda ds, picks, *a, **kw: (seen.extend(i for _, i in picks), real(ds, picks, *a, **kw))[1])
    v = tiny_variant("gaussiantalker")
    res = train(tiny_subject, tmp_path / "fs", v, progress=False, train_seconds=0.2)  # 5 frames at 25 fps
    assert res["finished"] and res["train_frames"] == 5
    assert set(seen) == set(range(5)), "only the first 0.2 s are drawn, every one of them"
    cfg = yaml.safe_load((tmp_path / "fs" / "config.yaml").read_text())
    assert cfg["data"]["n_train"] == 5 and cfg["data"]["train_seconds"] == 0.2
    # a full run's checkpoint in that folder is not resumed as the few-shot run (and vice versa)
    train(tiny_subject, tmp_path / "fs", v, progress=False)
    assert load_checkpoint(tmp_path / "fs" / "checkpoint.pt")["data"]["n_train"] == len(tiny_subject.train_idx)
    with pytest.raises(FewShotUnavailable, match="shorter than the 10 s few-shot budget"):
        train(tiny_subject, tmp_path / "long", v, progress=False, train_seconds=10)
    assert not (tmp_path / "long").exists(), "nothing written for an impossible budget"
