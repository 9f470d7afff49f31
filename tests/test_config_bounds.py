"""Bounds on numeric settings: every one has a range; an out-of-range value is an exit-2 error
naming the key (or the option) and the valid range, before anything runs or is written."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
import yaml

from talkgs.cli import main
from talkgs.config import ConfigError, Params, load_params
from talkgs.configlib import FRAME_PIXELS, PIXELS, Range, from_dict

REPO = Path(__file__).resolve().parents[1]


def _numeric(tp) -> bool:  # noqa: ANN001
    if get_origin(tp) in (typing.Union, types.UnionType):
        return all(_numeric(a) for a in get_args(tp) if a is not type(None))
    return tp in (int, float)


def _unbounded(cls: type, seen: set[type], out: list[str]) -> None:
    """Numeric fields (also inside lists, tuples and dict values) of ``cls`` and of the
    dataclasses it nests that carry no :class:`Range`."""
    if cls in seen:
        return
    seen.add(cls)
    hints = typing.get_type_hints(cls, include_extras=True)

    def visit(tp, path: str) -> None:  # noqa: ANN001
        if get_origin(tp) is Annotated:
            base, *extras = get_args(tp)
            if _numeric(base) and any(isinstance(e, Range) for e in extras):
                return
            return visit(base, path)
        if _numeric(tp):
            out.append(f"{cls.__module__}.{cls.__qualname__}.{path}")
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            _unbounded(tp, seen, out)
        else:
            for a in get_args(tp):
                if a is not type(None) and a is not Ellipsis:
                    visit(a, f"{path}[]")

    for f in dataclasses.fields(cls):
        visit(hints[f.name], f.name)


def test_every_numeric_setting_has_bounds():
    from talkgs.models import registry

    registry._discover()
    seen: set[type] = set()
    missing: list[str] = []
    _unbounded(Params, seen, missing)
    for kind in registry.KINDS:
        for name in registry.names(kind):
            cfg = registry.config_class(kind, name)
            if cfg.__module__.startswith("talkgs."):  # not the components other tests register
                _unbounded(cfg, seen, missing)
    assert not missing, "numeric settings without a Range (annotate them: Annotated[int, Range(...)]):\n" + "\n".join(missing)


def test_range_messages():
    assert FRAME_PIXELS.describe() == "an even integer in 64..4096 (pixels)"
    assert Range(0, 1, lo_open=True, hi_open=True).describe(integer=False) == "a number in (0, 1)"
    assert Range(1).describe() == "an integer >= 1"
    with pytest.raises(ConfigError, match=r"^x\.y: 127 is out of range: use an even integer in 16\.\.4096 \(pixels\)$"):
        PIXELS.check(127, "x.y")
    PIXELS.check(None, "x.y")  # None = not set
    assert not Range(0, 1).contains(float("nan"))


@dataclasses.dataclass(frozen=True)
class _Knobs:
    size: Annotated[int, PIXELS] = 64
    maybe: Annotated[int | None, PIXELS] = None
    weights: dict[str, Annotated[float, Range(0)]] = dataclasses.field(default_factory=dict)
    mixed: dict[str, Annotated[float, Range(0)] | str] = dataclasses.field(default_factory=dict)


def test_loader_checks_nested_and_optional_values():
    assert from_dict(_Knobs, {"size": 128, "maybe": None, "weights": {"a": 0.0}, "mixed": {"a": "5%"}}).size == 128
    for data, key in (
        ({"size": 0}, r"params\.size: 0"), ({"maybe": 100000}, r"params\.maybe: 100000"),
        ({"weights": {"l1": -1.0}}, r"params\.weights\.l1: -1\.0"), ({"mixed": {"x": -0.5}}, r"params\.mixed\.x: -0\.5"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=key + " is out of range: use"):
            from_dict(_Knobs, data)


def _write(tmp_path: Path, edit) -> Path:  # noqa: ANN001
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["subjects"]["demo"].update(resolution=100000),
         "subjects.demo.resolution: 100000 is out of range: use an even integer in 64..4096 (pixels)"),
        (lambda d: d["subjects"]["demo"].update(resolution=-5),
         "subjects.demo.resolution: -5 is out of range: use an even integer in 64..4096 (pixels)"),
        (lambda d: d["train"]["presets"]["cpu"].update(resolution=-128),
         "train.presets.cpu.resolution: -128 is out of range: use an even integer in 16..4096 (pixels)"),
        (lambda d: d.update(extract={"resolution": 257}),
         "extract.resolution: 257 is out of range: use an even integer in 64..4096 (pixels)"),
        (lambda d: d["evaluate"].update(resolution=127),
         "evaluate.resolution: 127 is out of range: use an even integer in 16..4096 (pixels)"),
        (lambda d: d["train"]["variants"]["static"]["phases"][0].update(iterations=-1),
         "train.variants.static.phases[0].iterations: -1 is out of range: use an integer >= 0"),
        (lambda d: d["train"]["variants"]["gaussiantalker_lite"]["model"]["deformer"].update(layers=1000),
         "train.variants.gaussiantalker_lite.model.deformer.layers: 1000 is out of range: use an integer in 0..16"),
        (lambda d: d["train"]["presets"]["cpu"]["loss_weights"].update(lpips=-1.0),
         "train.presets.cpu.loss_weights.lpips: -1.0 is out of range: use a number >= 0"),
    ],
)
def test_out_of_range_setting_is_exit_2_naming_the_key(tmp_path: Path, caplog, edit, message: str):  # noqa: ANN001
    pf = _write(tmp_path, edit)
    before = pf.read_text()
    with pytest.raises(ConfigError) as e:
        load_params(pf)
    assert str(e.value) == f"{pf}: {message}"
    # the stage commands stop at loading: exit 2, the message, nothing written, params untouched
    assert main(["--root", str(tmp_path), "extract", "--subject", "demo"]) == 2
    assert message in caplog.text and "Traceback" not in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"] and pf.read_text() == before


@pytest.mark.parametrize("value", ["127", "-64", "100000"])
def test_synthesize_resolution_option_is_checked_first(dvc_repo: Path, tmp_path: Path, caplog, value: str):
    out = tmp_path / "out.mp4"
    rc = main(["--root", str(dvc_repo), "synthesize", "--subject", "demo", "--variant", "gaussiantalker",
               "--audio", str(tmp_path / "a.wav"), "--out", str(out), "--resolution", value])  # fmt: skip
    assert rc == 2
    assert f"--resolution: {value} is out of range: use an even integer in 16..4096 (pixels)" in caplog.text
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["repo"]  # the dvc_repo fixture


def test_make_demo_options_are_checked(dvc_repo: Path, tmp_path: Path, caplog):
    out = tmp_path / "d.mp4"
    assert main(["--root", str(dvc_repo), "make-demo", "--out", str(out), "--size", "100000"]) == 2
    assert "--size: 100000 is out of range: use an even integer in 64..4096 (pixels)" in caplog.text
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["repo"]
