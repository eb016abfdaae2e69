"""The ops micro-benchmark runs end to end at a tiny shape and reports a complete, consistent result
(no timing is asserted)."""

from __future__ import annotations

import json

import torch

from hieravid.bench.ops import run_ops_bench, synthetic_video
from hieravid.cli import main
from hieravid.schedule import solve_schedule


def test_synthetic_video_has_the_planted_scenes():
    x = synthetic_video(12, 5, 16, 3, seed=1)
    assert x.shape == (12, 5, 16)
    cos = torch.nn.functional.cosine_similarity(x[1:], x[:-1], dim=-1).mean(dim=1)  # (T-1,)
    cuts = [t + 1 for t in range(11) if cos[t] < 0.5]
    assert cuts == [4, 8]


def test_ops_bench_report_is_consistent():
    result = run_ops_bench(frames=8, slots=12, dim=16, scenes=2, heads=4, kv_heads=2, head_dim=8,
                           text_tokens=5, repeats=2, warmup=0)
    schedule = solve_schedule(0.3, 28, 4)
    assert result.ratios == list(schedule.ratios)
    assert result.segments_found == 2
    assert len(result.stage_ms) == 4 and all(ms > 0 for ms in result.stage_ms)
    assert result.tokens_per_stage[0] == 8 * 12 - int(0.5 * 8 * 12)
    assert all(a >= b for a, b in zip(result.tokens_per_stage, result.tokens_per_stage[1:]))
    assert len(result.runs_total_ms) == 2


def test_bench_ops_cli_json(capsys):
    code = main(["bench-ops", "--frames", "6", "--slots", "8", "--dim", "16", "--scenes", "2",
                 "--repeats", "1", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"machine", "stage_ms", "total_ms", "tokens_per_stage", "segments_found"} <= set(out)
    assert out["greedy_backend"] == "numba"  # auto on CPU


def test_bench_ops_cli_greedy_backend(capsys):
    code = main(["bench-ops", "--frames", "6", "--slots", "8", "--dim", "16", "--scenes", "2",
                 "--repeats", "1", "--greedy-backend", "torch"])
    assert code == 0
    assert "greedy loop torch" in capsys.readouterr().out


def test_bench_ops_rejects_missing_cuda(capsys):
    if torch.cuda.is_available():
        return
    assert main(["bench-ops", "--frames", "4", "--slots", "4", "--dim", "8", "--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().err


def test_stages_with_ratio_zero_are_not_run():
    """As in the method: budget 1 decides nothing, so no token is removed and nothing is timed."""
    result = run_ops_bench(frames=4, slots=12, dim=16, scenes=2, heads=4, kv_heads=2, head_dim=8,
                           text_tokens=5, repeats=1, warmup=0, budget=1.0)
    assert result.ratios == [0.0] * 4
    assert result.tokens_per_stage == [4 * 12] * 4 and result.stage_ms == [0.0] * 4


def test_bench_ops_refuses_other_devices(capsys):
    assert main(["bench-ops", "--device", "gpu", "--frames", "4", "--slots", "8", "--dim", "16"]) == 2
    assert main(["bench-ops", "--device", "meta", "--frames", "4", "--slots", "8", "--dim", "16"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'gpu': use cpu, cuda or cuda:N" in err and "not meta" in err


def test_a_video_with_no_token_left_skips_the_later_stages():
    """One token per frame and a scene per frame: the segments empty out before the last stage, which
    then has nothing to decide (as in the runtime) instead of failing on an empty relevance."""
    result = run_ops_bench(frames=8, slots=1, dim=16, scenes=8, heads=4, kv_heads=2, head_dim=8,
                           text_tokens=5, repeats=1, warmup=0)
    assert result.tokens_per_stage[-1] == 0
    first_empty = result.tokens_per_stage.index(0)
    assert result.stage_ms[first_empty + 1 :] == [0.0] * (3 - first_empty)


def test_bench_ops_default_scenes_fit_few_frames(capsys):
    assert main(["bench-ops", "--frames", "4", "--slots", "8", "--dim", "16", "--repeats", "1"]) == 0
    assert "4 planted scenes" in capsys.readouterr().out
    assert main(["bench-ops", "--frames", "4", "--slots", "8", "--dim", "16", "--repeats", "1", "--budget", "1"]) == 0
    assert "nothing to decide at this budget" in capsys.readouterr().out
