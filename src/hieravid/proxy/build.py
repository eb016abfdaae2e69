"""The proxy model's architecture, tokenizer and processor, built offline.

The proxy is a genuine ``Qwen2VLForConditionalGeneration`` (so every adapter, runtime and method path is the
one real Qwen2-VL checkpoints take), scaled down:

* vision tower: 8 x 8 pixel patches over 2 frames (``temporal_patch_size`` 2), 2 blocks of width 48, merged
  2 x 2 into the text width: a 32-frame 96 x 96 video gives 16 x 6 x 6 = **576 visual tokens**;
* language model: 8 decoder layers (four stages of two), width 64, 4 query / 2 key-value heads of 16,
  SwiGLU 192, M-RoPE sections (2, 3, 3);
* a word-level tokenizer holding the Qwen-VL special tokens and the words of the synthetic suite.
"""

from __future__ import annotations

import os

__all__ = ["FRAME_PIXELS", "VOCABULARY", "build_config", "build_model", "build_processor", "build_tokenizer"]

FRAME_PIXELS = 96 * 96  # the processor resizes every frame to about this many pixels
SPECIAL = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|im_start|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
)
_IDS = {token: i for i, token in enumerate(SPECIAL)}
_WORDS = (
    "system user assistant you are a helpful answer with the letter A B C D how many scenes in video which shape "
    "is first last what color brief flash way does moving object go objects square circle triangle cross white "
    "magenta cyan orange left right up down scene describe mover gray navy forest maroon olive"
).split()
VOCABULARY = tuple(SPECIAL) + ("[UNK]", "\n") + tuple("0123456789.,:;!?<>()-'\"") + tuple(_WORDS)
VOCAB_SIZE = 128
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_config(hidden: int = 64, intermediate: int = 192, vision_dim: int = 48, init: float = 0.08):
    """The proxy's ``Qwen2VLConfig``: text width ``hidden`` (4 heads), SwiGLU width ``intermediate``, vision
    width ``vision_dim``, initial weights' standard deviation ``init``. (The released models' 0.02 leaves a
    model this small stuck at the answer prior: attention over 576 nearly equal visual tokens barely moves; at
    0.08 it starts reading the video within tens of steps.)"""
    from transformers import Qwen2VLConfig

    half = hidden // 4 // 2  # rotary frequencies per head, split over (time, height, width)
    spatial = half * 3 // 8
    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=_IDS["<|endoftext|>"],
        eos_token_id=_IDS["<|im_end|>"],
        bos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [half - 2 * spatial, spatial, spatial]},
        tie_word_embeddings=True,
        initializer_range=init,
    )
    vision = dict(
        depth=2,
        embed_dim=vision_dim,
        hidden_size=hidden,
        mlp_ratio=2,
        num_heads=4,
        patch_size=8,
        spatial_merge_size=2,
        temporal_patch_size=2,
        initializer_range=init,
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=_IDS["<|image_pad|>"],
        video_token_id=_IDS["<|video_pad|>"],
        vision_start_token_id=_IDS["<|vision_start|>"],
        vision_end_token_id=_IDS["<|vision_end|>"],
        tie_word_embeddings=True,
        initializer_range=init,
    )


def build_model(seed: int = 0, **sizes: float):
    """A freshly initialised proxy model (float32, CPU), weights drawn from ``seed``; ``sizes`` as
    :func:`build_config`'s."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration._from_config(build_config(**sizes), dtype=torch.float32)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = _IDS["<|endoftext|>"], _IDS["<|im_end|>"], None
    gen.do_sample = False
    return model


def build_tokenizer():
    """A word-level fast tokenizer over :data:`VOCABULARY` (unknown words -> ``[UNK]``), padding on the left."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {piece: i for i, piece in enumerate(VOCABULARY)}
    assert len(vocab) == len(VOCABULARY) <= VOCAB_SIZE
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" +"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"[A-Za-z]+|\d|\n|[^\sA-Za-z\d]"), behavior="isolated"),
        ]
    )
    backend.add_special_tokens(list(SPECIAL))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="left",
        model_max_length=4096,
    )


def build_processor():
    """The proxy's ``Qwen2VLProcessor``: frames resized to about :data:`FRAME_PIXELS` pixels (multiples of 16)."""
    import transformers as tf

    config = build_config().vision_config
    shared = dict(
        patch_size=config.patch_size, merge_size=config.spatial_merge_size, temporal_patch_size=config.temporal_patch_size
    )
    size = {"shortest_edge": 32 * 32, "longest_edge": FRAME_PIXELS}
    return tf.Qwen2VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(size=size, **shared),
        video_processor=tf.Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False, **shared),
        tokenizer=build_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )


def save(model, directory: str | os.PathLike) -> None:
    """Write the model (safetensors), its config and processor so ``from_pretrained(directory)`` loads them."""
    model.save_pretrained(directory)
    build_processor().save_pretrained(directory)
