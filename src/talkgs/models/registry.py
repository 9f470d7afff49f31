"""Component registry: every swappable part of a talking-head model, by kind and name.

A variant (``params.yaml: variants.<name>``) names registered components; the training loop
builds them with :func:`build`. A new paper adds component files that register themselves
and a params entry -- never a new trainer::

    @register("deformer", "my_deformer")
    class MyDeformer(nn.Module):
        def __init__(self, *, feature_dim: int, token_dim: int, layers: int = 2): ...

    deformer = build("deformer", "my_deformer", feature_dim=64, token_dim=64, layers=2)

Kinds used by the loop (:data:`KINDS`):

- ``canonical``: canonical Gaussians' attributes (e.g. triplane + MLP heads, explicit).
- ``spatial_encoder``: position → feature (triplane; later hash grids).
- ``audio_encoder``: per-frame audio window ``[W, D]`` → one token.
- ``condition``: other per-frame condition tokens (eye AU45, viewpoint, learned null vector).
- ``deformer``: per-Gaussian features + condition tokens → attribute offsets.
- ``loss``: image losses (L1, D-SSIM, LPIPS, region crops) and regularisers.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["register", "build", "names", "get", "KINDS", "RegistryError"]

KINDS: tuple[str, ...] = ("canonical", "spatial_encoder", "audio_encoder", "condition", "deformer", "loss")

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {k: {} for k in KINDS}

F = TypeVar("F", bound=Callable[..., Any])


class RegistryError(KeyError):
    """Unknown component kind/name; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown component kind {kind!r}.{hint} Kinds: {', '.join(KINDS)}")


def register(kind: str, name: str) -> Callable[[F], F]:
    """Class/function decorator registering a component factory under ``(kind, name)``."""
    _check_kind(kind)

    def deco(factory: F) -> F:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not factory:
            same = getattr(existing, "__qualname__", None) == getattr(factory, "__qualname__", None) and getattr(
                existing, "__module__", None
            ) == getattr(factory, "__module__", None)
            if not same:  # re-import of the same module (reload) is fine
                raise ValueError(f"component {kind}/{name} is registered twice ({existing!r} and {factory!r})")
        _REGISTRY[kind][name] = factory
        return factory

    return deco


def _ensure_builtins() -> None:
    # importing the packages registers the built-in components
    import talkgs.models.canonical  # noqa: F401
    import talkgs.models.conditioning  # noqa: F401
    import talkgs.models.deformers  # noqa: F401
    import talkgs.models.encoders  # noqa: F401
    import talkgs.train.losses  # noqa: F401


def get(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``(kind, name)``; raises :class:`RegistryError` naming the options."""
    _check_kind(kind)
    _ensure_builtins()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        valid = sorted(_REGISTRY[kind])
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"no {kind} component named {name!r}.{hint} Registered: {', '.join(valid) or '(none)'}") from None


def build(kind: str, name: str, **cfg: Any) -> Any:
    """Instantiate component ``(kind, name)`` with keyword config ``cfg``."""
    return get(kind, name)(**cfg)


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    _check_kind(kind)
    _ensure_builtins()
    return sorted(_REGISTRY[kind])
