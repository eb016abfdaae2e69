"""Tests of hieravid.ops.relevance (spec Eq. 8) against an explicit full attention written with loops."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hieravid.ops.relevance import attention_from_queries, minmax_normalize, relevance


def ref_attention(query: torch.Tensor, keys: torch.Tensor, causal: bool) -> list[float]:
    """Repeat each KV head for its H / H_kv query heads (head h uses KV head h // (H / H_kv), as
    transformers' repeat_kv does), full softmax per (row, head) with later keys masked, then average."""
    q = query.double().tolist()  # [Q][H][d]
    num_rows, num_heads, head_dim = query.shape
    num_keys, num_kv = keys.shape[0], keys.shape[1]
    repeated = keys.double().repeat_interleave(num_heads // num_kv, dim=1).tolist()  # [N][H][d]
    a = [0.0] * num_keys
    for i in range(num_rows):
        visible = num_keys - num_rows + i + 1 if causal else num_keys
        for h in range(num_heads):
            logits = [
                sum(q[i][h][c] * repeated[j][h][c] for c in range(head_dim)) / math.sqrt(head_dim)
                for j in range(visible)
            ]
            top = max(logits)
            weights = [math.exp(v - top) for v in logits]
            total = sum(weights)
            for j in range(visible):
                a[j] += weights[j] / total / (num_rows * num_heads)
    return a


def ref_minmax(u: list[float], eps: float = 1e-6) -> list[float]:
    lo, hi = min(u), max(u)
    if hi == lo:
        return [1.0] * len(u)
    return [(v - lo + eps) / (hi - lo) for v in u]


@st.composite
def attention_cases(draw, max_rows=4):
    num_kv = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    head_dim = draw(st.integers(1, 5))
    num_keys = draw(st.integers(1, 10))
    num_rows = draw(st.integers(1, min(max_rows, num_keys)))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    query = 2.0 * torch.randn(num_rows, num_kv * groups, head_dim, generator=gen)
    keys = 2.0 * torch.randn(num_keys, num_kv, head_dim, generator=gen)
    return query, keys


@settings(max_examples=60, deadline=None)
@given(case=attention_cases(max_rows=1))
def test_attention_single_query_matches_full_attention(case):
    query, keys = case
    a = attention_from_queries(query, keys)
    assert a.dtype == torch.float32 and a.shape == (keys.shape[0],)
    torch.testing.assert_close(a.double(), torch.tensor(ref_attention(query, keys, True), dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    assert float(a.sum()) == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=60, deadline=None)
@given(case=attention_cases(), causal=st.booleans())
def test_attention_several_queries_matches_full_attention(case, causal):
    query, keys = case
    a = attention_from_queries(query, keys, causal=causal)
    want = torch.tensor(ref_attention(query, keys, causal), dtype=torch.float64)
    torch.testing.assert_close(a.double(), want, rtol=1e-5, atol=1e-6)


def test_attention_causal_mask_hides_later_keys_from_earlier_rows():
    # Q = 2 rows over N = 3 keys: row 0 (position 1) must not see key 2; row 1 sees all three.
    query = torch.zeros(2, 1, 1)
    keys = torch.zeros(3, 1, 1)
    a = attention_from_queries(query, keys, causal=True)
    torch.testing.assert_close(a, torch.tensor([(1 / 2 + 1 / 3) / 2, (1 / 2 + 1 / 3) / 2, (1 / 3) / 2]))
    torch.testing.assert_close(attention_from_queries(query, keys, causal=False), torch.full((3,), 1 / 3))


def test_attention_bf16_inputs():
    query = torch.randn(1, 4, 8).to(torch.bfloat16)
    keys = torch.randn(6, 2, 8).to(torch.bfloat16)
    a = attention_from_queries(query, keys)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a.double(), torch.tensor(ref_attention(query, keys, True), dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_attention_shape_errors():
    with pytest.raises(ValueError):
        attention_from_queries(torch.randn(1, 3, 4), torch.randn(5, 2, 4))  # 3 heads, 2 KV heads
    with pytest.raises(ValueError):
        attention_from_queries(torch.randn(1, 2, 4), torch.randn(5, 2, 3))  # d_h differs
    with pytest.raises(ValueError):
        attention_from_queries(torch.randn(4, 2, 4), torch.randn(3, 2, 4))  # more rows than keys


@settings(max_examples=60, deadline=None)
@given(case=attention_cases(), sign=st.sampled_from(["negative", "positive"]), data=st.data())
def test_relevance_is_minmax_of_signed_attention_over_visual_tokens(case, sign, data):
    query, keys = case
    num_keys = keys.shape[0]
    visual = sorted(data.draw(st.sets(st.integers(0, num_keys - 1), min_size=1)))
    r = relevance(query, keys, torch.tensor(visual, dtype=torch.long), sign=sign)
    assert r.dtype == torch.float32 and r.shape == (len(visual),)
    assert not torch.isnan(r).any()
    a = ref_attention(query, keys, True)
    u = [-a[j] if sign == "negative" else a[j] for j in visual]
    spread = max(u) - min(u)
    # A spread within round-off of the values gives ones (test_minmax_normalize_round_off_is_constant); near
    # that threshold float32 and float64 may fall on different sides of it.
    assume(spread == 0 or spread > 1e-4 * max(abs(v) for v in u))
    want = torch.tensor(ref_minmax(u), dtype=torch.float64)
    # Normalisation divides by the spread of a: compare relative to it.
    atol = 1e-6 if spread == 0 else max(1e-5, 1e-6 / spread)
    torch.testing.assert_close(r.double(), want, rtol=1e-4, atol=atol)


def test_relevance_sign_orders_tokens():
    # Key 1 aligns with the query, key 2 opposes it: largest and smallest attention.
    query = torch.tensor([[[3.0, 0.0]]])
    keys = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]], [[-1.0, 0.0]], [[0.0, 0.0]]])
    visual = torch.tensor([0, 1, 2])
    neg = relevance(query, keys, visual)
    pos = relevance(query, keys, visual, sign="positive")
    assert int(neg.argmin()) == 1 and int(neg.argmax()) == 2
    assert int(pos.argmax()) == 1 and int(pos.argmin()) == 2
    # The extremes of min-max: eps / span at the minimum, 1 + eps / span at the maximum.
    assert float(neg.min()) > 0 and float(neg.min()) < 1e-4
    assert float(neg.max()) == pytest.approx(1.0, abs=1e-4)


