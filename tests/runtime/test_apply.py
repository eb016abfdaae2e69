"""hieravid.apply on tiny random-weight models of every supported family: the invariants of DESIGN.md.

The independent checks run the model's own decoder layers by hand, in this file, on the tokens the
runtime reports as kept (``last_stats.kept_positions``): gathered embeddings, rotary cos/sin of the
original positions, a plain causal mask. They do not go through the runtime.
"""

from __future__ import annotations

import contextlib
import copy
import pickle

import pytest
import torch
from device_reads import DeviceReads
from tiny_models import build_inputs, build_model, unbatch, video_layout, video_token_id
from transformers import DynamicCache

import hieravid
from hieravid.flops import paper_flops
from hieravid.runtime import PrunedCache
from hieravid.runtime.compat import CACHE_ARG, cache_of
from hieravid.schedule import pruned_count
from hieravid.warning import HieravidWarning

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# In-LLM stages only (rho = 0): every kept token is an original token, so the by-hand check needs no
# merge arithmetic. Stage-1 merging is checked on its own below.
SELECT_ONLY = dict(ratios=(0.0, 0.5, 0.4, 0.5))


@contextlib.contextmanager
def _record_prefills(handle, seen):
    """Append the runtime's statistics after every prefill to ``seen``."""
    runtime = handle.runtime
    prefill = runtime._prefill

    def recording(*args, **kwargs):
        out = prefill(*args, **kwargs)
        seen.append(runtime.last_stats)
        return out

    runtime._prefill = recording
    try:
        yield
    finally:
        del runtime._prefill


def _generate(model, inputs, n=4, **kw):
    return model.generate(**inputs, max_new_tokens=n, do_sample=False, **kw)


def _language_model(model):
    return model.model.language_model


def _capture_decoder_inputs(model, inputs):
    """Run the UNPATCHED model once and return what its language model was called with."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)

    handle = _language_model(model).register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return seen


def _by_hand_last_logits(model, family, captured, kept_per_layer, extra=0):
    """Last-position logits from running the decoder layers by hand (batch of one).

    ``kept_per_layer[l]``: sorted original positions entering layer l; ``extra`` trailing positions of
    the captured sequence (generated tokens) are appended to every layer's set."""
    lm = _language_model(model)
    embeds = captured["inputs_embeds"][0]  # (N, D)
    length = embeds.shape[0]
    positions = captured["position_ids"]
    if family == "llava_onevision":
        rope = torch.arange(length)[None] if positions is None else positions
        text = rope
    else:
        rope = positions[1:] if positions.shape[0] == 4 else positions  # (3, 1, N)
        text = None
    cos, sin = lm.rotary_emb(embeds[None], rope)  # (1, N, d_h)
    deepstack = []
    if captured.get("deepstack_visual_embeds") is not None:
        where = captured["visual_pos_masks"][0]
        for emb in captured["deepstack_visual_embeds"]:
            dense = torch.zeros_like(embeds)
            dense[where] = emb
            deepstack.append(dense)
    tail = torch.arange(length - extra, length)
    current = None  # original positions of the rows of `hidden`
    hidden = None
    for layer_idx, layer in enumerate(lm.layers):
        keep = torch.cat([kept_per_layer[layer_idx], tail])
        if current is None:
            hidden = embeds[keep]
        else:
            hidden = hidden[torch.isin(current, keep)]
        current = keep
        n = keep.numel()
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
        if lm.config._attn_implementation == "eager":
            causal = torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
        hidden = layer(
            hidden[None],
            attention_mask=causal,
            position_embeddings=(cos[:, keep], sin[:, keep]),
            position_ids=None if text is None else text[:, keep],
        )[0]
        if layer_idx < len(deepstack):
            hidden = hidden + deepstack[layer_idx][keep]
    return model.lm_head(lm.norm(hidden[-1]))


# ------------------------------------------------------------------------------------------- invariants


def test_vanilla_equals_unpatched_model(family, model):
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 2])
    with torch.no_grad():
        ref_logits = model(**inputs).logits
        ref_tokens = _generate(model, inputs)
        with hieravid.apply(model, "vanilla") as handle:
            logits = model(**inputs).logits
            tokens = _generate(model, inputs)
            stats = handle.last_stats
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits[valid], ref_logits[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
    visual = int((inputs["input_ids"][0] == video_token_id(family, model)).sum())
    expected_visual = visual - 1 if family == "llava_onevision" else visual  # its newline counts as text
    assert stats.per_sample_tokens_per_layer[0] == [expected_visual] * len(_language_model(model).layers)
    assert stats.flops_ratio == pytest.approx(1.0)


def test_the_instruction_is_the_text_after_the_video_at_every_decision(family, model):
    """Methods get the hidden states of the text after the video, at layer 0 and inside the LLM, in a
    left-padded batch; the reference is the unpatched model's own layer inputs at those positions."""
    from hieravid.methods.base import Decision, PruningMethod

    class Recording(PruningMethod):
        def __init__(self):
            self.name, self.seen = "recording", []

        def decision_layers(self, num_layers):
            return [0, 3]

        def decide(self, layer, tokens, state):
            self.seen.append((layer, tokens.instruction))
            return Decision(keep=torch.ones(tokens.num_tokens, dtype=torch.bool))  # nothing removed

    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 2])
    layer_inputs = {}

    def capture(index):
        def hook(module, args, kwargs):
            layer_inputs[index] = (args[0] if args else kwargs["hidden_states"]).clone()
        return hook

    handles = [_language_model(model).layers[i].register_forward_pre_hook(capture(i), with_kwargs=True) for i in (0, 3)]
    with torch.no_grad():
        model(**inputs)  # unpatched: the reference layer inputs
    for handle in handles:
        handle.remove()
    method = Recording()
    with torch.no_grad(), hieravid.apply(model, method):
        model(**inputs)
    video = inputs["input_ids"] == video_token_id(family, model)
    for b in range(2):  # LLaVA's closing newline, never pruned, is still the video's: not the instruction
        last_video = int(torch.nonzero(video[b]).max())
        after = inputs["attention_mask"][b].bool() & (torch.arange(video.shape[1]) > last_video)
        for layer, instruction in method.seen[b::2]:
            torch.testing.assert_close(instruction, layer_inputs[layer][b, after], rtol=1e-5, atol=1e-5)
    assert [layer for layer, _ in method.seen] == [0, 0, 3, 3]


def test_budget_one_equals_unpatched_model(family, model):
    inputs = build_inputs(family, model)
    with torch.no_grad():
        ref = model(**inputs).logits[:, -1]
        with hieravid.apply(model, "hieravid", budget=1.0) as handle:
            out = model(**inputs).logits[:, -1]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert handle.last_stats.flops_ratio == pytest.approx(1.0)
    with torch.no_grad():  # and the answer generated from them
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        with hieravid.apply(model, "hieravid", budget=1.0):
            assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), expected)


def test_remove_restores_the_model_exactly(family, model):
    inputs = build_inputs(family, model)
    lm = _language_model(model)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_attrs = (set(model.__dict__), set(model.model.__dict__), set(lm.__dict__))
    with torch.no_grad():
        ref = model(**inputs).logits
        handle = hieravid.apply(model, "hieravid", 0.3)
        pruned = model(**inputs).logits
        handle.remove()
        after = model(**inputs).logits
    assert pruned.shape != ref.shape  # it did prune
    torch.testing.assert_close(after, ref, rtol=0, atol=0)
    assert (set(model.__dict__), set(model.model.__dict__), set(lm.__dict__)) == before_attrs
    assert not model.model._forward_hooks and not model.model._forward_pre_hooks
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())
    handle.remove()  # idempotent


def test_a_budget_given_to_vanilla_is_said_to_be_ignored(family, model):
    import warnings

    with pytest.warns(HieravidWarning, match=r"^method vanilla keeps every visual token: budget 0.05 is ignored$"):
        hieravid.apply(model, "vanilla", 0.05).remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hieravid.apply(model, "vanilla").remove()
        hieravid.apply(model, "vanilla", 1.0).remove()


def test_apply_twice_is_refused(family, model):
    with hieravid.apply(model, "vanilla"):
        with pytest.raises(ValueError, match="already applied"):
            hieravid.apply(model, "hieravid")
        with pytest.raises(ValueError, match="already applied"):  # the inner model shares the patched modules
            hieravid.apply(model.model, "fastv", 0.5)
    with hieravid.apply(model.model, "vanilla"):
        with pytest.raises(ValueError, match="already applied"):
            hieravid.apply(model, "hieravid")
    inputs = build_inputs(family, model)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.5) as handle:  # and it works again after both
        model(**inputs)
    assert handle.last_stats is not None and handle.last_stats.flops_ratio < 1


