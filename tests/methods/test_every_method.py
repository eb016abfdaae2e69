"""Every registered method through the same adapters on every model family: batches, generation, sdpa
and eager, text never pruned, and the budget it reaches."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_inputs, build_model, unbatch, video_token_id

import hieravid
from hieravid.methods import available

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

METHODS = [m for m in available() if m != "vanilla"]
# 8 decoder layers in the tiny models: a budget every method can reach (FastV keeps layers 0-1 whole).
BUDGET = 0.4


@pytest.fixture(scope="module")
def models(family):
    return {attn: build_model(family, attn_implementation=attn) for attn in ("sdpa", "eager")}


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_batched_and_matches_single_samples(family, models, method):
    model = models["sdpa"]
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 1], seed=5)
    with torch.no_grad(), hieravid.apply(model, method, BUDGET) as handle:
        batched = model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, -3:]
        stats = handle.last_stats
        for b in range(2):
            alone = model.generate(**unbatch(family, model, inputs, b), max_new_tokens=3, do_sample=False)
            assert torch.equal(batched[b], alone[0, -3:]), f"{method}: sample {b} differs in the batch"
            assert handle.last_stats.per_sample_tokens_per_layer[0] == stats.per_sample_tokens_per_layer[b]
    assert stats.method == method
    assert stats.achieved_budget == pytest.approx(BUDGET, abs=0.08), stats.per_sample_tokens_per_layer
    assert stats.flops_ratio < 1.0
    vid = video_token_id(family, model)
    for b in range(2):
        valid = inputs["attention_mask"][b].bool()
        text = torch.nonzero(valid & (inputs["input_ids"][b] != vid)).squeeze(1)
        for kept in (layer[b] for layer in stats.kept_positions):
            assert torch.isin(text, kept).all(), f"{method} pruned a text token"


@pytest.fixture(scope="module")
def bf16_model(family):
    return build_model(family).to(torch.bfloat16)


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_on_a_bfloat16_model(family, bf16_model, method):
    """What GPU users run: weights, pixels and hidden states in bfloat16 (the kernels the methods build
    are float32 inside); the decisions reach the budget and the logits stay finite and bfloat16."""
    model = bf16_model
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 1], seed=5)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad(), hieravid.apply(model, method, BUDGET) as handle:
        logits = model(**inputs).logits[:, -1]
        new = model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, -3:]
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert new.shape == (2, 3)
    assert handle.last_stats.achieved_budget == pytest.approx(BUDGET, abs=0.08)


@pytest.mark.parametrize("method", METHODS)
def test_method_decides_the_same_under_sdpa_and_eager(family, models, method):
    kept = {}
    for attn, model in models.items():
        inputs = build_inputs(family, model, batch=2, prompt_tokens=[6, 9])
        with torch.no_grad(), hieravid.apply(model, method, BUDGET) as handle:
            model(**inputs)
        kept[attn] = handle.last_stats.kept_positions
    for a, b in zip(kept["sdpa"], kept["eager"]):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), method


@pytest.mark.parametrize("method", METHODS)
def test_budget_one_equals_the_unpatched_model(family, models, method):
    """Invariant 1 for every method: at budget 1 nothing is pruned and the logits are the unpatched model's."""
    model = models["sdpa"]
    inputs = build_inputs(family, model)
    with torch.no_grad():
        ref = model(**inputs).logits[:, -1]
        with hieravid.apply(model, method, 1.0):
            out = model(**inputs).logits[:, -1]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def models_by_family():
    return {}


# Qwen2.5-VL's own vision tower creates tensors on the default device (its window index), so it cannot run
# under this check; its language side is Qwen2-VL's.
@pytest.mark.parametrize("family_name", ["qwen2_vl", "qwen3_vl", "llava_onevision"])
@pytest.mark.parametrize("method", METHODS)
def test_every_tensor_created_names_its_device(models_by_family, family_name, method):
    """On a GPU, a tensor made without ``device=`` lands on the CPU and mixing it with the model's fails.
    With the default device set to meta, such a tensor is a meta tensor, which fails when it meets the
    model's (CPU) tensors or is read: generating gives the same tokens only if every tensor the runtime
    and the method create names its device (the host's, where it is meant for the host)."""
    if family_name not in models_by_family:
        models_by_family[family_name] = build_model(family_name)
    model = models_by_family[family_name]
    inputs = build_inputs(family_name, model, seed=2)
    with torch.no_grad(), hieravid.apply(model, method, BUDGET):
        expected = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        with torch.device("meta"):
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, expected)
