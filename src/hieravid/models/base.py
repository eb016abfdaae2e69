"""What an adapter does: locate a model's decoder and its video tokens. Nothing else.

An adapter never decides what to prune and never applies a decision; the runtime does both through
the hook points an adapter names.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["VideoLayout", "CallContext", "ModelAdapter"]

#: The attention implementations the runtime's masks are made for.
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class VideoLayout:
    """Where one sample's video tokens sit.

    Attributes:
        positions: ``(T * P,)`` int64 sequence positions of the video tokens, frame-major (frame 0's P
            slots, then frame 1's, ...). Tokens of the video that are treated as text (LLaVA-OneVision's
            trailing newline) are not listed.
        num_frames: T, frames as the model sees them (Qwen-VL: temporal patch groups).
        num_slots: P, tokens per frame.
        grid_hw: (rows, cols) of a frame's P tokens, row-major, where the model says (None: unknown).
        temporal_patch: input frames per model frame (Qwen-VL: 2, the processor repeating the last frame of
            an odd count; LLaVA: 1).
    """

    positions: torch.Tensor
    num_frames: int
    num_slots: int
    grid_hw: tuple[int, int] | None = None
    temporal_patch: int = 1

    def __post_init__(self) -> None:
        if self.positions.numel() != self.num_frames * self.num_slots:
            raise ValueError(
                f"video layout of {self.num_frames} frames x {self.num_slots} slots does not match "
                f"{self.positions.numel()} video token positions"
            )
        if self.grid_hw is not None and self.grid_hw[0] * self.grid_hw[1] != self.num_slots:
            raise ValueError(f"a token grid of {self.grid_hw} does not hold the {self.num_slots} tokens of a frame")


@dataclass
class CallContext:
    """The arguments of the top-level ``forward`` call, kept for the decoder (which sees only embeddings)."""

    kwargs: dict[str, Any]

    def get(self, name: str) -> Any:
        return self.kwargs.get(name)

    def input_ids(self) -> torch.Tensor:
        """The call's ``(B, N)`` input ids; a clear error when the call passed embeddings instead."""
        input_ids = self.kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError(
                "hieravid needs input_ids in the model call to locate the video tokens; pass input_ids "
                "(with pixel_values_videos) rather than inputs_embeds"
            )
        return input_ids

    def describes(self, batch: int, length: int) -> bool:
        """Whether a ``(batch, length)`` call of the language model can be this call's: its token ids have
        that shape (without ids, its 2-D mask, which also covers the cached tokens, has ``batch`` rows of
        at least ``length``)."""
        ids, mask = self.kwargs.get("input_ids"), self.kwargs.get("attention_mask")
        if torch.is_tensor(ids) and ids.dim() == 2:
            return tuple(ids.shape) == (batch, length)
        if torch.is_tensor(mask) and mask.dim() == 2:
            return mask.shape[0] == batch and mask.shape[1] >= length
        return True

    def encoded_video(self) -> Any:
        """The video's encoder output the call was given (``mm_encoder_outputs["video"]``, as ``generate``
        passes it), or None."""
        encoded = self.kwargs.get("mm_encoder_outputs")
        return encoded.get("video") if isinstance(encoded, dict) else None


