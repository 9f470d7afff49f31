"""Strict configuration loading: dataclasses from plain YAML data, and back.

The machinery behind ``params.yaml`` (:mod:`talkgs.config`) and every component config
(:mod:`talkgs.models.registry`): :func:`from_dict` builds a (nested, frozen) dataclass from a
mapping, strictly -- an unknown key is an error naming the closest valid key, a value of the
wrong type names the key path, the expected and the found type. :func:`to_dict` is the inverse
(plain YAML-able data). This module imports nothing of talkgs, so every layer can use it.

A field whose type defines a classmethod ``__from_config__(value, where)`` is parsed by it
(component configs chosen by ``name``, see :class:`talkgs.models.registry.ComponentConfig`).

Numeric bounds live in the annotation: ``resolution: Annotated[int, PIXELS] = 512`` (a
:class:`Range`); the loader checks every value it reads against them, so an out-of-range
setting is an error naming its key and the valid range instead of a crash deep in a stage.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "ConfigError", "closest_hint", "from_dict", "to_dict", "dump_yaml", "Range", "PIXELS", "FRAME_PIXELS", "POSITIVE",
    "NON_NEGATIVE", "FRACTION", "PROBABILITY", "COUNT", "STEPS", "FPS", "SEED", "GAUSSIANS", "SH_DEGREE", "WIDTH", "MAX_PIXELS",
]  # fmt: skip

T = TypeVar("T")


class ConfigError(ValueError):
    """``params.yaml`` (or an override) is invalid; the message names the key and the fix."""


def closest_hint(key: str, valid: list[str]) -> str:
    """`` Did you mean ...?`` for the valid name closest to ``key`` (empty when none is close)."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric setting, used as ``Annotated[int, Range(...)]`` on a config field.

    ``lo`` / ``hi``: limits (None: unbounded), inclusive unless ``lo_open`` / ``hi_open``;
    ``multiple``: integer values must be a multiple of it (e.g. 2: H.264 and the crop need even
    frame sizes). :meth:`check` raises :class:`ConfigError` naming ``where`` and the range.
    """

    lo: float | None = None
    hi: float | None = None
    multiple: int | None = None
    lo_open: bool = False
    hi_open: bool = False
    unit: str = ""
    """Shown after the range (e.g. ``"pixels"``)."""

    def contains(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return not (self.multiple and (not float(value).is_integer() or int(value) % self.multiple))

    def describe(self, integer: bool = True) -> str:
        """E.g. ``an even integer in 64..4096 (pixels)``, ``a number in (0, 1)``, ``an integer >= 1``."""
        kind = "integer" if integer else "number"
        if self.multiple == 2:
            kind = "even integer"
        elif self.multiple:
            kind = f"integer multiple of {self.multiple}"
        article = "an" if kind[0] in "aeiou" else "a"
        fmt = lambda v: f"{v:g}"  # noqa: E731
        if self.lo is not None and self.hi is not None:
            if self.lo_open or self.hi_open or not integer:
                span = f"{'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}{')' if self.hi_open else ']'}"
            else:
                span = f"{fmt(self.lo)}..{fmt(self.hi)}"
            text = f"{article} {kind} in {span}"
        elif self.lo is not None:
            text = f"{article} {kind} {'>' if self.lo_open else '>='} {fmt(self.lo)}"
        elif self.hi is not None:
            text = f"{article} {kind} {'<' if self.hi_open else '<='} {fmt(self.hi)}"
        else:
            text = f"{article} {kind}"
        return text + (f" ({self.unit})" if self.unit else "")

    def check(self, value: Any, where: str, *, integer: bool | None = None) -> None:
        """Raise :class:`ConfigError` ``"<where>: <value> is out of range: use <range>"`` (None passes)."""
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if not self.contains(value):
            is_int = isinstance(value, int) if integer is None else integer
            raise ConfigError(f"{where}: {value!r} is out of range: use {self.describe(is_int)}")


MAX_PIXELS = 4096
"""Largest frame side any setting accepts (4K video; larger crops do not fit the memory budget)."""
PIXELS = Range(16, MAX_PIXELS, multiple=2, unit="pixels")
"""Render / training / evaluation sizes: even (videos are H.264 yuv420p), 16..4096."""
FRAME_PIXELS = Range(64, MAX_PIXELS, multiple=2, unit="pixels")
"""Extracted frame sizes (``extract.resolution`` and per-subject overrides): even, 64..4096."""
POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
"""A fraction in [0, 1]."""
PROBABILITY = Range(0, 1, lo_open=True, hi_open=True)
"""A detector confidence / probability in (0, 1)."""
COUNT = Range(1)
"""An integer >= 1 (sizes, counts, periods)."""
STEPS = Range(0)
"""A step count or index >= 0."""
FPS = Range(1, 120, unit="frames/s")
SEED = Range(0, 2**32 - 1)
"""Random seeds (numpy and torch accept 0..2^32-1 alike)."""
GAUSSIANS = Range(1, 10_000_000)
"""Gaussian counts (the CPU preset uses 6k; papers use up to a few 100k)."""
SH_DEGREE = Range(0, 3)
"""Spherical-harmonics degree (gsplat and the CPU rasterizer support 0..3)."""
WIDTH = Range(1, 4096)
"""Network widths (hidden units, channels, embedding sizes)."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check/convert a YAML value against a type annotation; raise ConfigError with ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = get_args(tp)
        out = _convert(base, value, where)
        for r in extras:
            if isinstance(r, Range):  # the value as written (an int given for a float shows as written)
                r.check(value if isinstance(value, (int, float)) else out, where, integer=_is_int_type(base))
        return out
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        ranged = [e for e in errors if "is out of range" in e]  # the type matched, the value did not
        raise ConfigError(errors[0] if len(errors) == 1 else ranged[0] if ranged else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if isinstance(tp, type) and hasattr(tp, "__from_config__"):
        return tp.__from_config__(value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is dict:
        kt, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {type(value).__name__}")
        return {_convert(kt, k, f"{where}.{k}"): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {type(value).__name__}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, found {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        et = args[0] if args else Any
        out = [_convert(et, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return value
    raise TypeError(f"config type {tp!r} at {where} is not supported by the loader")  # programming error


def _is_int_type(tp: Any) -> bool:
    args = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (typing.Union, types.UnionType) else [tp]
    return all(a is int for a in args)


def from_dict(cls: type[T], data: Any, where: str = "params") -> T:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and bad types are errors)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(data).__name__}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key {key!r}.{closest_hint(str(key), list(fields))} "
                f"Valid keys: {', '.join(fields)}."
            )
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise ConfigError(f"{where}: {e}") from e


def to_dict(obj: Any) -> Any:
    """Plain YAML-able structure of a (nested) dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj



def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)
