"""The Triton greedy loop (hieravid.ops.dpp_triton) without a GPU: it compiles for an H100/H200
(sm_90) with Triton's own ptxas, its picks equal the torch loop's in Triton's interpreter, and the
backend choice falls back to the torch loop with a warning where the kernel does not work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from unittest import mock

import pytest
import torch

import hieravid.ops.dpp as dpp
from hieravid.ops import dpp_triton
from hieravid.warning import HieravidWarning

needs_triton = pytest.mark.skipif(dpp_triton.triton is None, reason="triton is not installed")


@needs_triton
@pytest.mark.parametrize(("block_m", "warps"), [(64, 4), (1024, 4), (8192, 16)])
def test_kernel_compiles_for_sm90(block_m, warps):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: "*fp32" for name in ("residual_ptr", "d2_ptr", "fallback_ptr", "floor_ptr")}
    signature |= {"left_ptr": "*i64", "chol_ptr": "*fp32", "local_ptr": "*i64", "m": "i32", "width": "i32"}
    signature["BLOCK_M"] = "constexpr"
    source = ASTSource(triton.jit(dpp_triton._block_picks_kernel), signature, constexprs={"BLOCK_M": block_m})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    ptx = compiled.asm["ptx"]
    assert ".target sm_90" in ptx and compiled.asm["cubin"]


# Runs in a fresh interpreter: TRITON_INTERPRET must be set before triton is imported.
_INTERPRETED = textwrap.dedent(
    """
    import json, torch
    import hieravid.ops.dpp as dpp
    from hieravid.ops import dpp_triton

    def problem(seed, sizes, n, dim, k):
        gen = torch.Generator().manual_seed(seed)
        valid = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
        x = torch.randn(len(sizes), n, dim, generator=gen) * valid[:, :, None]
        relevance = 0.2 + 0.8 * torch.rand(len(sizes), n, generator=gen)
        return dpp.conditional_kernel(x, relevance, valid), torch.tensor(k), valid

    cases = {
        "groups, padding, k = 0 and k = all": (problem(0, [40, 23, 9, 17], 40, 24, [29, 11, 9, 0]), 8),
        "rank used up (dim 5 < k)": (problem(1, [30, 26], 30, 5, [20, 26]), 8),
        "columns dropped between blocks": (problem(2, [64, 64], 64, 48, [6, 60]), 4),
        "one block of every pick": (problem(3, [33, 20], 33, 40, [25, 19]), 64),
        # d2 one float32 step apart, in a group of large and one of small variances
        "largest d2 however close": ((torch.diag_embed(torch.tensor([[0.5, 0.50000006, 0.25]]) * torch.tensor(
            [[1.0], [2.0**-8]])), torch.tensor([1, 1]), torch.ones(2, 3, dtype=torch.bool)), 8),
    }
    out = {"check": dpp_triton._check(torch.device("cpu"))}
    for name, ((kernel, k, valid), block) in cases.items():
        triton_picks = dpp._blocked_greedy(kernel, k, valid, int(k.max()), block, dpp_triton.block_picks, 0)
        torch_picks = dpp._blocked_greedy(kernel, k, valid, int(k.max()), block, dpp._torch_block_picks, 0)
        numba_picks = dpp._blocked_greedy(kernel, k, valid, int(k.max()), block, dpp._numba_block_picks, 0)
        counts = (triton_picks >= 0).sum(dim=1)
        out[name] = [torch.equal(triton_picks, torch_picks), torch.equal(triton_picks, numba_picks),
                     torch.equal(counts, k)]
    print(json.dumps(out))
    """
)


@needs_triton
def test_interpreted_kernel_picks_what_the_torch_and_numba_loops_pick():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out.pop("check") is None  # the device check itself passes
    assert out == {name: [True, True, True] for name in out} and len(out) == 5


def test_block_picks_refuses_cpu_tensors_outside_the_interpreter():
    if dpp_triton.triton is None:
        pytest.skip("triton is not installed")
    t = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        dpp_triton.block_picks(t, *(torch.zeros(1, 4),) * 2, torch.zeros(1),
                               torch.ones(1, dtype=torch.long), torch.zeros(1, 1, 4),
                               torch.full((1, 1), -1, dtype=torch.long))


def test_backend_choice():
    assert dpp.resolve_greedy_backend("auto", "cpu") == "numba"
    assert dpp.resolve_greedy_backend("torch", "cuda:0") == "torch"
    assert dpp.resolve_greedy_backend("numba", "cuda:0") == "numba"
    with pytest.raises(ValueError, match="runs on CUDA tensors.*use 'numba' or 'auto'"):
        dpp.resolve_greedy_backend("triton", "cpu")
    with pytest.raises(ValueError, match="auto, torch, numba, triton"):
        dpp.resolve_greedy_backend("cuda", "cpu")
    with mock.patch.object(dpp_triton, "available", return_value=True):
        assert dpp.resolve_greedy_backend("auto", "cuda:0") == "triton"
        assert dpp.resolve_greedy_backend("triton", "cuda:0") == "triton"
    with mock.patch.object(dpp_triton, "available", return_value=False), \
            mock.patch.object(dpp_triton, "why_not", return_value="no GPU"):
        assert dpp.resolve_greedy_backend("auto", "cuda:0") == "torch"
        with pytest.raises(ValueError, match=r"not usable here \(no GPU\): use 'torch' or 'auto'"):
            dpp.resolve_greedy_backend("triton", "cuda:0")


def test_a_failing_kernel_warns_once_and_is_not_used(monkeypatch):
    monkeypatch.setattr(dpp_triton, "_CHECKED", {})
    monkeypatch.setattr(dpp_triton, "_check", lambda device: f"the kernel failed on {device}: boom")
    with pytest.warns(HieravidWarning, match="cuda:3: boom; the DPP runs the torch loop"):
        assert not dpp_triton.available("cuda:3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # checked once: no second warning
        assert dpp.resolve_greedy_backend("auto", "cuda:3") == "torch"
    assert dpp_triton.why_not("cuda:3") == "the kernel failed on cuda:3: boom"
    assert not dpp_triton.available("cpu")
