"""Eq. 10 on a GPU: one block of the greedy MAP's picks as a Triton kernel.

The torch loop costs a few dozen kernel launches per pick; a stage of a 7B-shaped prefill makes
hundreds of picks per segment. Here one launch makes a whole block of picks for every group: one
program per group keeps the group's ``d2`` and fallback scores in registers, picks, corrects the
picked kernel row against the block's earlier rows and writes it to ``chol``. The blocked driver
(:func:`hieravid.ops.dpp._blocked_greedy`) does the rest in torch: the Schur update between blocks is
one batched product and the column drops are gathers.

The kernel is compiled by Triton for CUDA tensors; in a process started with ``TRITON_INTERPRET=1`` it
runs on CPU tensors in Triton's interpreter instead (NumPy, slow: for tests). :func:`available` compiles
it on a device and checks its picks against the torch loop once, so ``greedy_backend="auto"`` never
takes a kernel that does not work there.
"""

from __future__ import annotations

import warnings

import torch

from hieravid.warning import HieravidWarning

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # torch without Triton (CPU builds, some platforms)
    triton = tl = None
    _IMPORT_ERROR: str | None = f"triton is not installed ({exc})"
else:
    _IMPORT_ERROR = None

__all__ = ["available", "block_picks", "why_not"]


def _block_picks_kernel(
    residual_ptr,  # (G, m, m) float32 Schur complement
    d2_ptr,  # (G, m) float32 residual variances, updated
    fallback_ptr,  # (G, m) float32 kernel diagonal of the unpicked tokens, updated
    floor_ptr,  # (G,) float32 rank floor
    left_ptr,  # (G,) int64 picks still to make
    chol_ptr,  # (G, width, m) float32 zeros: this block's Cholesky rows, filled
    local_ptr,  # (G, width) int64 -1: this block's picks (current columns), filled
    m,
    width,
    BLOCK_M: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BLOCK_M)
    inside = idx < m
    d2 = tl.load(d2_ptr + g * m + idx, mask=inside, other=float("-inf"))
    rest = tl.load(fallback_ptr + g * m + idx, mask=inside, other=float("-inf"))
    floor = tl.load(floor_ptr + g)
    picks = tl.minimum(tl.load(left_ptr + g), width)
    kernel_rows = residual_ptr + g * m * m
    chol_rows = chol_ptr + g * width * m
    for s in range(0, picks):
        # Above the floor: largest d2 (compared as they are); none above it: largest kernel diagonal.
        # First index on ties.
        above = d2 > floor
        some_above = tl.max(above.to(tl.int32), axis=0) > 0
        j = tl.argmax(tl.where(above, d2, tl.where(some_above, float("-inf"), rest)), axis=0, tie_break_left=True)
        pivot = tl.sum(tl.where(idx == j, d2, 0.0), axis=0)
        if pivot > floor:  # below the floor the row is zero (chol holds zeros) and d2 stays
            row = tl.load(kernel_rows + j * m + idx, mask=inside, other=0.0)
            for t in range(0, s):  # row -= c_t[j] c_t over this block's earlier rows
                c = tl.load(chol_rows + t * m + j)
                row -= c * tl.load(chol_rows + t * m + idx, mask=inside, other=0.0)
            row = row * tl.div_rn(1.0, tl.sqrt_rn(pivot))
            tl.store(chol_rows + s * m + idx, row, mask=inside)
            tl.debug_barrier()  # the row is read back, element j by every thread, at the next picks
            d2 = d2 - row * row
        tl.store(local_ptr + g * width + s, j.to(tl.int64))
        d2 = tl.where(idx == j, float("-inf"), d2)
        rest = tl.where(idx == j, float("-inf"), rest)
    tl.store(d2_ptr + g * m + idx, d2, mask=inside)
    tl.store(fallback_ptr + g * m + idx, rest, mask=inside)


_KERNEL = None


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def block_picks(residual, d2, fallback, floor, left, chol, local) -> None:
    """One block of picks for every group, in place (the contract of
    :func:`hieravid.ops.dpp._numba_block_picks_source`); all tensors C-contiguous on one device."""
    global _KERNEL
    if _IMPORT_ERROR is not None:
        raise RuntimeError(_IMPORT_ERROR)
    if residual.device.type != "cuda" and not _interpreting():
        raise ValueError(f"the Triton greedy loop runs on CUDA tensors, these are on {residual.device}")
    if _KERNEL is None:
        _KERNEL = triton.jit(_block_picks_kernel)
    num_groups, width, m = chol.shape
    block_m = triton.next_power_of_2(max(m, 16))
    warps = min(16, max(4, block_m // 256))  # up to 64 elements per thread for each of a few row vectors
    _KERNEL[(num_groups,)](
        residual, d2, fallback, floor, left, chol, local, m, width, BLOCK_M=block_m, num_warps=warps
    )


_CHECKED: dict[torch.device, str | None] = {}  # device -> None (usable) or why not


def _check(device: torch.device) -> str | None:
    """Compile the kernel on ``device`` and compare its picks with the torch loop's on a small problem
    (three groups, padding, more picks than one block; full rank, and every pick wins by at least 7e-4
    of the largest diagonal, far above float32 rounding). Returns None or what went wrong."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    from hieravid.ops.dpp import _blocked_greedy, _torch_block_picks

    generator = torch.Generator().manual_seed(0)
    sizes, k = [40, 23, 9], torch.tensor([29, 11, 9])  # max k = 29
    features = torch.randn(3, 40, 48, generator=generator)
    valid = torch.arange(40)[None, :] < torch.tensor(sizes)[:, None]
    features = features * valid[:, :, None]
    kernel = (features @ features.transpose(1, 2)).to(device)
    valid, k = valid.to(device), k.to(device)
    try:
        picks = _blocked_greedy(kernel, k, valid, 29, 8, block_picks, 0)
    except Exception as exc:  # noqa: BLE001 - any compiler or driver failure means: not here
        return f"the kernel failed on {device}: {type(exc).__name__}: {exc}"
    expected = _blocked_greedy(kernel, k, valid, 29, 8, _torch_block_picks, 0)
    if not torch.equal(picks, expected):
        return f"its picks on {device} differ from the torch loop's"
    return None


def _key(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def available(device: torch.device | str) -> bool:
    """Whether the kernel compiles and picks correctly on the CUDA ``device`` (checked once per device;
    the first failure is reported as a warning, and ``auto`` then uses the torch loop)."""
    device = _key(device)
    if device not in _CHECKED:
        problem = _check(device) if device.type == "cuda" else f"{device} is not a CUDA device"
        _CHECKED[device] = problem
        if problem is not None and device.type == "cuda":
            warnings.warn(
                f"the Triton greedy loop is not usable: {problem}; the DPP runs the torch loop, one step of "
                "torch operations per pick (slower)",
                HieravidWarning,
                stacklevel=2,
            )
    return _CHECKED[device] is None


def why_not(device: torch.device | str) -> str:
    """Why :func:`available` says no for ``device`` (empty when it says yes)."""
    available(device)
    return _CHECKED[_key(device)] or ""
