"""Shared fixtures of the evaluation tests: a tiny Qwen2-VL saved as a checkpoint, the fixture benchmark sets, a
WUPS scorer on a toy lexicon, and one reference run of ``hieravid eval`` on all of it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures import ToyLexicon, write_benchmarks

# settings of every end-to-end run here: 4 frames, 2 new tokens (fast), vanilla and HieraVid at 0.3
RUN_ARGS = ["--methods", "vanilla,hieravid", "--budgets", "0.3", "--num-frames", "4", "--max-new-tokens", "2", "--quiet"]
ALL_TASKS = "mvbench,egoschema,nextqa_mc,nextqa_oe,videomme,videomme_sub"
# record fields that are measurements or bookkeeping, not results
VOLATILE = ("prefill_seconds", "vision_seconds", "total_seconds", "rank", "written_at")


def comparable(record: dict) -> dict:
    """A record without its timings and process rank."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL (4 layers) and its processor, saved so that from_pretrained loads them.

    Its output layer is rewired so that it answers in option letters: the tokenizer gets the words A-E, the final
    norm keeps one hidden dimension, and the LM head maps its sign to "A" (+) or "B" (-). The answers still depend
    on the video, the question and the pruning, so scores are neither all 0 nor all 100."""
    import torch
    from tiny_models import build_model, build_processor

    path = tmp_path_factory.mktemp("tiny_qwen2_vl")
    model = build_model("qwen2_vl", num_layers=4)
    processor = build_processor("qwen2_vl", model, path)
    processor.tokenizer.add_tokens(list("ABCDE"))
    plus, minus = processor.tokenizer.convert_tokens_to_ids(["A", "B"])
    with torch.no_grad():
        norm = model.model.language_model.norm.weight
        norm.zero_()
        norm[0] = 1.0
        head = model.lm_head.weight
        head.zero_()
        head[plus, 0], head[minus, 0] = 1.0, -1.0
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return write_benchmarks(tmp_path_factory.mktemp("benchmarks"))


@pytest.fixture(scope="session")
def toy_wups():
    """nextqa_oe scored with the toy lexicon for the whole session (NLTK's WordNet data is not installed here)."""
    import hieravid.eval.nextqa  # noqa: F401 - registers the NLTK-backed task first
    from hieravid.eval.nextqa import NextQAOpenEnded
    from hieravid.eval.tasks import get_task, register_task

    before = get_task("nextqa_oe")
    register_task(NextQAOpenEnded(lexicon=ToyLexicon()), replace=True)
    yield
    register_task(before, replace=True)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, model_dir, data_root, toy_wups) -> Path:
    """Output folder of one uninterrupted single-process `hieravid eval` over every fixture task."""
    from hieravid.cli import main

    out = tmp_path_factory.mktemp("reference")
    code = main(["eval", "--model", str(model_dir), "--tasks", ALL_TASKS, "--data-root", str(data_root),
                 "--out", str(out), *RUN_ARGS])
    assert code == 0
    return out
