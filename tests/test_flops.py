"""Tests of hieravid.flops against the paper's tables and a hand-written matmul count."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from hieravid.flops import MODEL_PRESETS, ModelShape, compare, exact_flops, paper_flops

# Paper cells (spec Eq. 12 check values): (preset, method, budget) -> (pruned TFLOPs, ratio in %).
PAPER_CELLS = {
    ("llava-video-7b", "hieravid", 0.3): (19.61, 24.5),
    ("llava-video-7b", "hieravid", 0.2): (13.77, 17.2),
    ("llava-video-7b", "hieravid", 0.1): (6.85, 8.5),
    ("llava-onevision-7b", "hieravid", 0.3): (10.74, 26.3),
    ("llava-onevision-7b", "hieravid", 0.2): (7.53, 18.5),
    ("llava-onevision-7b", "hieravid", 0.1): (3.82, 9.4),
    ("llava-video-7b", "uniform", 0.3): (None, 23.8),
    ("llava-video-7b", "uniform", 0.2): (None, 15.3),
    ("llava-video-7b", "uniform", 0.1): (None, 7.4),
}


@pytest.mark.parametrize("preset,vanilla", [("llava-video-7b", 80.16), ("llava-onevision-7b", 40.77)])
def test_vanilla_tflops(preset: str, vanilla: float) -> None:
    report = compare(preset, "vanilla")
    assert round(report.vanilla_tflops, 2) == vanilla
    assert report.pruned_tflops == report.vanilla_tflops and report.ratio == 1.0
    assert report.exact_ratio == 1.0


@pytest.mark.parametrize("key", sorted(PAPER_CELLS))
def test_paper_cells(key: tuple[str, str, float]) -> None:
    tflops, percent = PAPER_CELLS[key]
    report = compare(*key)
    if tflops is not None:
        assert round(report.pruned_tflops, 2) == tflops
    assert round(100 * report.ratio, 1) == percent


def test_paper_formula_by_hand() -> None:
    # One layer, n = 10, d = 4, m = 6: 4*10*16 + 2*100*4 + 2*10*4*6 = 640 + 800 + 480.
    assert paper_flops([10], 4, 6) == 1920.0
    assert paper_flops([10, 0, 10], 4, 6) == 3840.0
    # Llava-Video vanilla, written out: 28 layers of n0 = 64 * 169.
    n, d, m = 64 * 169, 3584, 18944
    assert paper_flops([n] * 28, d, m) == pytest.approx(28 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m))


def _hand_exact(
    n_visual: list[int], text: int, d: int, m: int, h: int, hkv: int, dh: int, v: int, head: int, causal: bool = True
) -> int:
    """Reference written matrix by matrix: (rows, inner, cols) of every product, 2 FLOPs per MAC. Causal
    attention is written query row by query row: row i meets the keys 0..i."""
    total = 0
    for nv in n_visual:
        n = nv + text
        products = [
            (n, d, h * dh),  # q_proj
            (n, d, hkv * dh),  # k_proj
            (n, d, hkv * dh),  # v_proj
            (n, h * dh, d),  # o_proj
            (n, d, m),  # gate_proj
            (n, d, m),  # up_proj
            (n, m, d),  # down_proj
        ]
        if causal:
            products += [(1, dh, i + 1) for i in range(n)] * h  # scores per head, one query row at a time
            products += [(1, i + 1, dh) for i in range(n)] * h  # weights @ values per head
        else:
            products += [(n, dh, n)] * h  # scores per head
            products += [(n, n, dh)] * h  # weights @ values per head
        total += sum(2 * a * b * c for a, b, c in products)
    total += 2 * head * d * v
    return total


def test_exact_count_matches_a_hand_sum_for_a_small_shape() -> None:
    shape = ModelShape("tiny", 3, hidden_size=16, intermediate_size=40, num_heads=4, num_kv_heads=2, head_dim=8, vocab_size=100)
    counts = [30, 12, 5]
    expected = _hand_exact(counts, 7, 16, 40, 4, 2, 8, 100, head=1)
    assert exact_flops(shape, counts, 7) == expected
    assert exact_flops(shape, counts, 7, lm_head_tokens=3) == _hand_exact(counts, 7, 16, 40, 4, 2, 8, 100, head=3)
    dense = _hand_exact(counts, 7, 16, 40, 4, 2, 8, 100, head=1, causal=False)
    assert exact_flops(shape, counts, 7, causal=False) == dense
    # The dense count adds the masked pairs: n (n - 1) / 2 per head and layer, in both products.
    masked = sum((n + 7) * (n + 6) // 2 for n in counts) * 4 * 2 * 2 * 8
    assert dense - expected == masked


def test_exact_needs_one_count_per_layer() -> None:
    shape = MODEL_PRESETS["llava-video-7b"].shape
    with pytest.raises(ValueError, match="one count per decoder layer"):
        exact_flops(shape, [10] * 27, 0)


def test_exact_exceeds_paper_for_the_same_counts() -> None:
    shape = MODEL_PRESETS["llava-video-7b"].shape
    counts = [5408] * 7 + [3786] * 7 + [2651] * 7 + [1140] * 7
    paper = paper_flops(counts, shape.hidden_size, shape.intermediate_size)
    assert exact_flops(shape, counts, 0, lm_head_tokens=0) > paper  # third MLP matrix
    assert exact_flops(shape, counts, 128) > exact_flops(shape, counts, 0)  # text tokens


def test_report_fields_and_integer_counts() -> None:
    report = compare("llava-video-7b", "hieravid", 0.3)
    assert report.visual_tokens == 10816 and report.text_tokens == 128
    assert report.tokens_per_layer[::7] == (5408, 3786, 2651, 1140)
    assert report.ratios == (0.5, 0.3, 0.3, 0.57)
    assert report.boundaries == (0, 7, 14, 21)
    assert report.exact_pruned_tflops == pytest.approx(
        _hand_exact(list(report.tokens_per_layer), 128, 3584, 18944, 28, 4, 128, 152064, 1) / 1e12
    )
    assert report.exact_vanilla_tflops == pytest.approx(
        _hand_exact([10816] * 28, 128, 3584, 18944, 28, 4, 128, 152064, 1) / 1e12
    )
    assert report.exact_ratio == pytest.approx(report.exact_pruned_tflops / report.exact_vanilla_tflops)
    d = report.to_dict()
    assert d["tokens_per_layer"][0] == 5408 and d["ratios"] == [0.5, 0.3, 0.3, 0.57]


@pytest.mark.parametrize(("frames", "budget"), [(64, 0.3), (2, 0.3), (5, 0.1), (64, 0.2)])
def test_uniform_integer_count_is_what_a_method_keeping_b_keeps(frames, budget) -> None:
    """The methods that keep B before the LLM keep ``keep_count(B, N)``; so does the uniform row."""
    from hieravid.methods.budget import keep_count

    report = compare("llava-video-7b", "uniform", budget, frames=frames)
    n = frames * 169
    assert set(report.tokens_per_layer) == {keep_count(budget, n)}
    assert compare("llava-video-7b", "uniform", 0.3).tokens_per_layer[0] == 3245  # 10816 - floor(0.7 * 10816)


def test_qwen2_vl_preset_and_overrides() -> None:
    preset = MODEL_PRESETS["qwen2-vl-7b"]
    assert preset.visual_tokens == 4096 and preset.shape.vocab_size == 152064
    report = compare("qwen2-vl-7b", "hieravid", 0.2, frames=8, text_tokens=0)
    assert report.visual_tokens == 8 * 256 and report.text_tokens == 0
    assert report.tokens_per_layer[0] == 1024


def test_too_few_frames_cap_stage_one_with_a_warning() -> None:
    # B = 0.1: rho = 0.7 asks floor(0.7 * 3 * 169) = 354 tokens of 3 frames, but only the 2 * 169 = 338
    # tokens of frames 1 and 2 have a predecessor to merge into.
    with pytest.warns(UserWarning, match="stage 1 can merge 338 of the 354"):
        capped = compare("llava-video-7b", "hieravid", 0.1, frames=3)
    assert capped.tokens_per_layer[0] == 507 - 338
    assert capped.achieved_budget == pytest.approx(sum(capped.tokens_per_layer) / (507 * 28), rel=1e-2)
    assert capped.achieved_budget > 0.1 + 0.005  # it keeps more than asked, and says so
    with pytest.warns(UserWarning, match="can merge 0 of"):
        assert compare("llava-video-7b", "hieravid", 0.3, frames=1).tokens_per_layer[0] == 169
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compare("llava-video-7b", "hieravid", 0.3, frames=2).achieved_budget == pytest.approx(0.3, abs=1e-3)


def test_compare_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="preset"):
        compare("llava-video-70b", "hieravid", 0.3)
    with pytest.raises(ValueError, match="budget"):
        compare("llava-video-7b", "hieravid", 0.0)
    with pytest.raises(ValueError, match="method"):
        compare("llava-video-7b", "fastv", 0.3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vanilla"):
        compare("llava-video-7b", "vanilla", 0.3)
    with pytest.raises(ValueError, match=r"causal must be True \(causal pairs\) or False"):
        compare("qwen2-vl-7b", "hieravid", 0.3, causal="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frames must be an integer >= 1, got 2.5"):
        compare("qwen2-vl-7b", "hieravid", 0.3, frames=2.5)  # type: ignore[arg-type]
    shape = MODEL_PRESETS["qwen2-vl-7b"].shape
    with pytest.raises(ValueError, match="text_tokens, lm_head_tokens and past_tokens must be >= 0, got nan"):
        exact_flops(shape, [1] * shape.num_layers, float("nan"))


def test_compare_takes_numpy_integers_as_pythons() -> None:
    import numpy as np

    given = compare("qwen2-vl-7b", "hieravid", 0.3, frames=np.int64(8), text_tokens=np.int32(64),
                    tokens_per_frame=np.int64(100))
    assert given == compare("qwen2-vl-7b", "hieravid", 0.3, frames=8, text_tokens=64, tokens_per_frame=100)


def test_shape_from_hf_style_config() -> None:
    text = SimpleNamespace(
        num_hidden_layers=28, hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
        num_key_value_heads=4, head_dim=None, vocab_size=152064,
    )
    shape = ModelShape.from_config(SimpleNamespace(text_config=text, model_type="llava_onevision"))
    assert shape == ModelShape(
        name="llava_onevision", num_layers=28, hidden_size=3584, intermediate_size=18944, num_heads=28,
        num_kv_heads=4, head_dim=128, vocab_size=152064,
    )
    # Defaults: no GQA field -> MHA; no head_dim -> d / H. Dicts work too.
    flat = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 8, "vocab_size": 50}
    shape = ModelShape.from_config(flat, name="flat")
    assert (shape.num_kv_heads, shape.head_dim, shape.name) == (8, 8, "flat")
    with pytest.raises(ValueError, match="num_hidden_layers"):
        ModelShape.from_config(SimpleNamespace(hidden_size=3))