def test_a_removed_handle_cannot_be_entered_again(family, model):
    handle = hieravid.apply(model, "hieravid", 0.3)
    with handle:
        pass
    with pytest.raises(ValueError, match=r"removed.*hieravid.apply"):
        with handle:
            pass
    assert not handle.active


def test_copying_a_patched_model_is_refused_with_the_fix(family, model):
    with hieravid.apply(model, "hieravid", 0.3):
        with pytest.raises(TypeError, match="handle.remove"):
            copy.deepcopy(model)
        with pytest.raises(TypeError, match="handle.remove"):
            pickle.dumps(model)
        assert set(model.state_dict()) == set(pickle.loads(pickle.dumps(model.state_dict())))
    twin = copy.deepcopy(model)  # once removed, a copy can be patched on its own
    inputs = build_inputs(family, model)
    with torch.no_grad(), hieravid.apply(twin, "hieravid", 0.3) as handle, hieravid.apply(model, "hieravid", 0.3):
        torch.testing.assert_close(twin(**inputs).logits, model(**inputs).logits)
    assert handle.last_stats is not None and handle.last_stats.flops_ratio < 1


def test_a_shallow_copy_made_while_patched_is_free_once_the_handle_is_removed(family, model):
    """copy.copy copies the model's own attributes (the mark, the patched generate) but shares its modules:
    once the handle is removed, the copy is neither 'already applied' nor uncopyable for good."""
    with hieravid.apply(model, "hieravid", 0.3):
        shallow = copy.copy(model)
    with hieravid.apply(shallow, "hieravid", 0.3) as handle:
        assert handle.active
    assert "generate" not in shallow.__dict__ and shallow.generate.__self__ is shallow  # not the original's
    copy.deepcopy(shallow)


def test_text_and_last_token_are_never_pruned(family, model):
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[6, 9], left_pad=[1, 0])
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.1) as handle:
        model(**inputs)
    stats = handle.last_stats
    vid = video_token_id(family, model)
    for b in range(2):
        valid = inputs["attention_mask"][b].bool()
        is_text = valid & (inputs["input_ids"][b] != vid)
        text_positions = torch.nonzero(is_text).squeeze(1)
        if family == "llava_onevision":  # the trailing newline of the video is text
            video = torch.nonzero(inputs["input_ids"][b] == vid).squeeze(1)
            text_positions = torch.sort(torch.cat([text_positions, video[-1:]])).values
        last = int(torch.nonzero(valid).max())
        for kept in (layer[b] for layer in stats.kept_positions):
            assert torch.isin(text_positions, kept).all()
            assert int(kept.max()) == last
        assert stats.per_sample_tokens_per_layer[b][-1] < stats.per_sample_tokens_per_layer[b][0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pruned_prefill_equals_layers_run_by_hand(family, attn):
    model = build_model(family, attn_implementation=attn)
    inputs = build_inputs(family, model)
    captured = _capture_decoder_inputs(model, inputs)
    with torch.no_grad(), hieravid.apply(model, "hieravid", **SELECT_ONLY) as handle:
        logits = model(**inputs).logits[0, -1]
        kept = [layer[0] for layer in handle.last_stats.kept_positions]
        assert kept[-1].numel() < kept[0].numel()
        expected = _by_hand_last_logits(model, family, captured, kept)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_generation_with_cache_equals_recompute_with_same_decisions(family, model):
    inputs = build_inputs(family, model)
    n_new = 4
    with torch.no_grad(), hieravid.apply(model, "hieravid", **SELECT_ONLY) as handle:
        out = _generate(model, inputs, n_new, return_dict_in_generate=True, output_logits=True)
        kept = [layer[0] for layer in handle.last_stats.kept_positions]
    sequence = out.sequences  # (1, N + n_new)
    prompt_len = inputs["input_ids"].shape[1]
    for step in range(n_new):
        full = dict(inputs)
        full["input_ids"] = sequence[:, : prompt_len + step]
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        if "mm_token_type_ids" in inputs:
            full["mm_token_type_ids"] = torch.cat(
                [inputs["mm_token_type_ids"], torch.zeros(1, step, dtype=torch.long)], dim=1
            )
        captured = _capture_decoder_inputs(model, full)
        with torch.no_grad():
            expected = _by_hand_last_logits(model, family, captured, kept, extra=step)
        torch.testing.assert_close(out.logits[step][0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["vanilla", "hieravid"])
def test_a_cache_the_caller_passes_is_the_one_filled(method):
    """A loop that passes its own DynamicCache at every step (transformers fills it in place) decodes as
    ``generate`` does: the prefill fills that object, pruned or not. (LLaVA-OneVision: the Qwen-VL models
    of transformers 5.23 cannot take such a bare decoding step, without hieravid either.)"""
    from transformers import DynamicCache

    model = build_model("llava_onevision")
    inputs = build_inputs("llava_onevision", model)
    with torch.no_grad(), hieravid.apply(model, method, 0.3):
        expected = _generate(model, inputs, 2, return_dict_in_generate=True, output_logits=True).logits
        cache = DynamicCache(config=model.config)
        out = model(**inputs, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)  # (1, 1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], dim=1)
        step = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
    assert out.past_key_values is cache
    torch.testing.assert_close(out.logits[:, -1], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.logits[:, -1], expected[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("edit", ["select", "repeat"])
def test_batch_edits_of_a_pruned_cache_keep_each_rows_padding(edit):
    """``batch_select_indices`` and ``batch_repeat_interleave`` (the Cache API's batch edits, for callers
    and decoding strategies that use them) move each row's padding mask with its keys: the next step
    equals the unedited step's rows, as with the model's own cache. (LLaVA-OneVision: see
    test_a_cache_the_caller_passes_is_the_one_filled.)"""
    import copy

    from hieravid.runtime.compat import cache_of

    model = build_model("llava_onevision")
    inputs = build_inputs("llava_onevision", model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 3])
    rows = torch.tensor([1, 0]) if edit == "select" else torch.tensor([0, 0, 1, 1])
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        out = model(**inputs, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)  # (2, 1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], dim=1)
        cache, edited = cache_of(out), copy.deepcopy(cache_of(out))
        if edit == "select":
            edited.batch_select_indices(rows)
        else:
            edited.batch_repeat_interleave(2)
        step = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, -1]
        moved = model(input_ids=token[rows], attention_mask=mask[rows], past_key_values=edited, use_cache=True)
    torch.testing.assert_close(moved.logits[:, -1], step[rows], rtol=1e-5, atol=1e-5)


def test_positions_given_once_for_a_batch(family, model):
    """``position_ids`` of shape (1, N) for a batch (the model broadcasts them) prune as the same positions
    given for every row."""
    inputs = build_inputs(family, model, batch=2, prompt_tokens=8)  # same length, no padding
    once = torch.arange(inputs["input_ids"].shape[1])[None]  # (1, N)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        expected = model(**inputs, position_ids=once.expand(2, -1)).logits
        torch.testing.assert_close(model(**inputs, position_ids=once).logits, expected, rtol=0, atol=0)


def test_tokens_per_layer_equal_the_schedule(family, model):
    inputs = build_inputs(family, model)
    num_layers = len(_language_model(model).layers)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3, exact_total=True) as handle:
        model(**inputs)
    stats = handle.last_stats
    n0 = stats.visual_tokens[0]
    expected = handle.method.schedule(num_layers).tokens_per_layer(n0)
    assert stats.tokens_per_layer == expected
    assert stats.achieved_budget == pytest.approx(sum(expected) / (n0 * num_layers))
    assert stats.achieved_budget == pytest.approx(0.3, abs=0.02)
    text_config = _language_model(model).config
    assert stats.flops.paper == pytest.approx(
        paper_flops(expected, text_config.hidden_size, text_config.intermediate_size)
    )
    assert 0 < stats.flops_ratio < 0.5
    assert stats.flops.exact < stats.flops.vanilla_exact
    assert stats.decide_seconds > 0
    assert stats.num_segments >= 1


def test_a_high_budget_is_kept(family, model):
    """Eq. 5 keeps at most 95% of a segment at a stage, so the schedule skips in-LLM stages that would
    have to remove less: B = 0.99 merges 1% before the LLM and prunes nothing after (running every
    stage kept about 0.86 here)."""
    inputs = build_inputs(family, model)
    num_layers = len(_language_model(model).layers)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.99) as handle:
        model(**inputs)
    assert handle.method.decision_layers(num_layers) == [0]
    n0 = handle.last_stats.visual_tokens[0]
    assert handle.last_stats.achieved_budget == pytest.approx((n0 - pruned_count(0.01, n0)) / n0)


