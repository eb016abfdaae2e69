"""Typed configuration for HieraVid, with validation that names the bad value and the allowed range.

Every alternative the method's equations allow is a field here (README, "The library", maps each
equation to its switches); the defaults are the paper's.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Literal, Sequence

Segmentation = Literal["merge_ratio", "avgpool", "none"]
OverlapIndicator = Literal["tau", "topk"]
RelevanceSign = Literal["negative", "positive"]
RelevanceQuery = Literal["last", "mean"]
InLLMSelector = Literal["dpp", "bins"]
GreedyBackend = Literal["auto", "torch", "numba", "triton"]


def is_number(value: object) -> bool:
    """A real number (Python's or numpy's), not a bool (``True`` would pass for 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: object) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


#: The relative token budget when none is given (``apply``, ``hieravid run``, the lmms-eval models).
DEFAULT_BUDGET = 0.3


def check_budget(budget: float, name: str = "budget") -> float:
    """Return ``budget`` as a float if it lies in (0, 1]; otherwise raise a ``ValueError`` naming it."""
    if not is_number(budget) or not 0.0 < float(budget) <= 1.0:
        raise ValueError(
            f"{name} must be a fraction of visual tokens kept in (0, 1], got {budget!r}; "
            f"e.g. {name}=0.3 keeps 30% of the visual tokens on average over the decoder layers"
        )
    return float(budget)


def check_ratio(ratio: float, name: str) -> float:
    """Return ``ratio`` as a float if it is a pruning ratio in [0, 1); otherwise raise a ``ValueError``."""
    if not is_number(ratio) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(
            f"{name} must be a pruning ratio (fraction of tokens removed) in [0, 1), got {ratio!r}"
        )
    return float(ratio)


