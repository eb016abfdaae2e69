"""The attention a method is given at an in-LLM decision point is the model's own attention.

``VideoTokens.relevance_from_attention`` is computed from the decision layer's norm, projections and
rotary embedding for a few query rows only (it must work under SDPA). Here it is checked against the
attention probabilities the unpatched model itself returns under eager attention (``output_attentions``),
for every family, in a left-padded batch: at the decision layer, or at the layer before it where the
method ranks by that one's attention (``PruningMethod.attention_layer``, FastV's choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

import hieravid
from hieravid.methods.base import Decision, PruningMethod, VideoTokens
from tiny_models import build_inputs, build_model, video_layout

LAYER = 3


@dataclass
class _Recorder(PruningMethod):
    """Keeps every token; at ``LAYER`` records the attention it is offered for 1 and 3 query rows, that of
    layer ``ranked_by``."""

    ranked_by: int = LAYER
    seen: list[dict[int, torch.Tensor]] = field(default_factory=list)
    autocast: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name = "recorder"

    def decision_layers(self, num_layers: int) -> list[int]:
        return [LAYER]

    def attention_layer(self, layer: int) -> int:
        return self.ranked_by

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        assert tokens.relevance_from_attention is not None
        self.autocast.append(torch.is_autocast_enabled(tokens.features.device.type))
        self.seen.append({rows: tokens.relevance_from_attention(query_rows=rows) for rows in (1, 3)})
        return Decision(keep=torch.ones(tokens.num_tokens, dtype=torch.bool))


@pytest.mark.parametrize("ranked_by", [LAYER, LAYER - 1])
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision"])
def test_offered_attention_is_the_models_own(family, ranked_by):
    model = build_model(family, attn_implementation="eager")
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 2])
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions[ranked_by]  # (B, H, L, L)
        recorder = _Recorder(ranked_by=ranked_by)
        with hieravid.apply(model, method=recorder):
            model(**inputs)
    layout = video_layout(family, model, inputs)
    assert len(recorder.seen) == 2  # one decision per sample
    for b, offered in enumerate(recorder.seen):
        visual = torch.cat([torch.arange(start, end) for start, end in layout.frame_spans[b]])  # (N,)
        for rows, got in offered.items():
            expected = attentions[b, :, -rows:].mean(dim=(0, 1))[visual]  # heads and query rows averaged
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-6)


def test_under_autocast_the_layer_computes_as_itself_and_the_decision_in_float32():
    """A float32 model under ``torch.autocast`` (bfloat16): the relevance row's projections run as the
    layer's own do, in bfloat16, and the method decides with autocast off, its ops in float32 as they say
    (bfloat16 round-off, ~4e-3, is above the DPP's rank floor and the min-max normalisation's guard)."""
    model = build_model("qwen2_vl", attn_implementation="eager")
    inputs = build_inputs("qwen2_vl", model)
    recorder = _Recorder()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        attentions = model(**inputs, output_attentions=True).attentions[LAYER]  # (1, H, L, L) bfloat16
        with hieravid.apply(model, method=recorder):
            model(**inputs)
    assert recorder.autocast == [False]
    spans = video_layout("qwen2_vl", model, inputs).frame_spans[0]
    visual = torch.cat([torch.arange(start, end) for start, end in spans])  # (N,)
    for rows, got in recorder.seen[0].items():
        assert got.dtype == torch.float32
        expected = attentions[0, :, -rows:].float().mean(dim=(0, 1))[visual]
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=1e-4)


def test_a_ranking_layer_other_than_the_point_or_the_one_before_is_refused():
    model = build_model("qwen2_vl")
    with torch.no_grad(), hieravid.apply(model, method=_Recorder(ranked_by=LAYER - 2)):
        with pytest.raises(ValueError, match=r"attention_layer\(k\) must be k or k - 1"):
            model(**build_inputs("qwen2_vl", model))