def test_batch_equals_each_sample_alone(family, model):
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[9, 4], left_pad=[0, 3], seed=3)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        batched = _generate(model, inputs)[:, -4:]
        batch_tokens = handle.last_stats.per_sample_tokens_per_layer
        for b in range(2):
            alone = _generate(model, unbatch(family, model, inputs, b))[:, -4:]
            assert torch.equal(batched[b], alone[0])
            assert handle.last_stats.per_sample_tokens_per_layer[0] == batch_tokens[b]


def test_sdpa_and_eager_make_the_same_decisions(family):
    kept = {}
    for attn in ("sdpa", "eager"):
        model = build_model(family, attn_implementation=attn)
        inputs = build_inputs(family, model, batch=2, prompt_tokens=[7, 3])
        with torch.no_grad(), hieravid.apply(model, "hieravid", 0.2) as handle:
            model(**inputs)
        kept[attn] = handle.last_stats.kept_positions
    for a, b in zip(kept["sdpa"], kept["eager"]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_decisions_are_deterministic(family, model):
    inputs = build_inputs(family, model)
    runs = []
    for _ in range(2):
        with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
            model(**inputs)
        runs.append(handle.last_stats.kept_positions)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(*runs))


def test_decoding_never_prunes_again(family, model):
    inputs = build_inputs(family, model)
    n_new = 3
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        out = _generate(model, inputs, n_new, return_dict_in_generate=True)
    cache = cache_of(out)
    assert isinstance(cache, PrunedCache)
    prompt = inputs["input_ids"].shape[1]
    # generate feeds the last new token back only when it needs another one: n_new - 1 decode steps
    assert cache.get_seq_length() == prompt + n_new - 1
    for layer_idx, kept in enumerate(handle.last_stats.kept_positions):
        assert cache.stored_length(layer_idx) == kept[0].numel() + n_new - 1


def test_crop_takes_back_generated_and_trailing_text_tokens_only(family, model):
    inputs = build_inputs(family, model)
    n_new = 4
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        out = _generate(model, inputs, n_new, return_dict_in_generate=True)
        cache = cache_of(out)
        stored = [cache.stored_length(layer) for layer in range(len(cache.layers))]
        prompt = inputs["input_ids"].shape[1]
        after_video = prompt - video_layout(family, model, inputs).frame_spans[0][-1][1]  # text after the last frame
        cache.crop(-2)  # two generated tokens
        assert cache.get_seq_length() == prompt + n_new - 1 - 2
        assert [cache.stored_length(layer) for layer in range(len(cache.layers))] == [n - 2 for n in stored]
        assert [m.shape[1] for m in cache.key_valid] == [n - 2 for n in stored]
        with pytest.raises(ValueError, match="last visual token"):
            cache.crop(-(n_new - 3 + after_video + 1))  # into the video, where the layers differ
        cache.crop(-(n_new - 3 + after_video))  # the rest of the generated tokens and the text after the video
        assert cache.get_seq_length() == prompt - after_video


def test_assisted_generation(family, model):
    """generate with a draft model appends its guesses to the prompt and crops the rejected ones from the
    cache: without pruning this equals the unpatched model; with pruning it runs (the decisions see the
    guesses as the prompt's last tokens)."""
    draft = build_model(family, seed=1)
    inputs = build_inputs(family, model)
    with torch.no_grad():
        plain = _generate(model, inputs, 8, assistant_model=draft)
        with hieravid.apply(model, "vanilla"):
            torch.testing.assert_close(_generate(model, inputs, 8, assistant_model=draft), plain, rtol=0, atol=0)
        with hieravid.apply(model, "hieravid", 0.3) as handle:
            pruned = _generate(model, inputs, 8, assistant_model=draft)
    assert pruned.shape == plain.shape and handle.last_stats.flops_ratio < 1


def test_prompt_lookup_generation(family, model):
    """generate with prompt lookup guesses tokens by matching the prompt's n-grams, appends them and crops
    the rejected ones: without pruning this equals the unpatched model; with pruning it runs."""
    inputs = build_inputs(family, model)
    with torch.no_grad():
        plain = _generate(model, inputs, 8, prompt_lookup_num_tokens=3)
        with hieravid.apply(model, "vanilla"):
            torch.testing.assert_close(_generate(model, inputs, 8, prompt_lookup_num_tokens=3), plain, rtol=0, atol=0)
        with hieravid.apply(model, "hieravid", 0.3) as handle:
            pruned = _generate(model, inputs, 8, prompt_lookup_num_tokens=3)
    assert pruned.shape == plain.shape and handle.last_stats.flops_ratio < 1


def test_generation_without_cache_prunes_every_step(family, model):
    """generate(use_cache=False) runs the whole sequence at every step with the video it encoded once; each
    step is a pruned prefill of its own (its last token the relevance query), not the unpruned model."""
    inputs = build_inputs(family, model, batch=2, left_pad=[0, 3])
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        plain = _generate(model, inputs, 3, use_cache=False)
        with hieravid.apply(model, "vanilla"):
            torch.testing.assert_close(_generate(model, inputs, 3, use_cache=False), plain, rtol=0, atol=0)
        with hieravid.apply(model, "hieravid", 0.3) as handle:
            cached = _generate(model, inputs, 3)
            seen = []
            with _record_prefills(handle, seen):
                uncached = _generate(model, inputs, 3, use_cache=False)
    assert len(seen) == 3 and all(stats.pruned and stats.flops_ratio < 0.5 for stats in seen)
    assert [stats.text_tokens[0] for stats in seen] == [
        t + seen[0].text_tokens[0] for t in range(3)
    ]  # the same video, one more text token each step
    torch.testing.assert_close(uncached[:, prompt], cached[:, prompt], rtol=0, atol=0)  # the first step is the same


def test_a_pruned_cache_is_refused_by_the_model_without_hieravid(family, model):
    inputs = build_inputs(family, model)
    with torch.no_grad():
        with hieravid.apply(model, "hieravid", 0.3):
            first = _generate(model, inputs, 3, return_dict_in_generate=True)
        follow_up = torch.cat([first.sequences, first.sequences[:, -4:]], dim=1)  # a text-only next turn
        with pytest.raises(ValueError, match="pruned prefill.*hieravid applied"):
            model.generate(input_ids=follow_up, attention_mask=torch.ones_like(follow_up),
                           **{CACHE_ARG: cache_of(first)}, max_new_tokens=2, do_sample=False)