def check_choice(value: str, name: str, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise a ``ValueError`` listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def check_unit_interval(value: float, name: str, *, closed: bool = True) -> float:
    """Return ``value`` if it is in [0, 1] (or (0, 1) when ``closed`` is False)."""
    number = is_number(value)
    ok = number and (0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0)
    if not ok:
        interval = "[0, 1]" if closed else "(0, 1)"
        kind = "" if number else "a number "
        raise ValueError(f"{name} must be {kind}in {interval}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class HieraVidConfig:
    """All switches of HieraVid (spec sections 2-4).

    Attributes:
        budget: relative token budget B in (0, 1]: kept visual fraction averaged over decoder layers.
        ratios: explicit per-stage pruning ratios ``(rho, R_2, ..., R_S)``; overrides ``budget`` when set.
        num_stages: S, the number of LLM stages (stage 1 is before layer 0).
        segmentation: ``merge_ratio`` (Eq. 2, default), ``avgpool`` or ``none`` (paper Table 5).
        overlap_indicator: for ``merge_ratio``: ``tau`` (S > tau, default) or ``topk`` (membership in the
            Eq. 3 merge set).
        tau: similarity threshold of Eq. 2.
        beta: a frame whose overlap ratio is below beta opens a new segment (Eq. 2).
        avgpool_threshold: ``avgpool`` segmentation cuts where mean-pooled frames' cosine is below it.
        lam: lambda of Eq. 4 (1 = representativeness only, 0 = diversity only).
        delta: pruning deviation of Eq. 5.
        keep_clip: clip range of the per-segment keep rate (Eq. 5).
        exact_total: top up / trim per-segment keep counts so the stage total is exact (a deviation from
            the reference, off by default).
        relevance_sign: ``negative`` (r = Norm(-a), the reference) or ``positive`` (r = Norm(a)).
        relevance_query: ``last`` prompt token (default) or ``mean`` of the trailing query tokens.
        query_tokens: how many trailing prompt tokens ``mean`` averages over (at most the instruction's: the
            text after the prompt's last image or video).
        in_llm_selector: ``dpp`` at every in-LLM stage (default) or ``bins`` at the first in-LLM stage
            that prunes (stage 2 unless its ratio is 0) and DPP after it (the later reference variant).
        eps: the epsilon of the min-max normalisation (Eq. 8).
        greedy_backend: how the DPP's greedy MAP loop runs (same picks, not an algorithm switch):
            ``auto`` (numba on CPU, triton on CUDA where it works, torch elsewhere), ``torch`` (one step
            of torch operations per pick), ``numba`` (compiled, on the host; a GPU's kernels are copied
            over) or ``triton`` (a CUDA kernel per block of picks).
        dpp_rank_floor: residual variances at or below this fraction of a segment's largest kernel
            diagonal count as used-up rank in the greedy MAP (Eq. 10; a zero update row, then relevance
            order). The default 1e-3 is a deviation kept for deterministic picks across attention kernels;
            0 is the specification's plain rule (clamp d2 >= 0, guard the square root), except that
            residuals at or below 1e-30 (zero, or negative round-off) are then taken in kernel-diagonal
            order rather than by whichever round-off is largest. See :func:`hieravid.ops.greedy_map`.
    """

    budget: float = 0.3
    ratios: tuple[float, ...] | None = None
    num_stages: int = 4
    segmentation: Segmentation = "merge_ratio"
    overlap_indicator: OverlapIndicator = "tau"
    tau: float = 0.6
    beta: float = 0.4
    avgpool_threshold: float = 0.95
    lam: float = 0.5
    delta: float = 0.1
    keep_clip: tuple[float, float] = (0.05, 0.95)
    exact_total: bool = False
    relevance_sign: RelevanceSign = "negative"
    relevance_query: RelevanceQuery = "last"
    query_tokens: int = 4
    in_llm_selector: InLLMSelector = "dpp"
    eps: float = 1e-6
    greedy_backend: GreedyBackend = "auto"
    dpp_rank_floor: float = 1e-3

    @classmethod
    def option_names(cls) -> set[str]:
        """The fields a method spec may set (``hieravid:lam=1``): all but the budget, the method's own argument."""
        return {f.name for f in fields(cls)} - {"budget"}

    @property
    def min_stage_ratio(self) -> float:
        """The smallest ratio an in-LLM stage realises as asked: Eq. 5's keep rate is at most
        ``keep_clip[1]``, so a stage removes at least ``1 - keep_clip[1]`` of every segment (0 with
        ``exact_total``, whose stage totals are exact at any ratio). The schedule solver keeps to it."""
        return 0.0 if self.exact_total else 1.0 - self.keep_clip[1]

    def __post_init__(self) -> None:
        # numpy's arrays of the ratios and clip range, and its booleans, as the Python values they hold
        for name in ("ratios", "keep_clip"):
            value = getattr(self, name)
            if hasattr(value, "tolist") and getattr(value, "ndim", None) == 1:
                object.__setattr__(self, name, tuple(value.tolist()))
        if getattr(self.exact_total, "dtype", None) == bool and getattr(self.exact_total, "ndim", None) == 0:
            object.__setattr__(self, "exact_total", bool(self.exact_total))
        object.__setattr__(self, "budget", check_budget(self.budget))
        if not is_number(self.dpp_rank_floor) or not 0.0 <= self.dpp_rank_floor < 1.0:
            raise ValueError(f"dpp_rank_floor must be a number in [0, 1), got {self.dpp_rank_floor!r}")
        if not is_integer(self.num_stages) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an integer >= 1, got {self.num_stages!r}")
        if self.ratios is not None:
            if not isinstance(self.ratios, (tuple, list)) or not self.ratios:
                raise ValueError(
                    f"ratios must be a list of one pruning ratio per stage, e.g. (0.5, 0.3, 0.3, 0.57) (on the "
                    f"command line hieravid:ratios=(0.5,0.3,0.3,0.57)), got {self.ratios!r}"
                )
            ratios = tuple(self.ratios)
            if len(ratios) != self.num_stages:
                raise ValueError(
                    f"ratios must give one pruning ratio per stage ({self.num_stages}), got {len(ratios)}: "
                    f"{self.ratios!r}; pass num_stages={len(ratios)} or fix the list"
                )
            ratios = tuple(check_ratio(r, "rho" if i == 0 else f"ratios[{i}] (R_{i + 1})") for i, r in enumerate(ratios))
            object.__setattr__(self, "ratios", ratios)
        check_choice(self.segmentation, "segmentation", ("merge_ratio", "avgpool", "none"))
        check_choice(self.overlap_indicator, "overlap_indicator", ("tau", "topk"))
        check_choice(self.relevance_sign, "relevance_sign", ("negative", "positive"))
        check_choice(self.relevance_query, "relevance_query", ("last", "mean"))
        check_choice(self.in_llm_selector, "in_llm_selector", ("dpp", "bins"))
        check_choice(self.greedy_backend, "greedy_backend", ("auto", "torch", "numba", "triton"))
        if not is_number(self.tau) or not -1.0 <= self.tau <= 1.0:
            raise ValueError(f"tau is a cosine-similarity threshold and must be in [-1, 1], got {self.tau!r}")
        check_unit_interval(self.beta, "beta")
        if not is_number(self.avgpool_threshold) or not -1.0 <= self.avgpool_threshold <= 1.0:
            raise ValueError(f"avgpool_threshold must be in [-1, 1], got {self.avgpool_threshold!r}")
        check_unit_interval(self.lam, "lam")
        if not is_number(self.delta) or not 0 <= self.delta < math.inf:  # NaN fails too
            raise ValueError(f"delta (pruning deviation) must be a finite number >= 0, got {self.delta!r}")
        clip = self.keep_clip
        pair = isinstance(clip, (tuple, list)) and len(clip) == 2 and all(is_number(v) for v in clip)
        if not pair or not 0.0 <= clip[0] <= clip[1] <= 1.0:
            raise ValueError(
                f"keep_clip must be a pair (low, high) with 0 <= low <= high <= 1, e.g. (0.05, 0.95) (on the command "
                f"line hieravid:keep_clip=(0.05,0.95)), got {clip!r}"
            )
        object.__setattr__(self, "keep_clip", (float(clip[0]), float(clip[1])))
        if not isinstance(self.exact_total, bool):
            raise ValueError(f"exact_total must be True or False, got {self.exact_total!r}")
        if not is_integer(self.query_tokens) or self.query_tokens < 1:
            raise ValueError(f"query_tokens must be an integer >= 1, got {self.query_tokens!r}")
        if not is_number(self.eps) or not 0 < self.eps < 1:
            raise ValueError(
                f"eps (Eq. 8's guard against a zero range) must be a small number in (0, 1), got {self.eps!r}; "
                "the default is 1e-6"
            )
        # Numbers are kept as Python's own (a numpy scalar would not serialise to JSON, and would miss a
        # preset's budget by its float32 round-off).
        for f in fields(self):
            if f.type in ("float", "int"):
                value = getattr(self, f.name)
                object.__setattr__(self, f.name, float(value) if f.type == "float" else int(value))
