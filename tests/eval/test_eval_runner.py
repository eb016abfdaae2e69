"""`hieravid eval` end to end on the fixture sets with a tiny random Qwen2-VL: records, summary, failures,
resume after an interruption, and two processes under accelerate giving the same output as one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import ALL_TASKS, RUN_ARGS, comparable
from fixtures import EXPECTED

from hieravid.cli import main
from hieravid.eval import EvalConfig, run_eval
from hieravid.eval.records import read_records, record_key
from hieravid.warning import HieravidWarning

PAIRS = 2  # vanilla at 1, hieravid at 0.3


def _records(out: Path) -> list[dict]:
    return read_records([out / "predictions.jsonl"])


def test_every_sample_is_recorded_once_with_its_score(reference_run):
    records = _records(reference_run)
    keys = [record_key(r) for r in records]
    assert len(keys) == len(set(keys)) == PAIRS * sum(n for n, _ in EXPECTED.values())
    assert not list(reference_run.glob("predictions.part*.jsonl"))
    assert {r["max_new_tokens"] for r in records} == {2}  # the tokens each answer was given (RUN_ARGS)
    for record in records:
        if record["status"] == "ok":
            assert record["prediction"] is not None and 0.0 <= record["score"] <= 1.0
            assert record["flops"] <= record["vanilla_flops"]
        else:
            assert record["score"] == 0.0 and record["reason"]
            assert record["failure_kind"] in ("data", "video", "model", "unparsed")
    kinds = Counter(r["failure_kind"] for r in records if r["status"] == "failed" and r["failure_kind"] != "unparsed")
    # per pair: 3 bad records / missing videos (data), 2 undecodable videos (video)
    assert kinds == {"data": 3 * PAIRS, "video": 2 * PAIRS}


def test_summary_in_the_paper_form(reference_run):
    summary = json.loads((reference_run / "summary.json").read_text())
    assert summary["tasks"] == ALL_TASKS.split(",")
    assert summary["task_errors"] == {}
    vanilla, pruned = summary["rows"]
    assert (vanilla["method"], vanilla["budget"], pruned["method"], pruned["budget"]) == ("vanilla", 1.0, "hieravid", 0.3)
    assert vanilla["flops_ratio"] == pytest.approx(1.0) and vanilla["relative_to_vanilla"] == pytest.approx(100.0)
    assert 0.1 < pruned["flops_ratio"] < 0.5 and pruned["achieved_budget"] == pytest.approx(0.3, abs=0.1)
    for row in summary["rows"]:
        assert set(row["scores"]) == set(EXPECTED)
        assert row["samples"] == {t: n for t, (n, _) in EXPECTED.items()}
        assert all(row["failed"][t] >= broken for t, (_, broken) in EXPECTED.items())
        assert row["average"] == pytest.approx(sum(row["scores"].values()) / len(EXPECTED))
    records = _records(reference_run)
    assert summary["failed_total"] == sum(r["status"] == "failed" for r in records)
    mvbench = [r["score"] for r in records if r["task"] == "mvbench" and r["method"] == "vanilla"]
    assert vanilla["scores"]["mvbench"] == pytest.approx(100 * sum(mvbench) / len(mvbench))
    assert "wups@0.9" in vanilla["details"]["nextqa_oe"]
    table = (reference_run / "summary.md").read_text()
    assert "| method | budget | mvbench | egoschema | nextqa_mc | nextqa_oe | videomme | videomme_sub | Avg |" in table
    assert "| vanilla | 1 |" in table and "| hieravid | 0.3 |" in table


def test_a_plot_stopped_mid_write_leaves_the_one_before(reference_run, tmp_path, check_a_picture_stopped_mid_write):
    from hieravid.eval.report import plot_summary

    summary = json.loads((reference_run / "summary.json").read_text())
    path = tmp_path / "scores.png"
    check_a_picture_stopped_mid_write(lambda: plot_summary(summary, path), path)


def test_a_missing_benchmark_is_reported_and_the_others_run(tmp_path, model_dir, data_root):
    out = tmp_path / "out"
    code = main(["eval", "--model", str(model_dir), "--tasks", "egoschema,mvbench", "--data-root",
                 str(data_root / "egoschema" / ".."), "--out", str(out), "--limit", "1", *RUN_ARGS])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task_errors"] == {}
    code = main(["eval", "--model", str(model_dir), "--tasks", "videomme,mvbench", "--data-root",
                 str(data_root / "mvbench"), "--out", str(tmp_path / "out2"), "--limit", "1", *RUN_ARGS])
    assert code == 1  # no task could run
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert set(summary["task_errors"]) == {"videomme", "mvbench"}
    assert "Expected layout" in summary["task_errors"]["videomme"]
    assert "could not be read" in (tmp_path / "out2" / "summary.md").read_text()
    import shutil

    shutil.copytree(data_root / "egoschema", tmp_path / "ego" / "egoschema")
    code = main(["eval", "--model", str(model_dir), "--tasks", "mvbench,egoschema", "--data-root",
                 str(tmp_path / "ego"), "--out", str(tmp_path / "out3"), "--limit", "1", *RUN_ARGS])
    assert code == 0  # the first task missing: the others are scored, reported and plotted
    summary = json.loads((tmp_path / "out3" / "summary.json").read_text())
    assert set(summary["task_errors"]) == {"mvbench"} and "egoschema" in summary["rows"][0]["scores"]
    assert (tmp_path / "out3" / "scores.png").stat().st_size > 10_000


class _Stop(Exception):
    pass


def test_resume_after_an_interruption_loses_and_repeats_nothing(tmp_path, model_dir, data_root, reference_run):
    from hieravid.infer import load_model

    loaded = load_model(str(model_dir))
    config = EvalConfig(tasks=ALL_TASKS.split(","), out=tmp_path, model=str(model_dir), methods=["vanilla", "hieravid"],
                        budgets=[0.3], data_root=data_root, num_frames=4, max_new_tokens=2, progress=False)
    seen = []

    def stop_after_seven(record):
        seen.append(record)
        if len(seen) == 7:
            raise _Stop

    with pytest.raises(_Stop):
        run_eval(config, loaded=loaded, on_record=stop_after_seven)
    part = tmp_path / "predictions.part0.jsonl"
    assert len(read_records([part])) == 7
    with open(part, "a") as f:  # a kill in the middle of a write leaves half a line
        f.write('{"task": "mvbench", "id": "action_antonym/0", "met')
    resumed = []
    run_eval(config, loaded=loaded, on_record=resumed.append)
    total = PAIRS * sum(n for n, _ in EXPECTED.values())
    assert len(resumed) == total - 7
    assert {record_key(r) for r in resumed}.isdisjoint(record_key(r) for r in seen)
    assert [comparable(r) for r in _records(tmp_path)] == [comparable(r) for r in _records(reference_run)]
    # nothing left to do: a third run answers nothing and writes the same files
    again = []
    run_eval(config, loaded=loaded, on_record=again.append)
    assert again == [] and len(_records(tmp_path)) == total


def test_a_line_cut_inside_a_character_is_skipped_and_trimmed(tmp_path):
    """Records keep their text as UTF-8: a kill can cut a line in the middle of a character."""
    from hieravid.eval.records import PredictionLog

    part = tmp_path / "predictions.part0.jsonl"
    whole = {"task": "t", "id": "1", "method": "vanilla", "budget": 1.0, "answer": "caf\u00e9"}
    cut = json.dumps({**whole, "id": "2"}, ensure_ascii=False).encode()
    part.write_bytes((json.dumps(whole, ensure_ascii=False) + "\n").encode() + cut[: cut.index("é".encode()) + 1])
    assert read_records([part]) == [whole]
    PredictionLog(part).close()  # opening it for appending drops the cut line
    assert part.read_bytes() == (json.dumps(whole, ensure_ascii=False) + "\n").encode()


def test_resume_refuses_other_settings(tmp_path, model_dir, data_root, reference_run):
    code = main(["eval", "--model", str(model_dir), "--tasks", "mvbench", "--data-root", str(data_root),
                 "--out", str(reference_run), *RUN_ARGS[:-2], "--num-frames", "8", "--quiet"])
    assert code == 2


def test_the_shipped_model_named_or_left_out_is_one_setting(tmp_path):
    from hieravid.eval.runner import RUN_FILE, _check_resume, _settings
    from hieravid.proxy import model_dir as proxy_dir

    answered = [{"task": "synthetic", "id": "0"}]  # the folder holds an answer: its settings count
    named = EvalConfig(tasks=["synthetic"], out=tmp_path, model=str(proxy_dir()), methods=["vanilla"])
    left_out = EvalConfig(tasks=["synthetic"], out=tmp_path, model=None, methods=["vanilla"])
    for before, now in ((named, left_out), (left_out, named)):
        (tmp_path / RUN_FILE).write_text(json.dumps(_settings(before)))
        _check_resume(tmp_path, now, answered)
    other = EvalConfig(tasks=["synthetic"], out=tmp_path, model=str(tmp_path), methods=["vanilla"])
    with pytest.raises(ValueError, match="holds a run with other settings"):
        _check_resume(tmp_path, other, answered)


def test_the_shipped_model_is_its_weights_wherever_the_package_is(tmp_path, monkeypatch):
    """A folder evaluated with the shipped proxy resumes after the package moved (a new environment):
    the proxy is its weights, not the path it was installed at."""
    import shutil

    import hieravid.proxy
    from hieravid.eval.runner import RUN_FILE, _check_resume, _settings

    answered = [{"task": "synthetic", "id": "0"}]
    (tmp_path / RUN_FILE).write_text(json.dumps(_settings(EvalConfig(tasks=["synthetic"], out=tmp_path))))
    moved = tmp_path / "elsewhere" / "weights"
    shutil.copytree(hieravid.proxy.model_dir(), moved)
    monkeypatch.setattr(hieravid.proxy, "model_dir", lambda: moved)
    _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path), answered)
    _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path, model=str(moved)), answered)
    weights = moved / "model.safetensors"  # a release shipping another proxy
    weights.write_bytes(weights.read_bytes()[:-1] + b"!")
    with pytest.raises(ValueError, match="model: 'the shipped proxy model .*' there, 'the shipped proxy model"):
        _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path), answered)


def test_a_model_trained_again_into_its_folder_is_another_model(tmp_path, model_dir):
    import shutil

    from hieravid.eval.runner import RUN_FILE, _check_resume, _settings

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    answered = [{"task": "synthetic", "id": "0"}]
    config = EvalConfig(tasks=["synthetic"], out=tmp_path, model=str(model))
    (tmp_path / RUN_FILE).write_text(json.dumps(_settings(config)))
    _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path, model=f"{tmp_path}/./model"), answered)
    weights = next(model.glob("*.safetensors"))
    trained = bytearray(weights.read_bytes())
    trained[-8:] = bytes(8)  # written again: the same size and header, other values
    weights.write_bytes(bytes(trained))
    with pytest.raises(ValueError, match=f"the weights or configuration of the model at {model} changed since"):
        _check_resume(tmp_path, config, answered)
    (tmp_path / RUN_FILE).write_text(json.dumps({**_settings(config), "model_files": None}))  # an earlier release's
    _check_resume(tmp_path, config, answered)


def test_a_model_given_another_chat_template_or_tokenizer_is_another_model(tmp_path, model_dir):
    import shutil

    from hieravid.eval.runner import RUN_FILE, _check_resume, _settings

    answered = [{"task": "synthetic", "id": "0"}]
    for name in ("chat_template.jinja", "tokenizer.json", "generation_config.json"):
        model = tmp_path / name / "model"
        shutil.copytree(model_dir, model)
        config = EvalConfig(tasks=["synthetic"], out=tmp_path, model=str(model))
        (tmp_path / RUN_FILE).write_text(json.dumps(_settings(config)))
        for other in ("README.md", "eval_results.json", "notes.txt"):  # no part of an answer
            (model / other).write_text("notes")
        _check_resume(tmp_path, config, answered)
        edited = model / name
        edited.write_text(edited.read_text() + "\n")
        with pytest.raises(ValueError, match=f"the tokenizer, chat template, processor or generation files of the "
                                             f"model at {model} changed since"):
            _check_resume(tmp_path, config, answered)
        earlier = {k: v for k, v in _settings(config).items() if k != "model_prompt_files"}  # an earlier release's
        (tmp_path / RUN_FILE).write_text(json.dumps(earlier))
        _check_resume(tmp_path, config, answered)


@pytest.mark.parametrize("run_json", [None, "{", "[]"])
def test_answers_without_the_settings_they_were_made_with_are_not_resumed(tmp_path, run_json):
    """A folder with answers but no readable run.json (its main process stopped before writing it, or it
    was removed) cannot say whether a resumed run's settings match: refused, naming the ways out."""
    from hieravid.eval.runner import RUN_FILE, _check_resume

    if run_json is not None:
        (tmp_path / RUN_FILE).write_text(run_json)
    config = EvalConfig(tasks=["synthetic"], out=tmp_path)
    with pytest.raises(ValueError, match=f"holds answers but no readable {RUN_FILE} naming the settings .* pass a "
                                         "new --out, or move the predictions\\*.jsonl files out"):
        _check_resume(tmp_path, config, [{"task": "synthetic", "id": "0"}])
    assert _check_resume(tmp_path, config, []) is None  # no answer: nothing to match


