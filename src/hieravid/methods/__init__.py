"""Pruning methods. A method only decides what to keep or merge; it never touches a model."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from hieravid.config import HieraVidConfig, check_budget
from hieravid.methods.base import Decision, PruningMethod, VideoTokens
from hieravid.methods.hieravid import HieraVid, Stage1Decision, decide_stage, decide_stage1, selector_for_stage
from hieravid.methods.vanilla import Vanilla

__all__ = [
    "Decision",
    "HieraVid",
    "PruningMethod",
    "Stage1Decision",
    "Vanilla",
    "VideoTokens",
    "available",
    "build",
    "decide_stage",
    "decide_stage1",
    "selector_for_stage",
]


def _hieravid(budget: float, **options: Any) -> PruningMethod:
    fields = {f.name for f in dataclasses.fields(HieraVidConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) for method 'hieravid': {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}"
        )
    return HieraVid(HieraVidConfig(budget=budget, **options))


def _vanilla(budget: float, **options: Any) -> PruningMethod:
    if options:
        raise ValueError(f"method 'vanilla' takes no options, got {', '.join(sorted(options))}")
    return Vanilla()


_REGISTRY: dict[str, Callable[..., PruningMethod]] = {"hieravid": _hieravid, "vanilla": _vanilla}


def available() -> list[str]:
    """Names accepted by :func:`build` and ``hieravid.apply(method=...)``."""
    return sorted(_REGISTRY)


def build(method: str | PruningMethod, budget: float = 0.3, **options: Any) -> PruningMethod:
    """A method instance from its name, relative budget in (0, 1] and options (the method's switches)."""
    if isinstance(method, PruningMethod):
        if options:
            raise ValueError("options are given to a method instance's constructor, not to build()")
        return method
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available())}")
    check_budget(budget)
    return _REGISTRY[method](budget, **options)