def test_stage1_merges_into_run_means(family, model):
    """With rho > 0, stage-1 tokens are the means of their temporal runs: the decoder's first layer
    receives exactly those means at the anchors' positions."""
    inputs = build_inputs(family, model)
    captured = _capture_decoder_inputs(model, inputs)
    seen = {}
    layer0 = _language_model(model).layers[0]

    def remember(module, args, kwargs):
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    hook = layer0.register_forward_pre_hook(remember, with_kwargs=True)
    try:
        with torch.no_grad(), hieravid.apply(model, "hieravid", ratios=(0.5, 0.0, 0.0, 0.0)) as handle:
            model(**inputs)
    finally:
        hook.remove()
    kept = handle.last_stats.kept_positions[0][0]
    embeds = captured["inputs_embeds"][0]
    vid = torch.nonzero(inputs["input_ids"][0] == video_token_id(family, model)).squeeze(1)
    if family == "llava_onevision":
        vid = vid[:-1]
    frames = {"llava_onevision": 8}.get(family, 4)
    slots = vid.numel() // frames
    grid = vid.view(frames, slots)  # positions of (frame, slot)
    hidden0 = seen["h"][0]  # (L0, D)
    assert hidden0.shape[0] == kept.numel()
    for row, position in enumerate(kept.tolist()):
        hit = torch.nonzero(grid == position)
        if hit.numel() == 0:  # a text token: unchanged
            torch.testing.assert_close(hidden0[row], embeds[position])
            continue
        frame, slot = hit[0].tolist()
        end = frame + 1  # the run: following frames of this slot that were removed
        while end < frames and int(grid[end, slot]) not in kept.tolist():
            end += 1
        torch.testing.assert_close(hidden0[row], embeds[grid[frame:end, slot]].mean(0), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- bad input


def test_no_video_is_a_passthrough(family, model):
    inputs = build_inputs(family, model)
    vid = video_token_id(family, model)
    text_only = {"input_ids": inputs["input_ids"][:, inputs["input_ids"][0] != vid][:, :12]}
    text_only["attention_mask"] = torch.ones_like(text_only["input_ids"])
    with torch.no_grad():
        ref = model(**text_only).logits
        with hieravid.apply(model, "hieravid", 0.3) as handle:
            out = model(**text_only).logits
            tokens = _generate(model, text_only)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert tokens.shape[1] == 12 + 4
    assert handle.last_stats.pruned is False


def test_text_given_as_embeddings_or_to_the_language_model_is_a_passthrough(family, model):
    """No video in the call, whatever form its text takes: embeddings instead of ids, or a call of the
    language model itself (which no multimodal call placed a video in)."""
    words = torch.randint(16, 200, (1, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(words)
    embeddings = model.get_input_embeddings()(words)
    language_model = model.model.language_model
    with torch.no_grad():
        ref = model(inputs_embeds=embeddings, attention_mask=mask).logits
        ref_tokens = model.generate(inputs_embeds=embeddings, attention_mask=mask, max_new_tokens=3, do_sample=False)
        ref_hidden = language_model(input_ids=words).last_hidden_state
        with hieravid.apply(model, "hieravid", 0.3) as handle:
            out = model(inputs_embeds=embeddings, attention_mask=mask).logits
            tokens = model.generate(inputs_embeds=embeddings, attention_mask=mask, max_new_tokens=3, do_sample=False)
            hidden = language_model(input_ids=words).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(hidden, ref_hidden, rtol=0, atol=0)
    assert torch.equal(tokens, ref_tokens)
    assert handle.last_stats.pruned is False and handle.last_stats.visual_tokens == [0]


def test_a_video_given_with_embeddings_instead_of_ids_is_refused_with_the_fix(family, model):
    inputs = build_inputs(family, model)
    call = {k: v for k, v in inputs.items() if k != "input_ids"}
    call["inputs_embeds"] = model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        with pytest.raises(ValueError, match="pass input_ids"):
            model(**call)
    with torch.no_grad():
        expected = model(**call).logits
        with hieravid.apply(model, "vanilla"):  # nothing pruned: no need to locate the video
            torch.testing.assert_close(model(**call).logits, expected, rtol=0, atol=0)


def test_new_video_after_a_pruned_prefill_is_refused(family, model):
    inputs = build_inputs(family, model)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        out = model(**inputs, use_cache=True)
        with pytest.raises(ValueError, match="new video"):
            model(**inputs, **{CACHE_ARG: cache_of(out)}, use_cache=True)


@pytest.mark.parametrize("budget", [0.0, 1.5, -0.2, float("nan")])
def test_budget_out_of_range(family, model, budget):
    with pytest.raises(ValueError, match="budget"):
        hieravid.apply(model, "hieravid", budget)
    assert "_hieravid_handle" not in model.__dict__


@pytest.mark.parametrize(
    ("method", "options", "compiles"),
    [("hieravid", {}, True), ("hieravid", {"greedy_backend": "torch"}, False), ("cdpruner", {}, True),
     ("hieravid_topk", {}, False), ("fastv", {}, False)],
)
def test_apply_compiles_the_greedy_loop_before_the_first_prefill(monkeypatch, method, options, compiles):
    from hieravid.ops import dpp

    model = build_model("qwen2_vl")
    monkeypatch.setattr(dpp, "_COMPILED", None)  # as in a fresh process
    with hieravid.apply(model, method, 0.3, **options):
        assert (dpp._COMPILED is not None) == compiles  # at apply, no prefill has run yet


def test_the_runtime_never_reads_padding_back_per_layer(monkeypatch):
    """Masks are built from what the runtime knows about padding: no device read (a GPU sync) at every
    layer of the prefill or of each decoding step, and the masks are still right (see the invariants)."""
    from hieravid.runtime import engine, masks

    seen = []

    def recording(key_valid, query_len, implementation, dtype, all_valid=None):
        seen.append(all_valid)
        if all_valid is not None:
            assert all_valid == bool(key_valid.all())
        return masks.attention_mask(key_valid, query_len, implementation, dtype, all_valid)

    model = build_model("qwen2_vl")
    monkeypatch.setattr(engine, "attention_mask", recording)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        _generate(model, build_inputs("qwen2_vl", model), n=3)  # one sample: no padding anywhere
        # Prefill: a mask where the sequence changes (layers 0, 2, 4, 6); then 8 layers x 2 decoding steps.
        assert seen == [True] * (4 + 8 * 2)
        seen.clear()
        _generate(model, build_inputs("qwen2_vl", model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 2]), n=3)
        assert seen == [False] * (4 + 8 * 2)  # padded rows, and pruning re-pads them


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_the_runtime_reads_the_device_once_per_decision_point(monkeypatch, family):
    """Each read makes a GPU's host wait: the prefill reads once at the start and once per decision
    point, whatever the batch and its padding, for a method that reads nothing itself (its relevance
    rows included). (Qwen3-VL's timestamps between frames add one search per sample and decision point.)"""
    from hieravid.methods.base import Decision, PruningMethod
    from hieravid.runtime import engine

    class EveryOther(PruningMethod):  # keeps every other token, ranked by relevance; reads nothing back
        name = "every_other"

        def decision_layers(self, num_layers):
            return [0, 2, 5]

        def decide(self, layer, tokens, state):
            if layer == 0:
                return Decision(keep=torch.arange(tokens.num_tokens) % 2 == 0)
            relevance = tokens.relevance_from_attention()  # (N,)
            order = torch.argsort(relevance, descending=True, stable=True)
            return Decision(keep=torch.zeros_like(relevance, dtype=torch.bool).index_fill(0, order[::2], True))

    model = build_model(family)
    mode = DeviceReads()
    prefill = engine.Runtime._prefill

    def counted(*args, **kwargs):
        with mode:
            return prefill(*args, **kwargs)

    monkeypatch.setattr(engine.Runtime, "_prefill", counted)
    for inputs in [
        build_inputs(family, model),
        build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 2]),
        build_inputs(family, model, batch=3, prompt_tokens=[8, 5, 7], left_pad=[0, 3, 1]),
    ]:
        mode.reads.clear()
        with torch.no_grad(), hieravid.apply(model, EveryOther()) as handle:
            model(**inputs)
        assert len(mode.reads) == 1 + 3, mode.reads
        first = handle.last_stats.per_sample_tokens_per_layer[-1]
        assert all(n > 0 for n in first)


@pytest.mark.parametrize("method", ["fastv", "hieravid"])
def test_a_gap_in_the_attention_mask_is_padding(family, model, method):
    """A row whose mask has a gap (a masked token between valid ones) is re-packed like right padding:
    the gap is never a kept position and every valid text token is kept at every layer."""
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 2])
    mask = inputs["attention_mask"].clone()
    mask[0, 2] = 0  # in row 0's text before the video
    inputs = dict(inputs, attention_mask=mask)
    with torch.no_grad(), hieravid.apply(model, method, 0.3) as handle:
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    text = torch.nonzero(mask[0].bool() & (inputs["input_ids"][0] != video_token_id(family, model))).squeeze(1)
    for kept in (layer[0] for layer in handle.last_stats.kept_positions):
        assert not (kept == 2).any() and torch.isin(text, kept).all()


def test_unknown_method_and_option(family, model):
    with pytest.raises(ValueError, match="unknown method"):
        hieravid.apply(model, "nonsense")
    with pytest.raises(ValueError, match="unknown option"):
        hieravid.apply(model, "hieravid", 0.3, not_a_switch=1)
    with pytest.raises(ValueError, match="trace must be True or False"):  # "no" would be truthy
        hieravid.apply(model, "hieravid", 0.3, trace="no")


def test_unsupported_model_class():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    llm = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    with pytest.raises(ValueError, match="does not support Qwen2ForCausalLM.*ForConditionalGeneration class"):
        hieravid.apply(llm, "hieravid")

    class Qwen3VLMoeForConditionalGeneration(torch.nn.Module):  # a model class of a family without an adapter
        pass

    with pytest.raises(ValueError, match="no adapter for this model family") as refused:
        hieravid.apply(Qwen3VLMoeForConditionalGeneration(), "hieravid")
    assert "Load the model with" not in str(refused.value)  # it already is that class


def test_wrapped_models_are_refused_naming_the_model_to_apply_to():
    """A PEFT wrapper (duck-typed by its ``get_base_model``, as peft's PeftModel and LoraModel) and a
    torch.compile wrapper are refused, naming the model inside to apply hieravid to."""
    model = build_model("qwen2_vl")

    class PeftModelForCausalLM(torch.nn.Module):  # what matters of peft's wrapper
        def __init__(self, inner):
            super().__init__()
            self.base_model = inner

        def get_base_model(self):
            return self.base_model

    with pytest.raises(ValueError, match=r"PEFT wrapper of Qwen2VLForConditionalGeneration.*get_base_model\(\)"):
        hieravid.apply(PeftModelForCausalLM(model), "hieravid")
    with pytest.raises(ValueError, match="torch.compile wrapper of Qwen2VLForConditionalGeneration: apply hieravid"):
        hieravid.apply(torch.compile(model), "hieravid")
    hieravid.apply(PeftModelForCausalLM(model).get_base_model(), "hieravid").remove()

    class LoraModel(torch.nn.Module):  # a PEFT tuner (peft_model.base_model): the model in its .model
        def __init__(self, inner):
            super().__init__()
            self.model = inner

    class Pipeline:  # a transformers pipeline: not a module, the model in its .model
        def __init__(self, inner):
            self.model = inner

    for wrapper in (LoraModel(model), Pipeline(model)):
        with pytest.raises(ValueError, match=rf"{type(wrapper).__name__} holds Qwen2VLForConditionalGeneration in its "
                                             r"\.model: apply hieravid to that, hieravid.apply\(wrapper.model, ...\)"):
            hieravid.apply(wrapper, "hieravid")