def test_a_setting_spelled_out_at_the_value_it_had_is_one_setting(tmp_path):
    """``--max-new-tokens`` left out is each task's own: naming that number resumes the same run."""
    from hieravid.eval.runner import RUN_FILE, _check_resume, _settings
    from hieravid.eval.tasks import get_task

    answered = [{"task": "synthetic", "id": "0"}]  # a record of a release that kept no tokens in it
    own = get_task("synthetic").max_new_tokens
    left_out = EvalConfig(tasks=["synthetic"], out=tmp_path, methods=["vanilla"])
    (tmp_path / RUN_FILE).write_text(json.dumps(_settings(left_out)))
    _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path, methods=["vanilla"], max_new_tokens=own),
                  answered)
    with pytest.raises(ValueError, match=f"max_new_tokens: {own} there, {own + 1} now"):
        _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path, methods=["vanilla"],
                                           max_new_tokens=own + 1), answered)
    _check_resume(tmp_path, left_out, answered)  # both left out: each task its own, as before


def test_the_tokens_per_answer_are_compared_task_by_task_with_the_records(tmp_path):
    """Each record keeps the tokens it was answered with: a later run of other tasks (which rewrites
    run.json) neither hides a change for the first task's records nor makes a task's own number a change."""
    from hieravid.eval.runner import RUN_FILE, _check_resume, _settings
    from hieravid.eval.tasks import get_task

    own = get_task("synthetic").max_new_tokens
    other = next(name for name in ("nextqa_mc", "mvbench", "videomme") if get_task(name).max_new_tokens != own)
    answered = [{"task": "synthetic", "id": "0", "max_new_tokens": own}]
    (tmp_path / RUN_FILE).write_text(json.dumps(_settings(EvalConfig(tasks=[other], out=tmp_path))))
    with pytest.raises(ValueError, match=f"max_new_tokens: {own} there, {own + 12} now \\(synthetic's answers\\)"):
        _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path, max_new_tokens=own + 12), answered)
    _check_resume(tmp_path, EvalConfig(tasks=["synthetic", other], out=tmp_path), answered)  # each its own
    _check_resume(tmp_path, EvalConfig(tasks=[other], out=tmp_path, max_new_tokens=own + 12), answered)
    (tmp_path / RUN_FILE).write_text(json.dumps(_settings(EvalConfig(tasks=["synthetic"], out=tmp_path,
                                                                       max_new_tokens=own + 1))))
    with pytest.raises(ValueError, match=f"max_new_tokens: {own} there, {own + 1} now"):  # the records say it
        _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path, max_new_tokens=own + 1), answered)


