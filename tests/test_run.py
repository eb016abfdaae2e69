"""``hieravid run`` and ``hieravid demo`` end to end, on random-weight models saved to a folder (``--model DIR``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import transformers

import tiny_models as tm
from hieravid.cli import main
from hieravid.synthetic import generate_sample
from hieravid.video import write_test_video

RESULT_KEYS = {
    "method", "budget", "answer", "visual_tokens", "tokens_per_layer", "stages", "segments", "achieved_budget",
    "flops_ratio", "exact_flops_ratio", "prefill_seconds", "decide_seconds", "decide_seconds_by_layer",
    "vision_seconds", "total_seconds", "new_tokens", "input_tokens",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    """A tiny LLaVA-OneVision saved with its processor."""
    folder = tmp_path_factory.mktemp("llava")
    model = tm.build_model("llava_onevision")
    model.save_pretrained(folder)
    tm.build_processor("llava_onevision", model, folder)
    return folder


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> Path:
    """Synthetic test sample 1 written as an .mp4 (32 frames of 96 x 96 at 4 fps)."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_test_video(path, generate_sample(1).frames, fps=4)
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_result(result: dict, visual_tokens: int, num_layers: int = 8) -> None:
    assert RESULT_KEYS <= result.keys()
    assert isinstance(result["answer"], str)
    assert result["visual_tokens"] == visual_tokens
    assert len(result["tokens_per_layer"]) == num_layers
    assert result["stages"][0]["layer"] == 0
    for stage in result["stages"]:
        assert result["tokens_per_layer"][stage["layer"]] == stage["tokens"]
    assert result["prefill_seconds"] > 0 and result["total_seconds"] >= result["prefill_seconds"]
    assert 0 < result["flops_ratio"] <= 1 and 0 < result["exact_flops_ratio"] <= 1


