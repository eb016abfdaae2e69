"""Prefill FLOPs: the paper's convention (spec Eq. 12, from FastV) and an exact matmul count.

Two counts are offered because they answer different questions:

- :func:`paper_flops` reproduces the paper's tables: visual tokens only, ``4 n d^2 + 2 n^2 d + 2 n d m``
  per layer (no text tokens, no GQA, two FFN matrices, no LM head).
- :func:`exact_flops` counts every matrix multiplication of a prefill for a given model shape
  (GQA projections, causal attention, SwiGLU's three matrices, text tokens, the LM head).

Units: FLOPs (one multiply-add = 2 FLOPs); reports use TFLOPs (1e12 FLOPs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping, Sequence

from hieravid.config import HieraVidConfig, check_budget, check_choice, is_integer
from hieravid.schedule import floor_count, solve_schedule

__all__ = [
    "MODEL_PRESETS",
    "FlopsPreset",
    "FlopsReport",
    "ModelShape",
    "compare",
    "exact_flops",
    "paper_flops",
]

Method = Literal["hieravid", "uniform", "vanilla"]
METHODS: tuple[str, ...] = ("hieravid", "uniform", "vanilla")

_TERA = 1e12


def _read(config: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from an attribute-style or dict-style config; ``default`` when absent or None."""
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    return default if value is None else value


