"""The model-level benchmark runs end to end on the tiny shape and reports a complete, consistent result
(no timing is asserted)."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import hieravid

from hieravid.bench.models import (
    SHAPES,
    MethodResult,
    ModelBenchResult,
    build_bench_inputs,
    build_bench_model,
    check_goals,
    default_dtype,
    format_report,
    plant_scenes,
    plot_report,
    run_model_bench,
)
from hieravid.cli import main

METHODS = ("hieravid", "evs")
BUDGETS = (0.3, 0.5)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One CLI run on the tiny shape: 2 methods x 2 budgets (+ vanilla), one timed round, JSON and plot."""
    out = tmp_path_factory.mktemp("bench")
    code = main([
        "bench", "--shape", "tiny", "--methods", ",".join(METHODS), "--budgets", ",".join(map(str, BUDGETS)),
        "--repeats", "1", "--warmup", "0", "--new-tokens", "3", "--quiet",
        "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"),
    ])
    assert code == 0
    return out, json.loads((out / "bench.json").read_text())


def test_report_is_complete(bench):
    _, report = bench
    for key in ("machine", "device", "dtype", "torch_version", "torch_threads", "shape", "frames", "visual_tokens",
                "text_tokens", "num_layers", "vision_ms", "repeats", "warmup", "new_tokens", "results"):
        assert report[key] is not None, key
    assert report["visual_tokens"] == 4 * 24 and report["num_layers"] == 8
    rows = report["results"]
    assert [(r["method"], r["budget"]) for r in rows] == [("vanilla", 1.0)] + [
        (m, b) for m in METHODS for b in BUDGETS
    ]
    assert report["vision_ms"] > 0
    assert report["allocator_note"].startswith(("glibc malloc keeps freed memory", "the C library's malloc"))
    fields = set(MethodResult.__dataclass_fields__)
    for row in rows:
        assert set(row) == fields
        for key in ("prefill_ms", "ttft_ms", "decode_ms_per_token"):
            assert row[key] > 0 and math.isfinite(row[key]), key
        assert len(row["prefill_runs_ms"]) == 1 and len(row["tokens_per_layer"]) == 8
        assert row["kv_bytes"] == row["kv_text_bytes"] + row["kv_visual_bytes"] > 0
        if sys.platform == "linux":
            assert isinstance(row["prefill_page_faults"], int) and row["prefill_page_faults"] >= 0
    if sys.platform == "linux":
        assert 0 <= report["others_cpu"] <= 1
        # TTFT includes the vision tower and the decoder prefill
        assert row["ttft_ms"] > report["vision_ms"] + row["prefill_ms"] - 1e-6


def test_report_is_consistent(bench):
    _, report = bench
    assert ModelBenchResult.from_dict(report).to_dict() == report
    # a JSON file from before the allocator note and the CPU watch
    older = ModelBenchResult.from_dict({k: v for k, v in report.items() if k not in ("allocator_note", "others_cpu")})
    assert older.allocator_note == "not recorded" and older.others_cpu is None
    rows = report["results"]
    vanilla = rows[0]
    assert vanilla["decide_ms"] == 0 and vanilla["theoretical_speedup"] == 1.0
    for row in rows:
        assert row["speedup"] == pytest.approx(vanilla["prefill_ms"] / row["prefill_ms"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["theoretical_speedup"])
        assert row["decide_pct_of_vanilla_prefill"] == pytest.approx(100 * row["decide_ms"] / vanilla["prefill_ms"])
        assert row["theoretical_speedup"] == pytest.approx(row["flops_vanilla_exact"] / row["flops_exact"])
        assert row["kv_visual_ratio"] == pytest.approx(row["kv_visual_bytes"] / vanilla["kv_visual_bytes"])
        # the text part of the cache is the same for every method
        assert row["kv_text_bytes"] == vanilla["kv_text_bytes"]
    for row in rows[1:]:
        assert row["theoretical_speedup"] > 1
        assert row["decide_ms"] > 0
        assert row["kv_bytes"] < vanilla["kv_bytes"]
        # each layer caches the tokens that entered it: the visual part follows the achieved budget
        assert row["kv_visual_ratio"] == pytest.approx(row["achieved_budget"], abs=1e-9)
    hieravid = [r for r in rows if r["method"] == "hieravid"]
    assert all(r["kv_bytes"] < vanilla["kv_bytes"] for r in hieravid)


def test_report_gives_the_segments_hieravid_found(bench):
    _, report = bench
    model = build_bench_model("tiny")
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        model(**build_bench_inputs("tiny", model))
    found = handle.last_stats.per_sample_segments[0]
    assert found >= 2  # the tiny video's frames differ: more than one segment
    assert [r["segments"] for r in report["results"]] == [found if r["method"] == "hieravid" else None
                                                          for r in report["results"]]
    text = format_report(ModelBenchResult.from_dict(report))
    assert f"hieravid@0.3 {found}, hieravid@0.5 {found}" in text
    # a JSON file from before the segments were recorded
    older = {**report, "results": [{k: v for k, v in r.items() if k != "segments"} for r in report["results"]]}
    assert all(r.segments is None for r in ModelBenchResult.from_dict(older).results)
    assert "segments found" not in format_report(ModelBenchResult.from_dict(older))


def test_report_splits_the_deciding_by_decision_point(bench):
    _, report = bench
    model = build_bench_model("tiny")
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        layers = sorted(handle.method.decision_layers(model.config.text_config.num_hidden_layers))
    for row in report["results"]:
        by_layer = row["decide_ms_by_layer"]
        if row["method"] == "vanilla":
            assert by_layer == {}
            continue
        if row["method"] == "hieravid":
            assert [int(layer) for layer in by_layer] == layers and len(layers) > 1
        assert all(ms > 0 for ms in by_layer.values())
        # one timed round: the points add up to the deciding of that round
        assert sum(by_layer.values()) == pytest.approx(row["decide_ms"])
    text = format_report(ModelBenchResult.from_dict(report))
    row = next(r for r in report["results"] if r["method"] == "hieravid")
    assert "  hieravid@0.3: " + ", ".join(f"L{k} {v:.1f}" for k, v in row["decide_ms_by_layer"].items()) in text
    # a JSON file from before the points were recorded
    older = {**report, "results": [{k: v for k, v in r.items() if k != "decide_ms_by_layer"}
                                   for r in report["results"]]}
    assert "deciding per decision point" not in format_report(ModelBenchResult.from_dict(older))


def test_plot_has_two_panels(bench, tmp_path):
    out, _ = bench
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run_model_bench("tiny", methods=["vanilla", "evs"], budgets=[0.5], repeats=1, warmup=0, new_tokens=2)
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a caller's backend (a notebook's, say) is not switched under it
    try:
        fig = plot_report(result, tmp_path / "p.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 2
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.lines for ax in fig.axes)
    # one budget: every method's series (measured and FLOPs) is a single point, so it needs a marker
    series = [line for ax in fig.axes for line in ax.lines if line.get_label() != "vanilla"]
    assert len(series) == 3 and all(line.get_marker() not in (None, "", "None") for line in series)
    text = format_report(result)
    assert "| evs | 0.5 |" in text and "machine:" in text
    assert check_goals(result) == []  # no hieravid in this run


