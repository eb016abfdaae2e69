"""The cache argument's name matches the installed transformers (``past_key_values`` up to 5.23,
``cache`` from 5.24): the runtime passes it to every decoder layer and returns it in its output."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny_models import FAMILIES, build_inputs, build_model

import hieravid
from hieravid.runtime import PrunedCache
from hieravid.runtime.compat import CACHE_ARG, cache_of


def test_cache_arg_is_the_name_the_layers_take():
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLTextModel

    for forward in (Qwen2VLTextModel.forward, Qwen2VLDecoderLayer.forward):
        assert CACHE_ARG in inspect.signature(forward).parameters


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_prefill_returns_its_cache_under_that_name(family, recwarn):
    model = build_model(family)
    inputs = build_inputs(family, model)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        out = model(**inputs, use_cache=True)
        cache = cache_of(out)
        assert isinstance(cache, PrunedCache)
        assert [cache.stored_length(i) for i in range(len(cache.layers))] == [
            kept[0].numel() for kept in handle.last_stats.kept_positions
        ]
        step = model(input_ids=inputs["input_ids"][:, -1:], **{CACHE_ARG: cache}, use_cache=True)
        assert cache_of(step) is cache
    # no deprecation warnings about the cache's name from transformers' forwards
    assert not [w for w in recwarn if "past_key_values" in str(w.message)]
