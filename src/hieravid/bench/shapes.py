"""The model shapes of ``hieravid bench``: real transformers architectures and sizes, built from configs
(random weights, nothing downloaded). Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

__all__ = ["SHAPES", "SHAPE_NAMES", "BenchShape", "TOKEN_IDS"]

# Special token ids shared by every shape (all below every vocabulary; the values do not affect speed).
_PAD, _EOS, _IM_START, _IMAGE, _VIDEO, _VISION_START, _VISION_END, _LLAVA_IMAGE, _LLAVA_VIDEO = range(9)
_FIRST_WORD = 16  # prompt words are random ids from here up to the vocabulary size


@dataclass(frozen=True)
class BenchShape:
    """A benchmark model: a real architecture and size, random weights.

    Attributes:
        name: the ``--shape`` value.
        family: ``qwen2_vl`` or ``llava_onevision`` (the transformers class it builds).
        description: one line for reports.
        frames: default raw frames per video.
        frame_size: (height, width) in pixels of each frame.
        prefix_tokens: text tokens before the video (system prompt and template).
        question_tokens: text tokens after the video (question and template); the last one is the last
            prompt token.
        needs_gpu: 7B shapes: refused on CPU unless explicitly allowed.
        config: builds the transformers config.
    """

    name: str
    family: str
    description: str
    frames: int
    frame_size: tuple[int, int]
    prefix_tokens: int
    question_tokens: int
    needs_gpu: bool
    config: Callable[[], Any]


def _qwen2_text(layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int, vocab: int) -> dict:
    head_dim = hidden // heads
    # M-RoPE: (temporal, height, width) sections of the head_dim / 2 rotary frequencies, 1 : 1.5 : 1.5
    # as the released Qwen2-VL models ([16, 24, 24] for head_dim 128).
    quarter = head_dim // 8
    section = [quarter, (head_dim // 2 - quarter) // 2, head_dim // 2 - quarter - (head_dim // 2 - quarter) // 2]
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        pad_token_id=_PAD,
        eos_token_id=_EOS,
        bos_token_id=None,
    )


def _qwen2_vl_config(text: dict, vision: dict) -> Any:
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=_IMAGE,
        video_token_id=_VIDEO,
        vision_start_token_id=_VISION_START,
        vision_end_token_id=_VISION_END,
    )


def _tiny_config() -> Any:
    text = _qwen2_text(8, 64, 4, 2, 128, 512)
    vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    return _qwen2_vl_config(text, vision)


def _mini_config() -> Any:
    # Qwen2-0.5B's decoder (24 layers, d 896, 14 heads of 64, 2 KV heads, SwiGLU 4864) with a 32k
    # vocabulary (the LM head of one token is cheap either way); a small 4-block vision tower.
    text = _qwen2_text(24, 896, 14, 2, 4864, 32000)
    vision = dict(depth=4, embed_dim=256, hidden_size=896, mlp_ratio=4, num_heads=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    return _qwen2_vl_config(text, vision)


_QWEN2_7B = dict(layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064)


def _qwen2_vl_7b_config() -> Any:
    # Qwen2-VL-7B-Instruct: Qwen2-7B decoder; the 675M ViT (32 blocks of 1280, 16 heads, MLP ratio 4).
    vision = dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu")
    return _qwen2_vl_config(_qwen2_text(**_QWEN2_7B), vision)


def _llava_7b_config() -> Any:
    # LLaVA-OneVision-7B and LLaVA-Video-7B (Hugging Face format): Qwen2-7B decoder, SigLIP-so400m at
    # 384 px (patch 14, 27 x 27 patches; the released configs keep 26 of its 27 blocks), 2-layer GELU
    # projector, bilinear 2x pooling to ceil(27 / 2)^2 = 196 tokens per frame, one trailing newline.
    from transformers import LlavaOnevisionConfig

    text = _qwen2_text(**_QWEN2_7B)
    text.pop("rope_parameters")
    text.update(model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    vision = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                  num_hidden_layers=26, num_attention_heads=16, image_size=384, patch_size=14,
                  vision_use_head=False)
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=_LLAVA_IMAGE,
        video_token_index=_LLAVA_VIDEO,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[384, 384], [384, 768], [768, 384], [768, 768]],
    )


#: The shapes ``hieravid bench --shape`` accepts.
SHAPES: Mapping[str, BenchShape] = MappingProxyType(
    {
        "tiny": BenchShape(
            "tiny", "qwen2_vl", "Qwen2-VL, 8 layers, d 64 (a smoke test: seconds)",
            frames=8, frame_size=(112, 168), prefix_tokens=8, question_tokens=8, needs_gpu=False,
            config=_tiny_config,
        ),
        "mini": BenchShape(
            "mini", "qwen2_vl", "Qwen2-VL with a Qwen2-0.5B-shaped decoder (24 layers, d 896, 14/2 heads, "
                                "MLP 4864, vocab 32000) and a small 4-block vision tower",
            frames=16, frame_size=(448, 448), prefix_tokens=24, question_tokens=40, needs_gpu=False,
            config=_mini_config,
        ),
        "qwen2-vl-7b": BenchShape(
            "qwen2-vl-7b", "qwen2_vl", "Qwen2-VL-7B (28 layers, d 3584, 28/4 heads, MLP 18944; 675M ViT)",
            frames=32, frame_size=(448, 448), prefix_tokens=24, question_tokens=40, needs_gpu=True,
            config=_qwen2_vl_7b_config,
        ),
        "llava-onevision-7b": BenchShape(
            "llava-onevision-7b", "llava_onevision",
            "LLaVA-OneVision-7B (Qwen2-7B decoder, SigLIP-so400m 384 px, 196 tokens per frame)",
            frames=32, frame_size=(384, 384), prefix_tokens=24, question_tokens=40, needs_gpu=True,
            config=_llava_7b_config,
        ),
        "llava-video-7b": BenchShape(
            "llava-video-7b", "llava_onevision",
            "LLaVA-Video-7B (LLaVA-OneVision architecture in HF format, 64 frames x 196 tokens)",
            frames=64, frame_size=(384, 384), prefix_tokens=24, question_tokens=40, needs_gpu=True,
            config=_llava_7b_config,
        ),
    }
)

#: ``--shape`` choices, in order.
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)

#: The special token ids every shape uses (below every vocabulary; the values do not affect speed).
TOKEN_IDS: Mapping[str, int] = MappingProxyType({
    "pad": _PAD, "eos": _EOS, "im_start": _IM_START, "image": _IMAGE, "video": _VIDEO,
    "vision_start": _VISION_START, "vision_end": _VISION_END, "llava_image": _LLAVA_IMAGE,
    "llava_video": _LLAVA_VIDEO, "first_word": _FIRST_WORD,
})
