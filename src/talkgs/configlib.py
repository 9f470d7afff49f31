"""Strict configuration loading: dataclasses from plain YAML data, and back.

The machinery behind ``params.yaml`` (:mod:`talkgs.config`) and every component config
(:mod:`talkgs.models.registry`): :func:`from_dict` builds a (nested, frozen) dataclass from a
mapping, strictly -- an unknown key is an error naming the closest valid key, a value of the
wrong type names the key path, the expected and the found type. :func:`to_dict` is the inverse
(plain YAML-able data). This module imports nothing of talkgs, so every layer can use it.

A field whose type defines a classmethod ``__from_config__(value, where)`` is parsed by it
(component configs chosen by ``name``, see :class:`talkgs.models.registry.ComponentConfig`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

__all__ = ["ConfigError", "closest_hint", "from_dict", "to_dict", "dump_yaml"]

T = TypeVar("T")


class ConfigError(ValueError):
    """``params.yaml`` (or an override) is invalid; the message names the key and the fix."""


def closest_hint(key: str, valid: list[str]) -> str:
    """`` Did you mean ...?`` for the valid name closest to ``key`` (empty when none is close)."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check/convert a YAML value against a type annotation; raise ConfigError with ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
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


def from_dict(cls: type[T], data: Any, where: str = "params") -> T:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and bad types are errors)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(data).__name__}")
    hints = get_type_hints(cls)
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