@dataclass(frozen=True)
class ModelShape:
    """Dimensions of a decoder-only language model that matter for FLOPs.

    Attributes:
        name: a label for reports.
        num_layers: L, decoder layers.
        hidden_size: d, residual width.
        intermediate_size: m, FFN (SwiGLU) width.
        num_heads: H, query heads.
        num_kv_heads: key/value heads (GQA); equal to ``num_heads`` for plain multi-head attention.
        head_dim: per-head width.
        vocab_size: V, LM-head outputs.
    """

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    def __post_init__(self) -> None:
        for key in (
            "num_layers",
            "hidden_size",
            "intermediate_size",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "vocab_size",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelShape.{key} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_config(cls, config: Any, name: str | None = None) -> "ModelShape":
        """Build a shape from a Hugging Face-style config (or a dict), without importing transformers.

        Multimodal configs are read through their ``text_config`` when present. Attributes used:
        ``num_hidden_layers``, ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
        ``num_key_value_heads`` (default: ``num_attention_heads``), ``head_dim`` (default:
        ``hidden_size // num_attention_heads``), ``vocab_size``.
        """
        text = _read(config, "text_config", None)
        source = config if text is None else text
        required = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
        missing = [key for key in required if _read(source, key) is None]
        if missing:
            raise ValueError(
                f"config lacks {', '.join(missing)}; pass the language model's config (or one with a "
                f"text_config holding these fields)"
            )
        heads = int(_read(source, "num_attention_heads"))
        hidden = int(_read(source, "hidden_size"))
        label = name or _read(config, "name_or_path", None) or _read(config, "model_type", None) or "model"
        return cls(
            name=str(label),
            num_layers=int(_read(source, "num_hidden_layers")),
            hidden_size=hidden,
            intermediate_size=int(_read(source, "intermediate_size")),
            num_heads=heads,
            num_kv_heads=int(_read(source, "num_key_value_heads", heads)),
            head_dim=int(_read(source, "head_dim", hidden // heads)),
            vocab_size=int(_read(source, "vocab_size")),
        )


def paper_flops(tokens_per_layer: Sequence[float], hidden_size: int, intermediate_size: int) -> float:
    """Spec Eq. 12 (FastV's formula): ``sum_l 4 n_l d^2 + 2 n_l^2 d + 2 n_l d m`` FLOPs.

    Args:
        tokens_per_layer: n_l, visual tokens entering each layer (may be fractional: the paper uses
            ``n0 * kept fraction``).
        hidden_size: d.
        intermediate_size: m.

    Returns:
        FLOPs of the visual tokens' prefill (text tokens, GQA, the third SwiGLU matrix and the LM head
        are ignored, as in the paper).
    """
    d, m = float(hidden_size), float(intermediate_size)
    total = 0.0
    for n in tokens_per_layer:
        if not n >= 0:
            raise ValueError(f"tokens per layer must be >= 0, got {n!r}")
        total += 4.0 * n * d * d + 2.0 * n * n * d + 2.0 * n * d * m
    return total


def exact_flops(
    shape: ModelShape,
    visual_tokens_per_layer: Sequence[int],
    text_tokens: int,
    *,
    lm_head_tokens: int = 1,
    causal: bool = True,
    past_tokens: int = 0,
) -> float:
    """Matrix-multiplication FLOPs (2 per multiply-add) of one prefill.

    Per layer, with ``n`` = visual tokens entering it + ``text_tokens``, ``q = H * head_dim`` and
    ``kv = H_kv * head_dim``:

    - Q projection ``2 n d q``; K and V projections ``2 * 2 n d kv``; output projection ``2 n q d``;
    - attention scores ``Q K^T`` and the weighted sum ``A V``: ``2 * 2 p H head_dim`` over the ``p``
      (query, key) pairs computed. Causal (the default): ``p = n (n + 1) / 2``, query ``i`` attending to
      keys ``0..i``, what a causal prefill needs and what flash kernels compute (SDPA's CPU and CUDA
      kernels with ``is_causal`` and no mask skip the masked pairs block by block); ``causal=False``:
      ``p = n^2``, the dense product that eager attention and SDPA's math path (or any call with an
      explicit mask) compute, half of it masked away;
    - SwiGLU MLP (gate, up, down): ``3 * 2 n d m``.

    Plus the LM head ``2 * lm_head_tokens * d * V`` (generation needs logits of the last token only).
    Elementwise work (norms, rotary embeddings, softmax, activations, residual adds) is not counted.

    Args:
        shape: the language model's dimensions.
        visual_tokens_per_layer: visual tokens entering each of ``shape.num_layers`` layers.
        text_tokens: unpruned text tokens (system prompt, question, template), present in every layer.
        lm_head_tokens: positions whose logits are computed.
        causal: count the causal pairs ``n (n + 1) / 2`` per head, not the dense ``n^2``.
        past_tokens: keys already in the cache (a call continuing one), which each of the ``n`` queries
            also attends to: ``n past + n (n + 1) / 2`` pairs, or ``n (past + n)`` dense.

    Returns:
        FLOPs.
    """
    counts = list(visual_tokens_per_layer)
    if len(counts) != shape.num_layers:
        raise ValueError(
            f"visual_tokens_per_layer has {len(counts)} entries but {shape.name} has {shape.num_layers} "
            f"layers; give one count per decoder layer"
        )
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be True (causal pairs) or False (dense products), got {causal!r}")
    if not all(count >= 0 for count in (text_tokens, lm_head_tokens, past_tokens)):  # NaN fails too
        raise ValueError(
            f"text_tokens, lm_head_tokens and past_tokens must be >= 0, got {text_tokens!r}, {lm_head_tokens!r} "
            f"and {past_tokens!r}"
        )
    d, m = shape.hidden_size, shape.intermediate_size
    q_width = shape.num_heads * shape.head_dim
    kv_width = shape.num_kv_heads * shape.head_dim
    total = 0
    for visual in counts:
        if visual < 0:
            raise ValueError(f"visual tokens per layer must be >= 0, got {visual!r}")
        n = visual + text_tokens
        projections = 2 * n * d * q_width + 2 * (2 * n * d * kv_width) + 2 * n * q_width * d
        pairs = n * past_tokens + (n * (n + 1) // 2 if causal else n * n)
        attention = 2 * (2 * pairs * shape.num_heads * shape.head_dim)
        mlp = 3 * (2 * n * d * m)
        total += projections + attention + mlp
    total += 2 * lm_head_tokens * d * shape.vocab_size
    return float(total)


_QWEN2_7B = dict(
    num_layers=28,
    hidden_size=3584,
    intermediate_size=18944,
    num_heads=28,
    num_kv_heads=4,
    head_dim=128,
    vocab_size=152064,
)


@dataclass(frozen=True)
class FlopsPreset:
    """A model and the input size its paper evaluates at.

    Attributes:
        shape: the language model's dimensions.
        frames: sampled frames (or temporal groups for Qwen2-VL, see :data:`MODEL_PRESETS`).
        tokens_per_frame: visual tokens per frame (or per temporal group).
        text_tokens: text tokens of a typical prompt (system prompt + question + chat template).
    """

    shape: ModelShape
    frames: int
    tokens_per_frame: int
    text_tokens: int = 128

    @property
    def visual_tokens(self) -> int:
        """N_v = frames * tokens_per_frame (tokens)."""
        return self.frames * self.tokens_per_frame


#: Presets for the paper's models. All three use the Qwen2-7B language model (L=28, d=3584, m=18944,
#: 28 query heads, 4 KV heads of 128, V=152064) and 128 text tokens (a typical system prompt, question
#: and chat template).
#:
#: - ``llava-video-7b``: 64 frames x 169 tokens (13x13 after pooling; FLOPs count no newline tokens).
#: - ``llava-onevision-7b``: 32 frames x 196 tokens (14x14 after 2x2 pooling).
#: - ``qwen2-vl-7b``: 32 sampled frames at 448x448; the vision encoder merges 2 frames into one
#:   temporal group and 2x2 patches into one token, giving 16 groups x 256 tokens = 4096 visual tokens.
#:   ``frames`` here counts temporal groups (16).
MODEL_PRESETS: Mapping[str, FlopsPreset] = MappingProxyType(
    {
        "llava-video-7b": FlopsPreset(ModelShape(name="llava-video-7b", **_QWEN2_7B), 64, 169),
        "llava-onevision-7b": FlopsPreset(ModelShape(name="llava-onevision-7b", **_QWEN2_7B), 32, 196),
        "qwen2-vl-7b": FlopsPreset(ModelShape(name="qwen2-vl-7b", **_QWEN2_7B), 16, 256),
    }
)


@dataclass(frozen=True)
class FlopsReport:
    """Prefill FLOPs of a pruning method against the unpruned model.

    Attributes:
        preset: model preset name.
        method: ``hieravid``, ``uniform`` or ``vanilla``.
        budget: requested relative token budget B.
        achieved_budget: kept visual fraction averaged over layers that the schedule realises.
        visual_tokens: N_v, visual tokens entering layer 0 before pruning.
        text_tokens: text tokens counted by the exact count.
        vanilla_tflops, pruned_tflops, ratio: paper convention (Eq. 12, visual tokens only, fractional
            counts ``N_v * kept fraction``); ``ratio = pruned / vanilla`` as a fraction.
        exact_vanilla_tflops, exact_pruned_tflops, exact_ratio: :func:`exact_flops` with integer counts
            and the text tokens.
        tokens_per_layer: integer visual tokens entering each layer.
        ratios: per-stage pruning ratios (``uniform``: one stage removing ``1 - B`` before layer 0).
        boundaries: the first layer of each stage.
        attention: the exact count's attention pairs, ``causal`` or ``dense``.
    """

    preset: str
    method: str
    budget: float
    achieved_budget: float
    visual_tokens: int
    text_tokens: int
    vanilla_tflops: float
    pruned_tflops: float
    ratio: float
    exact_vanilla_tflops: float
    exact_pruned_tflops: float
    exact_ratio: float
    tokens_per_layer: tuple[int, ...]
    ratios: tuple[float, ...]
    boundaries: tuple[int, ...] = field(default=(0,))
    attention: str = "causal"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists)."""
        out = asdict(self)
        out["tokens_per_layer"] = list(self.tokens_per_layer)
        out["ratios"] = list(self.ratios)
        out["boundaries"] = list(self.boundaries)
        return out


def compare(
    preset_name: str,
    method: Method,
    budget: float = 1.0,
    *,
    frames: int | None = None,
    text_tokens: int | None = None,
    causal: bool = True,
    tokens_per_frame: int | None = None,
) -> FlopsReport:
    """FLOPs of ``method`` at ``budget`` on a model preset, in both conventions.

    - ``hieravid``: HieraVid's default schedule, ``solve_schedule(budget, L, 4)`` with its
      ``min_stage_ratio`` (the paper's presets at 0.3, 0.2, 0.1). Integer counts follow :meth:`Schedule.tokens_per_layer`.
    - ``uniform``: keeps a fraction B in every layer (integer count ``N_v - floor((1 - B) N_v)``, as the
      methods that keep B before the LLM do).
    - ``vanilla``: keeps every token; ``budget`` must be 1.

    Args:
        preset_name: a key of :data:`MODEL_PRESETS`.
        method: ``hieravid``, ``uniform`` or ``vanilla``.
        budget: B in (0, 1], kept visual fraction averaged over layers.
        frames: override the preset's frame (temporal group) count.
        text_tokens: override the preset's text-token count (exact count only).
        tokens_per_frame: override the preset's visual tokens per frame (temporal group), e.g. 196 for
            LLaVA-Video in its Hugging Face form, which pools frames to 14x14 where the paper counts 13x13.
        causal: the exact count's attention over the causal pairs (default) or the dense ``n x n``
            products of eager attention (see :func:`exact_flops`).
    """
    if preset_name not in MODEL_PRESETS:
        raise ValueError(
            f"unknown model preset {preset_name!r}; choose one of {', '.join(sorted(MODEL_PRESETS))}"
        )
    check_choice(method, "method", METHODS)
    budget = check_budget(budget)
    preset = MODEL_PRESETS[preset_name]
    overrides = {"frames": (frames, 1), "text_tokens": (text_tokens, 0), "tokens_per_frame": (tokens_per_frame, 1)}
    for name, (value, least) in overrides.items():
        if value is not None and (not is_integer(value) or value < least):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    frames, text_tokens, tokens_per_frame = (None if v is None else int(v) for v, _ in overrides.values())
    shape = preset.shape
    num_layers = shape.num_layers
    per_frame = preset.tokens_per_frame if tokens_per_frame is None else tokens_per_frame
    n0 = (preset.frames if frames is None else frames) * per_frame
    text = preset.text_tokens if text_tokens is None else text_tokens

    if method == "vanilla":
        if budget != 1.0:
            raise ValueError(
                f"method 'vanilla' keeps every token, so budget must be 1.0, got {budget!r}; "
                f"choose method 'hieravid' or 'uniform' to prune"
            )
        fractional = [float(n0)] * num_layers
        integer = [n0] * num_layers
        ratios: tuple[float, ...] = (0.0,)
        boundaries: tuple[int, ...] = (0,)
        achieved = 1.0
    elif method == "uniform":
        fractional = [budget * n0] * num_layers
        integer = [n0 - floor_count((1.0 - budget) * n0)] * num_layers  # as keep_count: what a method keeps
        ratios = (1.0 - budget,)
        boundaries = (0,)
        achieved = budget
    else:
        schedule = solve_schedule(budget, num_layers, 4, min_stage_ratio=HieraVidConfig().min_stage_ratio)
        # Stage 1 merges into the previous frame: it can remove at most (T-1) * P tokens.
        num_frames = preset.frames if frames is None else frames
        first_limit = (num_frames - 1) * per_frame
        from hieravid.ops.segment import warn_if_merge_is_capped  # torch, only when it can warn

        warn_if_merge_is_capped(num_frames, per_frame, schedule.ratios[0], "hieravid")
        fractional = schedule.fractional_tokens_per_layer(n0, first_limit)
        integer = schedule.tokens_per_layer(n0, first_limit)
        ratios = schedule.ratios
        boundaries = tuple(schedule.boundaries)
        achieved = sum(fractional) / (n0 * num_layers)

    d, m = shape.hidden_size, shape.intermediate_size
    vanilla = paper_flops([n0] * num_layers, d, m)
    pruned = paper_flops(fractional, d, m)
    exact_vanilla = exact_flops(shape, [n0] * num_layers, text, causal=causal)
    exact_pruned = exact_flops(shape, integer, text, causal=causal)
    return FlopsReport(
        preset=preset_name,
        method=method,
        budget=budget,
        achieved_budget=achieved,
        visual_tokens=n0,
        text_tokens=text,
        vanilla_tflops=vanilla / _TERA,
        pruned_tflops=pruned / _TERA,
        ratio=pruned / vanilla if vanilla > 0 else math.nan,
        exact_vanilla_tflops=exact_vanilla / _TERA,
        exact_pruned_tflops=exact_pruned / _TERA,
        exact_ratio=exact_pruned / exact_vanilla,
        tokens_per_layer=tuple(integer),
        ratios=tuple(ratios),
        boundaries=boundaries,
        attention="causal" if causal else "dense",
    )
