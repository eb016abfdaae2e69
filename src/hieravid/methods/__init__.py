"""Pruning methods. A method only decides what to keep or merge; it never touches a model."""

from __future__ import annotations

import warnings
from typing import Any, Callable

from hieravid.config import DEFAULT_BUDGET, HieraVidConfig, check_budget
from hieravid.methods.ablations import create_hieravid_no_layer, create_hieravid_no_seg, create_hieravid_topk
from hieravid.methods.base import Decision, PruningMethod, VideoTokens, check_options
from hieravid.methods.cdpruner import create_cdpruner
from hieravid.methods.divprune import create_divprune
from hieravid.methods.dycoke import create_dycoke
from hieravid.methods.evs import create_evs
from hieravid.methods.fastv import create_fastv
from hieravid.methods.framefusion import create_framefusion
from hieravid.methods.hieravid import HieraVid, Stage1Decision, decide_stage, decide_stage1, selector_for_stage
from hieravid.methods.prumerge import create_prumerge
from hieravid.methods.prunevid import create_prunevid
from hieravid.methods.pyramiddrop import create_pyramiddrop
from hieravid.methods.spec import parse_method
from hieravid.methods.streamingllm import create_streamingllm
from hieravid.methods.vanilla import Vanilla
from hieravid.warning import HieravidWarning

__all__ = [
    "Decision",
    "HieraVid",
    "PruningMethod",
    "Stage1Decision",
    "Vanilla",
    "VideoTokens",
    "all_methods",
    "available",
    "build",
    "decide_stage",
    "decide_stage1",
    "method_name",
    "parse_method",
    "warn_if_budget_is_ignored",
    "selector_for_stage",
]


def _hieravid(budget: float, **options: Any) -> PruningMethod:
    check_options("hieravid", options, HieraVidConfig.option_names())
    return HieraVid(HieraVidConfig(budget=budget, **options))


def _vanilla(budget: float, **options: Any) -> PruningMethod:
    if options:
        raise ValueError(f"method 'vanilla' takes no options, got {', '.join(sorted(options))}")
    return Vanilla()


_REGISTRY: dict[str, Callable[..., PruningMethod]] = {
    "hieravid": _hieravid,
    "vanilla": _vanilla,
    # the paper's baselines
    "fastv": create_fastv,
    "framefusion": create_framefusion,
    "prunevid": create_prunevid,
    "prumerge": create_prumerge,
    "streamingllm": create_streamingllm,
    # further baselines
    "divprune": create_divprune,
    "cdpruner": create_cdpruner,
    "pyramiddrop": create_pyramiddrop,
    "evs": create_evs,
    "dycoke": create_dycoke,
    # HieraVid's ablations (paper Tables 4-5)
    "hieravid_no_layer": create_hieravid_no_layer,
    "hieravid_no_seg": create_hieravid_no_seg,
    "hieravid_topk": create_hieravid_topk,
}


def available() -> list[str]:
    """Names accepted by :func:`build` and ``hieravid.apply(method=...)``."""
    return sorted(_REGISTRY)


def all_methods() -> list[str]:
    """Every registered method, for ``--methods all``: vanilla, HieraVid, its ablations, then the baselines
    (the paper's first), in registration order."""
    ablations = [name for name in _REGISTRY if name.startswith("hieravid_")]
    baselines = [name for name in _REGISTRY if name not in ("vanilla", "hieravid") and name not in ablations]
    return ["vanilla", "hieravid", *ablations, *baselines]


def method_name(spec: str) -> str:
    """The registered name of a method spec (``"hieravid:lam=1.0"`` -> ``"hieravid"``), checked."""
    name, _ = parse_method(spec)
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}")
    return name


def build(method: str | PruningMethod, budget: float | None = None, **options: Any) -> PruningMethod:
    """A method instance from its name, relative budget in (0, 1] (default 0.3) and options (the method's
    switches).

    ``method`` may also be a spec that carries options, ``"hieravid:relevance_sign=positive"`` (see
    :func:`parse_method`); options given both ways are refused. An instance is returned as it is: its
    budget and options were given to its constructor, and passing them here too is refused."""
    if isinstance(method, PruningMethod):
        if options or budget is not None:
            given = ", ".join((["budget"] if budget is not None else []) + sorted(options))
            raise ValueError(
                f"{given} given with a method instance: an instance carries its own budget and options, set "
                f"them in its constructor (e.g. HieraVid(HieraVidConfig(budget=0.3))) or pass the method's name"
            )
        return method
    if not isinstance(method, str):
        raise TypeError(
            f"method must be a method's name (or spec) or a PruningMethod instance, got {method!r}; "
            f"available: {', '.join(available())}"
        )
    name, spec_options = parse_method(method)
    method_name(name)
    twice = sorted(set(spec_options) & set(options))
    if twice:
        raise ValueError(f"option(s) {', '.join(twice)} given both in the method spec {method!r} and as arguments")
    if "budget" in spec_options or "budget" in options:
        raise ValueError(f"the budget is not an option of {name}: pass it as the budget (budget=B in Python and "
                         "lmms-eval's model args, --budget B for hieravid run, --budgets B,... for eval and bench)")
    built = _REGISTRY[name](check_budget(DEFAULT_BUDGET if budget is None else budget), **spec_options, **options)
    if name == "vanilla" and budget is not None and budget != 1.0:
        warnings.warn(f"method vanilla keeps every visual token: budget {budget:g} is ignored", HieravidWarning,
                      stacklevel=3)  # the caller of apply
    return built


def warn_if_budget_is_ignored(methods: list[str], budgets: list[float]) -> None:
    """Warn when a spec fixes its schedule with ``ratios`` (which override the budget) and several budgets
    are asked: its runs at those budgets are one and the same."""
    if len(set(budgets)) < 2:
        return
    for method in methods:
        if "ratios" in parse_method(method)[1]:
            warnings.warn(
                f"{method}: its ratios fix the schedule whatever the budget, so its rows at budgets "
                f"{', '.join(f'{b:g}' for b in budgets)} are the same run under different labels",
                HieravidWarning, stacklevel=2,
            )
