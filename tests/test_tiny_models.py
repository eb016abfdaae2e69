"""Tests of tests/tiny_models.py: the tiny real-architecture VideoLLMs build, run and are laid out as documented."""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models as tm  # noqa: E402  (tests/ is on sys.path under pytest's default rootdir import mode)

FAMILIES = list(tm.FAMILIES)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def sdpa_model(family):
    return tm.build_model(family)


@pytest.fixture(scope="module")
def batch_inputs(family, sdpa_model):
    # two samples with different question lengths, both left padded: pads [1, 4]
    return tm.build_inputs(family, sdpa_model, batch=2, prompt_tokens=(8, 5), left_pad=(0, 4))


def test_build_is_small_and_consistent(family: str) -> None:
    model = tm.build_model(family)
    assert not model.training and model.dtype == torch.float32
    assert model.config.text_config._attn_implementation == "sdpa"
    assert tm.build_model(family, attn_implementation="eager").config.text_config._attn_implementation == "eager"
    text = model.config.text_config
    assert text.num_hidden_layers == 8 and text.hidden_size == tm.HIDDEN
    assert (text.num_attention_heads, text.num_key_value_heads) == (tm.HEADS, tm.KV_HEADS)
    ids = [model.config.video_token_id, model.config.image_token_id, tm.PAD_ID, tm.EOS_ID]
    if family in tm.QWEN_FAMILIES:
        ids += [model.config.vision_start_token_id, model.config.vision_end_token_id]
        rope = text.rope_parameters
        assert sum(rope["mrope_section"]) == tm.HEAD_DIM // 2
    assert max(ids) < text.vocab_size
    assert tm.video_token_id(family, model) == model.config.video_token_id
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert len(tm.build_model(family, num_layers=4).model.language_model.layers) == 4


