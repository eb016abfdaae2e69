"""Slow loop references of vectorised selections, shared by the tests."""


def ref_bins(relevance: list[float], segment: list[int], k: list[int]) -> list[bool]:
    """Split each segment's tokens (in sequence order) into k_i bins, bin b the positions
    ``[b n // k, (b + 1) n // k)`` (the reference code's bounds); keep the first token with the largest
    relevance in each bin."""
    keep = [False] * len(relevance)
    for i, ki in enumerate(k):
        members = [t for t, s in enumerate(segment) if s == i]
        n = len(members)
        for b in range(ki):
            bin_members = members[b * n // ki : (b + 1) * n // ki]
            assert bin_members
            best = max(bin_members, key=lambda t: (relevance[t], -t))  # ties: the earlier token
            keep[best] = True
    return keep
