"""Eq. 9-10: conditional DPP kernel blocks and the batched greedy MAP, per segment.

Only the diagonal blocks of the kernel (one per segment) are built, and the greedy loop runs once
over k for a whole batch of segments (padded), not once per segment.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

from hieravid.warning import HieravidWarning

__all__ = [
    "GREEDY_BACKENDS",
    "conditional_kernel",
    "greedy_map",
    "pack_segments",
    "prepare_greedy",
    "resolve_greedy_backend",
    "segment_bin_select",
    "segment_dpp_select",
]

GREEDY_BACKENDS = ("auto", "torch", "numba", "triton")

# The default rank floor: a residual variance at or below this fraction of the group's largest kernel
# diagonal (a residual norm under about 3% of the most relevant token's) counts as used-up rank. Such
# pivots get a zero update row, and candidates below the floor are ranked by their kernel diagonal
# (r_j^2 |x_j|^2, their relevance), so that 1e-6 differences between attention kernels (sdpa, eager) do
# not decide picks among near-zero residuals. It is far coarser than float32 round-off: it also reorders
# tokens whose residual is small but real (a token with r < 0.032 is below it from the first pick), a
# deviation from the specification's plain rule (clamp d2 >= 0, guard the square root), which
# ``rank_floor=0`` (HieraVidConfig.dpp_rank_floor) gives.
_RANK_FLOOR = 1e-3

# Picks per blocked Cholesky update of the greedy MAP (see greedy_map), per backend. On the host the
# Schur update between blocks streams the whole (m, m) residual through memory once per block, so
# fewer, wider blocks cost less until correcting each pick against the block's earlier rows catches up
# (2-core CPU, one 6272-token segment, 4390 picks: 1953 ms in blocks of 64, 1400 of 128, 1460 of 256;
# 2048 tokens, 1433 picks: 79 / 70 / 90 ms; the same tokens kept). On a GPU a block's picks run one
# after another in one program per group, so its blocks stay narrow.
_BLOCKS = {"numba": 128, "triton": 64, "torch": 64}


def conditional_kernel(features: torch.Tensor, relevance: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 9: ``L~ = diag(r) X X^T diag(r)`` per group, X the L2-normalised features, in float32.

    Args:
        features: ``(G, n, D)`` tokens of G groups (segments), padded to n.
        relevance: ``(G, n)`` relevance r of each token.
        valid: ``(G, n)`` bool, False at padding (those rows and columns are zero).

    Returns:
        ``(G, n, n)`` float32 kernel blocks.
    """
    x = features.float()  # (G, n, D)
    return _gram(_finite_rows(x * torch.where(valid, _kernel_scale(x, relevance), 0.0).unsqueeze(2)))


