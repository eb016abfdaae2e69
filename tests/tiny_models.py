"""Tiny random-weight instances of the real Hugging Face VideoLLM architectures, built offline.

Test support only. Every model here is the genuine transformers class (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``, ``Qwen3VLForConditionalGeneration``,
``LlavaOnevisionForConditionalGeneration``) built from a small config with random weights, so the code path is
exactly the one a real checkpoint takes after ``from_pretrained``; only the sizes differ. Nothing is downloaded.

Public API
----------
``FAMILIES``, ``QWEN_FAMILIES``     family names accepted everywhere below
``build_model(family, *, num_layers=8, attn_implementation="sdpa", seed=0)``
                                   eval-mode float32 CPU model; same seed -> same weights for sdpa and eager
``build_inputs(family, model, *, batch=1, frames=8, height=None, width=None, prompt_tokens=8, prefix_tokens=4,
               left_pad=0, seed=0)``
                                   dict for ``model(**inputs)`` and ``model.generate(**inputs)``, one video per
                                   sample, left padded like a processor
``unbatch(family, model, inputs, index)``   one sample of a batch, padding removed (for batch-equivalence tests)
``video_token_id(family, model)``  the placeholder id the visual features are scattered into
``video_layout(family, model, inputs)``     :class:`TinyVideoLayout` (frames, tokens per frame, spans, newline)
``count_vision_tokens(family, model, inputs)``  visual features the vision tower really produces per sample
``rope_positions(family, model, inputs)``   the positions the model itself gives every token: Qwen (3, B, L)
                                   M-RoPE rows from ``get_rope_index``; LLaVA-OV (1, B, L) as ``generate`` makes them
``text_positions(attention_mask)``          1D positions skipping left padding (what ``generate`` builds)
``build_tokenizer(tmpdir=None)``   offline word-level fast tokenizer holding the special tokens
``build_processor(family, model, tmpdir)``  the family's real processor fitted to the tiny model, saved with the
                                   model config in ``tmpdir`` and reloaded with ``AutoProcessor.from_pretrained``
``video_prompt(processor, question)``, ``processor_inputs(processor, videos, questions, fps=2.0)``, ``random_video``

Sizes (all families): text hidden 64, 4 query heads, 2 key/value heads (GQA), head_dim 16, MLP 128,
vocabulary 512, 8 decoder layers by default. Special token ids are fixed and small (:data:`TOKENS`).

Video layout facts (transformers 5.23-5.25, checked by tests/test_tiny_models.py)
----------------------------------------------------------------------------
* Qwen2-VL / Qwen2.5-VL: ``... <|vision_start|> [T*h*w video tokens] <|vision_end|> ...``, one contiguous run,
  frame-major then row-major (h rows x w cols of merged 2x2 patches). T = frames / temporal_patch_size (2);
  ``video_grid_thw`` = (T, 2h, 2w) in patches. Defaults: 8 frames 112x168 -> T=4, 4x6 = 24 tokens per group.
* Qwen3-VL: the processor expands the video per temporal group: ``<|vision_start|>`` then, for each group,
  ``<t.t seconds>`` (6 text tokens) ``<|vision_start|> [h*w video tokens] <|vision_end|>``, then ``<|vision_end|>``.
  So the video tokens are T separate runs separated by 8 text tokens. ``get_rope_index`` splits
  ``video_grid_thw`` into T grids of t=1. DeepStack: the vision tower returns one feature per
  ``deepstack_visual_indexes`` entry (3 here, as in the released models); the text model ADDS feature k to the
  hidden states at the ``visual_pos_masks`` positions right AFTER decoder layer k (k = 0, 1, 2), prefill only.
* LLaVA-OneVision (and LLaVA-Video in HF format): per frame SigLIP patches p x p (p = image_size / patch), projected,
  then bilinearly resized to ceil(p/2) x ceil(p/2) (``apply_pooling``); frames concatenated frame-major, then ONE
  learned ``image_newline`` vector appended after the last frame. All F*ceil(p/2)^2 + 1 positions carry the
  ``<video>`` id; the newline is the last ``<video>`` token. Defaults: 8 frames, p=9 -> 25 per frame, 201 tokens.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

VOCAB_SIZE = 512
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS  # 16
INTERMEDIATE = 128
FIRST_WORD_ID = 16  # ids below this are reserved for special tokens

# Special tokens: the same ids for every family (all < VOCAB_SIZE). Strings follow the real tokenizers.
TOKENS = {
    "pad": (0, "<|endoftext|>"),
    "eos": (1, "<|im_end|>"),
    "im_start": (2, "<|im_start|>"),
    "image": (3, "<|image_pad|>"),
    "video": (4, "<|video_pad|>"),
    "vision_start": (5, "<|vision_start|>"),
    "vision_end": (6, "<|vision_end|>"),
    "llava_image": (7, "<image>"),
    "llava_video": (8, "<video>"),
}
PAD_ID = TOKENS["pad"][0]
EOS_ID = TOKENS["eos"][0]
VISION_START_ID = TOKENS["vision_start"][0]
VISION_END_ID = TOKENS["vision_end"][0]

# Frame sizes that give a realistic but small number of tokens (see video_layout for the counts).
DEFAULT_FRAME_HW = {
    "qwen2_vl": (112, 168),  # patch 14 -> 8 x 12 patches -> merge 2 -> 4 x 6 = 24 tokens per temporal group
    "qwen2_5_vl": (112, 168),
    "qwen3_vl": (128, 192),  # patch 16 -> 8 x 12 patches -> 24 tokens per temporal group
    "llava_onevision": (126, 126),  # SigLIP image_size 126, patch 14 -> 9 x 9 -> pooled ceil(9/2)^2 = 25 per frame
}
LLAVA_IMAGE_SIZE = 126
LLAVA_PATCH = 14
QWEN3_TIMESTAMP_TOKENS = 6  # "<1.5 seconds>" = < 1 . 5 seconds > (Qwen tokenizers split digits) per frame group


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


# --------------------------------------------------------------------------------------------------------------
# models


def _text_common(num_layers: int) -> dict:
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=num_layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=4096,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=None,
    )


def _config(family: str, num_layers: int):
    """The small config of ``family`` (a real transformers config class)."""
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        text = _text_common(num_layers)
        # M-RoPE: the three sections (temporal, height, width) split head_dim / 2 = 8 rotary frequencies.
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
        vision = dict(
            depth=2,
            embed_dim=32,
            hidden_size=HIDDEN,  # merger output = text hidden size
            mlp_ratio=2,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        return Qwen2VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=TOKENS["image"][0],
            video_token_id=TOKENS["video"][0],
            vision_start_token_id=VISION_START_ID,
            vision_end_token_id=VISION_END_ID,
        )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text = _text_common(num_layers)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=HIDDEN,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,  # pixels: 56 / 14 / 2 = 2 x 2 merged tokens per attention window
            fullatt_block_indexes=[1],
            tokens_per_second=2,  # as in the released Qwen2.5-VL checkpoints
        )
        return Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=TOKENS["image"][0],
            video_token_id=TOKENS["video"][0],
            vision_start_token_id=VISION_START_ID,
            vision_end_token_id=VISION_END_ID,
        )
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        text = _text_common(num_layers)
        text.pop("bos_token_id")
        text.pop("eos_token_id")
        text["head_dim"] = HEAD_DIM
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [4, 2, 2],  # sums to head_dim / 2, interleaved T H W T H W ...
            "mrope_interleaved": True,
        }
        vision = dict(
            depth=4,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=HIDDEN,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=256,  # 16 x 16 learned grid, bilinearly interpolated to the frame
            deepstack_visual_indexes=[1, 2, 3],  # three DeepStack features, as the released models
        )
        return Qwen3VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=TOKENS["image"][0],
            video_token_id=TOKENS["video"][0],
            vision_start_token_id=VISION_START_ID,
            vision_end_token_id=VISION_END_ID,
        )
    if family == "llava_onevision":
        from transformers import LlavaOnevisionConfig

        text = _text_common(num_layers)
        text["model_type"] = "qwen2"
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
        vision = dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=LLAVA_IMAGE_SIZE,
            patch_size=LLAVA_PATCH,
            vision_use_head=False,
        )
        return LlavaOnevisionConfig(
            text_config=text,
            vision_config=vision,
            image_token_index=TOKENS["llava_image"][0],
            video_token_index=TOKENS["llava_video"][0],
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            vision_aspect_ratio="anyres_max_9",
            image_grid_pinpoints=[[LLAVA_IMAGE_SIZE, LLAVA_IMAGE_SIZE], [LLAVA_IMAGE_SIZE, 2 * LLAVA_IMAGE_SIZE]],
        )
    raise AssertionError(family)


def _model_class(family: str):
    import transformers

    return {
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
        "llava_onevision": transformers.LlavaOnevisionForConditionalGeneration,
    }[family]


def build_model(family: str, *, num_layers: int = 8, attn_implementation: str = "sdpa", seed: int = 0):
    """A tiny random-weight model of ``family`` in eval mode, float32, on CPU.

    ``num_layers`` decoder layers (default 8, i.e. four stages of two layers). The same ``seed`` gives the same
    weights whatever ``attn_implementation`` is ("sdpa" or "eager"), so the two can be compared logit for logit.
    """
    _check_family(family)
    config = _config(family, num_layers)
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = _model_class(family)._from_config(
            config, attn_implementation=attn_implementation, dtype=torch.float32
        )
    model.eval()
    gen = model.generation_config
    gen.pad_token_id = PAD_ID
    gen.eos_token_id = EOS_ID
    gen.bos_token_id = None
    gen.do_sample = False
    return model


def video_token_id(family: str, model) -> int:
    """Id of the placeholder token that the visual features replace in ``input_ids``."""
    _check_family(family)
    return int(model.config.video_token_id)


# --------------------------------------------------------------------------------------------------------------
# inputs


def _per_sample(value: int | Sequence[int], batch: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * batch
    values = [int(v) for v in value]
    if len(values) != batch:
        raise ValueError(f"{name} has {len(values)} entries for batch {batch}")
    return values


def _qwen_grid(family: str, model, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(grid_t, grid_h, grid_w) in PATCHES, as the processor writes ``video_grid_thw``."""
    vc = model.config.vision_config
    patch, tps, merge = vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size
    if frames % tps:
        raise ValueError(f"{family}: frames ({frames}) must be a multiple of temporal_patch_size {tps}")
    if height % (patch * merge) or width % (patch * merge):
        raise ValueError(f"{family}: height/width must be multiples of patch*merge = {patch * merge}")
    return frames // tps, height // patch, width // patch