def test_flash_attention_is_refused_with_the_fix(family):
    model = build_model(family)
    model.model.language_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        hieravid.apply(model, "hieravid")


def test_an_attention_switched_after_apply_is_refused_at_the_call():
    model = build_model("qwen2_vl")
    inputs = build_inputs("qwen2_vl", model)
    with hieravid.apply(model, "hieravid", 0.3), torch.no_grad():
        model.model.language_model.config._attn_implementation = "flash_attention_2"
        with pytest.raises(ValueError, match="the model uses 'flash_attention_2': load it with attn_implementation='sdpa'"):
            model(**inputs)
        model.model.language_model.config._attn_implementation = "sdpa"
        model(**inputs)  # switched back: runs


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_sliding_window_layers_are_refused_with_the_fix(family):
    """A Qwen2 decoder with its sliding window on (off in the released checkpoints) would be masked with full
    causal attention by the runtime, changing its output even unpruned: refused, naming the switch."""
    from tiny_models import _config, _model_class

    config = _config(family, 4)
    text = config.text_config
    text.use_sliding_window, text.sliding_window, text.max_window_layers = True, 16, 2
    text.layer_types = ["full_attention"] * 2 + ["sliding_attention"] * 2
    model = _model_class(family)(config).eval()
    with pytest.raises(ValueError, match=r"layers \[2, 3\] .* 'sliding_attention'.*use_sliding_window=False"):
        hieravid.apply(model, "vanilla")


def test_right_padding_is_repacked(family, model):
    """A right-padded batch (as some processors pad) is re-packed, so each sample's last logits equal
    running it alone."""
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 4], left_pad=[0, 2])
    right = dict(inputs)
    ids, mask = inputs["input_ids"].clone(), inputs["attention_mask"].clone()
    for b in range(2):
        n = int(mask[b].sum())
        ids[b] = torch.cat([ids[b][mask[b].bool()], torch.zeros(ids.shape[1] - n, dtype=ids.dtype)])
        mask[b] = (torch.arange(ids.shape[1]) < n).long()
    right["input_ids"], right["attention_mask"] = ids, mask
    if "mm_token_type_ids" in inputs:
        right["mm_token_type_ids"] = (ids == video_token_id(family, model)).long() * 2
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        batched = model(**right).logits[:, -1]
        for b in range(2):
            alone = model(**unbatch(family, model, inputs, b)).logits[0, -1]
            torch.testing.assert_close(batched[b], alone, rtol=1e-4, atol=1e-4)


def test_two_videos_in_one_prompt_are_refused_with_the_way_out(tmp_path):
    from tiny_models import build_processor, random_video
    from transformers.video_utils import VideoMetadata

    model = build_model("qwen2_vl")
    processor = build_processor("qwen2_vl", model, tmp_path)
    video = "<|vision_start|><|video_pad|><|vision_end|>"
    text = f"<|im_start|>user\n{video}{video}what is happening in the video ?<|im_end|>\n<|im_start|>assistant\n"
    meta = [VideoMetadata(total_num_frames=8, fps=2.0, frames_indices=list(range(8)), height=112, width=168)] * 2
    inputs = processor(text=[text], videos=[random_video(8, seed=1), random_video(8, seed=2)], video_metadata=meta,
                       return_tensors="pt")
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        with pytest.raises(ValueError, match="one video per sample.*handle.remove"):
            model(**inputs)
    with torch.no_grad():
        expected = model(**inputs).logits  # the model itself takes it once the handle is removed
        for method, budget in [("vanilla", 1.0), ("hieravid", 1.0)]:  # nothing pruned: taken as the model does
            with hieravid.apply(model, method, budget) as unpruned:
                torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)
            assert unpruned.last_stats.pruned is False
    assert not handle.active


def test_a_prompt_ending_with_a_video_token_is_refused_when_something_is_pruned(family, model):
    inputs = build_inputs(family, model, prompt_tokens=0)
    vid = video_token_id(family, model)
    end = int(torch.nonzero(inputs["input_ids"][0] == vid).max()) + 1  # cut after the last video token
    cut = {k: v[:, :end] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == inputs["input_ids"].shape[1] else v
           for k, v in inputs.items()}
    with torch.no_grad():
        expected = model(**cut).logits
        with hieravid.apply(model, "vanilla"):  # nothing pruned: the model's own answer
            torch.testing.assert_close(model(**cut).logits, expected)
        if family == "llava_onevision":  # its last video token is the newline, which is never pruned
            with hieravid.apply(model, "hieravid", 0.3) as handle:
                model(**cut)
            assert all(int(kept[0].max()) == end - 1 for kept in handle.last_stats.kept_positions)
            return
        with hieravid.apply(model, "hieravid", 0.3), pytest.raises(ValueError, match="ends with a video token"):
            model(**cut)


@pytest.mark.parametrize("frames", [1, 2])
def test_two_llava_videos_in_one_prompt_are_refused_whatever_their_length(tmp_path, frames):
    """Two 1-frame videos have as many tokens as one frame of twice the slots: the frame size tells them apart."""
    from tiny_models import build_processor, random_video
    from transformers.video_utils import VideoMetadata

    model = build_model("llava_onevision")
    processor = build_processor("llava_onevision", model, tmp_path)
    text = "<|im_start|>user\n<video><video>what is happening in the video ?<|im_end|>\n<|im_start|>assistant\n"
    videos = [random_video(frames, seed=1), random_video(frames, seed=2)]
    meta = [VideoMetadata(total_num_frames=frames, fps=2.0, frames_indices=list(range(frames)), height=112,
                          width=168)] * 2
    inputs = processor(text=[text], videos=videos, video_metadata=meta, return_tensors="pt")
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        with pytest.raises(ValueError, match="one video per sample.*handle.remove"):
            model(**inputs)


@pytest.mark.parametrize("batch", [1, 2])
def test_a_static_cache_is_refused_with_the_fix(family, model, batch):
    inputs = build_inputs(family, model, batch=batch, left_pad=[0, 3][:batch])
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        with pytest.raises(ValueError, match="dynamic cache.*cache_implementation"):
            _generate(model, inputs, 3, cache_implementation="static")


@pytest.mark.parametrize("method, budget", [("vanilla", 1.0), ("hieravid", 1.0)])
def test_right_padding_stays_when_nothing_is_pruned(family, model, method, budget):
    """With nothing to decide, a right-padded batch keeps its layout: every valid position's logits equal
    the model's without hieravid (as ``logits[b, mask.sum() - 1]`` reads them)."""
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 4], left_pad=[0, 2])
    ids, mask = inputs["input_ids"].clone(), inputs["attention_mask"].clone()
    for b in range(2):
        n = int(mask[b].sum())
        ids[b] = torch.cat([ids[b][mask[b].bool()], torch.zeros(ids.shape[1] - n, dtype=ids.dtype)])
        mask[b] = (torch.arange(ids.shape[1]) < n).long()
    right = dict(inputs, input_ids=ids, attention_mask=mask)
    if "mm_token_type_ids" in inputs:
        right["mm_token_type_ids"] = (ids == video_token_id(family, model)).long() * 2
    with torch.no_grad():
        expected = model(**right).logits
        with hieravid.apply(model, method, budget):
            got = model(**right).logits
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=0, atol=0)


def test_image_only_input_is_a_passthrough():
    """An image (no video) goes through unpruned: the output equals the unpatched model's."""
    model = build_model("qwen2_vl")
    video = build_inputs("qwen2_vl", model)
    grid = torch.tensor([[1, 8, 12]])  # one image: 8 x 12 patches -> 24 tokens after 2x2 merging
    patches = video["pixel_values_videos"][: 8 * 12]
    image_id = model.config.image_token_id
    ids = torch.tensor([[2, 20, 21, 5] + [image_id] * 24 + [6, 30, 31, 32]])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": patches,
        "image_grid_thw": grid,
        "mm_token_type_ids": (ids == image_id).long(),
    }
    with torch.no_grad():
        ref = model(**inputs).logits
        with hieravid.apply(model, "hieravid", 0.3) as handle:
            out = model(**inputs).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert handle.last_stats.pruned is False


