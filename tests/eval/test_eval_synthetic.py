"""`hieravid eval --suite synthetic` on the proxy architecture (untrained weights): per-type scores, tables, plot."""

import json

from hieravid.cli import main
from hieravid.eval.tasks import get_task
from hieravid.synthetic import QUESTION_TYPES


def test_synthetic_task_reads_the_test_split():
    task = get_task("synthetic")
    samples = task.load(None)
    assert len(samples) == 500 and len({s.id for s in samples}) == 500
    assert {s.meta["group"] for s in samples} == set(QUESTION_TYPES)
    frames = samples[0].frames(16)
    assert frames.shape == (16, 96, 96, 3)
    assert task.score(samples[0], f"{samples[0].answer}").value == 1.0
    assert task.score(samples[0], "no idea").failure is not None


def test_more_synthetic_frames_than_memory_holds_are_refused_before_any_are_made(monkeypatch):
    import pytest

    from hieravid import video

    sample = get_task("synthetic").load(None)[0]
    monkeypatch.setattr(video, "available_memory", lambda: 4 * 2**20)  # 4 MiB: 151 frames of 96 x 96 x 3
    with pytest.raises(ValueError, match=r"num_frames=99999999999 frames of 96x96 pixels need .* ask for fewer frames"):
        sample.frames(99_999_999_999)  # its indices alone would take 745 GiB
    assert sample.frames(16).shape == (16, 96, 96, 3)


def test_eval_suite_synthetic_end_to_end(proxy_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["eval", "--suite", "synthetic", "--model", str(proxy_dir), "--methods", "vanilla,hieravid",
                 "--budgets", "0.3", "--limit", "10", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "synthetic: score per group" in printed and "plot:" in printed
    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in summary["rows"]}
    assert set(rows) == {("vanilla", 1.0), ("hieravid", 0.3)}
    groups = rows[("hieravid", 0.3)]["details"]["synthetic"]["groups"]
    assert set(groups) == set(QUESTION_TYPES)  # 10 samples cycle through the five types twice
    assert abs(rows[("hieravid", 0.3)]["achieved_budget"] - 0.3) < 0.03
    assert (out / "scores.png").stat().st_size > 10_000