def _kernel_scale(x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Eq. 9's row weights ``scale_i = r_i / |x_i|`` (0 for zero vectors), so that
    ``L~ = (scale x)(scale x)^T``: ``x (..., D)`` float32, ``relevance (...)``."""
    norm = torch.linalg.vector_norm(x, dim=-1)
    return torch.where(norm > 0, relevance.float() / norm.clamp(min=1e-30), 0.0)


def _finite_rows(y: torch.Tensor) -> torch.Tensor:
    """``y`` (weighted rows ``scale_i x_i``) in place with the row of a token whose hidden state or
    relevance is not finite (a float16 hidden state overflows to inf; inf x 0 is NaN) made zero, as a
    zero vector's is: its kernel row and column are 0, so the greedy loop takes it last, and the other
    tokens' picks are those without it. O(n D), against the kernel block's O(n^2 D)."""
    return y.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


# The kernel block is symmetric: from this many tokens on, only its lower block triangle is multiplied
# out, in _GRAM_PANELS row panels, and mirrored (5/8 of the product's work for 4 panels; on the 2-core
# CPU a 2048-token block of d = 3584 takes 67 ms instead of 96). Smaller blocks take one product.
_GRAM_PANELS = 4
_GRAM_MIN_TOKENS = 256


def _gram(y: torch.Tensor) -> torch.Tensor:
    """``y y^T`` per group: ``y (G, n, D)`` float32 rows already weighted (n x D work; weighting the
    ``(G, n, n)`` product instead would pass twice over n x n). Exactly symmetric."""
    num_groups, n, _ = y.shape
    if n < _GRAM_MIN_TOKENS:
        return torch.bmm(y, y.transpose(1, 2))  # (G, n, n)
    out = y.new_empty(num_groups, n, n)
    edges = [(i * n) // _GRAM_PANELS for i in range(_GRAM_PANELS + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):  # a few row panels, not tokens
        panel = torch.bmm(y[:, lo:hi], y[:, :hi].transpose(1, 2))  # (G, hi - lo, hi): rows lo..hi, columns to hi
        out[:, lo:hi, :hi] = panel
        out[:, :lo, lo:hi] = panel[:, :, :lo].transpose(1, 2)  # the mirror above the diagonal
    return out


def greedy_map(
    kernel: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    *,
    block: int | None = None,
    backend: str = "auto",
    rank_floor: float = _RANK_FLOOR,
    scratch: bool = False,
) -> torch.Tensor:
    """Eq. 10: greedy MAP inference (Chen et al. 2018) for a batch of kernels, each with its own k.

    Picks, k_g times per group g, the token with the largest residual variance ``d2`` (the gain in
    log det), then updates every ``d2`` with the new Cholesky row
    ``e = (L~[j, :] - sum_t c_t[j] c_t) / sqrt(d2_j)``.

    All groups advance together and the Cholesky rows are applied in blocks (a right-looking blocked
    Cholesky): within a block of ``block`` picks the new rows are corrected against each other only, and
    at the end of the block the kernel itself becomes the Schur complement (``L~ -= C_b^T C_b``, one
    batched matrix product). The picks are those of the unblocked algorithm; memory traffic per pick is
    O(block * n) instead of O(t * n). Rows and columns of tokens that can no longer be picked are dropped
    as the loop goes.

    When k exceeds the kernel's numerical rank, residual variances are round-off (below ``1e-3`` of the
    largest diagonal): the remaining picks follow the kernel diagonal (relevance), get a zero update row,
    are still distinct tokens, and no NaN appears.

    Who makes each block's picks (``backend``; the picks are the same up to float32 rounding):
    ``"torch"``, a few dozen operations on ``(G, m)`` tensors per pick, any device, so its cost is the
    per-operation dispatch, not arithmetic; ``"numba"``, compiled on the host (a GPU's kernels are copied
    there); ``"triton"``, one CUDA kernel launch per block with one program per group
    (:mod:`hieravid.ops.dpp_triton`). ``"auto"``: numba on CPU, triton on CUDA when it is usable, else
    torch.

    Args:
        kernel: ``(G, n, n)`` PSD kernels (padded).
        k: ``(G,)`` int64 number of tokens to pick per group, ``0 <= k_g <= valid[g].sum()``.
        valid: ``(G, n)`` bool, False at padding.
        block: picks per blocked update (default: the backend's, 128 for numba, 64 otherwise).
        backend: ``"auto"``, ``"torch"``, ``"numba"`` or ``"triton"``.
        rank_floor: residual variances at or below this fraction of a group's largest kernel diagonal count
            as used-up rank (zero update row, kernel-diagonal order). The default 1e-3 is a deviation from
            the specification's plain rule (clamp ``d2 >= 0``, guard the square root), which ``0`` gives:
            then only variances that are exactly 0 (below 1e-30) are treated so.
        scratch: the caller no longer needs ``kernel`` (float32, contiguous), which the blocked updates may
            then overwrite instead of working on a copy of it.

    Returns:
        ``(G, n)`` bool mask of the picked tokens.
    """
    num_groups, n, _ = kernel.shape
    available = valid.sum(dim=1)
    if bool(((k < 0) | (k > available)).any()):
        raise ValueError(f"each group's k must be in [0, its token count]; got k={k.tolist()} for {available.tolist()}")
    kmax = int(k.max()) if num_groups else 0
    chosen = _greedy_picks(kernel, k, valid, kmax, block, resolve_greedy_backend(backend, kernel.device), rank_floor,
                           scratch)
    # (G, n + 1): groups with fewer picks than max k write their -1 entries into the spare last column.
    picked = torch.zeros(num_groups, n + 1, dtype=torch.bool, device=kernel.device)
    picked.scatter_(1, torch.where(chosen >= 0, chosen, n), True)
    return picked[:, :n]


def _greedy_picks(
    kernel: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    kmax: int,
    block: int | None,
    loop: str,
    rank_floor: float = _RANK_FLOOR,
    scratch: bool = False,
) -> torch.Tensor:
    """:func:`greedy_map`'s picks for checked arguments, ``kmax = max k`` and a resolved backend ``loop``
    (``block`` None: that backend's): ``(G, kmax)`` int64 column indices, -1 where a group has fewer picks.
    ``scratch``: the caller no longer needs ``kernel``, which the Schur updates may then overwrite."""
    device = kernel.device
    block = _BLOCKS[loop] if block is None else block
    if kmax == 0:
        return torch.full((kernel.shape[0], 0), -1, dtype=torch.long, device=device)
    if loop == "numba":  # the driver runs on the host, next to the compiled picks
        host = _blocked_greedy(kernel.cpu(), k.cpu(), valid.cpu(), kmax, block, _numba_block_picks, _UNBLOCKED_FLOATS,
                               rank_floor, scratch)
        return host.to(device)
    if loop == "triton":
        return _blocked_greedy(kernel, k, valid, kmax, block, _triton_block_picks(), 0, rank_floor, scratch)
    return _blocked_greedy(kernel, k, valid, kmax, block, _torch_block_picks, 0, rank_floor, scratch)


def _check_backend(backend: str) -> None:
    if backend not in GREEDY_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(GREEDY_BACKENDS)}, got {backend!r}")


def resolve_greedy_backend(backend: str, device: torch.device | str) -> str:
    """The greedy loop ``backend`` runs on tensors of ``device``: ``numba`` (compiled, on the host),
    ``triton`` (a CUDA kernel per block of picks) or ``torch`` (one step of torch operations per pick).
    ``auto`` takes numba on CPU, triton on CUDA where it is installed and passed its check on that
    device (:func:`hieravid.ops.dpp_triton.available`), torch elsewhere."""
    _check_backend(backend)
    device = torch.device(device)
    if backend == "triton":
        if device.type != "cuda":
            raise ValueError(
                f"greedy backend 'triton' runs on CUDA tensors, these are on {device}: use 'numba' or 'auto'"
            )
        from hieravid.ops import dpp_triton

        if not dpp_triton.available(device):
            raise ValueError(
                f"greedy backend 'triton' is not usable here ({dpp_triton.why_not(device)}): use 'torch' or 'auto'"
            )
        return backend
    if backend != "auto":
        return backend
    if device.type == "cpu":
        return "numba"
    if device.type == "cuda":
        from hieravid.ops import dpp_triton

        if dpp_triton.available(device):
            return "triton"
    return "torch"


# The compiled loop runs unblocked when one group's Cholesky rows (max k x n float32) fit in about
# 1 MB of cache: then correcting each row against all earlier ones is cheaper than the Schur updates
# (8 groups x 256 tokens, k = 180: 2.5 ms unblocked, 3.5 ms in blocks of 64; 1 x 2704, k = 1893: 502 ms
# unblocked, 244 ms in blocks).
_UNBLOCKED_FLOATS = 1 << 18

# block_picks(residual, d2, fallback, floor, left, chol, local): one block of picks for every
# group, in place; see _numba_block_picks_source for the contract.
BlockPicks = Callable[..., None]


def _blocked_greedy(
    kernel: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    kmax: int,
    block: int,
    block_picks: BlockPicks,
    unblocked: int,
    rank_floor: float = _RANK_FLOOR,
    scratch: bool = False,
) -> torch.Tensor:
    """:func:`greedy_map`'s blocked loop on tensors of one device: ``block_picks`` makes each block's
    picks, the Schur update between blocks is one batched product, and columns that can no longer be
    picked are dropped. Runs unblocked (one block of ``kmax = max k`` picks) when kmax x n <=
    ``unblocked``; ``scratch`` as in :func:`_greedy_picks`. Returns ``(G, kmax)`` int64 picks (original column
    indices, -1 where a group has fewer picks)."""
    num_groups, n, _ = kernel.shape
    device = kernel.device
    k = k.long()
    neg_inf = float("-inf")
    # (G, m, m) Schur complement, m shrinks as tokens are used up; every tensor here is C-contiguous.
    # Detached: the picks are discrete, and the compiled loops read the tensors' memory directly. The
    # block picks only read it: the caller's kernel is copied before the first Schur update, if any,
    # unless the caller gave it as ``scratch``.
    residual = kernel.detach().float().contiguous()
    owned = scratch or residual.data_ptr() != kernel.data_ptr()
    diag = torch.diagonal(residual, dim1=1, dim2=2).masked_fill(~valid, 0.0)  # (G, m)
    top = diag.amax(dim=1)  # (G,)
    floor = (rank_floor * top).clamp(min=1e-30)  # (G,)
    d2 = diag.masked_fill(~valid, neg_inf)  # (G, m) residual variances, -inf once picked or padding
    fallback = d2.clone()  # (G, m) kernel diagonal, -inf once picked or padding: order below the floor
    column: torch.Tensor | None = None  # (G, m) original index of each column; None while m = n
    if kmax * n <= unblocked:
        block = kmax  # a group's Cholesky rows stay in cache: no Schur updates, no column drops
    chosen: torch.Tensor | None = None  # (G, kmax) picks, -1 = none
    done = 0
    while done < kmax:
        width = min(block, kmax - done)
        m = residual.shape[1]
        chol = torch.zeros(num_groups, width, m, dtype=torch.float32, device=device)  # this block's rows
        local = torch.full((num_groups, width), -1, dtype=torch.long, device=device)  # picks, current columns
        block_picks(residual, d2, fallback, floor, (k - done).contiguous(), chol, local)
        if chosen is None and width == kmax:
            return local  # one block, no columns dropped: its picks are the original columns
        if chosen is None:
            chosen = torch.full((num_groups, kmax), -1, dtype=torch.long, device=device)
        original = local if column is None else column.gather(1, local.clamp(min=0))
        picks = chosen[:, done : done + width]  # a view; groups finished early keep what they hold
        picks.copy_(torch.where(local >= 0, original, picks))
        done += width
        if done >= kmax:
            break
        # A group whose residual variances are all at or below its floor has used up its kernel's rank:
        # each later pick would carry a zero row and follow the kernel diagonal, so its remaining picks
        # are its largest fallback entries (first column on ties), taken at once.
        spent = (k > done) & ~(d2 > floor[:, None]).any(dim=1)  # (G,)
        remaining = torch.isfinite(fallback) & (done < k)[:, None]  # (G, m) finished groups need nothing
        # One read from the device per block (on a GPU each read waits for the queue to drain): whether a
        # group is spent, whether this block made any non-zero row, and the most columns a group still needs.
        any_spent, any_row, needed = torch.stack(
            (spent.any().long(), chol.any().long(), remaining.sum(dim=1).max())
        ).tolist()
        if any_spent:
            groups = torch.nonzero(spent).squeeze(1)  # (E,)
            count = k[groups] - done  # (E,) picks each still makes
            most = int(count.max())
            order = torch.sort(fallback[groups], dim=1, descending=True, stable=True).indices[:, :most]  # (E, c)
            wanted = torch.arange(most, device=device)[None, :] < count[:, None]
            taken = order if column is None else column[groups].gather(1, order)
            chosen[groups, done : done + most] = torch.where(wanted, taken, -1)
            k = torch.where(spent, done, k)
            remaining &= ~spent[:, None]  # their picks are all made
            kmax, needed = torch.stack((k.max(), remaining.sum(dim=1).max())).tolist()
            if done >= kmax:
                break
        if any_row:  # past the kernel's rank every row is zero and the update changes nothing
            if not owned:
                residual, owned = residual.clone(), True
            residual.baddbmm_(chol.transpose(1, 2), chol, alpha=-1.0)
        if needed <= 0.75 * m:
            # Keep only still-pickable columns, in their original order.
            order = torch.argsort((~remaining).to(torch.uint8), dim=1, stable=True)[:, :needed]  # (G, m')
            rows = torch.arange(num_groups, device=device)[:, None, None]
            residual, owned = residual[rows, order[:, :, None], order[:, None, :]], True
            remaining = remaining.gather(1, order)
            d2 = d2.gather(1, order).masked_fill(~remaining, neg_inf)
            fallback = fallback.gather(1, order).masked_fill(~remaining, neg_inf)
            column = order if column is None else column.gather(1, order)
    return chosen


def _torch_block_picks(residual, d2, fallback, floor, left, chol, local) -> None:
    """One block of picks in torch operations (any device): a few dozen operations on ``(G, m)``
    tensors per pick, for all groups at once; a group with no picks left re-picks its best token with a
    zero row, which changes nothing."""
    num_groups, width, m = chol.shape
    neg_inf = float("-inf")
    floor = floor[:, None]  # (G, 1)
    scores, rest = d2, fallback
    for s in range(width):
        active = (left > s)[:, None]  # (G, 1)
        # Above the floor: largest d2 (compared as they are); none above it: largest kernel diagonal.
        above = scores > floor  # (G, m)
        key = torch.where(above, scores, torch.where(above.any(dim=1, keepdim=True), neg_inf, rest))  # (G, m)
        j = torch.argmax(key, dim=1, keepdim=True)  # (G, 1) first index on ties
        pivot = scores.gather(1, j)  # (G, 1)
        e = residual.gather(1, j[:, :, None].expand(num_groups, 1, m))  # (G, 1, m)
        if s:
            # e -= sum over this block's earlier rows c_t[j] c_t  ->  (G, 1, s) @ (G, s, m)
            c_j = chol[:, :s].gather(2, j[:, None, :].expand(num_groups, s, 1)).transpose(1, 2)
            e = torch.baddbmm(e, c_j, chol[:, :s], alpha=-1.0)
        scale = torch.where(active & (pivot > floor), pivot.clamp(min=1e-30).rsqrt(), 0.0)  # (G, 1)
        e = e.squeeze(1) * scale
        chol[:, s] = e
        scores = torch.addcmul(scores, e, e, value=-1.0)
        scores = torch.where(active, scores.scatter(1, j, neg_inf), scores)
        rest = torch.where(active, rest.scatter(1, j, neg_inf), rest)
        local[:, s] = torch.where(active, j, -1).squeeze(1)
    d2.copy_(scores)
    fallback.copy_(rest)


def _numba_block_picks(residual, d2, fallback, floor, left, chol, local) -> None:
    """One block of picks compiled by Numba, on zero-copy NumPy views of the host tensors."""
    _compiled_block_picks()(*(t.numpy() for t in (residual, d2, fallback, floor, left, chol, local)))


def _triton_block_picks() -> BlockPicks:
    from hieravid.ops import dpp_triton

    return dpp_triton.block_picks


def _numba_block_picks_source(residual, d2, fallback, floor, left, chol, local):  # pragma: no cover
    """One block of picks for every group, written for Numba (compiled by :func:`_compiled_block_picks`;
    Python never runs it). Group g makes ``min(width, left[g])`` picks; each corrects its kernel row
    against this block's earlier rows only (the residual already holds the earlier blocks' updates).

    ``residual`` ``(G, m, m)``, ``d2`` / ``fallback`` ``(G, m)`` (updated in place), ``floor`` ``(G,)``,
    ``left`` ``(G,)`` picks still to make, ``chol`` ``(G, width, m)`` zeros (filled),
    ``local`` ``(G, width)`` -1 (filled with the picked columns). All arithmetic is float32."""
    num_groups, width, m = chol.shape
    neg_inf = np.float32(-np.inf)
    for g in range(num_groups):
        for s in range(min(width, left[g])):
            # Above the floor: largest d2 (compared as they are); none above it: largest kernel diagonal.
            # First index on ties.
            j = -1
            best = neg_inf
            j_rest = 0
            best_rest = neg_inf
            for i in range(m):
                if d2[g, i] > floor[g]:
                    if d2[g, i] > best:  # best starts at -inf: the first one above the floor is taken
                        best = d2[g, i]
                        j = i
                elif fallback[g, i] > best_rest:
                    best_rest = fallback[g, i]
                    j_rest = i
            if j < 0:
                j = j_rest
            pivot = d2[g, j]
            if pivot > floor[g]:  # below the floor the row is zero (chol holds zeros) and d2 stays
                scale = np.float32(1) / np.sqrt(pivot)
                row = chol[g, s]
                for i in range(m):
                    row[i] = residual[g, j, i]
                for t in range(s):  # row -= c_t[j] c_t over this block's earlier rows
                    c = chol[g, t, j]
                    if c != 0:
                        for i in range(m):
                            row[i] -= c * chol[g, t, i]
                for i in range(m):
                    row[i] *= scale
                    d2[g, i] -= row[i] * row[i]
            d2[g, j] = neg_inf
            fallback[g, j] = neg_inf
            local[g, s] = j


_COMPILED = None

# Every array the driver passes is C-contiguous: naming the one signature compiles (or loads from the
# disk cache) when the loop is first needed, and a later call never compiles again.
_BLOCK_PICKS_SIGNATURE = (
    "void(f4[:, :, ::1], f4[:, ::1], f4[:, ::1], f4[::1], i8[::1], f4[:, :, ::1], i8[:, ::1])"
)


def _compiled_block_picks():
    """:func:`_numba_block_picks_source` compiled by Numba on first use (cached on disk, so later
    processes load it in a fraction of a second)."""
    global _COMPILED
    if _COMPILED is None:
        import numba

        try:
            _COMPILED = numba.njit(_BLOCK_PICKS_SIGNATURE, cache=True, nogil=True)(_numba_block_picks_source)
        except RuntimeError as err:  # nowhere to write the cache: a read-only install and no writable home
            if "cannot cache" not in str(err):
                raise
            warnings.warn(
                f"Numba cannot cache the compiled DPP loop ({err}); it is compiled again in every "
                "process (about a second): set NUMBA_CACHE_DIR to a writable folder to keep it",
                HieravidWarning, stacklevel=2,
            )
            _COMPILED = numba.njit(_BLOCK_PICKS_SIGNATURE, cache=False, nogil=True)(_numba_block_picks_source)
    return _COMPILED


def prepare_greedy(backend: str, device: torch.device | str) -> None:
    """Compile (or load) the greedy loop that ``backend`` runs on ``device`` now, so the first prefill
    does not pay for it (about a second on a fresh machine, a few tenths once cached)."""
    loop = resolve_greedy_backend(backend, device)  # triton: compiled and checked on the device here
    if loop == "numba":
        _compiled_block_picks()


def pack_segments(segment: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lay out the tokens of some segments as a padded ``(G, n_max)`` grid, keeping sequence order.

    Args:
        segment: ``(N,)`` int64 segment id of each token.
        groups: ``(G,)`` int64 ids of the segments to pack, in the order of the grid's rows.

    Returns:
        ``token_index (G, n_max)`` (sequence index, -1 at padding), ``valid (G, n_max)`` bool, ``n_max``.
    """
    num_segments = int(segment.max()) + 1 if segment.numel() else 0
    sizes = torch.bincount(segment, minlength=max(num_segments, 1))[groups]  # (G,)
    counts = sizes.tolist()
    token_index = _pack(segment, max(num_segments, 1), groups, sizes, max(counts, default=0), sum(counts))
    return token_index, token_index >= 0, token_index.shape[1]


def _pack(
    segment: torch.Tensor, num_segments: int, groups: torch.Tensor, sizes: torch.Tensor, n_max: int, total: int
) -> torch.Tensor:
    """:func:`pack_segments`'s grid ``token_index (G, n_max)`` when the sizes are known: segment ids are
    below ``num_segments``, ``sizes (G,)`` on the device, their largest ``n_max`` and their sum ``total``
    on the host (nothing is read back from the device)."""
    device = segment.device
    num_rows = groups.numel()
    # Grid row of each token's segment; tokens of segments left out sort after every packed one.
    row_of = torch.full((num_segments,), num_rows, dtype=torch.long, device=device)
    row_of[groups] = torch.arange(num_rows, device=device)
    token_row = row_of[segment]  # (N,)
    order = torch.argsort(token_row, stable=True)[:total]  # (total,) packed tokens by row, in sequence order
    row = token_row[order]
    starts = torch.cumsum(sizes, 0) - sizes  # (G,) first entry of each row in ``order``
    col = torch.arange(total, device=device) - starts[row]
    token_index = torch.full((num_rows, n_max), -1, dtype=torch.long, device=device)
    token_index[row, col] = order
    return token_index


# For the torch loop, whose cost is per pick step: below this many tokens a segment's kernel block is
# cheap next to the loop, so all segments share one padded loop. The compiled loops (Numba, Triton) cost
# next to nothing per step, so there segments are always bucketed by size, which bounds the padding.
_ONE_LOOP_TOKENS = 256


def _size_buckets(sizes: list[int], segments: list[int], one_loop_tokens: int) -> list[list[int]]:
    """Split ``segments`` (ids into ``sizes``, host ints) into groups whose sizes are within a factor of
    two of the group's largest, so padding wastes at most half of any row; when no segment exceeds
    ``one_loop_tokens`` tokens they form one group (one greedy loop). Each group lists its segment ids
    in increasing order."""
    if max(sizes[i] for i in segments) <= one_loop_tokens:
        return [list(segments)]
    buckets: list[list[int]] = []
    for i in sorted(segments, key=lambda i: -sizes[i]):  # a few dozen segments at most, no tensor work
        if buckets and 2 * sizes[i] >= sizes[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return [sorted(b) for b in buckets]


def segment_dpp_select(
    features: torch.Tensor,
    relevance: torch.Tensor,
    segment: torch.Tensor,
    k: torch.Tensor,
    *,
    backend: str = "auto",
    present: torch.Tensor | None = None,
    rank_floor: float = _RANK_FLOOR,
) -> torch.Tensor:
    """Eq. 9-10 over all segments: each segment keeps its own ``k_i`` tokens by conditional DPP.

    Segments are packed into a few size buckets (so a long segment does not pad every short one), each
    bucket builds only its diagonal kernel blocks and runs one batched greedy loop (:func:`greedy_map`
    with ``backend``). The segment sizes and counts are read back from the device once.

    Args:
        features: ``(N, D)`` hidden states of the visual tokens still present, in sequence order.
        relevance: ``(N,)`` relevance r (Eq. 8).
        segment: ``(N,)`` int64 segment id of each token (ids ``0..M-1``; a segment may be empty).
        k: ``(M,)`` int64 tokens to keep per segment.
        backend: the greedy loop's, see :func:`greedy_map`.
        present: ``(M,)`` int64 tokens of each segment (``bincount(segment)``), if the caller has them.
        rank_floor: the greedy loop's, see :func:`greedy_map`.

    Returns:
        ``(N,)`` bool keep mask; exactly ``k_i`` True per segment, sequence order untouched.
    """
    loop = resolve_greedy_backend(backend, features.device)  # an unusable backend fails before any work
    num_segments = k.numel()
    num_tokens = segment.numel()
    device = segment.device
    if present is None:
        present = torch.bincount(segment, minlength=num_segments)
    if present.numel() != num_segments:
        raise ValueError(f"segment ids go up to {present.numel() - 1} but k has {num_segments} entries")
    k = k.long()
    sizes, counts = torch.stack((present, k)).tolist()  # (M,) each, on the host: one read
    if any(c < 0 or c > n for c, n in zip(counts, sizes)):
        raise ValueError(f"per-segment k must be in [0, tokens of that segment]; got k={counts} for {sizes}")
    keep = torch.zeros(num_tokens + 1, dtype=torch.bool, device=device)  # (N + 1,) the last takes the -1 picks
    keep[:num_tokens] = (k == present)[segment]  # segments kept whole need no DPP
    needs_dpp = [i for i, (n, c) in enumerate(zip(sizes, counts)) if 0 < c < n]
    if not needs_dpp:
        return keep[:num_tokens]
    one_loop_tokens = _ONE_LOOP_TOKENS if loop == "torch" else 0
    buckets = _size_buckets(sizes, needs_dpp, one_loop_tokens)
    # One grid for every bucket, its rows bucket after bucket (largest first); a bucket uses its rows and
    # the columns up to its own largest segment (a view), so only the kernel blocks and the greedy loop
    # run per bucket.
    rows = sum(buckets, [])
    groups = torch.tensor(rows, dtype=torch.long, device=device)  # (S,) segment of each grid row
    grid_sizes = [sizes[i] for i in rows]
    token_index = _pack(segment, num_segments, groups, present[groups], max(grid_sizes), sum(grid_sizes))
    valid = token_index >= 0  # (S, n_max)
    safe = token_index.clamp(min=0)
    x = features.float()  # (N, D)
    # (S, n_max) kernel scale of each grid entry; padding reads the spare last entry, 0.
    scale = torch.cat((_kernel_scale(x, relevance), x.new_zeros(1)))[torch.where(valid, token_index, num_tokens)]
    group_k = k[groups]  # (S,)
    # (S, max k) picked grid columns, -1 = none; one bucket's picks are used as they are.
    chosen = None
    if len(buckets) > 1:
        chosen = torch.full((len(rows), max(counts[i] for i in rows)), -1, dtype=torch.long, device=device)
    start = 0
    for bucket in buckets:
        part = slice(start, start + len(bucket))
        start += len(bucket)
        width = max(sizes[i] for i in bucket)
        rows_x = _finite_rows(x[safe[part, :width]].mul_(scale[part, :width].unsqueeze(2)))  # (G, n, D) a copy
        kernel = _gram(rows_x)  # (G, n, n) ours: the Schur updates may overwrite it
        bucket_kmax = max(counts[i] for i in bucket)
        picks = _greedy_picks(kernel, group_k[part], valid[part, :width], bucket_kmax, None, loop, rank_floor,
                              scratch=True)
        if chosen is None:
            chosen = picks
        else:
            chosen[part, :bucket_kmax] = picks
    keep[torch.where(chosen >= 0, token_index.gather(1, chosen.clamp(min=0)), num_tokens)] = True
    return keep[:num_tokens]


def segment_bin_select(relevance: torch.Tensor, segment: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Stage-2 variant: split each segment's ordered tokens into ``k_i`` equal contiguous bins and keep
    the highest-relevance token of each bin (ties go to the earlier token). Bin b of a segment of n
    tokens holds its positions ``[b n // k, (b + 1) n // k)``, the reference code's bounds.

    Args:
        relevance: ``(N,)`` relevance r.
        segment: ``(N,)`` int64 segment id of each token, tokens in sequence order.
        k: ``(M,)`` int64 tokens to keep per segment (``k_i <= n_i``, so every bin is non-empty).

    Returns:
        ``(N,)`` bool keep mask with exactly ``k_i`` True per segment.
    """
    num_tokens = relevance.numel()
    num_segments = k.numel()
    present = torch.bincount(segment, minlength=num_segments)
    if bool((k < 0).any()) or bool((k > present).any()):
        raise ValueError(f"per-segment k must be in [0, n_i]; got k={k.tolist()} for {present.tolist()}")
    order = torch.argsort(segment, stable=True)
    starts = torch.cumsum(present, 0) - present
    position = torch.empty_like(segment)
    position[order] = torch.arange(num_tokens, device=segment.device) - starts[segment[order]]
    n_tok, k_tok = present[segment], k[segment]
    has_bins = k_tok > 0
    # Position p is in bin b when b n // k <= p < (b + 1) n // k, i.e. b = ceil((p + 1) k / n) - 1.
    bin_in_seg = torch.div((position + 1) * k_tok - 1, n_tok.clamp(min=1), rounding_mode="floor")
    bin_offset = torch.cumsum(k, 0) - k
    bin_id = torch.where(has_bins, bin_offset[segment] + bin_in_seg, torch.full_like(segment, -1))
    num_bins = int(k.sum())
    keep = torch.zeros(num_tokens, dtype=torch.bool, device=relevance.device)
    if num_bins == 0:
        return keep
    idx = torch.nonzero(has_bins).squeeze(1)
    r = relevance[idx].float().nan_to_num(nan=float("-inf"))  # a NaN relevance ranks last in its bin
    best = torch.full((num_bins,), float("-inf"), device=relevance.device)
    best = best.scatter_reduce(0, bin_id[idx], r, reduce="amax")
    is_best = r == best[bin_id[idx]]
    # First token reaching its bin's maximum: the smallest sequence index among the ties.
    first = torch.full((num_bins,), num_tokens, dtype=torch.long, device=relevance.device)
    first = first.scatter_reduce(0, bin_id[idx][is_best], idx[is_best], reduce="amin")
    keep[first] = True
    return keep