def test_beams_and_several_returned_sequences(family, model):
    """``generate`` encodes each prompt's video once and then repeats its rows: every repeated row is pruned
    as the prompt itself is, and budget 1 gives the unpatched model's beams."""
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[6, 9], left_pad=[1, 0])
    with torch.no_grad():
        unpatched = model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False)
        with hieravid.apply(model, "hieravid", 1.0):
            same = model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False)
        with hieravid.apply(model, "hieravid", 0.3) as handle:
            model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False)
            beams = handle.last_stats.per_sample_tokens_per_layer
            model(**inputs)
            alone = handle.last_stats.per_sample_tokens_per_layer
            model.generate(**inputs, max_new_tokens=2, do_sample=True, num_return_sequences=3)
            returned = handle.last_stats.per_sample_tokens_per_layer
    assert torch.equal(same, unpatched)
    assert beams == [alone[0], alone[0], alone[1], alone[1]] and alone[0][-1] < alone[0][0]
    assert returned == [alone[0]] * 3 + [alone[1]] * 3


def test_labels_are_refused_while_pruning(family, model):
    inputs = build_inputs(family, model)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        with pytest.raises(ValueError, match="a loss over labels cannot be computed; call handle.remove()"):
            model(**inputs, labels=inputs["input_ids"])
    with torch.no_grad():
        assert model(**inputs, labels=inputs["input_ids"]).loss is not None  # removed: as before


@pytest.mark.parametrize("name", ["output_hidden_states", "output_attentions"])
def test_per_layer_outputs_are_refused_while_pruning(family, model, name):
    """A pruned forward has no per-layer hidden states or attentions to return: asking for them (in the call,
    from generate, or through the config) is an error naming the fix, not a silent None."""
    inputs = build_inputs(family, model)
    fix = f"call without {name}=True .* or handle.remove"
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        with pytest.raises(ValueError, match=fix):
            model(**inputs, **{name: True})
        with pytest.raises(ValueError, match=fix):  # the multimodal model inside, called on its own
            model.model(**inputs, **{name: True})
        with pytest.raises(ValueError, match=fix):
            model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True, **{name: True})
        if name == "output_hidden_states":  # (a config asking for attentions needs eager attention)
            model.config.output_hidden_states = True
            try:
                with pytest.raises(ValueError, match=fix):
                    model(**inputs)
            finally:
                model.config.output_hidden_states = False
        assert model(**inputs, **{name: False}).logits is not None
    with torch.no_grad():
        assert model(**inputs, output_hidden_states=True).hidden_states is not None  # removed: as before


@pytest.mark.parametrize("method", ["hieravid", "hieravid_topk"])
def test_the_mean_query_stays_inside_the_instruction(family, model, method):
    """``relevance_query="mean"`` averages the trailing instruction tokens: asking for more than there are
    gives the decisions of all of them, not an average reaching into the video."""
    inputs = build_inputs(family, model)
    ids = inputs["input_ids"][0]
    instruction = ids.numel() - 1 - int(torch.nonzero(ids == video_token_id(family, model)).max())
    kept = []
    with torch.no_grad():
        for rows in (instruction + 20, instruction + 40):  # both more than the instruction has
            with hieravid.apply(model, method, 0.3, relevance_query="mean", query_tokens=rows) as handle:
                model(**inputs)
            kept.append([k[0].tolist() for k in handle.last_stats.kept_positions])
    assert kept[0] == kept[1]


class _FailOnce(Exception):
    pass


