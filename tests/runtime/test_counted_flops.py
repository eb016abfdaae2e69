"""``last_stats.flops.exact`` against what the model multiplies, counted by torch's own FLOP counter.

The counter runs inside every decoder layer and the LM head (the vision tower and the runtime's deciding
are outside them). Eager attention, whose score and weighted-sum products the counter sees as matrix
products (it has no formula for SDPA's CPU kernel); one prompt, so there is no padding to multiply.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import hieravid
from hieravid.models import find_adapter
from tiny_models import FAMILIES, build_inputs, build_model


class Counted:
    """FLOPs counted in the calls of ``modules``, each call under its own counter."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.total = 0
        self.handles = []
        for module in modules:
            self.handles.append(module.register_forward_pre_hook(self._enter))
            self.handles.append(module.register_forward_hook(self._exit))

    def _enter(self, module, args) -> None:
        module._counter = FlopCounterMode(display=False)
        module._counter.__enter__()

    def _exit(self, module, args, output) -> None:
        module._counter.__exit__(None, None, None)
        self.total += module._counter.get_total_flops()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def counted(model, call) -> int:
    adapter, _ = find_adapter(model)
    counter = Counted([*adapter.text_model.layers, model.lm_head])
    try:
        with torch.no_grad():
            call()
    finally:
        counter.remove()
    return counter.total


CALLS = {
    "generate": lambda model, inputs: model.generate(**inputs, max_new_tokens=1, do_sample=False),
    "forward": lambda model, inputs: model(**inputs),  # logits of every position
    "last 3": lambda model, inputs: model(**inputs, logits_to_keep=3),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("method", ["hieravid", "fastv"])
def test_exact_flops_are_the_products_the_model_computes(family, call, method):
    model = build_model(family, attn_implementation="eager")
    inputs = build_inputs(family, model)
    vanilla = counted(model, lambda: CALLS[call](model, inputs))
    with hieravid.apply(model, method=method, budget=0.5) as handle:
        pruned = counted(model, lambda: CALLS[call](model, inputs))
    flops = handle.last_stats.flops
    assert handle.last_stats.pruned and pruned < vanilla
    assert flops.exact == pruned
    assert flops.vanilla_exact == vanilla


def test_sdpa_counts_the_causal_pairs_eager_the_dense_products():
    stats = {}
    for implementation in ("sdpa", "eager"):
        model = build_model("qwen2_vl", attn_implementation=implementation)
        with torch.no_grad(), hieravid.apply(model, method="hieravid", budget=0.3) as handle:
            model(**build_inputs("qwen2_vl", model))
        stats[implementation] = handle.last_stats
    shape = hieravid.flops.ModelShape.from_config(find_adapter(model)[0].text_config)
    pairs = 0  # per head: the dense n^2 less the causal n (n + 1) / 2 pairs, over every layer
    for visual in stats["sdpa"].per_sample_tokens_per_layer[0]:
        n = visual + stats["sdpa"].text_tokens[0]
        pairs += n * n - n * (n + 1) // 2
    dense_extra = 2 * 2 * pairs * shape.num_heads * shape.head_dim
    assert stats["eager"].flops.exact - stats["sdpa"].flops.exact == dense_extra


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_a_call_continuing_a_cache_counts_its_queries_against_the_cached_keys(family):
    """A video after a cached prefix (not pruned, warned): each new query also attends to the prefix's
    keys. Eager attention counts them as the counter does; SDPA, given an explicit mask for such a call,
    multiplies the same dense products."""
    from transformers import DynamicCache

    exact = {}
    for implementation in ("eager", "sdpa"):
        model = build_model(family, attn_implementation=implementation)
        inputs = build_inputs(family, model)
        ids = inputs["input_ids"]
        with hieravid.apply(model, method="hieravid", budget=0.5) as handle, pytest.warns(UserWarning, match="not pruned"):
            cache = DynamicCache(config=model.config)
            with torch.no_grad():
                model(input_ids=ids[:, :5], attention_mask=torch.ones_like(ids[:, :5]), past_key_values=cache)
            computed = counted(model, lambda: CALLS["generate"](model, dict(inputs, past_key_values=cache)))
        exact[implementation] = handle.last_stats.flops
        if implementation == "eager":
            assert not handle.last_stats.pruned and exact["eager"].exact == computed
    assert exact["sdpa"].exact == exact["eager"].exact == exact["eager"].vanilla_exact
