"""Relative token budget <-> per-stage pruning ratios (spec section 3).

The decoder of ``L`` layers is cut into ``S`` stages. Stage ``k`` starts by removing a fraction ``r_k``
of the visual tokens still present (``r_1 = rho`` before layer 0, ``r_k = R_k`` at later stage
boundaries). The *relative token budget* ``B`` is the kept visual fraction averaged over layers, each
stage charged for all of its layers; when ``S`` divides ``L`` it is
``B = (1/S) * sum_k prod_{j<=k} (1 - r_j)``.

This module holds the paper's three presets, a solver for any other budget, and the bookkeeping that
turns a schedule into the number of visual tokens entering each layer (used by FLOPs accounting and by
the tests of the runtime).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from hieravid.config import check_budget, check_ratio, is_integer, is_number

__all__ = [
    "MIN_BUDGET",
    "PRESETS",
    "Schedule",
    "COUNT_DECIMALS",
    "floor_count",
    "pruned_count",
    "solve_schedule",
    "stage_boundaries",
]

#: The paper's schedules ``(rho, R_2, R_3, R_4)`` for a 4-stage split, keyed by the nominal budget.
#: Their achieved budgets are 0.300, 0.210 and 0.110 (the paper's own numbers).
PRESETS: Mapping[float, tuple[float, ...]] = MappingProxyType(
    {
        0.3: (0.5, 0.3, 0.3, 0.57),
        0.2: (0.5, 0.5, 0.7, 0.8),
        0.1: (0.7, 0.6, 0.85, 0.9),
    }
)

_PRESET_TOLERANCE = 1e-6  # a float32 budget (numpy's 0.3 is 0.30000001192...) still finds its preset
#: Smallest budget the solver accepts (fraction).
MIN_BUDGET = 1e-9
_SOLVER_MAX_ITERATIONS = 200


def stage_boundaries(num_layers: int, num_stages: int) -> list[int]:
    """First decoder layer of each stage: ``[0] + [round(k * L / S) for k = 1..S-1]``.

    Args:
        num_layers: L, decoder layers (>= 1).
        num_stages: S, stages (1 <= S <= L).

    Returns:
        ``S`` strictly increasing layer indices starting at 0. Python's ``round`` (half to even) is used;
        with ``L >= S`` every stage has at least one layer.
    """
    for value, name in ((num_layers, "num_layers"), (num_stages, "num_stages")):
        if not is_integer(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    num_layers, num_stages = int(num_layers), int(num_stages)
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}; use num_stages=1 for a single stage")
    if num_layers < num_stages:
        raise ValueError(
            f"num_layers ({num_layers}) must be >= num_stages ({num_stages}): every stage needs at least "
            f"one decoder layer; lower num_stages"
        )
    return [0] + [round(k * num_layers / num_stages) for k in range(1, num_stages)]


# A decimal ratio times a token count carries float round-off (0.7 * 90 = 62.99999999999999 and
# 1 - 0.9 = 0.09999999999999998): counts floor the product rounded to this many decimals, so a product
# that is a whole number in decimal arithmetic stays that number, as floor(rho * N_v) means.
COUNT_DECIMALS = 9


def floor_count(amount: float) -> int:
    """``floor(amount)`` for a token count computed in floats, after rounding to ``COUNT_DECIMALS``."""
    return math.floor(round(amount, COUNT_DECIMALS))


def pruned_count(ratio: float, num_tokens: int) -> int:
    """Tokens a stage removes: ``floor(ratio * num_tokens)`` (tokens), e.g. ``floor(rho * N_v)`` at stage 1
    (``floor(0.7 * 90)`` is 63, not the 62 of the float product)."""
    return floor_count(ratio * num_tokens)


@dataclass(frozen=True)
class Schedule:
    """A per-stage pruning schedule over a decoder of ``num_layers`` layers.

    Attributes:
        ratios: ``(r_1, ..., r_S)``: fraction of the tokens present at the start of stage k that stage k
            removes; ``r_1 = rho`` acts before layer 0, ``r_k = R_k`` at layer ``boundaries[k-1]``.
            Each in [0, 1).
        num_layers: L, decoder layers (>= number of stages).
    """

    ratios: tuple[float, ...]
    num_layers: int

    def __post_init__(self) -> None:
        ratios = tuple(self.ratios)
        if not ratios:
            raise ValueError("ratios must hold one pruning ratio per stage, got an empty sequence")
        checked = tuple(
            check_ratio(r, "rho" if i == 0 else f"R_{i + 1}") for i, r in enumerate(ratios)
        )
        object.__setattr__(self, "ratios", checked)
        stage_boundaries(self.num_layers, len(checked))  # validates num_layers >= num_stages
        object.__setattr__(self, "num_layers", int(self.num_layers))  # a numpy integer as Python's (JSON-ready)

    @property
    def num_stages(self) -> int:
        """S, the number of stages."""
        return len(self.ratios)

    @property
    def kept_fractions(self) -> tuple[float, ...]:
        """Fraction of the ORIGINAL visual tokens present during each stage: ``prod_{j<=k} (1 - r_j)``."""
        kept = 1.0
        out = []
        for r in self.ratios:
            kept *= 1.0 - r
            out.append(kept)
        return tuple(out)

    @property
    def boundaries(self) -> list[int]:
        """First decoder layer of each stage (see :func:`stage_boundaries`)."""
        return stage_boundaries(self.num_layers, self.num_stages)

    @property
    def stage_widths(self) -> list[int]:
        """Number of decoder layers in each stage."""
        ends = self.boundaries[1:] + [self.num_layers]
        return [end - start for start, end in zip(self.boundaries, ends)]

    def layer_fractions(self) -> list[float]:
        """Kept fraction of the original visual tokens entering each of the ``L`` layers."""
        out: list[float] = []
        for width, kept in zip(self.stage_widths, self.kept_fractions):
            out.extend([kept] * width)
        return out

    @property
    def achieved_budget(self) -> float:
        """Layer-weighted mean kept fraction (the relative token budget this schedule realises)."""
        return sum(w * f for w, f in zip(self.stage_widths, self.kept_fractions)) / self.num_layers

    def stage_tokens(self, n0: int, first_limit: int | None = None) -> list[int]:
        """Integer visual tokens present during each stage for ``n0`` input visual tokens.

        Sequential: ``c_0 = n0``, ``c_k = c_{k-1} - floor(r_k * c_{k-1})``; stage 1 removes exactly
        ``floor(rho * n0)`` tokens, or ``first_limit`` if that is fewer (HieraVid's stage 1 can merge at
        most ``(T-1) * P`` tokens: frame 0 has no predecessor). This is the nominal count: HieraVid's
        per-segment keep rates (Eq. 5) may let the real total drift a little at stages >= 2.
        """
        if not is_integer(n0) or n0 < 0:
            raise ValueError(f"n0 (visual tokens) must be an integer >= 0, got {n0!r}")
        if first_limit is not None and (not is_integer(first_limit) or first_limit < 0):
            raise ValueError(
                f"first_limit (most tokens stage 1 may remove) must be an integer >= 0, got {first_limit!r}"
            )
        n0 = int(n0)
        counts: list[int] = []
        current = n0
        for k, r in enumerate(self.ratios):
            removed = pruned_count(r, current)
            if k == 0 and first_limit is not None:
                removed = min(removed, first_limit)
            current -= removed
            counts.append(current)
        return counts

    def tokens_per_layer(self, n0: int, first_limit: int | None = None) -> list[int]:
        """Integer visual tokens entering each of the ``L`` layers (see :meth:`stage_tokens`)."""
        out: list[int] = []
        for width, count in zip(self.stage_widths, self.stage_tokens(n0, first_limit)):
            out.extend([count] * width)
        return out

    def whole_token_budget(self, n0: int) -> float:
        """The budget :meth:`tokens_per_layer` realises for ``n0 >= 1`` tokens (whole tokens per stage)."""
        return sum(self.tokens_per_layer(n0)) / (n0 * self.num_layers)

    def fractional_tokens_per_layer(self, n0: float, first_limit: float | None = None) -> list[float]:
        """``n0 * layer fraction`` for each layer (tokens, not rounded): the paper's FLOPs convention.
        With ``first_limit`` stage 1 removes at most that many tokens and the later stages keep their
        kept fractions of what it left."""
        if not n0 >= 0:
            raise ValueError(f"n0 (visual tokens) must be >= 0, got {n0!r}")
        scale = 1.0
        if first_limit is not None and n0 > 0 and self.ratios[0] * n0 > first_limit:
            scale = (n0 - first_limit) / (n0 * self.kept_fractions[0])  # kept_fractions[0] > 0: rho < 1
        return [n0 * f * scale for f in self.layer_fractions()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: ratios, kept fractions, boundaries, widths, achieved budget."""
        return {
            "ratios": list(self.ratios),
            "kept_fractions": list(self.kept_fractions),
            "boundaries": self.boundaries,
            "stage_widths": self.stage_widths,
            "num_layers": self.num_layers,
            "num_stages": self.num_stages,
            "achieved_budget": self.achieved_budget,
        }

    def describe(self, n0: int | None = None) -> str:
        """A readable table: one row per stage (layers, ratio, kept fraction, tokens if ``n0`` given)."""
        header = f"{'stage':>5}  {'layers':>9}  {'ratio':>7}  {'kept':>8}"
        if n0 is not None:
            header += f"  {'tokens':>8}"
        lines = [header]
        ends = self.boundaries[1:] + [self.num_layers]
        counts = self.stage_tokens(n0) if n0 is not None else [None] * self.num_stages
        for k, (start, end, r, kept, count) in enumerate(
            zip(self.boundaries, ends, self.ratios, self.kept_fractions, counts), start=1
        ):
            row = f"{k:>5}  {f'[{start},{end})':>9}  {r:>7.4f}  {kept:>8.4f}"
            if count is not None:
                row += f"  {count:>8d}"
            lines.append(row)
        lines.append(
            f"achieved budget {self.achieved_budget:.4f} (kept visual fraction averaged over "
            f"{self.num_layers} layers)"
        )
        if n0:  # whole tokens can keep more (or less) than the fractions say, noticeably for few tokens
            lines.append(f"with {n0} tokens, in whole tokens: {self.whole_token_budget(n0):.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _geometric_ratios(first_kept: float, q: float, num_stages: int) -> tuple[float, ...]:
    """Stage 1 keeps ``first_kept``; stage k >= 2 keeps ``q**(k-1)`` of the tokens entering it."""
    return (1.0 - first_kept,) + tuple(1.0 - q ** (k - 1) for k in range(2, num_stages + 1))


def _geometric_budget(first_kept: float, q: float, widths: list[int], num_layers: int) -> float:
    """Layer-weighted kept fraction of the geometric schedule, computed without forming ratios."""
    kept, total = first_kept, widths[0] * first_kept
    for k, width in enumerate(widths[1:], start=2):
        kept *= q ** (k - 1)
        total += width * kept
    return total / num_layers


def solve_schedule(
    budget: float,
    num_layers: int = 28,
    num_stages: int = 4,
    *,
    use_presets: bool = True,
    min_stage_ratio: float = 0.0,
) -> Schedule:
    """Per-stage pruning ratios whose layer-weighted kept fraction equals ``budget``.

    Presets: with ``use_presets``, ``num_stages == 4`` and stages of equal length (``L`` a multiple of 4,
    as the paper's 28), a budget within 1e-6 of 0.3, 0.2 or 0.1 returns the paper's schedule from
    :data:`PRESETS` (achieved budgets 0.300, 0.210, 0.110), unless one of its in-LLM ratios is below
    ``min_stage_ratio``. With unequal stages the presets' ratios would miss their budget (0.308 at L = 7), so
    the solver runs.

    Solver rule (every other case):

    1. Stage 1 keeps ``f_1 = min(sqrt(B), (B + B*L/w_1) / 2)``, where ``w_1`` is the number of layers
       of stage 1 and ``[B, B*L/w_1]`` is the interval of feasible ``f_1`` (later stages keep at most
       ``f_1`` and more than nothing); the second term is that interval's midpoint. With ``S = 1``,
       ``f_1 = B`` exactly. So ``rho = 1 - f_1``.
    2. Every later stage k = 2..S keeps ``q**(k-1)`` of the tokens entering it, i.e.
       ``R_k = 1 - q**(k-1)``: a steepening geometric decay, ``R_2 <= R_3 <= ... <= R_S``.
    3. ``q`` in (0, 1] is found by bisection so that the layer-weighted achieved budget equals ``B``
       (to about 1e-15; the achieved budget rises monotonically with ``q``).
    4. With ``min_stage_ratio`` m > 0, every in-LLM stage removes nothing (and is skipped) or at least
       m: when ``R_2 < m`` the first in-LLM stage gets ratio 0, stage 1's layers extend over it in step 1,
       and steps 1-3 run again on the remaining stages, until the smallest ratio is at least m or no
       in-LLM stage is left (then ``f_1 = B``). HieraVid passes ``1 - keep_clip[1]`` (0.05): Eq. 5's
       keep rate is at most 0.95, so a stage removes at least 5% of every segment and a smaller ratio
       would keep fewer tokens than the budget (high budgets: B = 0.9 over 24 layers would ask
       ``R_2 = 0.021``).

    ``B = 1`` gives all-zero ratios. Example: ``B = 0.3, L = 28, S = 4`` gives ``f_1 = sqrt(0.3)``
    (0.5477). Budgets below ``MIN_BUDGET`` (1e-9) are refused: ``1 - f_1`` would lose its precision
    in float64, and such a budget keeps less than one token of any real video.

    Args:
        budget: B in (0, 1], kept visual fraction averaged over decoder layers.
        num_layers: L, decoder layers.
        num_stages: S, stages (1 <= S <= L).
        use_presets: return the paper's schedule for B in {0.3, 0.2, 0.1} when S = 4 and 4 divides L.
        min_stage_ratio: the smallest non-zero ratio an in-LLM stage may have (step 4), in [0, 1].

    Returns:
        A :class:`Schedule` with non-increasing kept fractions and ratios in [0, 1).
    """
    budget = check_budget(budget)
    if budget < MIN_BUDGET:
        raise ValueError(
            f"budget must be at least {MIN_BUDGET:g} for the schedule solver, got {budget!r}; "
            f"such a budget keeps less than one visual token, raise it"
        )
    if not is_number(min_stage_ratio) or not 0.0 <= min_stage_ratio <= 1.0:  # 1: no in-LLM stage may run
        raise ValueError(f"min_stage_ratio must be a number in [0, 1], got {min_stage_ratio!r}")
    boundaries = stage_boundaries(num_layers, num_stages)
    if use_presets and num_stages == 4 and num_layers % num_stages == 0:
        for nominal, ratios in PRESETS.items():
            if abs(budget - nominal) <= _PRESET_TOLERANCE and all(r == 0 or r >= min_stage_ratio for r in ratios[1:]):
                return Schedule(ratios, num_layers)
    if budget == 1.0:
        return Schedule((0.0,) * num_stages, num_layers)
    if num_stages == 1:
        return Schedule((1.0 - budget,), num_layers)

    widths = [end - start for start, end in zip(boundaries, boundaries[1:] + [num_layers])]
    for skipped in range(num_stages - 1):  # in-LLM stages given ratio 0, from the first (step 4)
        solved = _solve_geometric(budget, num_layers, [sum(widths[: skipped + 1])] + widths[skipped + 1 :])
        ratios = solved[:1] + (0.0,) * skipped + solved[1:]
        if min(ratios[skipped + 1 :]) >= min_stage_ratio:
            return Schedule(ratios, num_layers)
    return Schedule((1.0 - budget,) + (0.0,) * (num_stages - 1), num_layers)


def _solve_geometric(budget: float, num_layers: int, widths: list[int]) -> tuple[float, ...]:
    """Steps 1-3 of :func:`solve_schedule` for stages of ``widths`` layers (at least two): the ratios."""
    num_stages = len(widths)
    upper = budget * num_layers / widths[0]
    first_kept = min(math.sqrt(budget), 0.5 * (budget + upper))

    # The achieved budget is continuous and increasing in q: as q -> 0 it tends to w_1*f_1/L < B, at
    # q = 1 it is f_1 > B, so bisection brackets the root.
    lo, hi = 0.0, 1.0
    for _ in range(_SOLVER_MAX_ITERATIONS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _geometric_budget(first_kept, mid, widths, num_layers) < budget:
            lo = mid
        else:
            hi = mid
    candidates = [q for q in (lo, hi) if q > 0.0 and all(r < 1.0 for r in _geometric_ratios(first_kept, q, num_stages))]
    if not candidates:  # 1 - q^(k-1) rounds to 1: B ~1e-3 or less with many stages (from 47 at L = 59, 80 at 200)
        raise ValueError(
            f"no geometric schedule reaches budget {budget!r} with {num_stages} stages over {num_layers} "
            f"layers; use fewer stages"
        )
    q = min(candidates, key=lambda q: abs(_geometric_budget(first_kept, q, widths, num_layers) - budget))
    return _geometric_ratios(first_kept, q, num_stages)
