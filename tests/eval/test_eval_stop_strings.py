"""Stop strings: an answer is scored up to its task's first stop string (lmms-eval's ``until``), by ``hieravid
eval`` as by the lmms-eval plugin, and records saved before answers were cut are scored again on resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hieravid.infer
from hieravid.eval import PAPER_TASKS, EvalConfig, Sample, get_task, register_task, run_eval
from hieravid.eval.nextqa import NextQAMultipleChoice
from hieravid.eval.records import read_records
from hieravid.eval.tasks import cut_at_stop
from hieravid.infer import Answer

# What a model may write: the option first, then an explanation naming another option. lmms-eval cuts it at
# "\n\n" and reads B; read whole, NExT-QA's rule takes the bracketed (A).
RAMBLING = "B. jump\n\nExplanation: the boy did not (A) slip."
OPTIONS = ["slip", "jump", "run", "sit", "fly"]


class StopProbe(NextQAMultipleChoice):
    """NExT-QA's multiple-choice scoring on one made-up question with frames instead of a video."""

    name = "stop_probe"

    def load(self, data_root):
        question = "what does the boy do ?\n" + "\n".join(f"{letter}. {o}" for letter, o in zip("ABCDE", OPTIONS))
        frames = lambda n: np.zeros((n, 112, 168, 3), dtype=np.uint8)  # noqa: E731
        return [Sample(id="0", task=self.name, question=question, answer="B", options=OPTIONS, frames=frames)]


def _fake_answer(text: str):
    def answer(*args, **kwargs):
        return Answer(text=text, stats=None, prefill_seconds=0.0, vision_seconds=0.0, total_seconds=0.0,
                      new_tokens=9, input_tokens=99)

    return answer


def test_cut_at_stop_cuts_at_the_earliest_stop_string():
    assert cut_at_stop(RAMBLING, ["\n\n"]) == "B. jump"
    assert cut_at_stop(RAMBLING, "\n\n") == "B. jump"
    assert cut_at_stop("xbcd", ["cd", "bc"]) == "x"  # the earliest, whichever stop string is listed first
    assert cut_at_stop("a\n\nb", None) == cut_at_stop("a\n\nb", []) == cut_at_stop("a\n\nb", [""]) == "a\n\nb"


def test_each_task_has_lmms_evals_stop_strings():
    """None of lmms-eval's yamls for the paper's tasks sets ``until``: lmms-eval stops them at "\\n\\n". The
    synthetic suite is hieravid's own and reads the whole answer."""
    assert {name: get_task(name).until for name in PAPER_TASKS} == {name: ("\n\n",) for name in PAPER_TASKS}
    assert get_task("synthetic").until == ()


@pytest.fixture
def probe():
    return register_task(StopProbe(), replace=True)


def _config(out, model_dir):
    return EvalConfig(tasks=["stop_probe"], out=out, model=str(model_dir), methods=["vanilla"], num_frames=4,
                      max_new_tokens=2, progress=False)


def test_hieravid_eval_scores_the_answer_up_to_the_first_stop_string(tmp_path, model_dir, probe, monkeypatch):
    from hieravid.infer import load_model

    monkeypatch.setattr(hieravid.infer, "answer", _fake_answer(RAMBLING))
    summary = run_eval(_config(tmp_path, model_dir), loaded=load_model(str(model_dir)))
    (record,) = read_records([tmp_path / "predictions.jsonl"])
    assert (record["parsed"], record["score"], record["status"], record["prediction"]) == ("B", 1.0, "ok", "B. jump")
    assert (record["raw"], record["until"]) == (RAMBLING, ["\n\n"])
    assert summary["rows"][0]["scores"]["stop_probe"] == 100.0


def test_records_scored_on_the_whole_text_are_scored_again_on_resume(tmp_path, model_dir, probe, monkeypatch):
    """A record of the earlier release (no ``raw`` nor ``until``, the whole text in ``prediction``, scored on
    it) is scored again from its text, without asking the question again."""
    from hieravid.infer import load_model

    monkeypatch.setattr(hieravid.infer, "answer", _fake_answer(RAMBLING))
    run_eval(_config(tmp_path, model_dir), loaded=load_model(str(model_dir)))
    merged = tmp_path / "predictions.jsonl"
    (record,) = read_records([merged])
    old = {k: v for k, v in record.items() if k not in ("raw", "until")}
    old.update(prediction=RAMBLING, parsed="A", score=0.0)  # as the earlier release scored it
    merged.write_text(json.dumps(old) + "\n")

    asked = []
    summary = run_eval(_config(tmp_path, model_dir), on_record=asked.append)  # no model: nothing to ask
    (now,) = read_records([merged])
    assert asked == []
    assert (now["parsed"], now["score"], now["prediction"]) == ("B", 1.0, "B. jump")
    assert (now["raw"], now["until"]) == (RAMBLING, ["\n\n"])
    assert now["written_at"] == record["written_at"]  # the same answer, scored again
    assert summary["rows"][0]["scores"]["stop_probe"] == 100.0


def test_a_parse_failure_of_the_whole_text_is_scored_again_too(tmp_path, model_dir, probe, monkeypatch):
    """An answer whose whole text had no option but whose cut text has one stops counting as failed."""
    from hieravid.infer import load_model

    monkeypatch.setattr(hieravid.infer, "answer", _fake_answer(RAMBLING))
    run_eval(_config(tmp_path, model_dir), loaded=load_model(str(model_dir)))
    merged = tmp_path / "predictions.jsonl"
    (record,) = read_records([merged])
    old = {k: v for k, v in record.items() if k not in ("raw", "until")}
    old.update(prediction=RAMBLING, parsed=None, score=0.0, status="failed", failure_kind="unparsed", reason="x")
    merged.write_text(json.dumps(old) + "\n")
    summary = run_eval(_config(tmp_path, model_dir))
    (now,) = read_records([merged])
    assert (now["status"], now["failure_kind"], now["reason"], now["score"]) == ("ok", None, None, 1.0)
    assert summary["rows"][0]["failed"]["stop_probe"] == 0


def test_nextqa_says_where_its_token_limit_comes_from():
    """lmms-eval's NExT-QA yamls set no ``max_new_tokens``: the limit there is the model class's, which the
    module's documentation says, with hieravid's own choice."""
    import hieravid.eval.nextqa as nextqa

    doc = " ".join(nextqa.__doc__.split())
    assert nextqa.NextQAMultipleChoice.max_new_tokens == nextqa.NextQAOpenEnded.max_new_tokens == 128
    assert "Both generate up to 128 tokens." in doc and "set no token limit" in doc
    assert "default for these tasks" not in doc