def test_a_plot_stopped_mid_write_leaves_the_one_before(tmp_path, check_a_picture_stopped_mid_write):
    result = run_model_bench("tiny", methods=["vanilla"], budgets=[0.5], repeats=1, warmup=0, new_tokens=2)
    path = tmp_path / "bench.svg"
    check_a_picture_stopped_mid_write(lambda: plot_report(result, path), path)


def test_the_plot_draws_unpatched_as_a_reference(tmp_path):
    result = run_model_bench("tiny", methods=["unpatched", "evs"], budgets=[0.5], repeats=1, warmup=0,
                             new_tokens=2)
    fig = plot_report(result, tmp_path / "p.png")
    unpatched = result.get("unpatched")
    for ax, y in zip(fig.axes, (unpatched.speedup, unpatched.kv_visual_bytes / 2**20)):
        lines = [line for line in ax.lines if line.get_label().startswith("unpatched")]
        assert len(lines) == 1 and list(lines[0].get_ydata()) == [y, y]
    assert "unpatched (no hieravid.apply)" in [text.get_text() for text in fig.legends[0].get_texts()]


def test_every_line_of_the_plot_is_in_view_vanilla_alone_too(tmp_path):
    for methods in (["vanilla"], ["unpatched", "evs"]):
        result = run_model_bench("tiny", methods=methods, budgets=[0.5], repeats=1, warmup=0, new_tokens=2)
        fig = plot_report(result, tmp_path / "p.png")
        for ax in fig.axes:
            bottom, top = ax.get_ylim()
            highest = max(max(line.get_ydata()) for line in ax.lines)
            assert bottom == 0 and highest < top, (methods, ax.get_title(), highest, top)


def test_a_method_spec_is_measured_under_its_own_name(capsys):
    spec = "hieravid:greedy_backend=torch"
    result = run_model_bench("tiny", methods=["vanilla", spec], budgets=[0.5], repeats=1, warmup=0, new_tokens=2)
    assert [(r.method, r.budget) for r in result.results] == [("vanilla", 1.0), (spec, 0.5)]
    assert f"| {spec} | 0.5 |" in format_report(result)
    assert main(["bench", "--shape", "tiny", "--methods", "hieravid:greedy_backend=gpu", "--quiet"]) == 2
    assert "greedy_backend must be one of" in capsys.readouterr().err


def test_cpu_memory_is_measured_in_the_warm_up_only(monkeypatch):
    """The CPU memory reset (malloc_trim) makes the next call page-fault: it runs in the warm-up round, never
    before a timed call, and the peaks come from there."""
    import hieravid.bench.models as bench_models

    resets = []
    reset = bench_models._reset_peak_rss
    monkeypatch.setattr(bench_models, "_reset_peak_rss", lambda: resets.append(1) or reset())
    result = run_model_bench("tiny", methods=["vanilla", "evs"], budgets=[0.5], repeats=2, warmup=1, new_tokens=2)
    assert len(resets) == 2  # one per (method, budget), in the one warm-up round
    if reset():  # where this kernel allows the reset, every method has a peak
        assert all(r.peak_memory_bytes is not None for r in result.results)
    assert "measured in the warm-up rounds" in result.memory_note

    resets.clear()
    result = run_model_bench("tiny", methods=["vanilla", "evs"], budgets=[0.5], repeats=2, warmup=0, new_tokens=2)
    assert len(resets) == 4 and "measured in the timed rounds" in result.memory_note  # no warm-up: no choice


