"""Distillation terms registered by name (no ``if/elif`` chain): ``@register_loss("output")``."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, TypeVar

from .base import KDLoss

_REGISTRY: dict[str, type[KDLoss]] = {}
L = TypeVar("L", bound=type)


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator registering a :class:`KDLoss` subclass under ``name`` (sets ``cls.name``)."""
    if not name or not name.isidentifier():
        raise ValueError(f"A KD term name must be a Python identifier, got {name!r}.")

    def decorate(cls: L) -> L:
        if not (isinstance(cls, type) and issubclass(cls, KDLoss)):
            raise TypeError(f"@register_loss('{name}') decorates KDLoss subclasses, not {cls!r}.")
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"KD term '{name}' is already registered by {old.__module__}.{old.__qualname__}.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_losses() -> list[str]:
    """Registered term names, sorted."""
    return sorted(_REGISTRY)


def loss_class(name: str) -> type[KDLoss]:
    """The class registered as ``name``; unknown names raise with the near match and the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = available_losses()
        near = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"Unknown KD term '{name}'.{hint} Known: {', '.join(known)}.") from None


def accepted_params(name: str) -> list[str]:
    """Keyword parameters term ``name`` takes besides the channel dicts."""
    sig = inspect.signature(loss_class(name).__init__)
    skip = {"self", "student_channels", "teacher_channels"}
    return [p.name for p in sig.parameters.values()
            if p.name not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def build_loss(name: str, student_channels: dict[str, int], teacher_channels: dict[str, dict[str, int]],
               **params: Any) -> KDLoss:
    """Build the term registered as ``name``.

    Args:
        name: registry name (see :func:`available_losses`).
        student_channels: the student network's ``feature_channels``.
        teacher_channels: each teacher network's ``feature_channels``, keyed by population code.
        **params: the term's own options (e.g. ``temperature`` for ``output``).

    Raises:
        ValueError: unknown name (with the near match) or an option the term does not take.
    """
    cls = loss_class(name)
    accepted = accepted_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"KD term '{name}' does not take {unknown}; it takes: {', '.join(accepted) or 'nothing'}.")
    return cls(student_channels, teacher_channels, **params)