class ModelAdapter:
    """Base class: subclasses know one model family.

    Attributes:
        family: a short name (``qwen2_vl``, ...).
        model: the user's model (the module ``generate`` is called on).
        text_model: the decoder-only language model whose ``forward`` the runtime replaces.
    """

    family = "base"
    #: rows of position ids the decoder's rotary embedding takes (3 for M-RoPE, 1 for 1-D RoPE).
    rope_rows = 1
    #: the config's attributes holding the ids of the image and the video placeholder tokens.
    image_token_attribute = "image_token_id"
    video_token_attribute = "video_token_id"

    def __init__(self, model: nn.Module, text_model: nn.Module) -> None:
        self.model = model
        self.text_model = text_model

    # --- the decoder -------------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.text_model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def text_config(self) -> Any:
        return self.text_model.config

    @property
    def attn_implementation(self) -> str:
        return self.text_config._attn_implementation or "eager"

    def check_attention(self) -> None:
        """Refuse an attention implementation the runtime's masks are not made for (it builds eager's float
        mask or SDPA's boolean one): at ``apply``, and at every call, as the model may switch after it."""
        if self.attn_implementation not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"hieravid supports attn_implementation {' or '.join(SUPPORTED_ATTENTION)}, the model uses "
                f"{self.attn_implementation!r}: load it with attn_implementation='sdpa' (or "
                "model.set_attn_implementation('sdpa'))"
            )

    def split_positions(
        self, position_ids: torch.Tensor | None, batch: int, length: int, offset: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotary position ids ``(rope_rows, B, N)`` (or ``(B, N)`` for 1-D RoPE) and the text position ids
        the decoder layers receive (or None), from what the decoder's ``forward`` was given; positions
        start at ``offset`` when none are given (as the model itself does)."""
        if position_ids is None:
            position_ids = (torch.arange(length, device=device) + offset).view(1, -1).expand(batch, -1)
        return position_ids, position_ids

    def query_key(
        self, layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, query_rows: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries of the last ``query_rows`` positions and keys of all positions of ``layer`` for ``hidden``
        (B, L, D): the layer's input norm, its own projections (and per-head norms, if any) and rotary
        embedding, as its attention computes them. Returns ``(B, H, Q, d_h)`` and ``(B, H_kv, L, d_h)`` on
        ``hidden``'s device.

        A layer dispatched by accelerate (``device_map``, offloading) is run under its own hook, as a call of
        the layer is: the hook moves the inputs to the layer's device and loads weights it keeps offloaded
        (all of the layer's when it is preloaded as a whole, its submodules then having no hook of their own).
        """
        hook = getattr(layer, "_hf_hook", None)
        if hook is None:
            return self._query_key(layer, hidden, cos, sin, query_rows)
        device = hidden.device
        (hidden, cos, sin), _ = hook.pre_forward(layer, hidden, cos, sin)
        try:
            q, k = self._query_key(layer, hidden, cos, sin, query_rows)
        finally:
            hook.post_forward(layer, None)  # offloads the weights again
        return q.to(device), k.to(device)

    def _query_key(
        self, layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, query_rows: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)  # (B, L, D)
        xq = x[:, -query_rows:]
        q = attn.q_proj(xq).view(*xq.shape[:-1], -1, attn.head_dim)  # (B, Q, H, d_h)
        k = attn.k_proj(x).view(*x.shape[:-1], -1, attn.head_dim)  # (B, L, H_kv, d_h)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        rotate: Callable = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb")
        # Rotate queries with the cos/sin of their own positions, keys with all positions. The rotation
        # takes a (query, key) pair: the unused partner is given zero heads, so nothing is rotated twice.
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        q, _ = rotate(q, q[:, :0], cos[:, -query_rows:], sin[:, -query_rows:])
        k, _ = rotate(k, k[:, :0], cos, sin)
        return q, k

    # --- the video ---------------------------------------------------------------------------------
    @property
    def video_token_id(self) -> int:
        """The id of the video's placeholder token."""
        return int(getattr(self.model.config, self.video_token_attribute))

    def media_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` bool: the tokens of ``input_ids`` (B, N) that stand for an image or a video (their
        features), not for text."""
        ids = [int(getattr(self.model.config, self.image_token_attribute)), self.video_token_id]
        return torch.isin(input_ids, torch.tensor(ids, dtype=input_ids.dtype, device=input_ids.device))

    def video_layouts(self, context: CallContext, batch: int) -> list[VideoLayout | None]:
        """One layout per sample of the call's ``batch`` (None where the sample has no video); the video
        tokens are located in the call's input ids, which a call without a video need not have."""
        raise NotImplementedError

    def side_inputs(self, kwargs: dict[str, Any], batch: int, length: int) -> list[torch.Tensor]:
        """Per-token inputs that are added inside the decoder (e.g. deepstack features), as dense
        ``(B, N, D)`` tensors, one per layer that receives them (layers 0, 1, ...)."""
        return []

    def strip_side_inputs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` without the side inputs the runtime handles itself."""
        return kwargs


def video_token_positions(input_ids: torch.Tensor, token_id: int) -> list[torch.Tensor]:
    """Per sample, the ``(n,)`` positions of ``token_id`` in ``input_ids`` (B, N)."""
    return [torch.nonzero(row == token_id).squeeze(1) for row in input_ids]
