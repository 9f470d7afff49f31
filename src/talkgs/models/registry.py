"""Component registry: every swappable part of a variant, by kind and name, with its config.

A variant (``params.yaml: train.variants.<name>``) names registered components; a component
section is a mapping whose ``name`` picks the component and whose other keys are that
component's own config dataclass, parsed strictly (an unknown key is an error naming the
closest valid one). A new paper adds component files that register themselves and a params
entry -- never a new trainer::

    @dataclass(frozen=True)
    class MyDeformerConfig(ComponentConfig):
        name: str = "my_deformer"
        layers: int = 2

    @register("deformer", "my_deformer", MyDeformerConfig)
    class MyDeformer(nn.Module):
        def __init__(self, cfg: MyDeformerConfig, *, feature_dim: int, token_dim: int): ...

    deformer = build("deformer", cfg, feature_dim=64, token_dim=64)   # cfg: MyDeformerConfig

A field typed with a :class:`ComponentConfig` subclass that names a ``kind`` (e.g.
``deformer: DeformerConfig``) accepts the config of any component of that kind
(:meth:`ComponentConfig.__from_config__`); the subclass's ``default`` names the component used
when the section gives no ``name``.

Components are found without an import list: the first lookup imports every module of the
packages in :data:`COMPONENT_PACKAGES` (and of the ``talkgs.components`` entry-point group,
for plugins installed as their own distributions); a module registers its components when
imported.

Kinds (:data:`KINDS`):

- ``head``: the whole talking-head model of a variant (:class:`talkgs.models.contract.Head`).
- ``canonical``, ``spatial_encoder``, ``audio_encoder``, ``condition``, ``deformer``: parts of heads.
- ``loss``: training losses (:class:`talkgs.models.contract.Loss`), some owning networks.
- ``sampler``: which training frames a step uses (:class:`talkgs.models.contract.Sampler`).
- ``post``: post-render modules (:class:`talkgs.models.contract.PostModule`).
- ``callback``: training callbacks (:class:`talkgs.models.contract.Callback`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from talkgs.configlib import ConfigError, closest_hint, from_dict

log = logging.getLogger(__name__)

__all__ = [
    "register",
    "build",
    "names",
    "get",
    "config_class",
    "parse_config",
    "ComponentConfig",
    "KINDS",
    "COMPONENT_PACKAGES",
    "RegistryError",
    "ASSETS",
    "required_assets",
]

KINDS: tuple[str, ...] = (
    "head",
    "canonical",
    "spatial_encoder",
    "audio_encoder",
    "condition",
    "deformer",
    "loss",
    "sampler",
    "post",
    "callback",
)

COMPONENT_PACKAGES: tuple[str, ...] = ("talkgs.models", "talkgs.train")
"""Packages whose modules are imported (recursively) to find the registered components."""

ENTRY_POINT_GROUP = "talkgs.components"
"""Entry-point group of third-party component modules (``[project.entry-points."talkgs.components"]``)."""


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Any]
    config: type


_REGISTRY: dict[str, dict[str, _Entry]] = {k: {} for k in KINDS}
_discovered = False

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound="ComponentConfig")


class RegistryError(KeyError):
    """Unknown component kind/name; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class ComponentConfig:
    """Base of every component config: ``name`` is the registered component it configures.

    Subclasses used as *field types* set the class attributes ``kind`` (which registry kind the
    field accepts) and ``default`` (the component used when the mapping has no ``name``); the
    loader then parses the mapping with the named component's own config class.
    """

    name: str = ""
    kind: ClassVar[str] = ""
    default: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    """Pipeline assets (:data:`ASSETS`) the component is built from: frozen networks another stage
    trains (a model reads them at build time and keeps their weights in its own checkpoint). A
    config whose need depends on its options overrides it with a property."""

    @classmethod
    def __from_config__(cls, value: Any, where: str) -> ComponentConfig:
        if isinstance(value, ComponentConfig):
            return value
        if value is None:
            value = {}
        if isinstance(value, str):  # just a name: that component's default config
            value = {"name": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping with a 'name' (a registered {cls.kind or 'component'}), found {type(value).__name__}")
        kind = cls.kind
        if not kind:  # a concrete config class: parse as itself
            return from_dict(cls, value, where)
        name = value.get("name", cls.default)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' must name a registered {kind} ({', '.join(names(kind))})")
        try:
            cfg_cls = config_class(kind, name)
        except RegistryError as e:
            raise ConfigError(f"{where}.name: {e}") from None
        return from_dict(cfg_cls, {**value, "name": name}, where)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"{type(self).__name__}: 'name' must be set (the registered component it configures)")


