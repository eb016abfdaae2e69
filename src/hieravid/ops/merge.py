"""Eq. 3: temporal run merging of same-slot tokens across consecutive frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hieravid.ops.scores import segment_sizes

__all__ = ["RunMerge", "temporal_run_merge"]


@dataclass(frozen=True)
class RunMerge:
    """Result of :func:`temporal_run_merge` for one ``(T, P, D)`` video.

    Attributes:
        keep: ``(T, P)`` bool, True at the anchors (the tokens that stay in the sequence).
        anchor_frame: ``(T, P)`` int64, the frame of the anchor each token was merged into (its own frame
            for an anchor).
        run_length: ``(T, P)`` int64, tokens averaged into each anchor (1 if nothing merged, 0 at removed
            tokens).
        features: ``(N_kept, D)`` the kept tokens in sequence (frame-major) order, each anchor replaced by
            the mean of its run; input dtype, accumulated in float32.
        kept_index: ``(N_kept,)`` int64 flat index ``t * P + p`` of each kept token, in sequence order.
    """

    keep: torch.Tensor
    anchor_frame: torch.Tensor
    run_length: torch.Tensor
    features: torch.Tensor
    kept_index: torch.Tensor

    @property
    def num_removed(self) -> int:
        """Number of tokens deleted by the merge."""
        return int((~self.keep).sum())


def temporal_run_merge(x: torch.Tensor, merge_mask: torch.Tensor, *, validate: bool = True) -> RunMerge:
    """Merge every run of merge-set tokens into the frame before the run (its anchor).

    For each slot p, every maximal run where frames a+1..b are in the merge set and frame a is not is
    replaced by ``mean(x[a..b, p])`` (pre-merge features, equal weights), stored at the anchor a. Exactly
    ``merge_mask.sum()`` tokens are removed. Vectorised over frames and slots (no Python loop); only
    the anchors that absorb a run are recomputed.

    Args:
        x: ``(T, P, D)`` visual tokens.
        merge_mask: ``(T, P)`` bool; must be False on frame 0 (it has no predecessor).
        validate: check that (a read from the device); False for a mask from
            :func:`hieravid.ops.segment.merge_set`, which never selects frame 0.
    """
    num_frames, num_slots, dim = x.shape
    if merge_mask.shape != (num_frames, num_slots):
        raise ValueError(f"merge_mask must have shape {(num_frames, num_slots)}, got {tuple(merge_mask.shape)}")
    if validate and num_frames and bool(merge_mask[0].any()):
        raise ValueError("merge_mask must be False on frame 0: the first frame has no predecessor to merge into")
    keep = ~merge_mask
    frame = torch.arange(num_frames, device=x.device).unsqueeze(1).expand(num_frames, num_slots)
    # Anchor of each token: the latest kept frame at or before it, in the same slot.
    anchor_frame = torch.where(keep, frame, torch.zeros_like(frame)).cummax(dim=0).values  # (T, P)
    slot = torch.arange(num_slots, device=x.device).unsqueeze(0)
    anchor = (anchor_frame * num_slots + slot).reshape(-1)  # (T*P,) flat index of each token's anchor
    run_length = segment_sizes(anchor, num_frames * num_slots)  # (T*P,) tokens merged into each anchor

    flat = x.reshape(-1, dim)
    kept_index = torch.nonzero(keep.reshape(-1)).squeeze(1)  # (N_kept,) sequence order
    features = flat[kept_index]  # (N_kept, D) a copy, updated below
    removed = torch.nonzero(merge_mask.reshape(-1)).squeeze(1)
    if removed.numel():
        absorbing = torch.nonzero(run_length[kept_index] > 1).squeeze(1)  # rows of features that change
        acc = features[absorbing].float()  # (A, D)
        slot_of = torch.full_like(run_length, -1)
        slot_of[kept_index[absorbing]] = torch.arange(absorbing.numel(), device=x.device)
        acc.index_add_(0, slot_of[anchor[removed]], flat[removed].float())
        acc /= run_length[kept_index[absorbing]].unsqueeze(1).float()
        features[absorbing] = acc.to(x.dtype)
    return RunMerge(
        keep=keep,
        anchor_frame=anchor_frame,
        run_length=run_length.view(num_frames, num_slots),
        features=features,
        kept_index=kept_index,
    )