def test_records_of_an_earlier_release_keep_the_tokens_its_run_json_said_after_other_runs(tmp_path):
    """Records without their tokens (an earlier release's) take them from the run.json that release
    wrote, carried forward when a later run rewrites run.json, not from whatever run.json says now."""
    from hieravid.eval.runner import RUN_FILE, _check_resume, _settings, _written_settings
    from hieravid.eval.tasks import get_task

    own = get_task("synthetic").max_new_tokens
    earlier = _settings(EvalConfig(tasks=["synthetic"], out=tmp_path, methods=["vanilla"]))
    del earlier["model_files"]  # what an earlier release wrote
    (tmp_path / RUN_FILE).write_text(json.dumps(earlier))
    records = [{"task": "synthetic", "id": "0"}]
    other = EvalConfig(tasks=["mvbench"], out=tmp_path, methods=["vanilla"], max_new_tokens=64)
    legacy = _check_resume(tmp_path, other, records)  # another task: taken
    (tmp_path / RUN_FILE).write_text(json.dumps(_written_settings(other, legacy)))
    records.append({"task": "mvbench", "id": "0", "max_new_tokens": 64})
    _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path, methods=["vanilla"]), records)
    with pytest.raises(ValueError, match=f"max_new_tokens: {own} there, 64 now \\(synthetic's answers\\)"):
        _check_resume(tmp_path, EvalConfig(tasks=["synthetic"], out=tmp_path, methods=["vanilla"], max_new_tokens=64),
                      records)


def test_a_model_folder_copied_with_new_times_is_the_same_model(tmp_path, model_dir):
    import shutil

    from hieravid.eval.runner import RUN_FILE, _check_resume, _settings

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    config = EvalConfig(tasks=["synthetic"], out=tmp_path, model=str(model))
    (tmp_path / RUN_FILE).write_text(json.dumps(_settings(config)))
    shutil.rmtree(model)
    shutil.copytree(model_dir, model, copy_function=shutil.copyfile)  # the same bytes, new times
    _check_resume(tmp_path, config, [{"task": "synthetic", "id": "0"}])


