"""Strict typed config: params.yaml <-> dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from talkgs.config import ConfigError, Params, dump_yaml, from_dict, load_params

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    steps: int = 10


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: list[int] = field(default_factory=list)
    maybe: int | None = None


def test_defaults_fill_missing_keys():
    o = from_dict(Outer, {"inner": {"steps": 3}})
    assert o.inner == Inner(rate=1.0, steps=3) and o.name == "x"


def test_unknown_key_names_closest_valid_key():
    with pytest.raises(ConfigError, match=r"params\.inner: unknown key 'stpes'.*Did you mean 'steps'"):
        from_dict(Outer, {"inner": {"stpes": 3}})


def test_wrong_type_names_path_and_types():
    with pytest.raises(ConfigError, match=r"params\.inner\.steps: expected an integer, found 'ten'"):
        from_dict(Outer, {"inner": {"steps": "ten"}})
    with pytest.raises(ConfigError, match=r"params\.sizes\[1\]: expected an integer"):
        from_dict(Outer, {"sizes": [1, 2.5]})
    with pytest.raises(ConfigError, match=r"expected true/false|expected an integer"):
        from_dict(Outer, {"inner": {"steps": True}})


def test_int_accepted_as_float_and_optional():
    o = from_dict(Outer, {"inner": {"rate": 2}, "maybe": None})
    assert o.inner.rate == 2.0 and isinstance(o.inner.rate, float) and o.maybe is None


def test_repo_params_yaml_loads_and_round_trips(tmp_path):
    p = load_params(REPO / "params.yaml")
    assert "demo" in p.subjects
    assert p.extract_for("demo").resolution == p.subjects["demo"].resolution
    # the resolved dump loads back to the same params
    f = tmp_path / "params.yaml"
    f.write_text(dump_yaml(p))
    assert load_params(f) == p


def test_shared_clips_are_opt_in():
    p = load_params(REPO / "params.yaml")
    assert list(p.subjects) == ["demo"], "only the demo is built by default"
    assert len(p.catalog) == 8
    assert all(s.video.startswith("../shared/data/videos/") for s in p.catalog.values())


def test_unknown_subject_error_points_to_enable():
    p = load_params(REPO / "params.yaml")
    with pytest.raises(ConfigError, match="talkgs subjects enable may"):
        p.subject("may")


def test_bad_subject_name_rejected(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"subjects": {"My-Clip": {"video": "a.mp4"}}}))
    with pytest.raises(ConfigError, match="lower-case letters"):
        load_params(f)


def test_error_names_the_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("extract:\n  resolutoin: 256\n")
    with pytest.raises(ConfigError, match=rf"{f}.*'resolutoin'.*Did you mean 'resolution'"):
        load_params(f)


def test_dvc_stage_params_exist_in_params_yaml():
    """Every `params:` key a DVC stage declares must exist in params.yaml (DVC needs it)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            node = params
            for part in key.split("."):
                if part.startswith("${"):
                    break  # templated (train.variants.${item.variant}): resolved per stage by DVC
                assert isinstance(node, dict) and part in node, f"stage {name} reads params key {key!r} missing from params.yaml"
                node = node[part]
    assert set(yaml.safe_load((REPO / "params.yaml").read_text())) <= {f for f in Params.__dataclass_fields__}


def test_few_shot_sweep_is_validated(tmp_path):
    f = tmp_path / "params.yaml"
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    p = load_params(REPO / "params.yaml")
    assert p.evaluate.few_shot.subjects == [] and p.evaluate.few_shot.seconds == [5, 10, 15, 20]  # off by default
    for few_shot, error in (
        ({"subjects": ["may"]}, "talkgs subjects enable may"),  # in the catalog, not enabled
        ({"subjects": ["demo"], "variants": ["gaussiantalkr"]}, "Did you mean 'gaussiantalker'"),
        ({"subjects": ["demo"], "seconds": [5.0]}, "write 5, not 5.0"),
        ({"subjects": ["demo"], "seconds": [0]}, r"few_shot\.seconds\[0\]: 0 is out of range: use a number in \(0, 3600\]"),
    ):
        base["evaluate"]["few_shot"] = few_shot
        f.write_text(yaml.safe_dump(base))
        with pytest.raises(ConfigError, match=error):
            load_params(f)
    base["evaluate"]["few_shot"] = {"subjects": ["demo"], "seconds": [2.5, 5]}
    f.write_text(yaml.safe_dump(base))
    assert load_params(f).evaluate.few_shot.seconds == [2.5, 5]
