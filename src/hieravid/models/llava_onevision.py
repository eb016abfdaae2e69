"""LLaVA-OneVision and LLaVA-Video (Hugging Face format): a Qwen2 decoder with 1-D RoPE."""

from __future__ import annotations

from hieravid.models.base import CallContext, ModelAdapter, VideoLayout, video_token_positions

__all__ = ["LlavaOnevisionAdapter"]


class LlavaOnevisionAdapter(ModelAdapter):
    """A video of F frames becomes F * P pooled tokens followed by one newline token; T = F, and the
    newline is treated as text (spec section 2, Eq. 1)."""

    family = "llava_onevision"
    image_token_attribute = "image_token_index"
    video_token_attribute = "video_token_index"

    def video_layouts(self, context: CallContext, batch: int) -> list[VideoLayout | None]:
        """A video's frames follow from its token count (F * P + 1), so a call given features encoded
        before it (``mm_encoder_outputs``, as ``generate`` passes them) is laid out as one given pixels;
        with pixels, their frame count must agree."""
        pixels = context.get("pixel_values_videos")  # (B, F, 3, S, S) or None
        if pixels is None and context.encoded_video() is None:
            # No video in this call: a text-only call, or a decoding step (whose new token may be the
            # video placeholder the model emitted, which is text there).
            return [None] * batch
        input_ids = context.input_ids()
        config = self.model.config
        positions = video_token_positions(input_ids, self.video_token_id)
        side = config.vision_config.image_size // config.vision_config.patch_size  # patches per frame side
        pooled_side = -(-side // 2)  # the model's 2x2 pooling (ceil) of a square frame
        pooled = pooled_side**2  # P: tokens per frame
        layouts: list[VideoLayout | None] = []
        for pos in positions:
            if pos.numel() == 0:  # no video in this sample
                layouts.append(None)
                continue
            frames = (pos.numel() - 1) // pooled if pixels is None else int(pixels.shape[1])
            if pos.numel() != frames * pooled + 1 or frames < 1:
                raise ValueError(
                    f"a sample has {pos.numel()} video tokens, which is not {max(frames, 1)} frames x {pooled} "
                    "tokens + 1 newline; hieravid prunes one video per sample: pass one video per sample, or call "
                    "handle.remove() to run this prompt unpruned"
                )
            layouts.append(VideoLayout(positions=pos[:-1], num_frames=frames, num_slots=pooled,
                                       grid_hw=(pooled_side, pooled_side)))
        return layouts