def test_a_run_refused_by_the_lock_leaves_the_folder_of_the_run_holding_it(tmp_path, monkeypatch):
    """Two runs started at once into a new folder: the one refused does not remove what the other made."""
    import hieravid.eval.runner as runner

    real, held = runner.lock_folder, []

    def other_run_first(folder):
        held.append(real(folder))  # the other run takes the lock just before this one asks
        return real(folder)

    monkeypatch.setattr(runner, "lock_folder", other_run_first)
    out = tmp_path / "shared"
    try:
        assert main(["eval", "--suite", "synthetic", "--methods", "vanilla", "--limit", "1", "--quiet", "--out",
                     str(out)]) == 2
        assert out.is_dir() and (out / ".lock").exists()
    finally:
        for handle in held:
            handle.close()


@pytest.mark.parametrize("while_in", ["load_model", "answer"])
def test_ctrl_c_before_any_answer_says_none_is_kept(tmp_path, monkeypatch, capsys, while_in):
    """Ctrl-C while the model loads (the folder it made is removed) or during the first answer (the
    prediction file is open, empty)."""
    import hieravid.infer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hieravid.infer, while_in, interrupted)
    assert main(["eval", "--suite", "synthetic", "--methods", "vanilla", "--limit", "1", "--quiet", "--out",
                 str(tmp_path / "new")]) == 130
    assert "interrupted before any answer was written" in capsys.readouterr().err
    assert (tmp_path / "new").exists() == (while_in == "answer")