def test_a_cache_a_failed_prefill_left_keys_in_is_refused():
    """A prefill that fails part-way (out of memory, Ctrl-C) leaves its first layers' keys in the caller's
    cache while the cache still reports 0 tokens: a retry with that cache is refused (it would attend to
    them), as the model without hieravid fails on it too; a new cache gives the answer."""
    from transformers import DynamicCache

    model = build_model("qwen2_vl")
    inputs = build_inputs("qwen2_vl", model)
    calls = []

    def fail_first_call(module, args, kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise _FailOnce

    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        expected = _generate(model, inputs, past_key_values=DynamicCache())
        cache = DynamicCache()
        hook = _language_model(model).layers[3].register_forward_pre_hook(fail_first_call, with_kwargs=True)
        with pytest.raises(_FailOnce):
            _generate(model, inputs, past_key_values=cache)
        hook.remove()
        with pytest.raises(ValueError, match="already holds keys of .* pass a new DynamicCache"):
            _generate(model, inputs, past_key_values=cache)
        assert torch.equal(_generate(model, inputs, past_key_values=DynamicCache()), expected)


def test_a_refused_prefill_gives_the_callers_cache_back():
    """A pruned prefill refused before it stores anything leaves the caller's empty cache a plain
    DynamicCache, usable with hieravid and without it."""
    from transformers import DynamicCache

    model = build_model("qwen2_vl")
    inputs = build_inputs("qwen2_vl", model)
    vid = video_token_id("qwen2_vl", model)
    end = int(torch.nonzero(inputs["input_ids"][0] == vid).max()) + 1  # the prompt ends with a video token
    cut = {k: v[:, :end] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in inputs.items()}
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        expected = model(**inputs).logits
        with hieravid.apply(model, "hieravid", 0.3):
            pruned = model(**inputs).logits
            with pytest.raises(ValueError, match="ends with a video token"):
                model(**cut, past_key_values=cache, use_cache=True)
            assert type(cache) is DynamicCache
            torch.testing.assert_close(model(**inputs, past_key_values=cache, use_cache=True).logits, pruned)
        assert type(cache) is not DynamicCache  # the second call filled it, pruned
        torch.testing.assert_close(
            model(**inputs, past_key_values=DynamicCache(config=model.config), use_cache=True).logits, expected
        )


def test_last_stats_describe_the_last_call_whatever_cache_it_continues():
    """A text-only call that continues a cache of its own (a cached text prefix) is an unpruned call of
    its own, reported so; the decoding steps of a call keep that call's report."""
    from transformers import DynamicCache

    model = build_model("llava_onevision")
    inputs = build_inputs("llava_onevision", model)
    words = torch.randint(16, 500, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        prefix = DynamicCache(config=model.config)
        model(input_ids=words[:, :4], attention_mask=torch.ones(1, 4, dtype=torch.long), past_key_values=prefix)
        model(**inputs)
        assert handle.last_stats.pruned
        model(input_ids=words[:, 4:], attention_mask=torch.ones(1, 10, dtype=torch.long), past_key_values=prefix)
        assert not handle.last_stats.pruned and handle.last_stats.visual_tokens == [0]
        assert handle.last_stats.text_tokens == [6]
        # A video after a cached prefix is not pruned; the steps that decode after it keep its report.
        video_prefix = DynamicCache(config=model.config)
        model(input_ids=words[:, :4], attention_mask=torch.ones(1, 4, dtype=torch.long), past_key_values=video_prefix)
        with pytest.warns(UserWarning, match="not pruned"):
            _generate(model, dict(inputs, input_ids=torch.cat([words[:, :4], inputs["input_ids"]], dim=1),
                                  attention_mask=torch.ones(1, 4 + inputs["input_ids"].shape[1], dtype=torch.long)),
                      3, past_key_values=video_prefix)
    assert not handle.last_stats.pruned and handle.last_stats.visual_tokens == [inputs["input_ids"].eq(
        video_token_id("llava_onevision", model)).sum().item() - 1]


def test_another_threads_decoding_steps_keep_the_last_prefills_report():
    """``last_stats`` is the last prefill's, whichever thread ran it: the decoding step of a call another
    thread began before it is not a call of its own."""
    import threading

    model = build_model("llava_onevision")
    inputs = build_inputs("llava_onevision", model)
    words = torch.randint(16, 500, (1, 6), generator=torch.Generator().manual_seed(0))
    prefilled, reported = threading.Event(), threading.Event()
    cache = DynamicCache(config=model.config)

    def conversation():  # its prefill, then (after the other thread's pruned prefill) one decoding step
        with torch.no_grad():
            model(input_ids=words[:, :5], attention_mask=torch.ones(1, 5, dtype=torch.long), past_key_values=cache)
            prefilled.set()
            reported.wait(60)
            model(input_ids=words[:, 5:], attention_mask=torch.ones(1, 6, dtype=torch.long), past_key_values=cache)

    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        thread = threading.Thread(target=conversation)
        thread.start()
        assert prefilled.wait(60)
        model(**inputs)
        report = handle.last_stats
        reported.set()
        thread.join()
    assert report.pruned and cache.get_seq_length() == 6
    assert handle.last_stats is report


def test_a_reset_cache_is_reused_with_hieravid_and_without():
    """``cache.reset()`` empties a cache a pruned prefill filled, as it empties a DynamicCache: the same
    object then serves a new prompt, while applied and after ``handle.remove()``."""
    model = build_model("llava_onevision")
    first, second = build_inputs("llava_onevision", model, seed=1), build_inputs("llava_onevision", model, seed=2)
    with torch.no_grad():
        unpruned = _generate(model, second, past_key_values=DynamicCache(config=model.config))
        with hieravid.apply(model, "hieravid", 0.3):
            pruned = _generate(model, second, past_key_values=DynamicCache(config=model.config))
            cache = DynamicCache(config=model.config)
            _generate(model, first, past_key_values=cache)
            cache.reset()
            assert cache.get_seq_length() == 0
            assert torch.equal(_generate(model, second, past_key_values=cache), pruned)
            cache.reset()
        assert type(cache) is DynamicCache
        assert torch.equal(_generate(model, second, past_key_values=cache), unpruned)


def test_a_dynamic_cache_subclass_is_refused():
    """A pruned prefill fills the caller's own cache object in place; a subclass of DynamicCache cannot
    become a PrunedCache without losing what it adds, and filling another object instead would leave the
    caller's empty (a loop passing it again would decode without the prompt): refused, naming the fix."""
    from transformers import DynamicCache

    class LoggingCache(DynamicCache):
        pass

    model = build_model("llava_onevision")
    inputs = build_inputs("llava_onevision", model)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        with pytest.raises(ValueError, match="plain DynamicCache; this call passes a LoggingCache"):
            model(**inputs, past_key_values=LoggingCache(config=model.config), use_cache=True)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_a_video_after_a_cached_prefix_is_not_pruned_and_says_so(family):
    """A prompt continuing a cache that holds a prefix runs as the model without hieravid does (every layer
    holds the prefix's tokens, so nothing can be pruned): a warning names the fix, and ``last_stats``
    describes this call (no pruning, every video token in every layer), not the call before."""
    from transformers import DynamicCache

    model = build_model(family)
    inputs = build_inputs(family, model)
    prefix = 3  # text tokens before the video
    assert video_token_id(family, model) not in inputs["input_ids"][0, :prefix]

    def continue_prefix():
        cache = DynamicCache()
        with torch.no_grad():
            model(input_ids=inputs["input_ids"][:, :prefix], attention_mask=inputs["attention_mask"][:, :prefix],
                  past_key_values=cache, use_cache=True)
        return _generate(model, inputs, past_key_values=cache)

    expected = continue_prefix()
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        _generate(model, inputs)
        assert handle.last_stats.pruned
        with pytest.warns(UserWarning, match="video is not pruned.*without a cache"):
            out = continue_prefix()
    assert torch.equal(out, expected)
    stats = handle.last_stats
    visual = int((inputs["input_ids"] == video_token_id(family, model)).sum()) - (family == "llava_onevision")
    assert not stats.pruned
    assert stats.visual_tokens == [visual]
    assert stats.tokens_per_layer == [visual] * len(_language_model(model).layers)
    assert stats.text_tokens == [inputs["input_ids"].shape[1] - prefix - visual]


def test_a_failed_call_keeps_none_of_its_inputs():
    """A call that fails (here: a prompt ending with a video token) leaves nothing of its inputs referenced
    by the handle: its pixel values are not kept alive into the next call, nor after ``remove()``."""
    model = build_model("qwen2_vl")
    inputs = build_inputs("qwen2_vl", model)
    video = video_token_id("qwen2_vl", model)
    end = int((inputs["input_ids"][0] == video).nonzero().max()) + 1
    ends_with_video = {k: v[:, :end] if k != "pixel_values_videos" and v.dim() == 2 else v for k, v in inputs.items()}
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        with pytest.raises(ValueError, match="ends with a video token"):
            _generate(model, ends_with_video)
        assert handle.runtime.context is None and not _pixels_kept(handle)
        with pytest.raises(ValueError, match="ends with a video token"):
            model(**ends_with_video)
        assert handle.runtime.context is None and not _pixels_kept(handle)


def _pixels_kept(handle) -> bool:
    """Whether the handle references anything but the video grids of its remembered encodings."""
    return any(set(arguments) - {"video_grid_thw"} for _, arguments in handle.runtime._encodings)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_threads_generating_at_once_each_prune_their_own_video(family):
    """A model served from two threads (each its own ``generate``) answers each call from that call's own
    inputs, as without hieravid: here both threads encode their videos before either prefills."""
    import threading

    model = build_model(family)
    first, second = build_inputs(family, model, frames=8, seed=1), build_inputs(family, model, frames=16, seed=2)
    tower = model.model.visual if family != "llava_onevision" else model.model.vision_tower
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        expected = [_generate(model, first), _generate(model, second)]
        both_encoding = threading.Barrier(2, timeout=60)

        def wait_for_both(module, args):
            both_encoding.wait()

        hook = tower.register_forward_pre_hook(wait_for_both)
        outputs, errors = [None, None], []

        def answer(i, inputs):
            try:
                with torch.no_grad():
                    outputs[i] = _generate(model, inputs)
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=answer, args=(i, x)) for i, x in enumerate((first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        hook.remove()
    assert not errors, errors
    assert torch.equal(outputs[0], expected[0]) and torch.equal(outputs[1], expected[1])


def _encode(model, inputs):
    """The video's features as a caller pre-encodes them for ``mm_encoder_outputs``."""
    kw = {k: inputs[k] for k in ("pixel_values_videos", "video_grid_thw") if k in inputs}
    return model.model.get_video_features(**kw, return_dict=True)


def _without_pixels(inputs):
    return {k: v for k, v in inputs.items() if k != "pixel_values_videos"}  # the grid stays: M-RoPE reads it


def test_pre_encoded_features_are_laid_out_where_this_prompt_holds_them(family, model):
    """Features encoded once and asked about with two prompts (the video elsewhere in the second) are
    pruned as the pixels are, in each prompt's own positions; another video encoded in between does
    not lend them its grid."""
    first = build_inputs(family, model, prefix_tokens=4, seed=1)
    second = build_inputs(family, model, prefix_tokens=20, seed=1)  # the same video, 16 tokens later
    other = build_inputs(family, model, frames=4, seed=2)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        want = _generate(model, second)
        kept = handle.last_stats.kept_positions
        features = _encode(model, first)
        _generate(model, _without_pixels(first), mm_encoder_outputs={"video": features})
        _encode(model, other)
        got = _generate(model, _without_pixels(second), mm_encoder_outputs={"video": features})
        assert all(torch.equal(a[0], b[0]) for a, b in zip(kept, handle.last_stats.kept_positions))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_features_encoded_before_apply(family, model):
    """Features whose encoding hieravid did not see: LLaVA's frames follow from the token count, so they
    are pruned as the pixels are; a Qwen grid cannot be told from the count, so pruning is refused,
    naming the fix, and a method that prunes nothing runs."""
    inputs = build_inputs(family, model)
    with torch.no_grad():
        features = _encode(model, inputs)
        with hieravid.apply(model, "hieravid", 0.3):
            want = _generate(model, inputs)
            if family == "llava_onevision":
                torch.testing.assert_close(_generate(model, _without_pixels(inputs), mm_encoder_outputs={"video": features}), want, rtol=0, atol=0)
            else:
                with pytest.raises(ValueError, match="pass the pixels"):
                    _generate(model, _without_pixels(inputs), mm_encoder_outputs={"video": features})
        with hieravid.apply(model, "vanilla"):
            _generate(model, _without_pixels(inputs), mm_encoder_outputs={"video": features})


def _two_turns(model, family, inputs):
    """A batched chat loop: turn 1 generates four tokens, of which row 0 ends at the first (the rest it
    was fed are padding), turn 2 masks that padding and goes on from the returned cache. Returns turn 2's
    first logits, its cache and the mask turn 2 gives turn 1's tokens."""
    length = inputs["input_ids"].shape[1]
    first = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    fed = torch.ones_like(first.sequences[:, length:])
    fed[0, 1:] = 0  # row 0's padding after its end
    user = torch.full((2, 3), 30)
    ids = torch.cat([first.sequences, user], 1)
    mask = torch.cat([inputs["attention_mask"], fed, torch.ones_like(user)], 1)
    extra = {}
    if "mm_token_type_ids" in inputs:
        extra["mm_token_type_ids"] = (ids == video_token_id(family, model)).long() * 2
    second = model.generate(input_ids=ids, attention_mask=mask, **{CACHE_ARG: cache_of(first)}, max_new_tokens=1,
                            do_sample=False, return_dict_in_generate=True, output_logits=True, **extra)
    return second.logits[0], cache_of(second), fed.bool()


def test_a_later_turn_masking_cached_tokens_is_obeyed(family, model):
    """Turn 2 of a batch masks tokens already in the cache (the padding a finished row was fed): the
    pruned cache hides them in every layer, so a budget-1 run equals the unpatched model exactly."""
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[5, 9])
    with torch.no_grad():
        want, _, _ = _two_turns(model, family, inputs)
        with hieravid.apply(model, "hieravid", 1.0):
            got, _, _ = _two_turns(model, family, inputs)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        with hieravid.apply(model, "hieravid", 0.3):
            _, cache, fed = _two_turns(model, family, inputs)
    for valid, positions in zip(cache.key_valid, cache.prefill_positions):
        after_prompt = valid[:, positions.shape[1] :]  # turn 1's tokens, then turn 2's
        assert torch.equal(after_prompt[:, : fed.shape[1]], fed)


def test_chunked_prefill_is_refused_naming_the_switch(family, model):
    """generate(prefill_chunk_size=N) runs the prompt in pieces, each a forward of its own: no piece holds
    the whole video and its instruction, so it is refused before the first, whichever way it is asked."""
    from transformers import GenerationConfig

    inputs = build_inputs(family, model)
    with torch.no_grad():
        with hieravid.apply(model, "vanilla"):
            with pytest.raises(ValueError, match="prefill_chunk_size=None"):
                _generate(model, inputs, prefill_chunk_size=16)
            with pytest.raises(ValueError, match=r"prefill_chunk_size=16"):
                _generate(model, inputs, generation_config=GenerationConfig(prefill_chunk_size=16, max_new_tokens=2))
            with pytest.raises(ValueError, match=r"prefill_chunk_size=8"):  # the config passed by position
                model.generate(inputs["input_ids"], GenerationConfig(prefill_chunk_size=8, max_new_tokens=2),
                               **{k: v for k, v in inputs.items() if k != "input_ids"})
            model.generation_config.prefill_chunk_size = 4  # filling the passed config's unset field
            try:
                with pytest.raises(ValueError, match=r"prefill_chunk_size=4"):
                    _generate(model, inputs, generation_config=GenerationConfig(max_new_tokens=2))
            finally:
                model.generation_config.prefill_chunk_size = None
        assert "generate" not in model.__dict__
        _generate(model, inputs, 2, prefill_chunk_size=16)  # the model without hieravid runs it


def test_logits_for_given_positions_are_refused_when_pruning(family, model):
    """logits_to_keep as a tensor names positions of the whole prompt, which a pruned prefill does not
    return in place: refused, where an int (the last tokens) is served."""
    inputs = build_inputs(family, model)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3):
        with pytest.raises(ValueError, match="logits_to_keep names positions"):
            model(**inputs, logits_to_keep=torch.tensor([3, 5]))
        assert model(**inputs, logits_to_keep=2).logits.shape[1] == 2


def test_a_generated_video_placeholder_is_text(family, model):
    """A decoding step whose new token is the video placeholder (the model emitted it) adds no video:
    generation goes on as without hieravid."""
    inputs = build_inputs(family, model)
    length = inputs["input_ids"].shape[1]
    video = video_token_id(family, model)
    vocab = list(range(model.config.get_text_config().vocab_size))

    def force(batch_id, ids):  # the second new token is the placeholder
        return [video] if ids.shape[0] == length + 1 else vocab

    with torch.no_grad():
        want = _generate(model, inputs, prefix_allowed_tokens_fn=force)
        assert int(want[0, length + 1]) == video
        with hieravid.apply(model, "vanilla"):
            torch.testing.assert_close(_generate(model, inputs, prefix_allowed_tokens_fn=force), want, rtol=0, atol=0)
        with hieravid.apply(model, "hieravid", 0.3):
            assert _generate(model, inputs, prefix_allowed_tokens_fn=force).shape == want.shape


def _spy_instructions(handle) -> list[torch.Tensor]:
    """The ``VideoTokens.instruction`` the method is given at each decision, in order."""
    seen, decide = [], handle.runtime.method.decide

    def spy(layer, tokens, state):
        seen.append(tokens.instruction.clone())
        return decide(layer, tokens, state)

    handle.runtime.method.decide = spy
    return seen


@pytest.mark.parametrize("method", ["prunevid", "cdpruner"])
def test_an_image_after_the_video_is_not_part_of_the_instruction(tmp_path, method):
    """The instruction a method reads is the text after the prompt's last image or video, not the
    image tokens placed between the video and the question."""
    import numpy as np
    from tiny_models import build_processor, random_video
    from transformers.video_utils import VideoMetadata

    model = build_model("qwen2_vl")
    processor = build_processor("qwen2_vl", model, tmp_path)
    video, image = "<|vision_start|><|video_pad|><|vision_end|>", "<|vision_start|><|image_pad|><|vision_end|>"
    text = f"<|im_start|>user\n{video}{image}what is happening in the video ?<|im_end|>\n<|im_start|>assistant\n"
    meta = [VideoMetadata(total_num_frames=8, fps=2.0, frames_indices=list(range(8)), height=112, width=168)]
    picture = np.random.default_rng(3).integers(0, 256, (112, 168, 3), dtype=np.uint8)
    inputs = processor(text=[text], images=[picture], videos=[random_video(8)], video_metadata=meta,
                       return_tensors="pt")
    ids = inputs["input_ids"][0]
    text_after = ids.numel() - 1 - int(torch.nonzero(ids == model.config.image_token_id).max())
    embeds = model.get_input_embeddings()(ids[-text_after:])  # (n_text, D)
    with torch.no_grad(), hieravid.apply(model, method, 0.3) as handle:
        seen = _spy_instructions(handle)
        model(**inputs)
    assert seen and all(rows.shape[0] == text_after for rows in seen)
    torch.testing.assert_close(seen[0], embeds, rtol=0, atol=0)  # layer 0: the text's own embeddings


def test_llava_video_newline_is_not_part_of_the_instruction():
    """LLaVA's trailing newline carries the video's ``<video>`` id and a learned visual vector: it is
    treated as text (never pruned) but is not part of the question the methods read."""
    model = build_model("llava_onevision")
    inputs = build_inputs("llava_onevision", model)
    ids = inputs["input_ids"][0]
    text_after = ids.numel() - 1 - int(torch.nonzero(ids == video_token_id("llava_onevision", model)).max())
    with torch.no_grad(), hieravid.apply(model, "cdpruner", 0.3) as handle:
        seen = _spy_instructions(handle)
        model(**inputs)
    assert [rows.shape[0] for rows in seen] == [text_after]
    torch.testing.assert_close(seen[0], model.get_input_embeddings()(ids[-text_after:]), rtol=0, atol=0)


@pytest.mark.parametrize("where", ["decision", "vision"])
def test_ctrl_c_mid_call_leaves_nothing_of_the_call_behind(family, model, where):
    """A KeyboardInterrupt is not an Exception (torch's always-called hooks skip it): a later call of the
    language model alone is not pruned with the interrupted call's video, and a decision stopped mid-way
    leaves none of the call's inputs (its pixels) alive."""
    inputs = build_inputs(family, model)
    words = torch.randint(16, 200, (1, 6), generator=torch.Generator().manual_seed(0))
    language_model = _language_model(model)
    with torch.no_grad():
        expected = language_model(input_ids=words).last_hidden_state
        with hieravid.apply(model, "hieravid", 0.3) as handle:
            if where == "decision":
                def interrupt(*args, **kwargs):
                    raise KeyboardInterrupt
                handle.runtime.method.decide = interrupt
                with pytest.raises(KeyboardInterrupt):
                    model.generate(**inputs, max_new_tokens=2, do_sample=False)
                assert handle.runtime.context is None and handle.runtime.logits_to_keep is None
            else:  # a forward encodes its pixels inside the call (generate encodes them before it)
                vision = model.model.visual if hasattr(model.model, "visual") else model.model.vision_tower
                stop = vision.register_forward_pre_hook(lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
                with pytest.raises(KeyboardInterrupt):
                    model(**inputs)
                stop.remove()
                assert handle.runtime.context is None and handle.runtime.logits_to_keep is None
            got = language_model(input_ids=words).last_hidden_state
            assert handle.last_stats.pruned is False
            # a text call of the interrupted prompt's very shape
            same_shape = torch.randint(16, 200, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(1))
            assert language_model(input_ids=same_shape).last_hidden_state.shape[1] == same_shape.shape[1]
            assert handle.last_stats.pruned is False
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["vanilla", "hieravid"])
def test_a_decoder_cut_short_in_place_counts_the_layers_it_has(method):
    # Layers removed from the module list, the config left as it was: the model runs the layers it has,
    # and so do the schedule and the FLOPs count.
    model = build_model("qwen2_vl")
    model.model.language_model.layers = model.model.language_model.layers[:4]
    inputs = build_inputs("qwen2_vl", model)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        with hieravid.apply(model, method, 0.5 if method == "hieravid" else 1.0) as handle:
            got = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    if method == "vanilla":
        assert torch.equal(got, expected)
    assert len(handle.last_stats.tokens_per_layer) == 4