def test_run_compare_json(proxy_dir: Path, video_file: Path, tmp_path: Path, capsys) -> None:
    picture = tmp_path / "kept.png"
    argv = [
        "run", str(video_file), "--question", "how many scenes are in the video ?", "--model", str(proxy_dir),
        "--compare", "--viz", str(picture), "--json", "--max-new-tokens", "2",
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    payload = json.loads(out)  # exactly one JSON object on stdout
    assert payload["video"]["num_frames"] == 32 and payload["video"]["source_frames"] == 32
    assert payload["family"] == "qwen2_vl" and payload["model"] == str(proxy_dir)
    assert payload["question"] == "how many scenes are in the video ?"
    vanilla, pruned = payload["results"]
    assert (vanilla["method"], pruned["method"]) == ("vanilla", "hieravid")
    check_result(vanilla, 576)
    check_result(pruned, 576)
    assert vanilla["tokens_per_layer"] == [576] * 8 and vanilla["flops_ratio"] == 1.0
    assert [s["layer"] for s in pruned["stages"]] == [0, 2, 4, 6]  # four stages of two layers
    assert pruned["flops_ratio"] < 0.35 and pruned["segments"] >= 1
    # the deciding, split by decision point: one entry per stage, summing to the total
    by_point = pruned["decide_seconds_by_layer"]
    assert sorted(by_point, key=int) == [str(s["layer"]) for s in pruned["stages"]]
    assert sum(by_point.values()) == pytest.approx(pruned["decide_seconds"]) and min(by_point.values()) > 0
    assert vanilla["decide_seconds_by_layer"] == {}
    assert abs(pruned["achieved_budget"] - 0.3) < 0.02
    assert payload["prefill_speedup"] == pytest.approx(vanilla["prefill_seconds"] / pruned["prefill_seconds"])
    assert payload["viz"] == str(picture) and picture.stat().st_size > 0
    assert len(payload["viz_panels"]) == 7  # frames, 4 stages, relevance, tokens per layer


def test_run_loads_the_weights_in_the_dtype_asked(proxy_dir: Path, video_file: Path, capsys) -> None:
    argv = ["run", str(video_file), "-q", "how many scenes are in the video ?", "--model", str(proxy_dir),
            "--json", "--max-new-tokens", "1"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads(out)["dtype"] == "float32"  # the checkpoint's
    code, out, err = run_cli([*argv, "--dtype", "bfloat16"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["dtype"] == "bfloat16" and payload["results"][0]["achieved_budget"] < 0.35


def test_run_compare_warms_up_the_pruned_method_untimed(proxy_dir, video_file, capsys, monkeypatch) -> None:
    import hieravid.infer

    real, calls = hieravid.infer.answer, []

    def recording(*args, **kwargs):
        calls.append((kwargs["method"], kwargs["max_new_tokens"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(hieravid.infer, "answer", recording)
    argv = ["run", str(video_file), "-q", "how many scenes are in the video ?", "--model", str(proxy_dir),
            "--compare", "--json", "--max-new-tokens", "2"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    # The pruned call warms up the model and the method's first-call costs; then both timed calls.
    assert calls == [("hieravid", 1), ("vanilla", 2), ("hieravid", 2)]


def test_run_text(proxy_dir: Path, video_file: Path, capsys) -> None:
    argv = ["run", str(video_file), "-q", "which way does the moving object go ?", "--model", str(proxy_dir),
            "--budget", "0.2", "--num-frames", "16", "--max-new-tokens", "2"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "16 of 32 frames" in out and "hieravid, budget 0.2" in out
    assert "visual tokens  288 -> " in out  # 16 frames = 8 temporal groups of 36 tokens
    assert "% of vanilla" in out and "prefill" in out
    assert "speed-up" not in out  # no --compare: one run


def test_run_other_method_and_family(llava_dir: Path, tmp_path: Path, capsys) -> None:
    video = tmp_path / "noise.mp4"
    write_test_video(video, tm.random_video(12, 126, 126, seed=4), fps=6)
    argv = ["run", str(video), "-q", "what is happening in the video ?", "--model", str(llava_dir),
            "--method", "fastv:k=1", "--num-frames", "8", "--json", "--max-new-tokens", "2", "--compare"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["family"] == "llava_onevision"
    vanilla, pruned = payload["results"]
    check_result(pruned, 8 * 25)
    assert pruned["method"] == "fastv:k=1"
    assert [s["layer"] for s in pruned["stages"]] == [0, 1] and pruned["segments"] is None  # k=1 reached FastV


def test_demo_json(proxy_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["demo", "--model", str(proxy_dir), "--out", str(tmp_path / "demo"), "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    sample = generate_sample(0, "test")
    assert payload["sample"]["answer"] == sample.answer and payload["sample"]["question"] == sample.question
    assert payload["sample"]["options"] == sample.options
    assert Path(payload["video"]["path"]) == tmp_path / "demo" / "hieravid-demo.mp4"
    assert payload["video"]["num_frames"] == sample.frames.shape[0]
    vanilla, pruned = payload["results"]
    assert (vanilla["method"], pruned["method"], pruned["budget"]) == ("vanilla", "hieravid", 0.3)
    check_result(vanilla, 576)
    check_result(pruned, 576)
    assert isinstance(vanilla["correct"], bool) and isinstance(pruned["correct"], bool)
    assert payload["prefill_speedup"] > 0
    picture = Path(payload["picture"])
    assert picture == tmp_path / "demo" / "hieravid-demo.png" and picture.stat().st_size > 0
    panels = payload["viz_panels"]
    assert panels[0].startswith("Sampled frames") and panels[1].startswith("Stage 1, before layer 0")
    assert any(p.startswith("Token relevance") for p in panels) and panels[-1].startswith("Visual tokens per layer")


def test_demo_text(proxy_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # default --out: the current folder
    code, out, err = run_cli(["demo", "--model", str(proxy_dir), "--seed", "3"], capsys)
    assert code == 0, err
    sample = generate_sample(3, "test")
    assert sample.question.splitlines()[0] in out and f"correct   {sample.answer} ({sample.answer_text})" in out
    assert "vanilla" in out and "hieravid, budget 0.3" in out and "prefill speed-up" in out
    assert (tmp_path / "hieravid-demo.png").stat().st_size > 0 and (tmp_path / "hieravid-demo.mp4").is_file()


# ------------------------------------------------------------------------------------------- errors


def check_error(argv: list[str], capsys, *words: str) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert out == "" and "Traceback" not in err
    for word in words:
        assert word in err


def test_missing_file(proxy_dir: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere.mp4"
    check_error(["run", str(missing), "-q", "what ?", "--model", str(proxy_dir)], capsys, "no video file", str(missing))
    assert len(capsys.readouterr().err.splitlines()) <= 1


def test_undecodable_video(proxy_dir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is not a video")
    check_error(["run", str(bad), "-q", "what ?", "--model", str(proxy_dir)], capsys, "could not decode video")


def test_missing_or_empty_question(video_file: Path, proxy_dir: Path, capsys) -> None:
    check_error(["run", str(video_file), "--model", str(proxy_dir)], capsys, "--question")
    check_error(["run", str(video_file), "-q", "   ", "--model", str(proxy_dir)], capsys, "question is empty")


def test_a_question_holding_a_visual_placeholder_is_refused_naming_it(video_file: Path, proxy_dir: Path,
                                                                     llava_dir: Path, capsys) -> None:
    for model, token in ((proxy_dir, "<|video_pad|>"), (proxy_dir, "<|image_pad|>"), (llava_dir, "<video>"),
                         (llava_dir, "<image>")):
        check_error(["run", str(video_file), "-q", f"what does {token} mean ?", "--model", str(model),
                     "--num-frames", "4"], capsys, f"the question contains {token!r}", "reword")


def test_llava_visual_tokens_past_the_decoder_s_positions_are_refused_before_processing(
        llava_dir: Path, capsys, monkeypatch) -> None:
    """The tiny LLaVA-OneVision makes 25 tokens a frame and takes 4096 positions: 200 frames need 5001."""
    import numpy as np

    from hieravid import infer

    loaded = infer.load_model(str(llava_dir))
    processed = []
    monkeypatch.setattr(type(loaded.processor), "__call__", lambda *a, **k: processed.append(1) or {})
    frames = np.zeros((200, 64, 64, 3), np.uint8)
    prompt = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what ?"}]}],
        add_generation_prompt=True, tokenize=False)
    text = len(loaded.processor.tokenizer(prompt)["input_ids"]) - 1
    fits = (4096 - text - 1) // 25  # and the video's newline token
    with pytest.raises(ValueError, match=rf"^200 frames of 64x64 pixels make 5001 visual tokens, which with the "
                                         rf"prompt's {text} text tokens is more than the 4096 positions .*"
                                         rf"max_position_embeddings.*at most {fits} frames"):
        infer.build_inputs(loaded, frames, "what ?")
    assert processed == []  # refused before the processor turned them into float pixels
    infer.build_inputs(loaded, frames[:fits], "what ?")
    assert processed == [1]
    with pytest.raises(ValueError, match="at most"):
        infer.build_inputs(loaded, frames[:fits + 1], "what ?")


def test_qwen_frames_past_the_decoder_s_positions_run_and_pixels_past_the_memory_are_refused(
        proxy_dir: Path, monkeypatch) -> None:
    """The proxy (Qwen2-VL, 4096 positions) makes 36 tokens of 2 frames: 256 frames make 4608, whose M-RoPE
    positions reach only about 150 (they grow with the grid). Each token's pixel values take 4 bytes x 3
    channels x its 2 x 2 patches of 2 frames of 8 x 8 pixels."""
    import numpy as np

    from hieravid import infer

    loaded = infer.load_model(str(proxy_dir))
    frames = np.zeros((256, 96, 96, 3), np.uint8)
    inputs = infer.build_inputs(loaded, frames, "what ?")
    assert int((inputs["input_ids"] == loaded.model.config.video_token_id).sum()) == 4608
    per_token = 4 * 3 * (2 * 2) * 2 * 8**2
    monkeypatch.setattr(infer, "available_memory", lambda: 2 * per_token * 1000)  # pixels of 1000 tokens, and a copy
    with pytest.raises(ValueError, match=r"^256 frames of 96x96 pixels make 4608 visual tokens, whose pixel values the "
                                         r"processor builds in 54.0 MiB \(float32, with a copy\), more than the 11.7 MiB "
                                         r"of memory available: pass at most 54 frames"):
        infer.build_inputs(loaded, frames, "what ?")
    infer.build_inputs(loaded, frames[:54], "what ?")  # 27 temporal groups of 36 tokens: 972


def test_bad_model_and_budget(video_file: Path, tmp_path: Path, capsys) -> None:
    check_error(["run", str(video_file), "-q", "what ?", "--model", str(tmp_path)], capsys, "config.json")
    check_error(["run", str(video_file), "-q", "what ?", "--budget", "1.5"], capsys, "budget")
    # a bad method option fails before the model is looked for
    check_error(["run", str(video_file), "-q", "what ?", "--model", str(tmp_path), "--method", "fastv:kk=3"], capsys,
                "unknown option(s) for method 'fastv': kk; allowed: k")
    check_error(["demo", "--budget", "0", "--out", str(tmp_path)], capsys, "budget")
    text_only = tmp_path / "text-only"  # a language model alone: named as such, before its weights are read
    transformers.Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, architectures=["Qwen2ForCausalLM"]
                             ).save_pretrained(text_only)
    check_error(["run", str(video_file), "-q", "what ?", "--model", str(text_only)], capsys,
                "is a 'qwen2' model (Qwen2ForCausalLM): hieravid supports the video-language families qwen2_vl, "
                "qwen2_5_vl, qwen3_vl, llava_onevision")
    check_error(["run", str(video_file), "-q", "what ?", "--viz", str(tmp_path / "no" / "x.png")], capsys, "--viz")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda(video_file: Path, proxy_dir: Path, capsys) -> None:
    check_error(["run", str(video_file), "-q", "what ?", "--model", str(proxy_dir), "--device", "cuda"], capsys,
                "--device cpu")


def test_warnings_are_one_line_and_in_the_json(proxy_dir: Path, video_file: Path, capsys) -> None:
    """Two frames make one temporal group: stage 1 cannot merge and says so, as the command's own line
    (not Python's file:line form) and in the JSON answer."""
    code, out, err = run_cli(["run", str(video_file), "-q", "what ?", "--model", str(proxy_dir), "--budget", "0.1",
                              "--num-frames", "2", "--json"], capsys)
    assert code == 0
    assert "hieravid run: warning: hieravid: with 1 frame(s)" in err and "UserWarning" not in err
    warned = [w for w in json.loads(out)["warnings"] if "unreliable" not in w]  # a busy machine may add that one
    assert len(warned) == 1 and "stage 1 can merge 0 of" in warned[0]


def test_a_run_keeping_far_fewer_tokens_than_its_budget_says_so_and_names_the_fix(proxy_dir: Path, tmp_path: Path,
                                                                                   capsys) -> None:
    """Frames of noise make 16 segments of 36 tokens: without layer pruning, each segment's count rounded
    down (Eq. 5) keeps about 0.07 of the tokens for a budget of 0.1."""
    import numpy as np

    noise = tmp_path / "noise.mp4"
    write_test_video(noise, np.random.default_rng(0).integers(0, 256, (32, 96, 96, 3), dtype=np.uint8), fps=4)
    common = ["run", str(noise), "-q", "what ?", "--model", str(proxy_dir), "--max-new-tokens", "1", "--json"]

    def warned(method: str, budget: str) -> tuple[float, list[str]]:
        code, out, _ = run_cli([*common, "--method", method, "--budget", budget], capsys)
        assert code == 0
        payload = json.loads(out)
        return payload["results"][0]["achieved_budget"], [w for w in payload["warnings"] if "unreliable" not in w]

    kept, said = warned("hieravid_no_layer", "0.1")
    assert kept < 0.085 and len(said) == 1
    assert f"kept {kept:.3f} of the visual tokens" in said[0] and "budget 0.1" in said[0]
    assert "--method hieravid_no_layer:exact_total=True" in said[0]
    kept, said = warned("hieravid_no_layer:exact_total=True", "0.1")
    assert kept >= 0.1 and said == []
    kept, said = warned("hieravid_no_layer:exact_total=False", "0.1")  # the option is turned, not given twice
    assert kept < 0.085 and len(said) == 1 and "set exact_total=True in --method" in said[0]
    kept, said = warned("hieravid:ratios=(0.5,0.5,0.5,0.5)", "0.5")  # its ratios, not rounding, keep 0.23
    assert kept < 0.3 and said == []
    kept, said = warned("hieravid", "0.3")  # a little under its budget: nothing to say
    assert 0.85 * 0.3 < kept < 0.3 and said == []


def test_times_taken_under_load_are_called_unreliable(proxy_dir: Path, video_file: Path, capsys, monkeypatch) -> None:
    from hieravid.bench.models import CpuWatch

    argv = ["run", str(video_file), "-q", "what ?", "--model", str(proxy_dir), "--num-frames", "8", "--json"]
    monkeypatch.setattr(CpuWatch, "others_share", lambda self: 0.5)  # half the CPUs' time went elsewhere
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and json.loads(out)["warnings"] == [
        "other processes took 50% of the CPUs' time while this ran: the times are unreliable"
    ]
    monkeypatch.setattr(CpuWatch, "others_share", lambda self: 0.02)
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and json.loads(out)["warnings"] == []


def test_unknown_devices_are_refused_before_loading(video_file: Path, tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "no-model")  # the device is checked first: this path is never looked at
    check_error(["run", str(video_file), "-q", "x", "--model", missing, "--device", "foo"], capsys,
                "unknown device 'foo': use cpu, cuda or cuda:N")
    check_error(["demo", "--out", str(tmp_path / "d"), "--model", missing, "--device", "mps"], capsys,
                "hieravid runs on cpu or cuda devices, not mps")
    check_error(["eval", "--suite", "synthetic", "--out", str(tmp_path / "e"), "--device", "foo"], capsys,
                "unknown device 'foo'")
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
    check_error(["run", str(video_file), "-q", "x", "--model", ""], capsys, "--model is empty")


def test_a_missing_torchvision_is_named_before_loading(video_file: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """transformers' video processors need torchvision, which pip does not pull in with torch: its absence is
    named, with the fix, before any weights are read."""
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` fails
    check_error(["run", str(video_file), "-q", "x"], capsys, "video processors need torchvision")
    check_error(["demo", "--out", str(tmp_path / "d")], capsys, "pip install torch==2.14.1 torchvision==0.29.1")
    assert not (tmp_path / "d").exists()


def test_demo_errors_write_nothing(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    check_error(["demo", "--out", str(a_file)], capsys, "is a file")
    check_error(["demo", "--out", str(a_file / "sub")], capsys, "is a file, so the folder cannot be made")
    check_error(["eval", "--suite", "synthetic", "--out", str(a_file)], capsys, "is a file: pass a folder")
    out = tmp_path / "out"
    check_error(["demo", "--out", str(out), "--model", str(tmp_path / "missing-model")], capsys, "no model directory")
    assert not out.exists()  # the model is loaded before anything is written
    for name in ("hieravid-demo.mp4", "hieravid-demo.png"):  # a folder where the demo writes a file
        taken = tmp_path / f"taken-{name}"
        (taken / name).mkdir(parents=True)
        check_error(["demo", "--out", str(taken), "--model", str(tmp_path / "missing-model")], capsys,
                    f"holds a folder named {name}")


def test_default_model_missing_names_the_fix(tmp_path: Path, capsys, monkeypatch) -> None:
    from hieravid.proxy import model_dir

    try:
        model_dir()
    except FileNotFoundError:
        pass
    else:
        pytest.skip("the proxy model is installed")
    check_error(["demo", "--out", str(tmp_path)], capsys, "--model DIR")


def test_run_vanilla_reports_budget_one_and_no_pruning_note(proxy_dir: Path, video_file: Path, capsys) -> None:
    base = ["run", str(video_file), "-q", "what ?", "--model", str(proxy_dir), "--num-frames", "8",
            "--max-new-tokens", "2"]
    code, out, err = run_cli([*base, "--method", "vanilla", "--json"], capsys)
    assert code == 0, err
    assert [r["budget"] for r in json.loads(out)["results"]] == [1.0]
    assert not [w for w in json.loads(out)["warnings"] if "budget" in w]
    code, out, err = run_cli([*base, "--method", "vanilla", "--budget", "0.2", "--json"], capsys)
    assert code == 0, err
    assert [r["budget"] for r in json.loads(out)["results"]] == [1.0]
    assert "method vanilla keeps every visual token: budget 0.2 is ignored" in json.loads(out)["warnings"]
    code, out, err = run_cli([*base, "--budget", "1", "--compare"], capsys)
    assert code == 0, err
    assert "nothing was pruned at this budget" in out and "deciding took" not in out


def test_too_few_frames_for_the_processor_names_the_fix(tmp_path: Path, video_file: Path, capsys) -> None:
    folder = tmp_path / "qwen3"
    model = tm.build_model("qwen3_vl")
    model.save_pretrained(folder)
    tm.build_processor("qwen3_vl", model, folder)
    check_error(["run", str(video_file), "-q", "what ?", "--model", str(folder), "--num-frames", "1"], capsys,
                "refused 1 frame(s)")


def test_broken_model_folders_are_one_line_errors_in_every_command(proxy_dir: Path, video_file: Path, tmp_path: Path,
                                                                   capsys) -> None:
    """A model folder with its weights cut off, or without its processor, a path that is not there and a
    bare name (hub ids read org/name) are each named in one line, by run and by eval alike."""
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(proxy_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    no_processor = tmp_path / "no-processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(proxy_dir / name, no_processor / name)
    cases = [(cut, "could not load the model directory"), (no_processor, "could not load the model directory"),
             (tmp_path / "nowhere", "no model directory at"), ("mymodel", "not a hub id (those read org/name")]
    for model, words in cases:
        check_error(["run", str(video_file), "-q", "x", "--model", str(model)], capsys, words)
        out = tmp_path / f"eval-{Path(str(model)).name}"
        check_error(["eval", "--suite", "synthetic", "--limit", "1", "--out", str(out), "--model", str(model)], capsys,
                    words)
        assert not (out / "run.json").exists()  # nothing answered: no settings to hold a retry to


def test_text_and_unreadable_videos_are_one_line_errors(proxy_dir: Path, video_file: Path, tmp_path: Path,
                                                        capsys) -> None:
    notes = tmp_path / "notes.txt"  # FFmpeg would draw it as pictures
    notes.write_text("not a video\n" * 50)
    check_error(["run", str(notes), "-q", "x", "--model", str(proxy_dir)], capsys, "it is a text file")
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.mp4"
        locked.write_bytes(video_file.read_bytes())
        locked.chmod(0)
        check_error(["run", str(locked), "-q", "x", "--model", str(proxy_dir)], capsys, "cannot read video")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_outputs_are_refused_before_any_work(proxy_dir: Path, video_file: Path, tmp_path: Path,
                                                        capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    check_error(["run", str(video_file), "-q", "x", "--model", str(proxy_dir), "--viz", str(locked / "x.png")], capsys,
                "is not writable")
    check_error(["bench", "--shape", "tiny", "--json", str(locked / "b.json")], capsys, "is not writable")


def test_an_unknown_option_is_named_by_its_command_with_the_nearest_one(video_file: Path, capsys) -> None:
    code, out, err = run_cli(["run", str(video_file), "-q", "x", "--frames", "8"], capsys)
    assert code == 2 and "hieravid run: error: unrecognized arguments: --frames 8" in err
    assert "did you mean --num-frames?" in err
    code, out, err = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("hieravid ")


def test_answer_takes_a_method_instance_with_its_own_budget(proxy_dir: Path) -> None:
    """An instance carries its budget: answer() runs it as it is, and refuses a budget beside it rather
    than ignore one."""
    from hieravid.config import HieraVidConfig
    from hieravid.infer import answer, load_model
    from hieravid.methods.hieravid import HieraVid

    loaded = load_model(proxy_dir)
    frames = generate_sample(0, "test").frames[:8]
    by_name = answer(loaded, frames, "what ?", method="hieravid", budget=0.3, max_new_tokens=1)
    instance = answer(loaded, frames, "what ?", method=HieraVid(HieraVidConfig(budget=0.3)), max_new_tokens=1)
    assert instance.stats.tokens_per_layer == by_name.stats.tokens_per_layer
    default = answer(loaded, frames, "what ?", method="hieravid", max_new_tokens=1)  # apply()'s default, 0.3
    assert default.stats.tokens_per_layer == by_name.stats.tokens_per_layer
    vanilla = answer(loaded, frames, "what ?", max_new_tokens=1)
    assert vanilla.stats.achieved_budget == 1.0
    with pytest.raises(ValueError, match="budget given with a method instance"):
        answer(loaded, frames, "what ?", method=HieraVid(HieraVidConfig(budget=0.3)), budget=0.7)


def test_a_model_directory_named_from_home_loads(proxy_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """``--model=~/dir`` (a ``~`` the shell leaves as it is) is the directory it names, for loading too."""
    import shutil

    from hieravid.infer import load_model

    shutil.copytree(proxy_dir, tmp_path / "proxy")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_model("~/proxy").name == "~/proxy"


@pytest.mark.parametrize("missing", ["tokenizer", "chat template"])
def test_a_model_directory_missing_its_tokenizer_or_chat_template_is_named_at_load(
    proxy_dir: Path, tmp_path: Path, missing: str
) -> None:
    import shutil

    from hieravid.infer import load_model

    folder = tmp_path / "incomplete"
    shutil.copytree(proxy_dir, folder)
    if missing == "tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
    else:
        (folder / "chat_template.jinja").unlink()
        for name in ("processor_config.json", "tokenizer_config.json"):
            config = json.loads((folder / name).read_text())
            config.pop("chat_template", None)
            (folder / name).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"could not load the model directory {folder}: .*{missing}.*save_pretrained"):
        load_model(str(folder))


def test_vanilla_named_with_blanks_is_vanilla(proxy_dir: Path, video_file: Path, capsys) -> None:
    code, out, err = run_cli(["run", str(video_file), "-q", "what ?", "--model", str(proxy_dir), "--num-frames", "8",
                              "--max-new-tokens", "2", "--method", " vanilla ", "--compare", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [(r["method"], r["budget"]) for r in result["results"]] == [("vanilla", 1.0)]
    assert "prefill_speedup" not in result


def test_a_cuda_device_torch_does_not_see_is_named_as_given(monkeypatch) -> None:
    from hieravid.infer import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device 'cuda:1' was asked for but torch sees no CUDA device; use "
                                         r"device='cpu' \(--device cpu on the command line\)$"):
        check_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"^device 'cuda:2' was asked for but torch sees 2 CUDA devices \(cuda:0 to "
                                         r"cuda:1\): pick one of them"):
        check_device("cuda:2")
