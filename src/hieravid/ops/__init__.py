"""Pure tensor algorithms of HieraVid (spec Eq. 1-10). They import torch and NumPy only, never transformers."""

from hieravid.ops.dpp import (
    conditional_kernel,
    greedy_map,
    pack_segments,
    prepare_greedy,
    segment_bin_select,
    segment_dpp_select,
)
from hieravid.ops.merge import RunMerge, temporal_run_merge
from hieravid.ops.relevance import attention_from_queries, minmax_normalize, relevance
from hieravid.ops.scores import keep_counts, segment_means, segment_scores, segment_sizes
from hieravid.ops.segment import (
    merge_count,
    merge_set,
    same_slot_similarity,
    segment_ids,
    warn_if_merge_is_capped,
)

__all__ = [
    "RunMerge",
    "attention_from_queries",
    "conditional_kernel",
    "greedy_map",
    "keep_counts",
    "merge_count",
    "merge_set",
    "minmax_normalize",
    "pack_segments",
    "prepare_greedy",
    "relevance",
    "same_slot_similarity",
    "segment_bin_select",
    "segment_dpp_select",
    "segment_ids",
    "segment_means",
    "segment_scores",
    "segment_sizes",
    "temporal_run_merge",
    "warn_if_merge_is_capped",
]