ASSETS: dict[str, str] = {
    "sync_expert": "the audio-visual sync expert (stage sync_expert, models/sync_expert/checkpoint.pt)",
}
"""Files a stage hands to the components that declare them in ``requires``: name -> what it is.
The ``pretrain@<V>`` stage copies each asset a variant requires into ``models/pretrain/<V>/assets/``
(so ``train@<S>-<V>`` depends on it through that stage only) and the trainer passes them on
(:class:`talkgs.models.contract.BuildContext` ``assets``; losses get ``assets=``)."""


def required_assets(cfg: Any) -> tuple[str, ...]:
    """The assets of every component config inside ``cfg`` (dataclasses, mappings, sequences;
    sorted, each once)."""
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, ComponentConfig):
            found.update(x.requires)
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(cfg)
    unknown = sorted(found - set(ASSETS))
    if unknown:
        raise RegistryError(f"components require unknown assets {unknown}; known: {', '.join(ASSETS)}")
    return tuple(sorted(found))


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown component kind {kind!r}.{closest_hint(kind, list(KINDS))} Kinds: {', '.join(KINDS)}")


def register(kind: str, name: str, config: type | None = None) -> Callable[[F], F]:
    """Class/function decorator registering a component factory under ``(kind, name)``.

    ``config``: the component's config dataclass (a :class:`ComponentConfig` subclass whose
    ``name`` defaults to ``name``); the factory is called as ``factory(cfg, **context)``.
    Without it the component has no options (``ComponentConfig`` with only ``name``).
    """
    _check_kind(kind)
    if config is None:
        config = dataclasses.make_dataclass(
            f"{name.title().replace('_', '')}Config", [("name", str, dataclasses.field(default=name))], bases=(ComponentConfig,), frozen=True
        )
    if not (isinstance(config, type) and issubclass(config, ComponentConfig) and dataclasses.is_dataclass(config)):
        raise TypeError(f"register({kind!r}, {name!r}): config must be a ComponentConfig dataclass, found {config!r}")
    default_name = {f.name: f.default for f in dataclasses.fields(config)}.get("name")
    if default_name != name:
        raise TypeError(f"register({kind!r}, {name!r}): {config.__name__}.name must default to {name!r}, found {default_name!r}")

    def deco(factory: F) -> F:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing.factory is not factory:
            same = getattr(existing.factory, "__qualname__", None) == getattr(factory, "__qualname__", None) and getattr(
                existing.factory, "__module__", None
            ) == getattr(factory, "__module__", None)
            if not same:  # re-import of the same module (reload) is fine
                raise ValueError(f"component {kind}/{name} is registered twice ({existing.factory!r} and {factory!r})")
        _REGISTRY[kind][name] = _Entry(factory, config)
        return factory

    return deco


def _discover() -> None:
    """Import every module of :data:`COMPONENT_PACKAGES` and of the entry-point group once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for pkg_name in COMPONENT_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            importlib.import_module(info.name)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        log.debug("loading talkgs components from %s (%s)", ep.value, ep.name)
        ep.load()


def _entry(kind: str, name: str) -> _Entry:
    _check_kind(kind)
    if name not in _REGISTRY[kind]:
        _discover()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        valid = sorted(_REGISTRY[kind])
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"no {kind} component named {name!r}.{hint} Registered: {', '.join(valid) or '(none)'}") from None


def get(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``(kind, name)``; raises :class:`RegistryError` naming the options."""
    return _entry(kind, name).factory


def config_class(kind: str, name: str) -> type:
    """The config dataclass of component ``(kind, name)``."""
    return _entry(kind, name).config


def parse_config(kind: str, value: Any, where: str = "component") -> Any:
    """A component config from a mapping ``{"name": ..., **options}`` (strict)."""
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"{where}: expected a mapping with a 'name' (a registered {kind}: {', '.join(names(kind))})")
    try:
        cls = config_class(kind, value["name"])
    except RegistryError as e:
        raise ConfigError(f"{where}.name: {e}") from None
    return from_dict(cls, value, where)


def build(kind: str, cfg: Any, **context: Any) -> Any:
    """Instantiate component ``cfg.name`` of ``kind`` with its config and the build ``context``.

    ``cfg``: the component's config object, a mapping ``{"name": ..., ...}`` or just a name
    (the component's default config).
    """
    if isinstance(cfg, str):
        cfg = config_class(kind, cfg)()
    elif isinstance(cfg, dict):
        cfg = parse_config(kind, cfg)
    entry = _entry(kind, cfg.name)
    if not isinstance(cfg, entry.config):
        raise TypeError(f"build({kind!r}): config {type(cfg).__name__} is not {entry.config.__name__} of {kind}/{cfg.name}")
    return entry.factory(cfg, **context)


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    _check_kind(kind)
    _discover()
    return sorted(_REGISTRY[kind])