_FAULTS_OF_A_LARGE_BLOCK = textwrap.dedent("""
    import resource, sys, torch
    from hieravid.bench.models import keep_freed_memory

    def faults_of_a_large_block():  # allocate, touch and free 64 MiB: above glibc's largest mmap threshold
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 << 20)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_a_large_block()
    default = faults_of_a_large_block()
    note = keep_freed_memory()
    # The first blocks after the switch can still be fresh pages: torch asks for aligned memory, which
    # need not fit the exact hole the previous block left until freed neighbours merge (3 calls at most
    # in 15 runs); from then on every block reuses freed memory.
    for _ in range(4):
        faults_of_a_large_block()
    kept = sum(faults_of_a_large_block() for _ in range(3))
    print(default, kept, note is not None)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt and getrusage's page faults")
def test_keeping_freed_memory_stops_the_page_faults_of_large_blocks():
    """With glibc's default, every 64 MiB block is fresh pages (16384 faults); once the benchmark has it keep
    freed memory (and a few blocks have come and gone), later blocks reuse freed memory. In a subprocess: the
    setting is for the process."""
    out = subprocess.run([sys.executable, "-c", _FAULTS_OF_A_LARGE_BLOCK], capture_output=True, text=True, check=True)
    default, kept, applied = out.stdout.split()
    assert applied == "True"
    pages = (64 << 20) // 4096
    assert int(default) > pages // 2  # the premise: glibc gives a block this large fresh pages each time
    assert int(kept) < pages // 20  # three blocks


def test_the_cpu_allocator_choice_is_reported(monkeypatch):
    import hieravid.bench.models as bench_models

    monkeypatch.setattr(bench_models, "_kept", None)  # as in a process where no run kept freed memory yet
    result = run_model_bench("tiny", methods=["vanilla"], repeats=1, warmup=0, new_tokens=2, cpu_malloc="default")
    assert result.allocator_note.startswith("the C library's malloc as it is")
    assert "allocator: the C library's malloc" in format_report(result)
    monkeypatch.setattr(bench_models, "_kept", "glibc malloc keeps freed memory")
    result = run_model_bench("tiny", methods=["vanilla"], repeats=1, warmup=0, new_tokens=2, cpu_malloc="default")
    assert result.allocator_note.endswith("(set by an earlier run in this process; it cannot be undone)")
    with pytest.raises(ValueError, match="cpu_malloc must be one of 'keep', 'default'"):
        run_model_bench("tiny", methods=["vanilla"], cpu_malloc="jemalloc")


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/stat")
def test_the_cpu_watch_counts_another_process():
    """A child that burns half a second of CPU while this process waits is counted in full (less
    /proc/stat's tick of 10 ms)."""
    from hieravid.bench.models import CpuWatch

    burn = "import time\nwhile time.process_time() < 0.5: pass\nprint(time.process_time())"
    watch = CpuWatch()
    start = os.times()
    child = subprocess.run([sys.executable, "-c", burn], capture_output=True, text=True, check=True)
    wall = os.times().elapsed - start.elapsed
    share = watch.others_share()
    assert share is not None
    assert share * wall * os.cpu_count() >= float(child.stdout) - 0.05


def test_the_report_judges_reliability_by_the_cpu_time_of_others(bench):
    _, report = bench
    result = ModelBenchResult.from_dict(report)
    for share, unreliable in ((0.02, False), (0.3, True)):
        result.others_cpu, result.load_average = share, [0.0, 0.0]
        line = next(l for l in format_report(result).splitlines() if l.startswith("load average"))
        assert f"took {100 * share:.1f}% of the CPUs' time" in line
        assert ("timings are unreliable" in line) == unreliable
    result.others_cpu, result.load_average = None, [2.0 * os.cpu_count(), 0.0]  # unmeasured: the load decides
    assert "timings are unreliable" in format_report(result)


def _interrupt_measurement(monkeypatch, at_call: int) -> None:
    """Ctrl-C arrives during the ``at_call``-th generate call of the benchmark."""
    import hieravid.bench.models as bench_models

    measure, calls = bench_models._measure, []

    def measure_or_stop(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench_models, "_measure", measure_or_stop)


def test_an_interrupted_bench_reports_its_complete_rounds(monkeypatch):
    # vanilla + evs: two calls per round; the fifth call is the third round's first
    _interrupt_measurement(monkeypatch, at_call=5)
    seen = []
    result = run_model_bench("tiny", methods=["vanilla", "evs"], budgets=[0.5], repeats=3, warmup=0, new_tokens=2,
                             on_round=lambda partial: seen.append(partial.repeats))
    assert seen == [1, 2]
    assert result.interrupted and (result.repeats, result.repeats_asked) == (2, 3)
    assert all(len(r.prefill_runs_ms) == 2 for r in result.results) and len(result.vision_runs_ms) == 2
    assert "INTERRUPTED: 2 of 3 timed rounds" in format_report(result)
    assert ModelBenchResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    result.interrupted = False  # as --json saves it after round 2 of a run then killed
    assert "INCOMPLETE: 2 of 3 timed rounds" in format_report(result)

    _interrupt_measurement(monkeypatch, at_call=2)  # within the first round: nothing to report
    with pytest.raises(KeyboardInterrupt):
        run_model_bench("tiny", methods=["vanilla", "evs"], budgets=[0.5], repeats=3, warmup=0, new_tokens=2)


def test_budgets_that_differ_by_rounding_are_measured_once():
    result = run_model_bench("tiny", methods=["vanilla", "evs"], budgets=[0.3, 0.1 * 3], repeats=1, warmup=0,
                             new_tokens=2)
    assert 0.1 * 3 != 0.3 and [(r.method, r.budget) for r in result.results] == [("vanilla", 1.0), ("evs", 0.3)]


def test_ctrl_c_in_the_last_rounds_save_leaves_a_complete_run():
    def save(partial):
        if partial.repeats == 2:
            raise KeyboardInterrupt  # while writing the file after the last round

    result = run_model_bench("tiny", methods=["vanilla"], budgets=[0.5], repeats=2, warmup=0, new_tokens=2,
                             on_round=save)
    assert not result.interrupted and result.repeats == 2
    assert "INTERRUPTED" not in format_report(result)


def test_an_interrupted_bench_command_keeps_its_json(monkeypatch, tmp_path, capsys):
    _interrupt_measurement(monkeypatch, at_call=3)  # in round 2: round 1 is kept
    out = tmp_path / "bench.json"
    code = main(["bench", "--shape", "tiny", "--methods", "vanilla,evs", "--budgets", "0.5", "--repeats", "2",
                 "--warmup", "0", "--new-tokens", "2", "--quiet", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 130 and "interrupted after 1 of 2 timed rounds" in captured.err
    assert "| evs | 0.5 |" in captured.out
    saved = json.loads(out.read_text())
    assert saved["interrupted"] and saved["repeats"] == 1 and not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_an_interrupted_run_whose_json_cannot_be_written_says_both(monkeypatch, capsys):
    _interrupt_measurement(monkeypatch, at_call=3)  # in round 2: round 1 is reported
    code = main(["bench", "--shape", "tiny", "--methods", "vanilla,evs", "--budgets", "0.5", "--repeats", "2",
                 "--warmup", "0", "--new-tokens", "2", "--quiet", "--json", "/dev/full"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted after 1 of 2 timed rounds" in err
    assert "--json /dev/full was not written (No space left on device): the report above is the run's only copy" in err


@pytest.mark.parametrize("earlier", [False, True])
def test_ctrl_c_before_the_first_timed_round_ends_says_nothing_was_measured(monkeypatch, tmp_path, capsys, earlier):
    _interrupt_measurement(monkeypatch, at_call=1)  # in round 1
    out = tmp_path / "bench.json"
    if earlier:
        out.write_text("{}")
    code = main(["bench", "--shape", "tiny", "--methods", "vanilla,evs", "--budgets", "0.5", "--repeats", "2",
                 "--warmup", "0", "--new-tokens", "2", "--quiet", "--json", str(out)])
    err = capsys.readouterr().err
    said = "hieravid bench: interrupted before the first timed round ended: nothing measured; --json"
    assert code == 130 and f"{said} {out} was not written" in err
    assert ("(it holds an earlier file)" in err) == earlier and out.exists() == earlier


def test_a_json_that_cannot_be_written_mid_run_loses_no_measurement(monkeypatch, tmp_path, capsys):
    # The folder takes files when the run starts; then its disk fills up: the run measures on, prints its
    # report, and ends with an error naming the file.
    import hieravid.eval.records

    def full_disk(path, value):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hieravid.eval.records, "write_json", full_disk)
    out = tmp_path / "bench.json"
    code = main(["bench", "--shape", "tiny", "--methods", "vanilla,evs", "--budgets", "0.5", "--repeats", "2",
                 "--warmup", "0", "--new-tokens", "2", "--quiet", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "| evs | 0.5 |" in captured.out
    assert captured.err.count(f"cannot write --json {out}: No space left on device") == 1  # said once
    assert f"--json {out} was not written (No space left on device)" in captured.err
    assert not out.exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_stream_that_takes_no_json_at_the_end_is_said_once_as_an_error(capsys):
    code = main(["bench", "--shape", "tiny", "--methods", "vanilla", "--repeats", "1", "--warmup", "0",
                 "--new-tokens", "2", "--quiet", "--json", "/dev/full"])
    err = capsys.readouterr().err
    assert code == 1 and "--json /dev/full was not written (No space left on device)" in err
    assert "measuring goes on" not in err  # it has ended


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_json_in_a_folder_that_takes_no_file_is_refused_before_measuring(capsys):
    # /proc: root may write there by its permissions, but no file can be made
    assert main(["bench", "--shape", "tiny", "--json", "/proc/hieravid-bench.json", "--quiet"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_big_shapes_refuse_the_cpu(capsys):
    assert main(["bench", "--shape", "qwen2-vl-7b", "--quiet"]) == 2
    assert "--allow-cpu" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("frames", "scenes", "newline", "dtype"),
    [(8, 3, False, torch.float32), (16, 4, True, torch.bfloat16), (5, 5, True, torch.float32), (6, 1, False, torch.float32)],
)
def test_planted_scenes_are_the_segments_found(frames, scenes, newline, dtype):
    """Planted scenes split the frames into equal runs that Eq. 1-2 find as segments, whatever the tower gave;
    the output keeps its structure: Qwen2-VL's tuple of (T P, D), LLaVA-OneVision's (1, T P + 1, D) whose
    trailing newline stays."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from hieravid.ops import segment_ids

    slots, dim = 12, 48
    tower = 3.0 + 0.1 * torch.randn(frames * slots + newline, dim)  # alike frames: one segment as they are
    assert int(segment_ids(tower[: frames * slots].view(frames, slots, dim)).max()) == 0
    pooled = tower.unsqueeze(0).to(dtype) if newline else (tower.to(dtype),)
    out = plant_scenes(BaseModelOutputWithPooling(pooler_output=pooled), frames, slots, scenes, seed=1)
    video = out.pooler_output if newline else out.pooler_output[0]
    assert type(out.pooler_output) is type(pooled) and video.shape == (pooled if newline else pooled[0]).shape
    assert video.dtype == dtype
    flat = video.reshape(-1, dim).float()
    if newline:
        assert torch.equal(flat[-1], tower[-1].to(dtype).float())
    x = flat[: frames * slots].view(frames, slots, dim)
    expected = [t * scenes // frames for t in range(frames)]  # equal runs in order
    assert segment_ids(x).tolist() == expected
    assert flat[: frames * slots].pow(2).mean().sqrt().item() == pytest.approx(
        tower[: frames * slots].pow(2).mean().sqrt().item() * (1 + 0.3**2) ** 0.5, rel=0.1)  # the tower's scale
    with pytest.raises(ValueError, match="scenes must be between 1 and the video's"):
        plant_scenes(BaseModelOutputWithPooling(pooler_output=pooled), frames, slots, frames + 1)


def test_the_bench_plants_scenes(monkeypatch):
    result = run_model_bench("tiny", methods=["vanilla", "hieravid"], budgets=[0.3], repeats=1, warmup=1,
                             new_tokens=2, scenes=2)
    assert result.scenes == 2 and result.get("hieravid", 0.3).segments == 2
    assert "video features: 2 planted scenes" in format_report(result)
    assert ModelBenchResult.from_dict(result.to_dict()) == result
    import hieravid.bench.models as bench_models

    monkeypatch.setattr(bench_models, "build_bench_model", lambda *a, **k: pytest.fail("built before refusing"))
    with pytest.raises(ValueError, match="video's 4 frames as the model sees them"):
        run_model_bench("tiny", scenes=5)  # 8 raw frames: 4 temporal groups


def test_weights_that_do_not_fit_are_refused_before_building(monkeypatch):
    """A 7B shape defaults to bfloat16 even on a CPU, and weights beyond the free memory are refused with
    their size and the fix, before the model is built (a CPU would be killed partway through)."""
    import hieravid.bench.models as bench_models

    assert default_dtype("qwen2-vl-7b", torch.device("cpu")) == torch.bfloat16
    assert default_dtype("mini", torch.device("cpu")) == torch.float32
    assert default_dtype("mini", torch.device("cuda")) == torch.bfloat16
    built = []
    monkeypatch.setattr(bench_models, "build_bench_model",
                        lambda shape, **kw: built.append(kw) or build_bench_model(shape, **kw))
    monkeypatch.setattr(bench_models, "_free_bytes", lambda device: 10 * 10**9)  # 10 GB free
    with pytest.raises(ValueError, match=r"qwen2-vl-7b in bfloat16 needs 16\.6 GB .* cpu has 10\.0 GB free"):
        run_model_bench("qwen2-vl-7b", allow_cpu=True)
    with pytest.raises(ValueError, match=r"in float32 needs 33\.2 GB .* use --dtype bfloat16 \(16\.6 GB\)"):
        run_model_bench("qwen2-vl-7b", allow_cpu=True, dtype=torch.float32)
    assert all(kw["device"] == "meta" for kw in built)  # only counted, never allocated
    need = sum(p.numel() * 4 for p in build_bench_model("tiny", device="meta").parameters())
    monkeypatch.setattr(bench_models, "_free_bytes", lambda device: need - 1)
    with pytest.raises(ValueError, match=rf"tiny in float32 needs {need / 1e6:.1f} MB .* has {need / 1e6:.1f} MB free"):
        run_model_bench("tiny", methods=["vanilla"], repeats=1, warmup=0, new_tokens=2)


def test_a_bad_method_option_is_refused_before_building(monkeypatch):
    """A typo in a method's options fails at once, not after the model is built (minutes at a 7B shape)."""
    import hieravid.bench.models as bench_models

    built = []
    monkeypatch.setattr(bench_models, "build_bench_model", lambda shape, **kw: built.append(shape))
    with pytest.raises(ValueError, match="exact_total must be True or False"):
        run_model_bench("tiny", methods=["vanilla", "hieravid:exact_total=nope"], repeats=1, warmup=0, new_tokens=2)
    with pytest.raises(ValueError, match="unknown option"):
        run_model_bench("tiny", methods=["vanilla", "fastv:kk=2"], repeats=1, warmup=0, new_tokens=2)
    assert built == []


def test_a_named_budget_the_decoder_cannot_reach_is_refused_before_building(monkeypatch):
    """FastV at 0.2 on 8 layers fails from the shape's config, and a greedy loop the device cannot run when it
    is compiled, both before any weights are made (only the meta device is built on) and the C library's
    allocator is set."""
    import hieravid.bench.models as bench_models

    devices, build = [], bench_models.build_bench_model

    def recorded(shape, **kw):
        devices.append(kw["device"])
        return build(shape, **kw)

    monkeypatch.setattr(bench_models, "build_bench_model", recorded)
    monkeypatch.setattr(bench_models, "keep_freed_memory", lambda: pytest.fail("malloc set before the refusal"))
    with pytest.raises(ValueError, match="cannot be reached"):
        run_model_bench("tiny", methods=["vanilla", "fastv"], budgets=[0.3, 0.2], repeats=1, warmup=0, new_tokens=2)
    with pytest.raises(ValueError, match="greedy backend 'triton' runs on CUDA tensors"):
        run_model_bench("tiny", methods=["vanilla", "hieravid:greedy_backend=triton"], budgets=[0.3], repeats=1,
                        warmup=0, new_tokens=2)
    assert devices and all(str(device) == "meta" for device in devices)


@pytest.mark.parametrize(
    ("shape", "video_tokens", "params_billions"),
    [("qwen2-vl-7b", 16 * 256, 8.29), ("llava-onevision-7b", 32 * 196 + 1, 8.03),
     ("llava-video-7b", 64 * 196 + 1, 8.03), ("mini", 8 * 256, 0.42)],
)
def test_real_shapes_build(shape, video_tokens, params_billions):
    """The real-size configs build (on the meta device: no memory) and the inputs match the tower."""
    model = build_bench_model(shape, device="meta", dtype=torch.bfloat16)
    inputs = build_bench_inputs(shape, model, device="cpu")
    video_id = model.config.video_token_id if SHAPES[shape].family == "qwen2_vl" else model.config.video_token_index
    assert int((inputs["input_ids"] == video_id).sum()) == video_tokens
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(params_billions, abs=0.01)


def test_each_method_and_budget_is_measured_once():
    result = run_model_bench("tiny", methods=["evs", "evs", "vanilla"], budgets=[0.5, 0.5], repeats=1, warmup=0,
                             new_tokens=2)
    assert [(r.method, r.budget) for r in result.results] == [("vanilla", 1.0), ("evs", 0.5)]


def test_the_baselines_of_the_overhead_goal_are_other_methods(bench):
    _, report = bench
    result = ModelBenchResult.from_dict(report)
    names = [g.name for g in check_goals(result)]
    assert "hieravid@0.3 deciding <= 1.5 x cheapest baseline" in names  # evs is a baseline
    for row in result.results:
        if row.method == "evs":
            row.method = "hieravid_topk"  # an ablation of HieraVid
    assert not [g for g in check_goals(result) if "baseline" in g.name]


def test_bad_outputs_and_devices_are_refused_before_measuring(tmp_path, capsys):
    args = ["bench", "--shape", "tiny", "--methods", "vanilla", "--repeats", "1", "--quiet"]
    assert main([*args, "--json", str(tmp_path / "missing" / "b.json")]) == 2
    assert main([*args, "--plot", str(tmp_path / "b.foo")]) == 2
    assert main([*args, "--device", "gpu"]) == 2
    assert main([*args, "--json", str(tmp_path)]) == 2  # a folder, where a file is written at the end
    out, err = capsys.readouterr()
    assert "the folder of --json" in err and "name a picture file ending in .png" in err and "unknown device" in err
    assert "is a folder: name a file in it" in err
    assert "machine:" not in out  # nothing was measured


def test_a_saved_run_is_reported_and_plotted_again(bench, tmp_path, capsys):
    out, report = bench
    newer = {**report, "from_a_later_release": 1, "results": [{**r, "new_column": 2} for r in report["results"]]}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    assert main(["bench", "--from-json", str(tmp_path / "newer.json"), "--plot", str(tmp_path / "again.png")]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == format_report(ModelBenchResult.from_dict(report)).strip()
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.json").write_text('{"results": 3}')
    assert main(["bench", "--from-json", str(tmp_path / "bad.json")]) == 2
    assert main(["bench", "--from-json", str(tmp_path / "none.json")]) == 2
    assert main(["bench", "--shape", "tiny", "--from-json", str(tmp_path / "newer.json")]) == 2
    err = capsys.readouterr().err
    assert "is not a file written by hieravid bench --json" in err and "cannot read --from-json" in err
    assert "--shape measures and --from-json reports a saved run without measuring: pass one of them" in err
    assert main(["bench"]) == 2
    assert "pass --shape to measure, or --from-json FILE" in capsys.readouterr().err
    again = ["bench", "--from-json", str(tmp_path / "newer.json")]
    assert main([*again, "--json", str(tmp_path / "copy.json"), "--methods", "evs", "--repeats", "5"]) == 2
    assert "--methods, --repeats, --json would change nothing" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text(json.dumps({**report, "results": []}))
    assert main(["bench", "--from-json", str(tmp_path / "empty.json")]) == 2
    assert "holds no measurement" in capsys.readouterr().err


def test_methods_all_benches_every_method(tmp_path):
    """``--methods all`` runs every registered method once per budget, vanilla first, each measured."""
    from hieravid.cli import _method_list
    from hieravid.methods import all_methods, available

    assert sorted(all_methods()) == available() and all_methods()[:2] == ["vanilla", "hieravid"]
    assert _method_list("evs,all,hieravid:greedy_backend=torch") == [
        "evs", *[m for m in all_methods() if m != "evs"], "hieravid:greedy_backend=torch"
    ]
    assert _method_list("all").skip_unreachable and not _method_list("evs,fastv").skip_unreachable
    out = tmp_path / "all.json"
    assert main(["bench", "--shape", "tiny", "--methods", "all", "--budgets", "0.5", "--repeats", "1",
                 "--warmup", "0", "--new-tokens", "2", "--quiet", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["method"] for r in rows] == all_methods()
    assert all(r["prefill_ms"] > 0 for r in rows)
    assert all(r["achieved_budget"] < 1 for r in rows[1:])  # every method pruned something


def test_methods_all_leaves_out_budgets_a_method_cannot_reach(tmp_path, capsys):
    """On 8 layers FastV (K = 2), PyramidDrop and DyCoke stop at 0.25: with ``all`` their 0.2 is left out
    and said so; named explicitly, the run is refused before measuring."""
    out = tmp_path / "all.json"
    args = ["bench", "--shape", "tiny", "--budgets", "0.2", "--repeats", "1", "--warmup", "0", "--new-tokens", "2",
            "--quiet"]
    assert main([*args, "--methods", "all", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [line.split(":")[0] for line in report["skipped"]] == ["fastv@0.2", "pyramiddrop@0.2", "dycoke@0.2"]
    measured = [r["method"] for r in report["results"]]
    assert "fastv" not in measured and "hieravid" in measured and "evs" in measured
    captured = capsys.readouterr()
    assert "hieravid bench: warning: not measured: fastv at budget 0.2" in captured.err
    assert "not measured (the method cannot reach the budget on this model or video):" in captured.out
    assert main([*args, "--methods", "vanilla,fastv"]) == 2
    assert "cannot be reached" in capsys.readouterr().err


def test_methods_all_leaves_out_budgets_the_video_cannot_give(tmp_path, capsys):
    """DyCoke's smallest budget depends on the video (3 frame groups: 1/3): with ``all`` its 0.3 is left out
    at its first prefill and said so, and the other methods are measured; named, it stops the command."""
    out = tmp_path / "all.json"
    args = ["bench", "--shape", "tiny", "--frames", "6", "--budgets", "0.3", "--repeats", "1", "--warmup", "0",
            "--new-tokens", "2", "--quiet"]
    assert main([*args, "--methods", "all", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [line.split(":")[0] for line in report["skipped"]] == ["dycoke@0.3"]
    measured = [r["method"] for r in report["results"]]
    assert "dycoke" not in measured and {"hieravid", "evs", "fastv"} <= set(measured)
    assert all(len(r["prefill_runs_ms"]) == 1 for r in report["results"])
    assert "hieravid bench: warning: not measured: dycoke at budget 0.3" in capsys.readouterr().err
    assert main([*args, "--methods", "vanilla,dycoke"]) == 2
    assert "every 4th frame" in capsys.readouterr().err


def test_the_default_methods_run_on_the_tiny_shape(capsys):
    """The default --methods must run on every shape: what FastV cannot reach on 8 layers is left out, warned."""
    assert main(["bench", "--shape", "tiny", "--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "| fastv | 0.3 |" in out and "| fastv | 0.1 |" not in out and "| hieravid | 0.1 |" in out
    assert "fastv" in err and "0.1" in err


def test_unpatched_takes_no_options():
    with pytest.raises(ValueError, match="unpatched .* takes no options, got 'unpatched:x=1'"):
        run_model_bench("tiny", methods=["unpatched:x=1"], repeats=1, warmup=0, new_tokens=2)


def test_a_frame_count_the_model_cannot_take_is_refused_before_building(monkeypatch):
    import hieravid.bench.models as bench_models

    built = []
    monkeypatch.setattr(bench_models, "build_bench_model", lambda shape, **kw: built.append(shape))
    with pytest.raises(ValueError, match=r"mini: frames must be a multiple of 2 \(frames per temporal group\), got 15"):
        run_model_bench("mini", frames=15, methods=["vanilla"], repeats=1, warmup=0, new_tokens=2)
    with pytest.raises(ValueError, match="frames must be >= 1"):
        run_model_bench("tiny", frames=0, methods=["vanilla"], repeats=1, warmup=0, new_tokens=2)
    assert built == []


def test_the_heap_is_grown_back_after_the_memory_rounds(monkeypatch):
    """Each CPU memory measurement trims the heap; one unmeasured vanilla call after the last warm-up round
    grows it back before the first timed call, whichever method was measured last."""
    import hieravid.bench.models as bench_models

    measure, calls = bench_models._measure, []

    def spy(model, inputs, name, budget, new_tokens, recorder, device, memory=True):
        calls.append((name, budget, memory))
        return measure(model, inputs, name, budget, new_tokens, recorder, device, memory)

    monkeypatch.setattr(bench_models, "_measure", spy)
    run_model_bench("tiny", methods=["evs"], budgets=[0.5], repeats=1, warmup=1, new_tokens=2)
    assert calls == [("vanilla", 1.0, True), ("evs", 0.5, True), ("vanilla", 1.0, False),  # warm-up, refill
                     ("evs", 0.5, False), ("vanilla", 1.0, False)]  # the timed round, rotated


def test_the_report_says_how_memory_was_measured_and_which_goals_it_checked(bench):
    _, report = bench
    result = ModelBenchResult.from_dict(report)
    assert f"peak memory: {result.memory_note}" in format_report(result).splitlines()
    assert "not checked" not in format_report(result)  # 0.3 was measured
    at_half = ModelBenchResult.from_dict(
        {**report, "results": [r for r in report["results"] if r["budget"] != 0.3]}
    )
    text = format_report(at_half)
    assert "hieravid@0.5 deciding <= 3% of vanilla prefill" in text
    assert "(not checked: the speed-up and KV goals at budget 0.3, which this run did not measure)" in text
    at_one = ModelBenchResult.from_dict(
        {**report, "results": [{**r, "budget": 1.0} for r in report["results"] if r["method"] in ("vanilla", "hieravid")][:2]}
    )
    assert not [g for g in check_goals(at_one) if "deciding" in g.name]  # nothing is decided at budget 1


def test_the_load_is_judged_per_core_of_the_machine_that_measured(bench):
    _, report = bench
    result = ModelBenchResult.from_dict(report)
    assert result.cpu_count == os.cpu_count()
    result.others_cpu, result.load_average = None, [2.0 * os.cpu_count(), 0.0]
    result.cpu_count = 64 * os.cpu_count()  # a bigger machine: the same load is light there
    assert "timings are unreliable" not in format_report(result)


class _GoneReader(io.StringIO):
    """A stdout whose reader went away (``| head`` done, ``| tee`` killed by the same Ctrl-C)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("at_call", [None, 3])
def test_a_reader_gone_away_costs_no_file_and_no_status(monkeypatch, tmp_path, at_call):
    if at_call is not None:
        _interrupt_measurement(monkeypatch, at_call=at_call)  # in round 2: round 1 is kept
    monkeypatch.setattr(sys, "stdout", _GoneReader())
    monkeypatch.setattr(sys, "stderr", _GoneReader())  # `2>&1 | tee`: both streams
    out, picture = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--shape", "tiny", "--methods", "vanilla,evs", "--budgets", "0.5", "--repeats", "2",
                 "--warmup", "0", "--new-tokens", "2", "--quiet", "--json", str(out), "--plot", str(picture)])
    assert code == (0 if at_call is None else 130)
    assert json.loads(out.read_text())["interrupted"] == (at_call is not None)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigterm_stops_a_bench_as_ctrl_c_does(monkeypatch, tmp_path, capsys):
    """``kill``, ``timeout`` and job schedulers send SIGTERM: the completed rounds are reported and saved."""
    import hieravid.bench.models as bench_models

    measure, calls = bench_models._measure, []

    def measure_or_terminate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench_models, "_measure", measure_or_terminate)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "bench.json"
    code = main(["bench", "--shape", "tiny", "--methods", "vanilla,evs", "--budgets", "0.5", "--repeats", "2",
                 "--warmup", "0", "--new-tokens", "2", "--quiet", "--json", str(out)])
    assert code == 130 and "interrupted after 1 of 2 timed rounds" in capsys.readouterr().err
    assert json.loads(out.read_text())["interrupted"]
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is gone once it returns


def test_json_and_plot_naming_one_file_are_refused(tmp_path, capsys):
    same = str(tmp_path / "bench.png")
    assert main(["bench", "--shape", "tiny", "--quiet", "--json", same, "--plot", same]) == 2
    assert "--json and --plot name the same file" in capsys.readouterr().err


@pytest.mark.parametrize("break_it, why", [
    (lambda r: {**r, "results": [{**r["results"][0], "prefill_ms": None}, *r["results"][1:]]},
     "results[0].prefill_ms is None, not float"),
    (lambda r: {**r, "results": [r["results"][0], {**r["results"][1], "speedup": None}]},
     "results[1].speedup is None, not float"),
    (lambda r: {**r, "results": [{**r["results"][0], "tokens_per_layer": ["8"]}, *r["results"][1:]]},
     "results[0].tokens_per_layer is ['8'], not list[int]"),
    (lambda r: {**r, "load_average": None}, "load_average is None, not list[float | None]"),
    (lambda r: {**r, "results": [{**r["results"][0], "tokens_per_layer": []}, *r["results"][1:]]}, "out of range"),
    (lambda r: {**r, "frame_size": [1]}, "out of range"),
    (lambda r: {**r, "results": r["results"][1:]}, "its first result is not vanilla's"),  # every speed-up's reference
    (lambda r: {**r, "results": [[1]]}, "results[0] is a JSON list, not an object"),
    (lambda r: [r], "it holds no 'results' list"),
    (lambda r: {"total_ms": 3.0}, "it holds no 'results' list"),  # a bench-ops --json file
    (lambda r: "", "it is empty"),
])
def test_a_saved_run_with_a_missing_number_is_refused_clearly(bench, tmp_path, capsys, break_it, why):
    _, report = bench
    broken = break_it(report)
    (tmp_path / "broken.json").write_text(json.dumps(broken) if broken != "" else "\n")
    assert main(["bench", "--from-json", str(tmp_path / "broken.json")]) == 2
    err = capsys.readouterr().err
    assert "is not a file written by hieravid bench --json" in err and why in err, err


def test_a_saved_run_is_reported_with_its_ratios_computed_again(bench, tmp_path, capsys):
    """The speed-ups and shares come from the medians and FLOPs in the file, not from the ratios stored beside
    them: a file whose vanilla prefill was edited reports what that prefill makes of them."""
    _, report = bench
    edited = json.loads(json.dumps(report))
    edited["results"][0]["prefill_ms"] *= 2
    for row in edited["results"]:
        row["speedup"], row["theoretical_speedup"] = 99.0, 99.0
    again = ModelBenchResult.from_dict(edited)
    original = ModelBenchResult.from_dict(report)
    for before, after in zip(original.results[1:], again.results[1:]):
        assert after.speedup == pytest.approx(2 * before.speedup)
        assert after.decide_pct_of_vanilla_prefill == pytest.approx(before.decide_pct_of_vanilla_prefill / 2)
        assert after.theoretical_speedup == pytest.approx(before.flops_vanilla_exact / before.flops_exact)
        assert after.efficiency == pytest.approx(after.speedup / after.theoretical_speedup)


def test_a_sigterm_the_parent_ignores_stays_ignored(monkeypatch, tmp_path):
    from hieravid.cli import _terminate_as_interrupt

    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.SIG_IGN)
    installed = []
    monkeypatch.setattr(signal, "signal", lambda *args: installed.append(args))
    with _terminate_as_interrupt():
        pass
    assert installed == []


def test_a_plot_that_cannot_be_written_loses_no_measurement(monkeypatch, tmp_path, capsys):
    import hieravid.bench.models as bench_models

    def full_disk(result, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench_models, "plot_report", full_disk)
    code = main(["bench", "--shape", "tiny", "--methods", "vanilla,evs", "--budgets", "0.5", "--repeats", "1",
                 "--warmup", "0", "--new-tokens", "2", "--quiet", "--plot", str(tmp_path / "b.png")])
    captured = capsys.readouterr()
    assert code == 1 and "| evs | 0.5 |" in captured.out and "No space left on device" in captured.err


def test_a_json_on_standard_output_is_one_document_with_the_report_beside_it(capfd):
    # Written once, at the end (not after each round, which a stream would take one after another), and
    # the report goes to standard error, so that the output is the JSON alone: `--json /dev/stdout | jq`.
    code = main(["bench", "--shape", "tiny", "--methods", "vanilla,evs", "--budgets", "0.5", "--repeats", "2",
                 "--warmup", "0", "--new-tokens", "2", "--quiet", "--json", "/dev/stdout"])
    captured = capfd.readouterr()
    assert code == 0
    assert json.loads(captured.out)["repeats"] == 2
    assert "| evs | 0.5 |" in captured.err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_json_into_a_named_pipe_is_written_once(tmp_path):
    import subprocess
    import sys

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = subprocess.Popen(["cat", str(pipe)], stdout=subprocess.PIPE)  # reads up to the first close
    run = subprocess.run([sys.executable, "-m", "hieravid", "bench", "--shape", "tiny", "--methods", "vanilla",
                          "--budgets", "1", "--repeats", "2", "--warmup", "0", "--new-tokens", "2", "--quiet",
                          "--json", str(pipe)], capture_output=True, text=True, timeout=120)
    out, _ = reader.communicate(timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(out)["repeats"] == 2  # the whole run's document, not the first round's
