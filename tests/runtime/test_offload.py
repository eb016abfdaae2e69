"""Models dispatched by accelerate (``device_map``, CPU or disk offload), as 7B checkpoints are often loaded:
their weights sit on the meta device until a module's hook brings them in. HieraVid's relevance rows use a
layer's norm and projections outside the layer's forward; they run under the layer's hook, so a layer
preloaded as a whole (``preload_module_classes``) works too."""

from __future__ import annotations

import copy

import pytest
import torch

import hieravid
from hieravid.api import _execution_device
from tiny_models import build_inputs, build_model


@pytest.mark.parametrize("preload", [False, True])
@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_an_offloaded_model_is_pruned_as_the_model_in_memory(family, preload):
    accelerate = pytest.importorskip("accelerate")
    reference = build_model(family)
    inputs = build_inputs(family, reference)
    with torch.no_grad(), hieravid.apply(reference, "hieravid", 0.3) as handle:
        expected = reference(**inputs).logits
    kept = handle.last_stats.per_sample_tokens_per_layer
    model = build_model(family)  # the same weights
    layers = model.model.language_model.layers
    accelerate.cpu_offload(model, execution_device=torch.device("cpu"),
                           preload_module_classes=[type(layers[0]).__name__] if preload else None)
    assert layers[2].self_attn.k_proj.weight.device.type == "meta"  # loaded only while a hook runs
    assert _execution_device(model.model.language_model) == torch.device("cpu")
    with torch.no_grad():
        unpatched = model(**inputs).logits
        with hieravid.apply(model, "hieravid", 0.3) as handle:
            got = model(**inputs).logits
        torch.testing.assert_close(model(**inputs).logits, unpatched, rtol=0, atol=0)  # removed: as before
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert handle.last_stats.per_sample_tokens_per_layer == kept
    assert layers[2].self_attn.k_proj.weight.device.type == "meta"  # offloaded again


@pytest.mark.parametrize("dispatch", ["cpu_offload", "dispatch_model"])
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava_onevision"])
def test_generate_on_a_dispatched_model_prunes_as_in_memory(family, dispatch):
    # generate encodes the video before its first forward and passes the encoder output; the forward's
    # hook hands the model a rebuilt copy of it (same tensors), whose grid the runtime must still find.
    accelerate = pytest.importorskip("accelerate")
    reference = build_model(family)
    inputs = build_inputs(family, reference)
    with torch.no_grad(), hieravid.apply(reference, "hieravid", 0.4) as handle:
        expected = reference.generate(**inputs, max_new_tokens=3, do_sample=False)
    kept = handle.last_stats.per_sample_tokens_per_layer
    model = build_model(family)
    if dispatch == "cpu_offload":
        if family == "llava_onevision":
            pytest.skip("transformers' LLaVA-OneVision generate reads image_newline outside a hook (meta)")
        accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
    else:
        accelerate.dispatch_model(model, device_map={"": "cpu"}, force_hooks=True)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.4) as handle:
        got = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(got, expected)
    assert handle.last_stats.per_sample_tokens_per_layer == kept
    assert handle.last_stats.achieved_budget < 0.6


def _dispatch_in_blocks(accelerate, model) -> None:
    """The vision tower and the language model each a block of its own with its own hook, as a device_map
    that fits each on one GPU places them: the hook on the language model moves its inputs to its device."""
    accelerate.dispatch_model(model, force_hooks=True, device_map={
        "model.visual": "cpu", "model.language_model": "cpu", "lm_head": "cpu"})


def _answers_in_memory() -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The inputs, and what the model in memory generates unpatched and with HieraVid at 0.4."""
    reference = build_model("qwen2_vl")
    inputs = build_inputs("qwen2_vl", reference)
    with torch.no_grad():
        unpatched = reference.generate(**inputs, max_new_tokens=3, do_sample=False)
        with hieravid.apply(reference, "hieravid", 0.4):
            expected = reference.generate(**inputs, max_new_tokens=3, do_sample=False)
    return inputs, unpatched, expected


def test_a_hook_on_the_language_model_still_runs_around_the_pruned_forward_and_stays_after_remove():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.hooks import remove_hook_from_submodules

    inputs, unpatched, expected = _answers_in_memory()
    model = build_model("qwen2_vl")
    _dispatch_in_blocks(accelerate, model)
    text_model = model.model.language_model
    hook_forward = text_model.forward
    calls = []
    text_model._hf_hook.pre_forward = lambda module, *a, _pre=text_model._hf_hook.pre_forward, **k: (
        calls.append(1), _pre(module, *a, **k))[1]
    with torch.no_grad():
        with hieravid.apply(model, "hieravid", 0.4) as handle:
            got = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert torch.equal(got, expected) and handle.last_stats is not None
        assert len(calls) == 3  # prefill and two decoding steps went through the hook
        assert text_model.forward == hook_forward  # removed: the hook is in place, as before apply
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), unpatched)
    remove_hook_from_submodules(model)
    copy.deepcopy(model)  # nothing of the removed handle left behind


def test_unhooking_a_dispatched_model_keeps_it_pruned_and_remove_then_leaves_it_unpatched():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.hooks import remove_hook_from_submodules

    inputs, unpatched, expected = _answers_in_memory()
    model = build_model("qwen2_vl")
    _dispatch_in_blocks(accelerate, model)
    handle = hieravid.apply(model, "hieravid", 0.4)
    remove_hook_from_submodules(model)  # as before model.to(...) or dispatching again
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), expected)
        assert handle.last_stats is not None
        handle.remove()
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), unpatched)
    copy.deepcopy(model)


def test_a_model_dispatched_after_apply_keeps_its_hook_when_the_handle_is_removed():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.hooks import remove_hook_from_submodules

    inputs, unpatched, expected = _answers_in_memory()
    model = build_model("qwen2_vl")
    handle = hieravid.apply(model, "hieravid", 0.4)
    _dispatch_in_blocks(accelerate, model)
    text_model = model.model.language_model
    hook_forward = text_model.forward
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), expected)
        handle.remove()
        assert text_model.forward == hook_forward and text_model._hf_hook is not None
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), unpatched)
    remove_hook_from_submodules(model)
    copy.deepcopy(model)  # the removed handle's forward did not come back from the hook's _old_forward