def test_waiting_for_the_other_processes_takes_ctrl_c_and_names_a_lost_one():
    """The wait at a barrier is polled in Python, so Ctrl-C (or SIGTERM, taken as it) ends it while the
    others still work; a peer that went away (gloo: "Connection closed by peer") is a ProcessesLost."""
    import _thread
    import threading

    from hieravid.eval.runner import ProcessesLost, wait_for_others

    class Work:
        def __init__(self, done: bool, error: str | None = None):
            self.done, self.error = done, error

        def is_completed(self) -> bool:
            return self.done

        def wait(self) -> bool:
            if self.error:
                raise RuntimeError(self.error)
            return True

    wait_for_others(lambda: Work(True))
    threading.Timer(0.2, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        wait_for_others(lambda: Work(False))  # the others never arrive
    with pytest.raises(ProcessesLost, match=r"another process of this run stopped \(.*Connection closed by peer"):
        wait_for_others(lambda: Work(True, "[gloo/pair.cc:561] Connection closed by peer [127.0.0.1]:4496"))


def test_no_process_answers_before_run_json_names_the_settings(tmp_path, monkeypatch):
    """Every process waits, after the main one wrote run.json and before it answers: a run stopped while
    its main process loaded the model leaves no answers without their settings."""
    import hieravid.eval.runner as runner

    out, seen = tmp_path / "run", []

    def wait() -> None:
        seen.append(((out / runner.RUN_FILE).exists(), sorted(p.name for p in out.glob("predictions*.jsonl"))))

    monkeypatch.setattr(runner, "_processes", lambda device: runner._Processes(0, 1, "cpu", wait))
    assert main(["eval", "--suite", "synthetic", "--methods", "vanilla", "--limit", "1", "--quiet", "--out",
                 str(out)]) == 0
    assert seen[0] == (True, [])  # the first wait: settings written, no answer yet
    assert len(seen) == 2  # and the one before the merge


def test_a_resumed_run_shares_the_samples_left_evenly(tmp_path, monkeypatch):
    """A 2-process run whose second process answered nothing: run again with 2 processes, the first takes
    half of what is left, not nothing (its own share of every sample is done)."""
    import hieravid.eval.runner as runner

    out, answered = tmp_path / "run", []
    monkeypatch.setattr(runner, "_processes", lambda device: runner._Processes(0, 2, "cpu", lambda: None))
    args = ["eval", "--suite", "synthetic", "--methods", "vanilla", "--limit", "8", "--quiet", "--out", str(out)]
    assert main(args) == 0  # as process 1 of 2: samples 0, 2, 4, 6
    monkeypatch.setattr(runner, "_run_sample", lambda task, sample, *a: answered.append(sample.id) or iter(()))
    assert main(args) == 0
    assert len(answered) == 2  # of samples 1, 3, 5, 7


def test_a_sample_whose_every_pair_is_left_out_is_not_decoded(tmp_path, monkeypatch):
    """Vanilla answered the first sample before; FastV cannot reach 0.1 on the proxy's 8 layers and is left
    out: only the second sample, still without vanilla's answer, is decoded."""
    import hieravid.eval.runner as runner

    out = tmp_path / "run"
    assert main(["eval", "--suite", "synthetic", "--methods", "vanilla", "--limit", "1", "--quiet", "--out",
                 str(out)]) == 0
    decoded, decode = [], runner._decode

    def recorded(sample, frames):
        decoded.append(str(sample.id))
        return decode(sample, frames)

    monkeypatch.setattr(runner, "_decode", recorded)
    config = EvalConfig(tasks=["synthetic"], out=out, methods=["vanilla", "fastv"], budgets=[0.1], limit=2,
                        skip_unreachable=True, progress=False)
    with pytest.warns(HieravidWarning, match="not evaluated: fastv at budget 0.1"):
        run_eval(config)
    first, second = (str(r["id"]) for r in _records(out) if r["method"] == "vanilla")
    assert decoded == [second]


def test_a_process_of_the_run_lost_is_said_as_such_with_the_way_on(tmp_path, monkeypatch, capsys):
    import hieravid.eval
    from hieravid.eval.runner import ProcessesLost

    out = tmp_path / "run"

    def lost(config):
        out.mkdir()
        (out / "predictions.part0.jsonl").write_text('{"task": "synthetic"}\n')
        raise ProcessesLost("another process of this run stopped (Connection closed by peer)")

    monkeypatch.setattr(hieravid.eval, "run_eval", lost)
    assert main(["eval", "--suite", "synthetic", "--methods", "vanilla", "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "hieravid eval: error: another process of this run stopped (Connection closed by peer); the answers " \
           f"written so far are kept in {out}: run the same command again to go on from there" in err


def test_bad_command_lines(tmp_path, capsys):
    assert main(["eval", "--tasks", "mvbench", "--suite", "paper", "--out", str(tmp_path)]) == 2
    assert main(["eval", "--suite", "nope", "--out", str(tmp_path)]) == 2
    assert main(["eval", "--tasks", "bogus", "--out", str(tmp_path)]) == 2
    assert main(["eval", "--tasks", "mvbench", "--methods", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'bogus'" in err and "unknown method" in err and "unknown suite" in err
    # an option's typo, before any model loads (there is none here to load)
    assert main(["eval", "--tasks", "mvbench", "--methods", "vanilla,hieravid:lamda=1", "--model",
                 str(tmp_path / "no-model"), "--out", str(tmp_path)]) == 2
    assert "lamda" in capsys.readouterr().err


def test_a_method_spec_is_its_own_row(tmp_path, model_dir, data_root, capsys):
    """``--methods`` takes specs with options; each is recorded and summarised under its own string, and a bad
    option stops the run before the first sample."""
    spec = "hieravid:segmentation=none:relevance_sign=positive"
    args = ["eval", "--model", str(model_dir), "--tasks", "mvbench", "--data-root", str(data_root), "--limit", "2",
            "--budgets", "0.3", "--num-frames", "4", "--max-new-tokens", "2", "--quiet"]
    assert main([*args, "--methods", f"vanilla,hieravid,{spec}", "--out", str(tmp_path / "ok")]) == 0
    records = _records(tmp_path / "ok")
    assert Counter(r["method"] for r in records) == {"vanilla": 2, "hieravid": 2, spec: 2}
    rows = json.loads((tmp_path / "ok" / "summary.json").read_text())["rows"]
    assert [(row["method"], row["budget"]) for row in rows] == [("vanilla", 1.0), ("hieravid", 0.3), (spec, 0.3)]
    assert f"| {spec} | 0.3 |" in (tmp_path / "ok" / "summary.md").read_text()

    assert main([*args, "--methods", "vanilla,hieravid:bogus=1", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown option(s) for method 'hieravid': bogus" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "predictions.part0.jsonl").exists()


def test_methods_all_leaves_out_what_the_model_cannot_reach(tmp_path, model_dir, data_root, capsys):
    """On 4 layers FastV (K = 2) cannot go below 0.5: with ``all`` its row is left out with a warning, and a
    resumed run reports the same rows."""
    args = ["eval", "--model", str(model_dir), "--tasks", "mvbench", "--data-root", str(data_root), "--limit", "1",
            "--budgets", "0.3", "--num-frames", "4", "--max-new-tokens", "2", "--quiet", "--methods", "all",
            "--out", str(tmp_path)]
    assert main(args) == 0
    assert "hieravid eval: warning: not evaluated: fastv at budget 0.3" in capsys.readouterr().err
    rows = [(row["method"], row["budget"]) for row in json.loads((tmp_path / "summary.json").read_text())["rows"]]
    assert ("hieravid", 0.3) in rows and ("evs", 0.3) in rows and not [r for r in rows if r[0] == "fastv"]
    assert main(args) == 0  # nothing left to answer
    assert [(row["method"], row["budget"]) for row in json.loads((tmp_path / "summary.json").read_text())["rows"]] == rows


def test_answers_timed_under_load_are_called_unreliable(tmp_path, model_dir, data_root, capsys, monkeypatch):
    from hieravid.bench.models import CpuWatch

    args = ["eval", "--model", str(model_dir), "--tasks", "mvbench", "--data-root", str(data_root), "--limit", "1",
            "--budgets", "0.3", "--num-frames", "4", "--max-new-tokens", "2", "--quiet", "--device", "cpu"]
    monkeypatch.setattr(CpuWatch, "others_share", lambda self: 0.5)
    assert main([*args, "--out", str(tmp_path / "busy")]) == 0
    assert "hieravid eval: warning: other processes took 50% of the CPUs' time" in capsys.readouterr().err
    monkeypatch.setattr(CpuWatch, "others_share", lambda self: 0.02)
    assert main([*args, "--out", str(tmp_path / "calm")]) == 0
    assert "other processes took" not in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_accelerate_give_the_output_of_one(tmp_path, model_dir, data_root, reference_run):
    tasks = "mvbench,egoschema,nextqa_mc,videomme_sub"  # not nextqa_oe: the subprocesses have no toy WordNet
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))  # torch's launcher leaves a folder there
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
        "-m", "hieravid", "eval", "--model", str(model_dir), "--tasks", tasks, "--data-root", str(data_root),
        "--out", str(out), "--device", "cpu", *RUN_ARGS,
    ]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(out)
    assert {r["rank"] for r in records} == {0, 1}
    wanted = set(tasks.split(","))
    reference = [comparable(r) for r in _records(reference_run) if r["task"] in wanted]
    assert [comparable(r) for r in records] == reference
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((reference_run / "summary.json").read_text())
    for row, ref in zip(summary["rows"], expected["rows"]):
        assert row["scores"] == {t: s for t, s in ref["scores"].items() if t in wanted}
        assert row["failed"] == {t: n for t, n in ref["failed"].items() if t in wanted}


def test_a_registered_task_with_its_own_frames(tmp_path, model_dir):
    """Tasks registered from elsewhere (the synthetic suite) run through the same runner; frames come from the
    sample itself instead of a video file."""
    import numpy as np

    from hieravid.eval import Sample, Score, Task, register_task

    class MadeUp(Task):
        name = "made_up_frames"

        def load(self, data_root):
            def frames(seed):
                return lambda n: np.random.default_rng(seed).integers(0, 256, (n, 112, 168, 3), dtype=np.uint8)

            return [Sample(id=str(i), task=self.name, question="what is it ?", answer="A", frames=frames(i),
                           meta={"group": "g"}) for i in range(2)]

        def score(self, sample, prediction):
            return Score(1.0 if prediction.startswith(sample.answer) else 0.0, parsed=prediction[:1])

    register_task(MadeUp())
    code = main(["eval", "--model", str(model_dir), "--tasks", "made_up_frames", "--out", str(tmp_path), *RUN_ARGS])
    assert code == 0
    records = _records(tmp_path)
    assert len(records) == 2 * PAIRS and all(r["status"] == "ok" for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["rows"][0]["details"]["made_up_frames"]["groups"]) == {"g"}



def test_a_malformed_subtitle_file_fails_its_samples_only(tmp_path, model_dir):
    from fixtures import write_videomme

    write_videomme(tmp_path / "data")
    (tmp_path / "data" / "videomme" / "subtitle" / "fFjv93ACGo8.srt").write_text("1\nnot a time\nhello\n")
    out = tmp_path / "out"
    code = main(["eval", "--model", str(model_dir), "--tasks", "videomme_sub,videomme", "--data-root",
                 str(tmp_path / "data"), "--out", str(out), "--limit", "1", *RUN_ARGS])
    assert code == 0
    by_task = {(r["task"], r["method"]): r for r in _records(out)}
    assert by_task[("videomme_sub", "vanilla")]["failure_kind"] == "data"
    assert "subtitle time line" in by_task[("videomme_sub", "vanilla")]["reason"]
    assert by_task[("videomme", "vanilla")]["failure_kind"] != "data"


def _mvbench_copy(data_root: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(data_root / "mvbench", dest / "mvbench")
    return dest


def test_the_summary_scores_the_samples_of_this_run(tmp_path, model_dir, data_root):
    """Records of earlier runs stay in predictions.jsonl, but the summary covers the samples this run loaded,
    so every method is scored on the same ones; a task that cannot be read is an error, its records kept."""
    root = _mvbench_copy(data_root, tmp_path / "data")
    out = tmp_path / "out"
    args = ["eval", "--model", str(model_dir), "--tasks", "mvbench", "--data-root", str(root), "--out", str(out),
            "--num-frames", "4", "--max-new-tokens", "2", "--quiet"]
    assert main([*args, "--methods", "vanilla"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"][0]["samples"]["mvbench"] == 4
    assert summary["rows"][0]["failed"]["mvbench"] == 2  # the missing video and the answer that is no candidate
    assert main([*args, "--methods", "vanilla,hieravid", "--budgets", "0.3", "--limit", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["samples"]["mvbench"] for row in summary["rows"]] == [1, 1]
    assert len(_records(out)) == 4 + 1  # nothing dropped from the file
    (root / "mvbench" / "json" / "action_count.json").write_text('{"broken": ')
    assert main([*args, "--methods", "vanilla"]) == 1  # no task could run
    summary = json.loads((out / "summary.json").read_text())
    assert "action_count.json is not valid JSON" in summary["task_errors"]["mvbench"]
    assert len(_records(out)) == 4 + 1


def test_a_saved_answer_is_reused_for_the_same_question_only(tmp_path, model_dir, data_root):
    """Resuming after the annotations changed under the same ids asks the changed questions again (a saved
    record would score an old target); the same data in a moved folder keeps every record."""
    root = _mvbench_copy(data_root, tmp_path / "a")
    out = tmp_path / "out"
    args = ["eval", "--model", str(model_dir), "--tasks", "mvbench", "--out", str(out), "--methods", "vanilla",
            "--num-frames", "4", "--max-new-tokens", "2", "--quiet"]
    assert main([*args, "--data-root", str(root)]) == 0
    first = {r["id"]: r for r in _records(out)}
    moved = tmp_path / "b"
    root.rename(moved)
    asked: list[str] = []
    code = main([*args, "--data-root", str(moved)])
    assert code == 0 and {r["id"]: r for r in _records(out)} == first  # nothing asked again
    path = moved / "mvbench" / "json" / "action_antonym.json"
    questions = json.loads(path.read_text())
    questions[0]["answer"] = questions[0]["candidates"][-1]  # the first question's answer changes
    path.write_text(json.dumps(questions))
    from hieravid.infer import load_model

    config = EvalConfig(tasks=["mvbench"], out=out, model=str(model_dir), methods=["vanilla"], data_root=moved,
                        num_frames=4, max_new_tokens=2, progress=False)
    run_eval(config, loaded=load_model(str(model_dir)), on_record=lambda r: asked.append(r["id"]))
    assert asked == ["action_antonym/0"]
    now = {r["id"]: r for r in _records(out)}
    assert now["action_antonym/0"]["target"] != first["action_antonym/0"]["target"]
    assert {k: v for k, v in now.items() if k != "action_antonym/0"} == {
        k: v for k, v in first.items() if k != "action_antonym/0"
    }
    # Another video under the same name (another data root with other data under the same ids): the
    # questions about it are asked again, those about the others are not.
    other = (moved / "mvbench" / "perception" / "videos" / "p1.mp4").read_bytes()
    (moved / "mvbench" / "video" / "ssv2_video_mp4" / "1001.webm.mp4").write_bytes(other)
    asked.clear()
    run_eval(config, loaded=load_model(str(model_dir)), on_record=lambda r: asked.append(r["id"]))
    assert asked == ["action_antonym/0"]  # the one question about that video


def test_the_data_root_spelled_another_way_keeps_the_records(tmp_path, model_dir, data_root, monkeypatch):
    """The same folder given as an absolute path, then as a relative one (whose text appears in every
    question), asks nothing again: only the paths under the root are made relative to it."""
    root = _mvbench_copy(data_root, tmp_path / "a")
    out = tmp_path / "out"
    args = ["eval", "--model", str(model_dir), "--tasks", "mvbench", "--out", str(out), "--methods", "vanilla",
            "--num-frames", "4", "--max-new-tokens", "2", "--quiet"]
    assert main([*args, "--data-root", str(root)]) == 0
    first = _records(out)
    monkeypatch.chdir(tmp_path)
    from hieravid.infer import load_model

    asked: list[str] = []
    config = EvalConfig(tasks=["mvbench"], out=out, model=str(model_dir), methods=["vanilla"], data_root=Path("a"),
                        num_frames=4, max_new_tokens=2, progress=False)
    run_eval(config, loaded=load_model(str(model_dir)), on_record=lambda r: asked.append(r["id"]))
    assert asked == [] and _records(out) == first


def test_a_re_asked_sample_replaces_the_record_another_process_left(tmp_path, model_dir, data_root):
    """A run killed with two processes leaves a part file per process; rerun with one, a sample whose
    annotation changed since is asked again, and its new record, not the other process's old one, is the
    one merged and scored."""
    root = _mvbench_copy(data_root, tmp_path / "data")
    out = tmp_path / "out"
    config = EvalConfig(tasks=["mvbench"], out=out, model=str(model_dir), methods=["vanilla"], data_root=root,
                        num_frames=4, max_new_tokens=2, progress=False)
    from hieravid.infer import load_model

    loaded = load_model(str(model_dir))
    run_eval(config, loaded=loaded)
    records = _records(out)
    (out / "predictions.jsonl").unlink()
    for rank in (0, 1):  # what two killed processes leave: process r asked samples r, r + 2, ...
        with open(out / f"predictions.part{rank}.jsonl", "w") as f:
            for record in records:
                if record["index"] % 2 == rank:
                    f.write(json.dumps({**record, "rank": rank}) + "\n")
    changed = next(r for r in records if r["index"] == 1)
    path = root / "mvbench" / "json" / f"{changed['id'].split('/')[0]}.json"
    questions = json.loads(path.read_text())
    position = int(changed["id"].split("/")[1])
    questions[position]["answer"] = next(c for c in questions[position]["candidates"] if c != questions[position]["answer"])
    path.write_text(json.dumps(questions))
    asked: list[str] = []
    run_eval(config, loaded=loaded, on_record=lambda r: asked.append(r["id"]))
    merged = {r["id"]: r for r in _records(out)}
    assert asked == [changed["id"]]
    assert merged[changed["id"]]["target"] != changed["target"] and merged[changed["id"]]["rank"] == 0


def test_records_of_the_wrong_types_fail_their_samples_only(tmp_path, model_dir, data_root):
    root = _mvbench_copy(data_root, tmp_path / "data")
    (root / "mvbench" / "json" / "action_count.json").write_text(json.dumps([
        {"video": "p1.mp4", "question": "q", "candidates": None, "answer": "n"},
        {"video": "p1.mp4", "question": "q", "candidates": "notalist", "answer": "n"},
        {"video": ["p1.mp4"], "question": "q", "candidates": ["1", "2"], "answer": "1"},
    ]))
    out = tmp_path / "out"
    assert main(["eval", "--model", str(model_dir), "--tasks", "mvbench", "--data-root", str(root), "--out",
                 str(out), "--methods", "vanilla", "--num-frames", "4", "--max-new-tokens", "2", "--quiet"]) == 0
    broken = [r for r in _records(out) if r["id"].startswith("action_count/")]
    assert len(broken) == 3 and all(r["status"] == "failed" and r["failure_kind"] == "data" for r in broken)
    assert "candidates must be a non-empty JSON list" in broken[0]["reason"]


def test_a_run_with_no_task_loaded_leaves_the_folder_free(tmp_path, model_dir, data_root, capsys):
    """No task's data found: nothing answered, so no settings are written to hold a corrected retry to."""
    out = tmp_path / "out"
    args = ["eval", "--model", str(model_dir), "--tasks", "mvbench", "--out", str(out), "--limit", "1", *RUN_ARGS]
    assert main([*args, "--data-root", str(tmp_path / "nowhere")]) == 1
    assert not (out / "run.json").exists()
    assert main([*args, "--data-root", str(data_root), "--num-frames", "2"]) == 0  # other settings: taken


def test_a_run_that_cannot_load_its_model_leaves_the_folder_free(tmp_path, model_dir, data_root, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["--tasks", "mvbench", "--data-root", str(data_root), "--out", str(out), "--limit", "1", *RUN_ARGS]
    assert main(["eval", "--model", str(tmp_path / "no-such-model"), *args]) == 2
    assert "no model directory at" in capsys.readouterr().err
    assert not out.exists()  # the folder it made, with nothing written in it, is gone
    assert main(["eval", "--model", str(model_dir), *args]) == 0
    # the same directory named relative to the working directory is the same model
    monkeypatch.chdir(model_dir.parent)
    assert main(["eval", "--model", os.path.join(".", model_dir.name), *args]) == 0


def test_a_run_stopped_before_any_answer_leaves_no_folder_it_made(tmp_path, capsys):
    """A budget the model cannot reach, named, stops the run before it starts: no output folder is left
    (one that was there stays)."""
    out = tmp_path / "out"
    args = ["eval", "--suite", "synthetic", "--methods", "fastv", "--budgets", "0.1", "--limit", "1", "--quiet"]
    assert main([*args, "--out", str(out)]) == 2
    assert "fastv" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    assert main([*args, "--out", str(out)]) == 2
    assert out.is_dir()


def test_every_task_failing_to_load_is_an_error(tmp_path, model_dir, capsys):
    assert main(["eval", "--model", str(model_dir), "--tasks", "mvbench", "--data-root", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "out"), *RUN_ARGS]) == 1
    assert "no task could be loaded" in capsys.readouterr().err


def test_progress_where_stderr_is_no_terminal_is_plain_lines():
    """A live bar reaches a log file only at its end: there, progress is a plain line now and then."""
    import io

    from rich.console import Console

    from hieravid.eval.runner import _progress_bar, _ProgressLines

    stream = io.StringIO()
    with _ProgressLines(Console(file=stream, width=40), every_s=0.0) as bar:
        task = bar.add_task("mvbench", total=3)
        for _ in range(3):
            bar.advance(task)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("mvbench: 1/3 answers, elapsed 0:00:00, ETA")
    assert lines[-1].startswith("mvbench: 3/3 answers")  # whole lines, never wrapped at the width
    assert isinstance(_progress_bar(True), _ProgressLines) or sys.stderr.isatty()  # captured: no terminal


def test_json_files_are_written_through_links_and_into_non_files(tmp_path: Path) -> None:
    """A file named through a symbolic link is the link's target, replaced whole; a name that is not a
    regular file (a pipe, a device) is written into, never replaced by a file."""
    import threading

    from hieravid.eval.records import write_json, write_jsonl

    target = tmp_path / "results" / "real.json"
    target.parent.mkdir()
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}
    write_jsonl(link, [{"b": 2}])
    assert link.is_symlink() and json.loads(target.read_text()) == {"b": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["real.json"]

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()))
    reader.start()
    write_json(pipe, {"c": 3})
    reader.join(30)
    assert json.loads(received[0]) == {"c": 3}
    assert not pipe.is_file() and pipe.exists()


def test_answers_asked_without_subtitles_are_asked_again_once_they_are_there(tmp_path, model_dir, capsys):
    """The subtitles are part of a videomme_sub question: answers given while the subtitle file was
    missing are not reused once it is there, and a missing subtitle folder is warned about."""
    import shutil

    from fixtures import write_videomme

    write_videomme(tmp_path / "data")
    subtitles = tmp_path / "data" / "videomme" / "subtitle"
    shutil.move(subtitles, tmp_path / "later")
    out = tmp_path / "out"
    args = ["eval", "--model", str(model_dir), "--tasks", "videomme_sub", "--data-root", str(tmp_path / "data"),
            "--out", str(out), "--methods", "vanilla", "--num-frames", "4", "--max-new-tokens", "2", "--quiet"]
    assert main(args) == 0
    assert "hieravid eval: warning: videomme_sub: no subtitle folder at" in capsys.readouterr().err
    first = {r["id"]: r["written_at"] for r in _records(out)}
    shutil.move(tmp_path / "later", subtitles)
    assert main(args) == 0
    second = {r["id"]: r["written_at"] for r in _records(out)}
    from hieravid.eval.tasks import get_task

    with_subtitles = {s.id for s in get_task("videomme_sub").load(tmp_path / "data") if Path(s.meta["subtitle"]).is_file()}
    assert with_subtitles and first.keys() == second.keys()
    assert {i for i in first if second[i] > first[i]} == with_subtitles  # the others were asked the same
    assert main(args) == 0  # as they are now: reused
    assert {r["id"]: r["written_at"] for r in _records(out)} == second
    from hieravid.eval.runner import _sample_digest

    plain = get_task("videomme").load(tmp_path / "data")[0]  # its prompt never reads the subtitles
    before = _sample_digest(plain, tmp_path / "data", get_task("videomme").prompt_files)
    shutil.move(subtitles, tmp_path / "later")
    assert _sample_digest(plain, tmp_path / "data", get_task("videomme").prompt_files) == before


def test_a_second_run_into_the_same_folder_at_once_is_refused(tmp_path, model_dir, data_root):
    from hieravid.eval.runner import _only_writer, _Processes

    out = tmp_path / "out"
    out.mkdir()
    with _only_writer(out, _Processes(rank=0, world=1, device="cpu", wait=lambda: None), False):  # another run, now
        with pytest.raises(ValueError, match="another hieravid eval is writing to"):
            run_eval(EvalConfig(model=str(model_dir), tasks=("mvbench",), out=str(out), data_root=str(data_root),
                                methods=("vanilla",), budgets=(0.3,), num_frames=4, max_new_tokens=2, progress=False))
    assert main(["eval", "--model", str(model_dir), "--tasks", "mvbench", "--data-root", str(data_root), "--out",
                 str(out), "--methods", "vanilla", "--num-frames", "4", "--max-new-tokens", "2", "--quiet",
                 "--limit", "1"]) == 0  # released: the next run goes ahead


def test_an_answer_that_cannot_be_scored_fails_its_sample_only(tmp_path, model_dir, toy_wups):
    from fixtures import write_nextqa

    write_nextqa(tmp_path / "data")
    extra = tmp_path / "data" / "nextqa" / "oe" / "add_reference_answer_test.json"
    extra.write_text(json.dumps({"2574374895": {"0": 5}}))  # a number where an answer belongs
    out = tmp_path / "out"
    assert main(["eval", "--model", str(model_dir), "--tasks", "nextqa_oe", "--data-root", str(tmp_path / "data"),
                 "--out", str(out), "--methods", "vanilla", "--num-frames", "4", "--max-new-tokens", "2",
                 "--quiet"]) == 0
    records = {r["id"]: r for r in _records(out)}
    assert records["2574374895_0"]["status"] != "ok" and "second reference answer" in records["2574374895_0"]["reason"]
    assert sum(r["status"] == "ok" for r in records.values()) == len(records) - 1


def test_repeated_sample_ids_are_named():
    from hieravid.eval.runner import _load_tasks
    from hieravid.eval.tasks import Sample, Task

    class Twice(Task):
        name = "twice"

        def load(self, data_root):
            return [Sample(id=i, task=self.name, question="q") for i in ("a", "b", "a", "c", "c")]

    _, errors = _load_tasks([Twice()], Path("."), None)
    assert errors["twice"] == "the task's sample ids are not unique: 'a', 'c' appear more than once"


def test_json_named_as_standard_output_is_written_into_the_stream(capfd) -> None:
    """``--json /dev/stdout`` writes into the stream, whatever it is (here a file the output is redirected
    to, which must keep what was printed before)."""
    from hieravid.eval.records import write_json

    print("before", flush=True)
    write_json("/dev/stdout", {"a": 1})
    print("after", flush=True)
    out = capfd.readouterr().out
    assert out.startswith("before\n") and '"a": 1' in out and out.rstrip().endswith("after")


def test_a_task_that_loads_no_sample_is_named_with_its_layout(tmp_path):
    from hieravid.eval.runner import _load_tasks
    from hieravid.eval.tasks import Task

    class Empty(Task):
        name = "empty"
        layout = "<data-root>/empty/questions.json"

        def load(self, data_root):
            return []

    _, errors = _load_tasks([Empty()], tmp_path, None)
    assert errors["empty"] == f"no samples in its files under {tmp_path}: expected layout {Empty.layout}"
