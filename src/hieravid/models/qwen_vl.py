"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: M-RoPE decoders; a frame is one temporal patch group."""

from __future__ import annotations

from typing import Any

import torch

from hieravid.models.base import CallContext, ModelAdapter, VideoLayout, video_token_positions

__all__ = ["QwenVLAdapter", "Qwen3VLAdapter"]


class QwenVLAdapter(ModelAdapter):
    """Qwen2-VL and Qwen2.5-VL. Video tokens are ``video_token_id``; the video grid ``(t, h, w)`` gives
    T = t frames of P = h * w / merge_size^2 tokens, in frame-major order."""

    family = "qwen2_vl"
    rope_rows = 3

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def split_positions(self, position_ids, batch, length, offset, device):
        if position_ids is None:
            position_ids = (torch.arange(length, device=device) + offset).view(1, 1, -1).expand(3, batch, -1)
        elif position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        if position_ids.shape[0] == 4:  # text row + 3 M-RoPE rows (as `generate` passes them)
            return position_ids[1:], position_ids[0]
        return position_ids, None

    def video_layouts(self, context: CallContext, batch: int) -> list[VideoLayout | None]:
        grid = context.get("video_grid_thw")
        if grid is None:  # no video in this call (text only, or a decoding step)
            return [None] * batch
        input_ids = context.input_ids()
        positions = video_token_positions(input_ids, self.video_token_id)
        grids = [tuple(int(v) for v in row) for row in grid.tolist()]
        temporal_patch = int(getattr(self.model.config.vision_config, "temporal_patch_size", 1) or 1)
        with_video = sum(pos.numel() > 0 for pos in positions)
        # ``generate`` with beams or several returned sequences encodes each prompt's video once and then
        # repeats every row ``repeat`` times in place: those rows share their prompt's grid.
        repeat = with_video // len(grids) if grids and with_video > len(grids) and with_video % len(grids) == 0 else 1
        layouts: list[VideoLayout | None] = []
        cursor = 0
        for pos in positions:
            if pos.numel() == 0:
                layouts.append(None)
                continue
            if cursor // repeat >= len(grids):
                raise ValueError("more samples hold video tokens than video_grid_thw has rows")
            t, h, w = grids[cursor // repeat]
            cursor += 1
            slots = h * w // (self.merge_size**2)
            if t * slots != pos.numel():
                raise ValueError(
                    f"a sample has {pos.numel()} video tokens but its video grid {(t, h, w)} gives {t * slots}; "
                    "hieravid prunes one video per sample: pass one video per sample, or call handle.remove() "
                    "to run this prompt unpruned"
                )
            grid_hw = (h // self.merge_size, w // self.merge_size)
            layouts.append(VideoLayout(positions=pos, num_frames=t, num_slots=slots, grid_hw=grid_hw,
                                       temporal_patch=temporal_patch))
        return layouts


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL: as Qwen2-VL (its frames are separated by timestamp text, which stays), plus deepstack:
    visual features added to the hidden states after each of the first few layers, which are pruned
    and merged together with the tokens they belong to."""

    family = "qwen3_vl"

    def side_inputs(self, kwargs: dict[str, Any], batch: int, length: int) -> list[torch.Tensor]:
        embeds = kwargs.get("deepstack_visual_embeds")
        mask = kwargs.get("visual_pos_masks")
        if embeds is None or mask is None:
            return []
        dense = []
        for emb in embeds:  # (n_visual, D) in row-major order of the mask
            full = emb.new_zeros(batch, length, emb.shape[-1])
            # Filled in the mask's row-major order, as indexing by it would, without finding its True
            # entries on the host (a read from a GPU).
            dense.append(full.masked_scatter_(mask.to(emb.device).unsqueeze(-1), emb))
        return dense

    def strip_side_inputs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in kwargs.items() if k not in ("deepstack_visual_embeds", "visual_pos_masks")}