def _llava_tokens_per_frame(model) -> int:
    vc = model.config.vision_config
    p = vc.image_size // vc.patch_size
    return math.ceil(p / 2) ** 2


def _video_segment(family: str, model, frames: int, height: int, width: int, rng: torch.Generator) -> list[int]:
    """Token ids of one video as the family's processor expands it (vision start/end and timestamps included)."""
    vid = video_token_id(family, model)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        t, h, w = _qwen_grid(family, model, frames, height, width)
        merge = model.config.vision_config.spatial_merge_size
        return [VISION_START_ID] + [vid] * (t * h * w // merge**2) + [VISION_END_ID]
    if family == "qwen3_vl":
        # Qwen3VLProcessor: the chat template writes <|vision_start|><|video_pad|><|vision_end|> and the processor
        # replaces <|video_pad|> by, per temporal group, "<x.x seconds><|vision_start|>" + P pads + "<|vision_end|>".
        t, h, w = _qwen_grid(family, model, frames, height, width)
        merge = model.config.vision_config.spatial_merge_size
        seg = [VISION_START_ID]
        for _ in range(t):
            seg += _words(QWEN3_TIMESTAMP_TOKENS, rng)
            seg += [VISION_START_ID] + [vid] * (h * w // merge**2) + [VISION_END_ID]
        return seg + [VISION_END_ID]
    # llava_onevision: F * ceil(p/2)^2 pooled tokens + 1 trailing image_newline, all with the <video> id
    return [vid] * (frames * _llava_tokens_per_frame(model) + 1)


def _pixel_rng(seed: int, sample: int) -> torch.Generator:
    """Pixels of sample b depend only on (seed, b), so sample 0 of a batch equals the same sample alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + sample + 1)


def _words(n: int, rng: torch.Generator) -> list[int]:
    return torch.randint(FIRST_WORD_ID, VOCAB_SIZE, (n,), generator=rng).tolist()


def build_inputs(
    family: str,
    model,
    *,
    batch: int = 1,
    frames: int = 8,
    height: int | None = None,
    width: int | None = None,
    prompt_tokens: int | Sequence[int] = 8,
    prefix_tokens: int = 4,
    left_pad: int | Sequence[int] = 0,
    seed: int = 0,
) -> dict:
    """Inputs for ``model(**inputs)`` and ``model.generate(**inputs)`` with one video per sample.

    Each sample is ``[pad]*k  <|im_start|> prefix(prefix_tokens words)  VIDEO  question(prompt_tokens words)``: text
    before the video, the video as the family's processor expands it, a question after it, so the last token is
    text. ``prompt_tokens`` may differ per sample (a sequence of ``batch`` ints); shorter samples are LEFT padded with
    the pad id (attention_mask 0), as a processor with ``padding_side="left"`` does. ``left_pad`` (int or one per
    sample) is the MINIMUM number of pads to the left of each sample: the batch length is
    ``max_b(len_b + left_pad_b)`` and sample b gets ``length - len_b`` pads (so ``batch=1, left_pad=2`` gives a
    padded single sample). ``frames`` are raw frames (Qwen: two per temporal group); ``height``/``width`` in
    pixels (default: :data:`DEFAULT_FRAME_HW`; LLaVA-OV only takes its square ``image_size``). Pixel values are
    random normal (already "normalized"); a sample's pixels depend only on (seed, sample index).

    Keys: input_ids, attention_mask (B, L) int64; Qwen: pixel_values_videos (B*t*h*w, C*tps*patch^2),
    video_grid_thw (B, 3), mm_token_type_ids (B, L) with 0 text / 1 image / 2 video, Qwen2.5-VL also
    second_per_grid_ts (B,); LLaVA-OV: pixel_values_videos (B, F, 3, S, S).
    """
    _check_family(family)
    dh, dw = DEFAULT_FRAME_HW[family]
    height = dh if height is None else height
    width = dw if width is None else width
    questions = _per_sample(prompt_tokens, batch, "prompt_tokens")
    extra_pad = _per_sample(left_pad, batch, "left_pad")
    rng = torch.Generator().manual_seed(seed)

    rows = []
    for b in range(batch):
        video = _video_segment(family, model, frames, height, width, rng)
        rows.append([TOKENS["im_start"][0]] + _words(prefix_tokens, rng) + video + _words(questions[b], rng))
    length = max(len(r) + p for r, p in zip(rows, extra_pad))
    input_ids = torch.full((batch, length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}

    vid = video_token_id(family, model)
    if family in QWEN_FAMILIES:
        vc = model.config.vision_config
        t, h, w = _qwen_grid(family, model, frames, height, width)
        patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        per_sample = [torch.randn(t * h * w, patch_dim, generator=_pixel_rng(seed, b)) for b in range(batch)]
        inputs["pixel_values_videos"] = torch.cat(per_sample)  # (B*t*h*w, C*tps*patch^2), sample-major
        inputs["video_grid_thw"] = torch.tensor([[t, h, w]] * batch, dtype=torch.long)  # (B, 3) patches
        mm = torch.zeros_like(input_ids)  # int64, as the processors return it
        mm[input_ids == vid] = 2
        mm[input_ids == model.config.image_token_id] = 1
        inputs["mm_token_type_ids"] = mm  # (B, L)
        if family == "qwen2_5_vl":
            # seconds of video per temporal group: processor writes temporal_patch_size / fps (fps 2 -> 1.0)
            inputs["second_per_grid_ts"] = torch.full((batch,), 1.0)
    else:
        s = model.config.vision_config.image_size
        if (height, width) != (s, s):
            raise ValueError(f"llava_onevision takes square frames of image_size {s}, got {height}x{width}")
        per_sample = [torch.randn(frames, 3, s, s, generator=_pixel_rng(seed, b)) for b in range(batch)]
        inputs["pixel_values_videos"] = torch.stack(per_sample)  # (B, F, 3, S, S)
    return inputs


def unbatch(family: str, model, inputs: dict, index: int) -> dict:
    """Sample ``index`` of a batch from :func:`build_inputs` (or a processor) alone, with its padding removed."""
    _check_family(family)
    keep = inputs["attention_mask"][index].bool()
    per_token = ("input_ids", "attention_mask", "mm_token_type_ids")
    out = {k: inputs[k][index : index + 1][:, keep] for k in per_token if k in inputs}
    if family in QWEN_FAMILIES:
        grid = inputs["video_grid_thw"]
        sizes = grid.prod(-1).tolist()
        start = sum(sizes[:index])
        out["pixel_values_videos"] = inputs["pixel_values_videos"][start : start + sizes[index]]
        out["video_grid_thw"] = grid[index : index + 1]
        if "second_per_grid_ts" in inputs:
            out["second_per_grid_ts"] = inputs["second_per_grid_ts"][index : index + 1]
    else:
        out["pixel_values_videos"] = inputs["pixel_values_videos"][index : index + 1]
    return out


def text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """1D positions that skip left padding, ``(B, L)``, exactly as ``generate`` builds them (cumsum - 1, pads 0).

    LLaVA-OV's text model (Qwen2Model) numbers tokens 0..L-1 INCLUDING pads when ``position_ids`` is not given
    (``arange + cache.get_seq_length()``), so a plain ``forward`` of a left-padded batch uses positions shifted by
    the pad count; logits agree anyway up to rounding because RoPE only sees position differences.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def rope_positions(family: str, model, inputs: dict) -> torch.Tensor:
    """Rotary positions of every token as the model computes them for prefill (pad positions are 0).

    Qwen families: ``(3, B, L)`` temporal/height/width rows from ``model.model.get_rope_index`` (text tokens have
    three equal rows). LLaVA-OV: ``(1, B, L)`` from :func:`text_positions`. ``generate`` continues decoding from
    ``positions[..., -1] + 1`` (all rows).
    """
    _check_family(family)
    if family not in QWEN_FAMILIES:
        return text_positions(inputs["attention_mask"])[None]
    keys = ("video_grid_thw", "image_grid_thw", "attention_mask", "mm_token_type_ids", "second_per_grid_ts")
    kwargs = {k: inputs[k] for k in keys if k in inputs}
    positions, _deltas = model.model.get_rope_index(inputs["input_ids"], **kwargs)
    return positions


# --------------------------------------------------------------------------------------------------------------
# layout


@dataclass
class TinyVideoLayout:
    """Where one family puts a video's tokens in ``input_ids`` (facts verified against transformers 5.23-5.25).

    Attributes:
        family: family name.
        num_frames: frames as the DECODER sees them (Qwen: temporal groups = raw frames / temporal_patch_size;
            LLaVA-OV: raw frames).
        grid_hw: (rows, cols) of visual tokens per frame after merging/pooling.
        tokens_per_frame: rows * cols.
        frame_spans: per sample, per frame, (start, end) indices into ``input_ids`` of that frame's tokens
            (end exclusive). Qwen2/2.5-VL and LLaVA-OV: one contiguous run; Qwen3-VL: T runs separated by text.
        newline_index: per sample, index of LLaVA-OV's trailing ``image_newline`` token (the last ``<video>``
            token); None for the Qwen families.
        video_token_id: placeholder id.
        deepstack_layers: decoder layers after which DeepStack features are added (Qwen3-VL), else ().
    """

    family: str
    num_frames: int
    grid_hw: tuple[int, int]
    tokens_per_frame: int
    frame_spans: list[list[tuple[int, int]]]
    newline_index: list[int] | None
    video_token_id: int
    deepstack_layers: tuple[int, ...] = field(default_factory=tuple)

    @property
    def video_tokens_per_sample(self) -> int:
        """Video placeholder tokens per sample (LLaVA-OV includes the newline token)."""
        return self.num_frames * self.tokens_per_frame + (1 if self.newline_index is not None else 0)


def video_layout(family: str, model, inputs: dict) -> TinyVideoLayout:
    """Describe where the video tokens of ``inputs`` sit (works for processor outputs too)."""
    _check_family(family)
    vid = video_token_id(family, model)
    ids = inputs["input_ids"]
    deepstack: tuple[int, ...] = ()
    if family in QWEN_FAMILIES:
        grids = inputs["video_grid_thw"]
        if len(grids) != ids.shape[0] or not (grids == grids[0]).all():
            raise ValueError(f"{family}: expected one video per sample, all with the same grid; got {grids.tolist()}")
        merge = model.config.vision_config.spatial_merge_size
        t, h, w = (int(x) for x in grids[0])
        grid = (h // merge, w // merge)
        if family == "qwen3_vl":
            deepstack = tuple(range(len(model.config.vision_config.deepstack_visual_indexes)))
    else:
        t = inputs["pixel_values_videos"].shape[1]
        side = math.ceil(model.config.vision_config.image_size // model.config.vision_config.patch_size / 2)
        grid = (side, side)
    per_frame = grid[0] * grid[1]
    spans, newlines = [], []
    for b in range(ids.shape[0]):
        pos = (ids[b] == vid).nonzero().flatten().tolist()
        frames = [(pos[i * per_frame], pos[(i + 1) * per_frame - 1] + 1) for i in range(t)]
        for start, end in frames:
            if end - start != per_frame:
                raise AssertionError(f"{family}: frame tokens not contiguous in sample {b}")
        spans.append(frames)
        if family == "llava_onevision":
            if len(pos) != t * per_frame + 1 or pos[-1] != frames[-1][1]:
                raise AssertionError("llava_onevision: expected one newline token right after the last frame")
            newlines.append(pos[-1])
        elif len(pos) != t * per_frame:
            raise AssertionError(f"{family}: {len(pos)} video tokens, expected {t * per_frame}")
    return TinyVideoLayout(
        family=family,
        num_frames=t,
        grid_hw=grid,
        tokens_per_frame=per_frame,
        frame_spans=spans,
        newline_index=newlines if family == "llava_onevision" else None,
        video_token_id=vid,
        deepstack_layers=deepstack,
    )


@torch.no_grad()
def count_vision_tokens(family: str, model, inputs: dict) -> list[int]:
    """Visual feature vectors the vision tower really produces for each sample's video (runs the tower)."""
    _check_family(family)
    if family in QWEN_FAMILIES:
        out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        return [int(x.shape[0]) for x in out.pooler_output]
    out = model.model.get_video_features(inputs["pixel_values_videos"])
    return [int(out.pooler_output.shape[1])] * int(out.pooler_output.shape[0])


# --------------------------------------------------------------------------------------------------------------
# processors (offline tokenizer)


def random_video(frames: int = 8, height: int = 112, width: int = 168, seed: int = 0) -> np.ndarray:
    """Random uint8 frames ``(T, H, W, 3)``."""
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


_WORDS = (
    "system user assistant you are a helpful what is happening in the video describe it why who where when how "
    "many people does do man woman dog cat car red blue green answer question with one word yes no and or of to "
    "seconds frame first last end start left right up down"
).split()
CHAT_TEMPLATE_QWEN = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATE_LLAVA = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(tmpdir: str | os.PathLike | None = None):
    """A word-level fast tokenizer built offline with the ``tokenizers`` library.

    Vocabulary (< :data:`VOCAB_SIZE`): the special tokens of :data:`TOKENS` at their fixed ids, then single
    characters (digits, punctuation, newline), then a few English words; anything else maps to ``[UNK]``. Left
    padding with ``<|endoftext|>``. Saved to ``tmpdir`` when given.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [tok for _, tok in sorted(TOKENS.values())]
    vocab = {tok: i for i, tok in sorted(TOKENS.values())}
    for piece in ["[UNK]", "\n"] + list("0123456789.,:;!?<>()-'\"") + _WORDS:
        vocab.setdefault(piece, len(vocab))
    assert len(vocab) < VOCAB_SIZE
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    # words, single digits/punctuation, newlines; spaces are dropped (decode joins with spaces)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" +"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"[A-Za-z]+|\d|\n|[^\sA-Za-z\d]"), behavior="isolated"),
        ]
    )
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token=TOKENS["pad"][1],
        eos_token=TOKENS["eos"][1],
        padding_side="left",
        model_max_length=4096,
    )
    if tmpdir is not None:
        tokenizer.save_pretrained(tmpdir)
    return tokenizer


def build_processor(family: str, model, tmpdir: str | os.PathLike):
    """The family's real processor, offline, matched to the tiny ``model``; saved with the model's config.

    The tokenizer comes from :func:`build_tokenizer`; image/video processors are the family's own classes with
    sizes fitted to the tiny vision tower (Qwen: frames kept at their size when it is a multiple of patch*merge
    and <= the defaults of :data:`DEFAULT_FRAME_HW`; LLaVA-OV: frames resized to the tower's ``image_size``). The
    config, tokenizer and processor are written to ``tmpdir`` and the processor is reloaded from there with
    ``AutoProcessor.from_pretrained`` (the path a real checkpoint takes), which is what is returned.
    """
    _check_family(family)
    import transformers as tf

    tokenizer = build_tokenizer()
    vc = model.config.vision_config
    frame_h, frame_w = DEFAULT_FRAME_HW[family]
    if family in QWEN_FAMILIES:
        shared = dict(
            patch_size=vc.patch_size, merge_size=vc.spatial_merge_size, temporal_patch_size=vc.temporal_patch_size
        )
        # sizes are pixel budgets; frames are resized to multiples of patch*merge within them
        image_processor = tf.Qwen2VLImageProcessor(
            size={"shortest_edge": 56 * 56, "longest_edge": frame_h * frame_w}, **shared
        )
    if family in ("qwen2_vl", "qwen2_5_vl"):
        video_processor = tf.Qwen2VLVideoProcessor(  # per-frame budget
            size={"shortest_edge": 56 * 56, "longest_edge": frame_h * frame_w}, cap_pixels_per_frame=False, **shared
        )
        processor_class = tf.Qwen2VLProcessor if family == "qwen2_vl" else tf.Qwen2_5_VLProcessor
        processor = processor_class(
            image_processor=image_processor,
            video_processor=video_processor,
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE_QWEN,
        )
    elif family == "qwen3_vl":
        video_processor = tf.Qwen3VLVideoProcessor(  # budget over ALL frames of a video: up to 16 default frames
            size={"shortest_edge": 56 * 56, "longest_edge": 16 * frame_h * frame_w},
            do_sample_frames=False,
            cap_pixels_per_frame=False,
            **shared,
        )
        processor = tf.Qwen3VLProcessor(
            image_processor=image_processor,
            video_processor=video_processor,
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE_QWEN,
        )
    else:
        side = {"height": vc.image_size, "width": vc.image_size}
        processor = tf.LlavaOnevisionProcessor(
            image_processor=tf.LlavaOnevisionImageProcessor(
                size=side, image_grid_pinpoints=model.config.image_grid_pinpoints
            ),
            video_processor=tf.LlavaOnevisionVideoProcessor(size=side),
            tokenizer=tokenizer,
            num_image_tokens=(vc.image_size // vc.patch_size) ** 2,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            chat_template=CHAT_TEMPLATE_LLAVA,
            image_token=TOKENS["llava_image"][1],
            video_token=TOKENS["llava_video"][1],
        )
    model.config.save_pretrained(tmpdir)
    processor.save_pretrained(tmpdir)
    return tf.AutoProcessor.from_pretrained(tmpdir)


def video_prompt(processor, question: str = "what is happening in the video ?") -> str:
    """A chat prompt with one video and one question, rendered by the processor's chat template."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "you are a helpful assistant ."}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def processor_inputs(
    processor, videos: Sequence[np.ndarray], questions: Sequence[str] | None = None, fps: float = 2.0
):
    """``processor(text=..., videos=..., return_tensors="pt", padding=True)`` for one video per prompt.

    ``videos`` are uint8 ``(T, H, W, 3)`` arrays already sampled at ``fps`` frames per second; the metadata passed
    along gives Qwen3-VL its frame timestamps (other processors ignore it).
    """
    from transformers.video_utils import VideoMetadata

    questions = list(questions) if questions is not None else ["what is happening in the video ?"] * len(videos)
    texts = [video_prompt(processor, q) for q in questions]
    metadata = [
        VideoMetadata(
            total_num_frames=len(v), fps=fps, frames_indices=list(range(len(v))), height=v.shape[1], width=v.shape[2]
        )
        for v in videos
    ]
    return processor(text=texts, videos=list(videos), video_metadata=metadata, return_tensors="pt", padding=True)


def num_visual_tokens(family: str, model, inputs: dict, sample: int = 0) -> int:
    """Video tokens hieravid treats as visual in one sample (LLaVA-OV's trailing newline is text)."""
    visual = int((inputs["input_ids"][sample] == video_token_id(family, model)).sum())
    return visual - 1 if family == "llava_onevision" else visual