def test_relevance_ignores_non_visual_keys_for_min_max():
    # The text token (index 3) has the largest attention; it must not enter min/max.
    query = torch.tensor([[[2.0, 0.0]]])
    keys = torch.tensor([[[0.5, 0.0]], [[0.2, 0.0]], [[-0.3, 0.0]], [[5.0, 0.0]]])
    r = relevance(query, keys, torch.tensor([0, 1, 2]), sign="positive")
    a = ref_attention(query, keys, True)
    want = ref_minmax([a[0], a[1], a[2]])
    torch.testing.assert_close(r.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    # Max is 1 + eps / span with the span of the visual tokens only (small here, so eps shows).
    span = max(a[:3]) - min(a[:3])
    assert span < 0.01
    assert float(r.max()) == pytest.approx(1 + 1e-6 / span, rel=1e-4)
    assert int(r.argmax()) == 0 and int(r.argmin()) == 2


@pytest.mark.parametrize("sign", ["negative", "positive"])
def test_relevance_constant_attention_gives_ones(sign):
    query = torch.zeros(1, 4, 8)  # every logit is 0: uniform attention
    keys = torch.randn(9, 2, 8)
    r = relevance(query, keys, torch.tensor([1, 2, 3, 5, 8]), sign=sign)
    assert torch.equal(r, torch.ones(5))


def test_relevance_bad_sign_lists_choices():
    with pytest.raises(ValueError, match="negative.*positive"):
        relevance(torch.randn(1, 2, 4), torch.randn(5, 2, 4), torch.tensor([0, 1]), sign="minus")


def test_minmax_normalize_values():
    u = torch.tensor([2.0, 4.0, 3.0])
    torch.testing.assert_close(minmax_normalize(u, eps=0.0), torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(minmax_normalize(u), torch.tensor([1e-6 / 2, 1 + 1e-6 / 2, 0.5 + 1e-6 / 2]))
    assert torch.equal(minmax_normalize(torch.full((4,), 0.25)), torch.ones(4))
    assert torch.equal(minmax_normalize(torch.tensor([7.0])), torch.ones(1))


def test_minmax_normalize_round_off_is_constant():
    """Scores that differ by float32 round-off only (two alike tokens' similarities in a batch and alone)
    give ones, not round-off stretched to [0, 1]; a spread that is small but real is still stretched."""
    noise = torch.tensor([0.008353739976882935, 0.008353738114237785, 0.008353739])
    assert torch.equal(minmax_normalize(noise), torch.ones(3))
    assert torch.equal(minmax_normalize(-noise), torch.ones(3))
    small = torch.tensor([1e-9, 3e-9, 2e-9])  # tiny values, but 67% apart
    r = minmax_normalize(small)
    torch.testing.assert_close(r, (small - 1e-9 + 1e-6) / 2e-9)
    assert int(r.argmax()) == 1 and int(r.argmin()) == 0