def test_same_seed_same_weights(family: str) -> None:
    a = tm.build_model(family, seed=3).state_dict()
    b = tm.build_model(family, seed=3, attn_implementation="eager").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_inputs_shape_and_left_padding(family: str, sdpa_model, batch_inputs) -> None:
    ids, mask = batch_inputs["input_ids"], batch_inputs["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    pads = (~mask.bool()).sum(1)
    assert pads.tolist() == [1, 4]  # length = len_1 + 4 = len_0 + 1
    for b in range(2):
        assert (mask[b, : pads[b]] == 0).all() and (mask[b, pads[b] :] == 1).all()  # left padding only
        assert (ids[b, : pads[b]] == tm.PAD_ID).all()
        assert ids[b, -1] >= tm.FIRST_WORD_ID  # last token is text
    if family in tm.QWEN_FAMILIES:
        mm = batch_inputs["mm_token_type_ids"]
        assert torch.equal(mm == 2, ids == tm.video_token_id(family, sdpa_model)) and not (mm == 1).any()


def test_sdpa_and_eager_give_the_same_logits(family: str, sdpa_model, batch_inputs) -> None:
    eager = tm.build_model(family, attn_implementation="eager")
    with torch.no_grad():
        a = sdpa_model(**batch_inputs).logits
        b = eager(**batch_inputs).logits
    valid = batch_inputs["attention_mask"].bool()
    torch.testing.assert_close(a[valid], b[valid], rtol=1e-4, atol=1e-4)


def test_padded_batch_equals_samples_alone(family: str, sdpa_model, batch_inputs) -> None:
    with torch.no_grad():
        batched = sdpa_model(**batch_inputs).logits
        for b in range(2):
            alone = sdpa_model(**tm.unbatch(family, sdpa_model, batch_inputs, b)).logits[0]
            torch.testing.assert_close(batched[b, -alone.shape[0] :], alone, rtol=1e-4, atol=1e-4)


def test_generate_runs(family: str, sdpa_model, batch_inputs) -> None:
    out = sdpa_model.generate(**batch_inputs, max_new_tokens=4, do_sample=False)
    length = batch_inputs["input_ids"].shape[1]
    assert out.shape[0] == 2 and length < out.shape[1] <= length + 4
    assert torch.equal(out[:, :length], batch_inputs["input_ids"])


def test_video_tokens_match_the_vision_tower(family: str, sdpa_model, batch_inputs) -> None:
    vid = tm.video_token_id(family, sdpa_model)
    in_text = (batch_inputs["input_ids"] == vid).sum(1).tolist()
    assert tm.count_vision_tokens(family, sdpa_model, batch_inputs) == in_text
    layout = tm.video_layout(family, sdpa_model, batch_inputs)
    assert in_text == [layout.video_tokens_per_sample] * 2
    expected = {  # (frames seen by the decoder, rows, cols) at the default frame sizes
        "qwen2_vl": (4, 4, 6),
        "qwen2_5_vl": (4, 4, 6),
        "qwen3_vl": (4, 4, 6),
        "llava_onevision": (8, 5, 5),
    }[family]
    assert (layout.num_frames, *layout.grid_hw) == expected
    assert layout.tokens_per_frame == expected[1] * expected[2]


def test_frame_spans(family: str, sdpa_model, batch_inputs) -> None:
    layout = tm.video_layout(family, sdpa_model, batch_inputs)
    ids = batch_inputs["input_ids"]
    for b, spans in enumerate(layout.frame_spans):
        gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
        if family == "qwen3_vl":
            # <|vision_end|> + timestamp text + <|vision_start|> between consecutive frame groups
            assert gaps == [tm.QWEN3_TIMESTAMP_TOKENS + 2] * (len(spans) - 1)
            assert all(ids[b, s - 1] == tm.VISION_START_ID and ids[b, e] == tm.VISION_END_ID for s, e in spans)
        else:
            assert gaps == [0] * (len(spans) - 1)  # one contiguous run, frame-major, row-major inside a frame
        if family in ("qwen2_vl", "qwen2_5_vl"):
            assert ids[b, spans[0][0] - 1] == tm.VISION_START_ID and ids[b, spans[-1][1]] == tm.VISION_END_ID
    if family == "llava_onevision":
        assert layout.newline_index == [spans[-1][1] for spans in layout.frame_spans]
    else:
        assert layout.newline_index is None


def test_llava_newline_token_is_image_newline() -> None:
    model = tm.build_model("llava_onevision")
    inputs = tm.build_inputs("llava_onevision", model, batch=2, prompt_tokens=(8, 5))
    layout = tm.video_layout("llava_onevision", model, inputs)
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    for b, index in enumerate(layout.newline_index):
        torch.testing.assert_close(seen["embeds"][b, index], model.model.image_newline.detach())
        assert not torch.allclose(seen["embeds"][b, index - 1], model.model.image_newline.detach())


def test_qwen3_deepstack_after_first_layers() -> None:
    model = tm.build_model("qwen3_vl")
    inputs = tm.build_inputs("qwen3_vl", model, batch=2, prompt_tokens=(8, 5))
    text_model = model.model.language_model
    events = []
    text_model.register_forward_pre_hook(
        lambda mod, args, kwargs: events.append(("masks", kwargs.get("visual_pos_masks"))), with_kwargs=True
    )
    for i, layer in enumerate(text_model.layers):
        layer.register_forward_hook(lambda mod, args, out, i=i: events.append(("layer", i)))
    original = text_model._deepstack_process
    text_model._deepstack_process = lambda h, m, e: (events.append(("deepstack", tuple(e.shape))), original(h, m, e))[1]
    with torch.no_grad():
        model(**inputs)
    masks = events.pop(0)[1]
    assert torch.equal(masks, inputs["input_ids"] == tm.video_token_id("qwen3_vl", model))
    n = int(masks.sum())
    ds = [("deepstack", (n, tm.HIDDEN))]
    expected = [("layer", 0)] + ds + [("layer", 1)] + ds + [("layer", 2)] + ds + [("layer", i) for i in range(3, 8)]
    assert events == expected
    assert tm.video_layout("qwen3_vl", model, inputs).deepstack_layers == (0, 1, 2)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava_onevision"])
def test_generate_positions_continue_from_the_last_prompt_position(family: str) -> None:
    """transformers 5.23-5.25: decode steps get position_ids = previous + 1, not derived from the cache length."""
    model = tm.build_model(family)
    inputs = tm.build_inputs(family, model, batch=2, prompt_tokens=(8, 5))
    seen = []
    model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    model.generate(**inputs, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    prefill, *steps = seen
    rope = tm.rope_positions(family, model, inputs)
    torch.testing.assert_close(prefill[1:] if family in tm.QWEN_FAMILIES else prefill[None], rope)
    if family in tm.QWEN_FAMILIES:  # row 0 is the 1D text position (mask cumsum), used for masks only
        torch.testing.assert_close(prefill[0], tm.text_positions(inputs["attention_mask"]))
    for i, step in enumerate(steps):
        assert step.shape[-1] == 1
        torch.testing.assert_close(step[..., 0], prefill[..., -1] + 1 + i)


def test_processor_round_trip(family: str, sdpa_model, tmp_path) -> None:
    pytest.importorskip("torchvision")
    processor = tm.build_processor(family, sdpa_model, tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "tokenizer.json").exists()
    h, w = tm.DEFAULT_FRAME_HW[family]
    videos = [tm.random_video(8, h + 6, w - 4, seed=1), tm.random_video(8, h, w, seed=2)]  # processor resizes
    inputs = tm.processor_inputs(processor, videos, ["what ?", "why did the man do it ?"])
    ids = inputs["input_ids"]
    assert not inputs["attention_mask"][0].all()  # the shorter prompt is left padded
    vid = tm.video_token_id(family, sdpa_model)
    assert tm.count_vision_tokens(family, sdpa_model, inputs) == (ids == vid).sum(1).tolist()
    layout = tm.video_layout(family, sdpa_model, inputs)
    assert layout.tokens_per_frame == {"llava_onevision": 25}.get(family, 24)
    if family in tm.QWEN_FAMILIES:
        assert torch.equal(inputs["mm_token_type_ids"] == 2, ids == vid)
    out = sdpa_model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert isinstance(processor.batch_decode(out[:, ids.shape[1] :])[0], str)


@pytest.mark.parametrize("family,interval", [("qwen2_vl", 1), ("qwen2_5_vl", 2), ("qwen3_vl", 0)])
def test_qwen_video_positions(family: str, interval: int) -> None:
    """M-RoPE of the video tokens in transformers 5.23-5.25 (interval 0: Qwen3-VL restarts each frame group)."""
    model = tm.build_model(family, num_layers=2)
    inputs = tm.build_inputs(family, model, batch=2, prompt_tokens=(8, 5))
    layout = tm.video_layout(family, model, inputs)
    rows, cols = layout.grid_hw
    pos = tm.rope_positions(family, model, inputs)  # (3, B, L)
    for b, spans in enumerate(layout.frame_spans):
        for g, (s, e) in enumerate(spans):
            # one past the <|vision_start|> in front of the whole video (Qwen2/2.5) or of this group (Qwen3)
            start = pos[0, b, (s if family == "qwen3_vl" else spans[0][0]) - 1] + 1
            grid_t = pos[0, b, s:e].view(rows, cols)
            grid_h = pos[1, b, s:e].view(rows, cols)
            grid_w = pos[2, b, s:e].view(rows, cols)
            assert (grid_t == start + interval * g).all()
            assert torch.equal(grid_h, start + torch.arange(rows)[:, None].expand(rows, cols))
            assert torch.equal(grid_w, start + torch.arange(cols)[None, :].expand(rows, cols))
        # the <|vision_end|> after the video (group) continues from start + max(rows, cols), whatever the
        # temporal positions reached (Qwen2.5-VL: the last group's T row can equal or exceed it)
        assert (pos[:, b, spans[-1][1]] == start + max(rows, cols)).all()


def _loaded_with_processor(family: str):
    """A tiny model of ``family`` with its real processor, as :func:`hieravid.infer.load_model` returns it."""
    import tempfile

    from hieravid.infer import LoadedModel

    pytest.importorskip("torchvision")
    model = tm.build_model(family)
    with tempfile.TemporaryDirectory() as folder:
        processor = tm.build_processor(family, model, folder)
    return LoadedModel(model=model, processor=processor, family=family, name="tiny")


def test_qwen3_vl_prompts_state_each_frames_own_time() -> None:
    """Qwen3-VL writes each temporal pair's mean time into the prompt: the frames' own times, however
    unevenly spaced (a variable frame rate, a clip with a gap), not a grid of the mean frame rate."""
    from hieravid.infer import build_inputs

    loaded = _loaded_with_processor("qwen3_vl")
    processor = loaded.processor
    h, w = tm.DEFAULT_FRAME_HW["qwen3_vl"]
    inputs = build_inputs(loaded, tm.random_video(8, h, w, seed=1), "what ?",
                          timestamps_s=[0.0, 0.1, 0.2, 0.3, 5.0, 5.1, 5.2, 5.3])
    text = processor.tokenizer.decode(inputs["input_ids"][0]).replace(" ", "")
    assert [float(t) for t in re.findall(r"<([\d.]+)seconds>", text)] == [0.1, 0.2, 5.0, 5.2]  # (0+.1)/2 -> 0.1


def test_qwen2_5_vl_seconds_per_patch_are_the_processors_own() -> None:
    """Qwen2.5-VL's second_per_grid_ts (which scales its temporal positions): the patch's frames over the
    sampled rate N / clip duration, as its processor reads a SampledVideo's metadata and qwen-vl-utils
    samples, not over the mean interval between the sampled frames (1.288 s here instead of 1.25)."""
    from hieravid.infer import build_inputs
    from hieravid.video import SampledVideo, sample_indices, video_metadata

    loaded = _loaded_with_processor("qwen2_5_vl")
    processor = loaded.processor
    h, w = tm.DEFAULT_FRAME_HW["qwen2_5_vl"]
    indices = sample_indices(600, 32)  # 32 of a 20 s video's 600 frames at 30 fps
    video = SampledVideo(frames=tm.random_video(32, h, w, seed=2), timestamps_s=[i / 30 for i in indices],
                         frame_indices=indices, fps=30.0, duration_s=20.0, source_frames=600, path="clip.mp4")
    got = build_inputs(loaded, video.frames, "what ?", timestamps_s=video.timestamps_s, source_fps=video.fps)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what ?"}]}], add_generation_prompt=True
    )
    reference = processor(text=[prompt], videos=[video.frames], video_metadata=[video_metadata(video)],
                          do_sample_frames=False, input_data_format="channels_last", return_tensors="pt")
    assert torch.as_tensor(got["second_per_grid_ts"]).tolist() == pytest.approx([1.25])
    assert torch.as_tensor(reference["second_per_grid_ts"]).tolist() == pytest.approx([1.25])
    for key in ("input_ids", "video_grid_thw", "pixel_values_videos"):
        assert torch.equal(got[key], reference[key])
