"""Tests of the ``hieravid`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hieravid.cli import build_parser, main

FLOPS_KEYS = {
    "vanilla_tflops", "pruned_tflops", "ratio", "exact_vanilla_tflops", "exact_pruned_tflops",
    "exact_ratio", "tokens_per_layer", "ratios", "achieved_budget", "preset", "method", "budget", "attention",
}


def test_flops_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["flops", "--preset", "llava-video-7b", "--method", "hieravid", "--budget", "0.3", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out)  # exactly one JSON object
    assert FLOPS_KEYS <= payload.keys()
    assert round(payload["vanilla_tflops"], 2) == 80.16
    assert round(payload["pruned_tflops"], 2) == 19.61
    assert round(payload["ratio"], 3) == 0.245
    assert payload["ratios"] == [0.5, 0.3, 0.3, 0.57]
    assert payload["tokens_per_layer"][0] == 5408 and len(payload["tokens_per_layer"]) == 28
    assert payload["exact_pruned_tflops"] > payload["pruned_tflops"]
    assert (payload["preset"], payload["method"], payload["budget"]) == ("llava-video-7b", "hieravid", 0.3)


def test_flops_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "--preset", "llava-onevision-7b", "--method", "uniform", "--budget", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "40.77" in out and "16.9%" in out and "exact" in out


def test_flops_table_cells_stay_apart_at_any_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "--preset", "qwen2-vl-7b", "--budget", "0.3", "--frames", str(10**11)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "TFLOPs" in line]
    assert len(rows) == 2 and all(len(row.split("TFLOPs")[1].split()) == 3 for row in rows)  # vanilla, pruned, ratio


def test_flops_attention_count(capsys: pytest.CaptureFixture[str]) -> None:
    """``--attention dense`` counts the masked pairs too: more FLOPs, the paper convention unchanged."""
    runs = {}
    for attention in ("causal", "dense"):
        argv = ["flops", "--preset", "llava-video-7b", "--budget", "0.3", "--attention", attention, "--json"]
        assert main(argv) == 0
        runs[attention] = json.loads(capsys.readouterr().out)
        assert runs[attention]["attention"] == attention
    causal, dense = runs["causal"], runs["dense"]
    assert dense["exact_vanilla_tflops"] > causal["exact_vanilla_tflops"]
    assert dense["exact_pruned_tflops"] > causal["exact_pruned_tflops"]
    assert dense["pruned_tflops"] == causal["pruned_tflops"]
    assert dense["exact_ratio"] < causal["exact_ratio"]  # pruning removes more of the quadratic part


def test_flops_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["flops", "--preset", "qwen2-vl-7b", "--budget", "0.5", "--frames", "4", "--text-tokens", "0", "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["visual_tokens"] == 1024 and payload["text_tokens"] == 0


@pytest.mark.parametrize("budget", ["0", "1.5", "-0.1", "nan"])
def test_bad_budget_exits_2(budget: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["flops", "--preset", "llava-video-7b", "--budget", budget])
    captured = capsys.readouterr()
    assert code == 2
    assert "budget" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_unknown_preset_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "--preset", "llava-video-70b", "--budget", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "llava-video-7b" in err  # names the valid choices


def test_schedule_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "--budget", "0.25", "--layers", "32", "--stages", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["ratios"]) == 3 and payload["boundaries"] == [0, 11, 21]
    assert abs(payload["achieved_budget"] - 0.25) < 1e-9
    assert main(["schedule", "--budget", "0.01", "--tokens", "10", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["stage_tokens"] == [1, 1, 1, 1] and payload["achieved_budget_in_whole_tokens"] == 0.1


def test_schedule_table_and_bad_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "--budget", "0.1"]) == 0
    assert "0.1100" in capsys.readouterr().out
    assert main(["schedule", "--budget", "0.3", "--layers", "2", "--stages", "4"]) == 2
    assert "num_stages" in capsys.readouterr().err
    assert main(["schedule", "--budget", "0.3", "--layers", "2.5"]) == 2
    assert "argument --layers: must be an integer >= 1, got '2.5'" in capsys.readouterr().err


def test_parser_has_subcommands() -> None:
    parser = build_parser()
    args = parser.parse_args(["schedule", "--budget", "0.3"])
    assert args.command == "schedule" and callable(args.func)


@pytest.mark.parametrize("option, value", [("--budgets", "0.3,,0.1"), ("--budgets", "0.3,0.2,"), ("--methods", "hieravid,,fastv"),
                                           ("--methods", ",evs")])
def test_an_empty_item_in_a_list_is_refused_not_dropped(option, value, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["bench", "--shape", "tiny", option, value])
    assert stopped.value.code == 2
    assert f"an empty item in {value!r}: remove the extra comma or fill it in" in capsys.readouterr().err
    args = build_parser().parse_args(["bench", "--shape", "tiny", "--methods", "hieravid:ratios=(0.5,0.2,0.2,0.5),evs"])
    assert list(args.methods) == ["hieravid:ratios=(0.5,0.2,0.2,0.5)", "evs"]


@pytest.mark.parametrize("argv, field", [
    (["run", "~/x", "-q", "what ?"], "video"),
    (["run", "clip.mp4", "-q", "what ?", "--viz=~/x"], "viz"),
    (["demo", "--out=~/x"], "out"),
    (["eval", "--tasks", "mvbench", "--out=~/x"], "out"),
    (["eval", "--tasks", "mvbench", "--out", "o", "--data-root=~/x"], "data_root"),
    (["train-proxy", "--out=~/x"], "out"),
    (["bench", "--shape", "tiny", "--json=~/x"], "json"),
    (["bench", "--shape", "tiny", "--plot=~/x"], "plot"),
    (["bench", "--from-json=~/x"], "from_json"),
])
def test_a_path_from_home_the_shell_left_as_it_is_names_that_path(argv, field, tmp_path, monkeypatch) -> None:
    """``--out=~/x`` reaches the command with its ``~`` (the shell expands it only at a word's start), as
    ``--model=~/dir`` does, which loads the directory it names."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert getattr(build_parser().parse_args(argv), field) == str(tmp_path / "x")


@pytest.mark.parametrize("argv", [["demo"], ["eval", "--tasks", "mvbench"], ["train-proxy"]])
def test_an_empty_out_folder_is_refused_not_taken_as_the_current_one(argv, capsys) -> None:
    for blank in ("", " "):
        assert main([*argv, "--out", blank]) == 2
        assert "--out is empty: pass a folder" in capsys.readouterr().err


def test_ctrl_c_while_the_options_are_read_is_one_line(monkeypatch, capsys) -> None:
    import hieravid.cli as cli

    def interrupted(text):
        raise KeyboardInterrupt  # as when it lands while torch is imported for --methods' check

    monkeypatch.setattr(cli, "_method_list", interrupted)
    assert main(["eval", "--suite", "synthetic", "--methods", "hieravid", "--out", "x"]) == 130
    assert capsys.readouterr().err == "hieravid: interrupted\n"


def test_the_new_tokens_the_bench_needs_are_checked_as_an_option(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--shape", "tiny", "--new-tokens", "1"])
    assert "argument --new-tokens: must be an integer >= 2, got '1'" in capsys.readouterr().err


def test_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hieravid.cli", "flops", "--preset", "llava-video-7b", "--budget", "0.2", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert round(json.loads(result.stdout)["pruned_tflops"], 2) == 13.77
    bad = subprocess.run(
        [sys.executable, "-m", "hieravid.cli", "flops", "--preset", "llava-video-7b", "--budget", "2"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2 and "budget" in bad.stderr and "Traceback" not in bad.stderr


def test_budgets_of_any_real_number_type() -> None:
    import numpy as np

    from hieravid.config import check_budget

    assert check_budget(np.float32(0.5)) == 0.5 and isinstance(check_budget(np.float64(0.3)), float)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        check_budget(np.float32(1.5))


def test_subpackages_load_on_first_use_and_import_stays_light() -> None:
    """``import hieravid`` alone gives ``hieravid.methods.available()`` (as the README writes it), and does
    not import transformers until a model is touched."""
    code = (
        "import sys, hieravid\n"
        "assert 'transformers' not in sys.modules\n"
        "print(','.join(hieravid.methods.available()))\n"
        "try:\n    hieravid.no_such_thing\nexcept AttributeError:\n    print('refused')\n"
        "print(not hasattr(hieravid, 'foo.bar') and not hasattr(hieravid, 'methods.fastv'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    names, refused, dotted = result.stdout.split()
    assert "hieravid" in names.split(",") and refused == "refused" and dotted == "True"


def test_the_command_starts_without_torch() -> None:
    """``hieravid --help``, ``--version``, ``flops --help`` answer at once: building the parser (every
    subcommand's defaults) loads neither torch nor transformers."""
    code = "import sys\nfrom hieravid.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_flops_counts_the_tokens_per_frame_asked(capsys: pytest.CaptureFixture[str]) -> None:
    # LLaVA-Video in Hugging Face form pools frames to 14 x 14 (the bench's shape), the paper counts 13 x 13.
    from hieravid.flops import MODEL_PRESETS, exact_flops

    code = main(["flops", "--preset", "llava-video-7b", "--method", "uniform", "--budget", "0.3",
                 "--tokens-per-frame", "196", "--text-tokens", "65", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["visual_tokens"] == 64 * 196
    shape = MODEL_PRESETS["llava-video-7b"].shape
    assert payload["exact_vanilla_tflops"] * 1e12 == pytest.approx(exact_flops(shape, [64 * 196] * 28, 65))
    assert main(["flops", "--preset", "llava-video-7b", "--budget", "0.3", "--tokens-per-frame", "0"]) == 2


def test_an_error_keeps_its_status_when_stderrs_reader_is_gone(monkeypatch) -> None:
    import io

    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stderr", Gone())
    assert main(["flops", "--preset", "qwen2-vl-7b", "--budget", "5"]) == 2


def test_progress_lines_to_a_gone_stderr_leave_stdout_alone(monkeypatch, capsys) -> None:
    import io

    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stderr", Gone())
    assert main(["bench-ops", "--frames", "4", "--slots", "16", "--dim", "32", "--repeats", "2",
                 "--greedy-backend", "torch"]) == 0
    assert "total (median of 2 runs)" in capsys.readouterr().out


def test_a_stream_output_is_checked_for_itself_not_for_its_folder(monkeypatch, tmp_path):
    """``--json /dev/stdout`` (or a pipe) for a user who cannot make files in /dev: the stream is written into,
    so only it needs to be writable."""
    import tempfile

    from hieravid import cli

    access, temporary = os.access, tempfile.TemporaryFile

    def user_access(path, mode):  # /dev as a user other than root sees it: not writable
        return access(path, mode) and not (os.path.abspath(path) == "/dev" and mode & os.W_OK)

    def user_temporary(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir) == "/dev":
            raise PermissionError(13, "Permission denied")
        return temporary(*args, dir=dir, **kwargs)

    monkeypatch.setattr(cli.os, "access", user_access)
    monkeypatch.setattr(cli.tempfile, "TemporaryFile", user_temporary)
    cli._check_output("/dev/stdout", "--json")
    cli._check_output("/dev/fd/2", "--json")
    with pytest.raises(ValueError, match="--json '/dev/new.json' is not writable: pick another path"):
        cli._check_output("/dev/new.json", "--json")  # a file to be made in /dev: the folder counts
    os.mkfifo(tmp_path / "pipe")
    cli._check_output(str(tmp_path / "pipe"), "--json")
