"""train-proxy: an interrupted run resumes to exactly the weights of an uninterrupted one."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from hieravid.proxy.train import TrainConfig, train

SMALL = TrainConfig(steps=3, batch=2, lr=1e-3, warmup=1, val_size=5, eval_every=1, checkpoint_every=1, threads=1)


class Stop(Exception):
    pass


def test_resume_after_interruption_equals_one_run(tmp_path):
    whole = train(tmp_path / "whole", SMALL, progress=False)
    assert whole["steps"] == 3 and 0.0 <= whole["validation"]["all"] <= 1.0

    def interrupt(entry):
        if entry["step"] == 2:
            raise Stop  # as if killed after step 2 was logged, before its checkpoint

    with pytest.raises(Stop):
        train(tmp_path / "cut", SMALL, log=interrupt, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tmp_path / "cut", SMALL, progress=False)
    with pytest.raises(ValueError, match="lr: 0.001 there, 0.002 now"):
        train(tmp_path / "cut", TrainConfig(**{**SMALL.__dict__, "lr": 2e-3}), resume=True, progress=False)
    resumed = train(tmp_path / "cut", SMALL, resume=True, progress=False)
    assert resumed["steps"] == 3

    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # step 2 ran twice (before the interruption, after resuming), logged once


def test_a_resumed_run_logs_what_an_uninterrupted_one_logs(tmp_path):
    """Validation every 3 steps, checkpoints every step: the log line after resuming averages the loss and
    counts the heads over the steps before the interruption too."""
    config = TrainConfig(**{**SMALL.__dict__, "eval_every": 3})
    whole = train(tmp_path / "whole", config, progress=False)

    def interrupt(entry):
        raise Stop  # killed while writing step 3's line, after step 2's checkpoint

    with pytest.raises(Stop):
        train(tmp_path / "cut", config, log=interrupt, progress=False)
    resumed = train(tmp_path / "cut", config, resume=True, progress=False)
    assert resumed["steps"] == whole["steps"] == 3

    def lines(run):
        return [json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]

    (expected,), (again,) = lines("whole"), lines("cut")  # the line written as it was killed is gone
    assert expected["heads"]  # the heads' tallies are part of the line
    assert {k: again[k] for k in ("step", "loss", "heads")} == {k: expected[k] for k in ("step", "loss", "heads")}


def test_the_loss_reads_exactly_the_replies():
    from hieravid.proxy.build import build_processor
    from hieravid.proxy.train import _answer_positions, _conversation, _reply_starts, _reply_tokens, batch_inputs
    from hieravid.synthetic import generate_sample
    from hieravid.synthetic.questions import describe

    processor = build_processor()
    samples = [generate_sample(i, "train") for i in (3, 4)]
    turns = [[(prompt, reply) for prompt, reply, _ in _conversation(s, describe_video=True)] for s in samples]
    inputs = batch_inputs(processor, samples, [turns[0], turns[1][:2]])  # different lengths: left padding
    mask = _reply_tokens(processor, inputs["input_ids"])
    for row, conversation in enumerate([turns[0], turns[1][:2]]):
        read = processor.tokenizer.decode(inputs["input_ids"][row][mask[row]]).replace(" ", "")
        assert read == "".join(f"{reply}<|im_end|>" for _, reply in conversation).replace(" ", "")
    assert turns[0][-1][1] == describe(samples[0].spec) and len(turns[0]) == 6
    # The summary heads read the position just before each reply: one per turn, an "assistant \n" newline.
    answer = _answer_positions(processor, inputs["input_ids"])
    assert answer.sum(dim=1).tolist() == [6, 2]
    assert set(processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][answer].tolist())) == {"\n"}
    assert torch.equal(answer[:, :-1], _reply_starts(processor, inputs["input_ids"])[:, 1:])


def test_curriculum_unlocks_one_type_at_a_time():
    from hieravid.proxy.train import CURRICULUM, _conversation, asked_types
    from hieravid.synthetic import QUESTION_TYPES, generate_sample

    assert sorted(CURRICULUM) == sorted(QUESTION_TYPES)
    assert asked_types(TrainConfig(curriculum=0), 0) == QUESTION_TYPES
    config = TrainConfig(curriculum=10)
    seen = [asked_types(config, step) for step in (0, 9, 10, 25, 39, 40, 10_000)]
    assert [len(t) for t in seen] == [1, 1, 2, 3, 4, 5, 5]
    assert seen[0] == (CURRICULUM[0],) and set(seen[2]) == set(CURRICULUM[:2])
    sample = generate_sample(5, "train")
    kinds = [kind for _, _, kind in _conversation(sample, False, seen[3])]
    assert sorted(kinds) == sorted(seen[3])


def test_validation_does_not_change_the_weights(tmp_path):
    # The shipped proxy's card gives --eval-every as run; a run measuring less often must train the same model.
    often = train(tmp_path / "often", TrainConfig(**{**SMALL.__dict__, "eval_every": 1, "curriculum": 2}), progress=False)
    rarely = train(tmp_path / "rarely", TrainConfig(**{**SMALL.__dict__, "eval_every": 3, "curriculum": 2}), progress=False)
    assert often["steps"] == rarely["steps"] == 3
    a = load_file(tmp_path / "often" / "model.safetensors")
    b = load_file(tmp_path / "rarely" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_bad_starts_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="holds no checkpoint.pt to continue; run without --resume"):
        train(tmp_path / "none", SMALL, resume=True, progress=False)
    (tmp_path / "folder" / "checkpoint.pt").mkdir(parents=True)
    for resume in (True, False):
        with pytest.raises(ValueError, match=r"checkpoint\.pt is a folder, where the run keeps its checkpoint: move it"):
            train(tmp_path / "folder", SMALL, resume=resume, progress=False)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        train(tmp_path / "afile", SMALL, progress=False)
    with pytest.raises(ValueError, match="cannot create --out"):
        train(tmp_path / "afile" / "sub", SMALL, progress=False)
    trained = tmp_path / "trained"  # a finished model without its checkpoint (the shipped one, copied)
    trained.mkdir()
    (trained / "model.safetensors").write_bytes(b"weights")
    (trained / "train_log.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="already holds a trained model .*: use a new directory"):
        train(trained, SMALL, progress=False)
    assert (trained / "model.safetensors").read_bytes() == b"weights"
    assert (trained / "train_log.jsonl").read_text() == '{"step": 1}\n'
    for bad in ({"lr": 0.0}, {"aux_weight": -1.0}, {"summary_weight": -2.0}, {"val_size": 0}, {"eval_every": 0},
                {"checkpoint_every": 0}, {"batch": 0}, {"steps": -1}, {"batch": 2.5}, {"lr": float("inf")},
                {"aux_weight": float("inf")}, {"type_weight": float("nan")}, {"seed": -1}, {"seed": 2**63},
                {"seed": 1.5}, {"threads": max(64, 4 * (os.cpu_count() or 1)) + 1}):
        with pytest.raises(ValueError, match="must be"):
            TrainConfig(**{**SMALL.__dict__, **bad})
    TrainConfig(**{**SMALL.__dict__, "threads": (os.cpu_count() or 1) + 1})  # a run begun on a larger machine


def test_command_line_values_torch_cannot_take_are_named(tmp_path, capsys):
    from hieravid.cli import main

    for option, value, said in (("--seed", str(2**64), "--seed must be"), ("--threads", "100000", "--threads must be"),
                                ("--lr", "inf", "--lr must be"), ("--out", "", "--out is empty"),
                                ("--out", "  ", "--out is empty")):
        argv = ["train-proxy", "--out", str(tmp_path / "run"), option, value]
        assert main(argv) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_loss_that_is_no_longer_a_number_stops_the_run_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"the loss is (nan|inf) at step [23] .*lower --lr"):
        train(tmp_path / "run", TrainConfig(**{**SMALL.__dict__, "lr": 1e30}), progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_checkpoint_the_disk_cannot_take_is_one_error_naming_it(tmp_path, monkeypatch):
    import hieravid.proxy.train as proxy_train

    def full_disk(state, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(proxy_train.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write the checkpoint .*checkpoint\.pt .*unexpected pos"):
        train(tmp_path / "run", SMALL, progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_last_step_s_validation_is_the_result_not_measured_twice(tmp_path, monkeypatch):
    import hieravid.proxy.train as proxy_train

    measured = []
    real = proxy_train.letter_accuracy
    monkeypatch.setattr(proxy_train, "letter_accuracy", lambda *a, **k: measured.append(1) or real(*a, **k))
    result = train(tmp_path / "run", SMALL, progress=False)  # validates at steps 1, 2 and 3
    last = json.loads((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()[-1])
    assert len(measured) == 3 and result["validation"] == last["validation"]
    again = train(tmp_path / "run", SMALL, resume=True, progress=False)  # nothing left to train: measured anew
    assert len(measured) == 4 and again["validation"] == result["validation"]


def test_a_fresh_run_starts_its_own_log(tmp_path):
    """A run killed before its first checkpoint leaves log lines but nothing to resume: the next run's log
    holds its own lines only."""
    config = TrainConfig(**{**SMALL.__dict__, "checkpoint_every": 10, "steps": 3})

    def interrupt(entry):
        if entry["step"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(tmp_path / "run", config, log=interrupt, progress=False)
    train(tmp_path / "run", TrainConfig(**{**SMALL.__dict__, "steps": 2}), progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_a_log_line_cut_short_by_a_kill_does_not_stop_the_resume(tmp_path):
    from hieravid.proxy.train import _log_lines_up_to

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert _log_lines_up_to(log, 2) == ['{"step": 1}', '{"step": 2}']
    log.write_text('{"step": 1}\n{"st\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"train_log\.jsonl: line 2 is not JSON: remove that line"):
        _log_lines_up_to(log, 2)
    for edited in ("[1, 2]", '{"loss": 1.0}', '{"step": "2"}'):
        log.write_text(f'{{"step": 1}}\n{edited}\n{{"step": 2}}\n')
        with pytest.raises(ValueError, match=r"train_log\.jsonl: line 2 is not a step's record: remove that line"):
            _log_lines_up_to(log, 2)


def test_the_card_is_measured_without_transformers_bars(tmp_path, monkeypatch, capsys):
    """transformers' "Loading weights" bar would break the command's status line (and --json's stderr)."""
    import hieravid.proxy.card as card
    import hieravid.proxy.train as proxy_train
    from hieravid.cli import main
    from transformers.utils import logging as hf_logging

    bars_while_measuring = []
    monkeypatch.setattr(proxy_train, "train", lambda out, *args, **kwargs: {"steps": 1, "train_seconds": 1.0,
                                                                             "validation": {"letter": 0.5}})
    monkeypatch.setattr(card, "write_card", lambda out: bars_while_measuring.append(hf_logging.is_progress_bar_enabled()))
    assert main(["train-proxy", "--out", str(tmp_path / "run"), "--json"]) == 0
    assert bars_while_measuring == [False]
    assert hf_logging.is_progress_bar_enabled()


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    import hieravid.proxy.train as proxy_train
    from hieravid.cli import main

    def interrupted(out, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(proxy_train, "train", interrupted)
    assert main(["train-proxy", "--out", str(tmp_path / "run")]) == 130
    assert "interrupted before the first checkpoint (at step 25): nothing to resume" in capsys.readouterr().err
    assert main(["train-proxy", "--out", str(tmp_path / "short"), "--steps", "6"]) == 130  # its last step checkpoints
    assert "interrupted before the first checkpoint (at step 6): nothing to resume" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    assert main(["train-proxy", "--out", str(tmp_path / "run")]) == 130
    assert "checkpoint.pt holds the last checkpoint" in capsys.readouterr().err


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path):
    from hieravid.files import lock_folder

    out = tmp_path / "run"
    out.mkdir()
    held = lock_folder(out)  # a run writing there now
    try:
        with pytest.raises(ValueError, match="another hieravid train-proxy is writing to .* now"):
            train(out, SMALL, progress=False)
    finally:
        held.close()
    assert not (out / "train_log.jsonl").exists()  # nothing of the running one touched
    assert train(out, SMALL, progress=False)["steps"] == 3  # released: the folder takes a run again


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a whole checkpoint"])
def test_a_damaged_checkpoint_is_named_with_the_fix(tmp_path, damage):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(damage)
    with pytest.raises(ValueError, match="checkpoint.pt cannot be read .*: remove it"):
        train(out, SMALL, resume=True, progress=False)


def test_a_checkpoint_cut_short_anywhere_or_not_a_checkpoint_is_named_with_the_fix(tmp_path):
    import io

    out = tmp_path / "run"
    train(out, SMALL, progress=False)
    whole = (out / "checkpoint.pt").read_bytes()
    listed = io.BytesIO()
    torch.save([1, 2], listed)
    for damage in (whole[:30000], whole[: len(whole) // 2], whole[:-100], listed.getvalue()):
        (out / "checkpoint.pt").write_bytes(damage)
        with pytest.raises(ValueError, match="checkpoint.pt cannot be read .*: remove it"):
            train(out, SMALL, resume=True, progress=False)


def test_a_checkpoint_that_cannot_be_opened_is_not_called_damaged(tmp_path, monkeypatch):
    """A permission error names the file; the advice to remove it is for a file cut short."""
    out = tmp_path / "run"
    train(out, SMALL, progress=False)
    real = torch.load

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(PermissionError, match="checkpoint.pt"):
        train(out, SMALL, resume=True, progress=False)
    monkeypatch.setattr(torch, "load", real)


def test_a_checkpoint_left_half_written_by_a_killed_run_is_removed_by_the_next(tmp_path):
    out = tmp_path / "run"
    train(out, SMALL, progress=False)
    (out / "checkpoint.pt.4242-0123abcd.tmp").write_bytes(b"half a checkpoint")  # a run killed mid-save
    train(out, SMALL, resume=True, progress=False)
    assert not list(out.glob("*.tmp"))


def test_ctrl_c_while_the_card_is_measured_says_how_to_finish(tmp_path, monkeypatch, capsys):
    import hieravid.proxy.card as card
    import hieravid.proxy.train as proxy_train
    from hieravid.cli import main

    def trained(out, *args, **kwargs):
        (tmp_path / "run" / "checkpoint.pt").write_bytes(b"state")
        return {"steps": 1, "train_seconds": 1.0, "validation": {"letter": 0.5}}

    def interrupted(out):
        raise KeyboardInterrupt

    (tmp_path / "run").mkdir()
    monkeypatch.setattr(proxy_train, "train", trained)
    monkeypatch.setattr(card, "write_card", interrupted)
    assert main(["train-proxy", "--out", str(tmp_path / "run")]) == 130
    assert "run the same command with --resume" in capsys.readouterr().err


def test_an_out_folder_that_takes_no_file_is_refused_before_training(tmp_path, monkeypatch, capsys):
    import hieravid.proxy.train as proxy_train
    from hieravid.cli import main

    monkeypatch.setattr(proxy_train, "train", lambda *args, **kwargs: pytest.fail("trained"))
    monkeypatch.setattr("os.access", lambda path, mode: False)  # a read-only file system, as root sees it
    (tmp_path / "ro").mkdir()
    assert main(["train-proxy", "--out", str(tmp_path / "ro")]) == 2
    assert "is not writable" in capsys.readouterr().err
