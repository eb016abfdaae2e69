"""The ``hieravid`` command.

Subcommands:

- ``hieravid flops``: prefill FLOPs of a pruning method on a model preset (paper convention and exact).
- ``hieravid schedule``: the per-stage pruning ratios for a relative token budget.
- ``hieravid bench-ops``: time HieraVid's four-stage decision alone on features of a real model's shape.
- ``hieravid bench``: prefill latency, TTFT, decoding, memory and KV cache of every method on a model shape.
- ``hieravid run``: answer a question about a video file, pruned; tokens kept per stage, FLOPs, time.
- ``hieravid demo``: offline, a generated video answered unpruned and with HieraVid, and the picture.
- ``hieravid train-proxy``: train the small proxy VideoLLM on the synthetic suite.

Each subcommand is registered in :func:`build_parser` by a ``_add_xxx(subparsers)`` function and run by a
``_cmd_xxx(args) -> int`` function stored as the parser's ``func`` default; to add one, write both and
call the first from :func:`build_parser`. Bad input prints one line on stderr naming the fix and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from hieravid.config import DEFAULT_BUDGET
from hieravid.flops import MODEL_PRESETS, FlopsReport, compare
from hieravid.schedule import Schedule, solve_schedule

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
    return value


def _path(text: str) -> str:
    """A path option, ``~`` expanded: the shell leaves it in ``--out=~/x``."""
    return os.path.expanduser(text)


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload))


# ----------------------------------------------------------------------------------------- flops


def _add_flops(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="prefill FLOPs of a pruning method on a model preset",
        description=(
            "Prefill FLOPs of a pruning method against the unpruned model. 'paper' numbers follow the "
            "paper's Eq. 12 (visual tokens only, fractional counts); 'exact' numbers count every matrix "
            "multiplication (GQA, causal attention, SwiGLU, text tokens, LM head) with integer token counts."
        ),
    )
    parser.add_argument("--preset", required=True, choices=sorted(MODEL_PRESETS), help="model preset")
    parser.add_argument(
        "--method", default="hieravid", choices=("hieravid", "uniform"), help="pruning method (default hieravid)"
    )
    parser.add_argument(
        "--budget", type=float, required=True, help="relative token budget B in (0, 1], e.g. 0.3"
    )
    parser.add_argument(
        "--frames", type=_positive_int, default=None,
        help="override the preset's frame count (for qwen2-vl-7b: temporal groups, 2 sampled frames each)",
    )
    parser.add_argument(
        "--text-tokens", type=_non_negative_int, default=None, help="override the preset's text tokens (exact count)"
    )
    parser.add_argument(
        "--tokens-per-frame", type=_positive_int, default=None,
        help="override the preset's visual tokens per frame (for llava-video-7b: 169 as the paper counts, 196 "
             "in the Hugging Face model, which hieravid bench builds)",
    )
    parser.add_argument(
        "--attention", default="causal", choices=("causal", "dense"),
        help="exact count's attention: the n(n+1)/2 causal pairs that SDPA and flash kernels compute "
             "(default), or the dense n x n products of eager attention",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=_cmd_flops)


def _format_flops(report: FlopsReport) -> str:
    lines = [
        f"{report.preset}  method={report.method}  budget={report.budget:g}  "
        f"achieved budget={report.achieved_budget:.4f}",
        f"visual tokens {report.visual_tokens}, text tokens {report.text_tokens} (exact count only)",
        "",
        f"{'':24} {'vanilla':>11} {'pruned':>11} {'ratio':>8}",  # a space before each cell, at any width
        f"{'paper (Eq. 12) TFLOPs':24} {report.vanilla_tflops:>11.2f} {report.pruned_tflops:>11.2f}"
        f" {100 * report.ratio:>7.1f}%",
        f"{f'exact ({report.attention}) TFLOPs':24} {report.exact_vanilla_tflops:>11.2f}"
        f" {report.exact_pruned_tflops:>11.2f}"
        f" {100 * report.exact_ratio:>7.1f}%",
        "",
        f"{'stage':>5}  {'layers':>9}  {'ratio':>7}  {'tokens':>8}",
    ]
    ends = list(report.boundaries[1:]) + [len(report.tokens_per_layer)]
    for k, (start, end, ratio) in enumerate(zip(report.boundaries, ends, report.ratios), start=1):
        lines.append(
            f"{k:>5}  {f'[{start},{end})':>9}  {ratio:>7.4f}  {report.tokens_per_layer[start]:>8d}"
        )
    return "\n".join(lines)


def _cmd_flops(args: argparse.Namespace) -> int:
    """Run ``hieravid flops``."""
    report = compare(
        args.preset, args.method, args.budget, frames=args.frames, text_tokens=args.text_tokens,
        causal=args.attention == "causal", tokens_per_frame=args.tokens_per_frame,
    )
    if args.json:
        _print_json(report.to_dict())
    else:
        print(_format_flops(report))
    return 0


# -------------------------------------------------------------------------------------- schedule


def _add_schedule(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="per-stage pruning ratios for a relative token budget",
        description="Solve the per-stage pruning ratios (rho, R_2, ..., R_S) for a relative token budget.",
    )
    parser.add_argument(
        "--budget", type=float, required=True, help="relative token budget B in (0, 1], e.g. 0.3"
    )
    parser.add_argument("--layers", type=_positive_int, default=28, help="decoder layers L (default 28)")
    parser.add_argument("--stages", type=_positive_int, default=4, help="stages S (default 4)")
    parser.add_argument(
        "--no-presets", action="store_true", help="always use the solver, even at the paper's budgets"
    )
    parser.add_argument(
        "--tokens", type=_non_negative_int, default=None, help="also show integer tokens per stage for N_v"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=_cmd_schedule)


def _cmd_schedule(args: argparse.Namespace) -> int:
    """Run ``hieravid schedule``."""
    from hieravid.config import HieraVidConfig

    schedule: Schedule = solve_schedule(
        args.budget, args.layers, args.stages, use_presets=not args.no_presets,
        min_stage_ratio=HieraVidConfig().min_stage_ratio,  # HieraVid's defaults: Eq. 5 keeps at most 95%
    )
    if args.json:
        payload: dict[str, Any] = {"budget": args.budget, **schedule.to_dict()}
        if args.tokens is not None:
            payload["stage_tokens"] = schedule.stage_tokens(args.tokens)
            if args.tokens:
                payload["achieved_budget_in_whole_tokens"] = schedule.whole_token_budget(args.tokens)
        _print_json(payload)
    else:
        print(f"budget {args.budget:g}, {args.layers} layers, {args.stages} stages")
        print(schedule.describe(args.tokens))
    return 0


# ------------------------------------------------------------------------------------- bench-ops


def _add_bench_ops(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench-ops",
        help="time HieraVid's four-stage decision alone (no model) on features of a real shape",
        description=(
            "Time the whole HieraVid decision (stage-1 segmentation and merging, then relevance, keep "
            "counts and segment DPP at every in-LLM stage) on synthetic video features with planted scene "
            "cuts. The default shape is LLaVA-Video-7B's: 64 frames x 169 tokens, d = 3584."
        ),
    )
    parser.add_argument("--frames", type=_positive_int, default=64, help="frames T (default 64)")
    parser.add_argument("--slots", type=_positive_int, default=169, help="tokens per frame P (default 169)")
    parser.add_argument("--dim", type=_positive_int, default=3584, help="hidden size d (default 3584)")
    parser.add_argument("--budget", type=float, default=0.3, help="relative token budget (default 0.3)")
    parser.add_argument("--scenes", type=_positive_int, default=None,
                        help="planted scenes (default 8, or one per frame with fewer frames)")
    parser.add_argument("--repeats", type=_positive_int, default=5, help="timed runs (default 5)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--greedy-backend", choices=("auto", "torch", "numba", "triton"), default="auto",
        help="the DPP's greedy loop: auto (numba on CPU, triton on CUDA where it works, else torch), torch (a "
        "step per pick), numba (on the host) or triton (a CUDA kernel per block of picks)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=_cmd_bench_ops)


def _count(n: int, noun: str) -> str:
    """``n noun``, the noun plural unless n is 1."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _cmd_bench_ops(args: argparse.Namespace) -> int:
    """Run ``hieravid bench-ops``."""
    from hieravid.bench.ops import run_ops_bench  # imported here: the other commands need no benchmark
    from hieravid.config import HieraVidConfig

    result = run_ops_bench(
        frames=args.frames,
        slots=args.slots,
        dim=args.dim,
        budget=args.budget,
        scenes=min(8, args.frames) if args.scenes is None else args.scenes,
        repeats=args.repeats,
        device=args.device,
        config=HieraVidConfig(budget=args.budget, greedy_backend=args.greedy_backend),
        progress=None if args.json else _progress,
    )
    if args.json:
        _print_json(result.to_dict())
        return 0
    found = "nothing to decide at this budget"
    if any(result.ratios):
        found = f"{_count(result.segments_found, 'segment')} found"
    print(f"machine: {result.machine}")
    print(
        f"shape: {result.frames} frames x {result.slots} tokens, d = {result.dim}, "
        f"{_count(result.scenes, 'planted scene')} ({found}), budget {result.budget:g}, "
        f"ratios {[round(r, 4) for r in result.ratios]}, greedy loop {result.greedy_backend}"
    )
    print(f"{'stage':>5}  {'tokens after':>12}  {'median ms':>10}")
    for k, (tokens, ms) in enumerate(zip(result.tokens_per_stage, result.stage_ms), start=1):
        print(f"{k:>5}  {tokens:>12d}  {ms:>10.1f}")
    print(f"total (median of {result.repeats} runs): {result.total_ms:.1f} ms")
    return 0

# ----------------------------------------------------------------------------------------- bench


def _comma_list(text: str) -> list[str]:
    from hieravid.methods.spec import split_top_level

    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    # Commas inside brackets belong to an option: hieravid:ratios=(0.5,0.2).
    items = split_top_level(text, keep_empty=True)
    if not all(items):  # "0.3,,0.1" is more likely a typo than a wish for two budgets
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}: remove the extra comma or fill it in")
    return items


class _Methods(list):
    """The specs of ``--methods``; ``skip_unreachable`` when it said ``all`` (or is a command's default): then a
    budget a method cannot reach on the model is left out with a warning instead of stopping the run."""

    skip_unreachable = False


def _default_methods(*specs: str) -> _Methods:
    """A default ``--methods``: it must run on every shape, so it leaves out what a model cannot reach, as ``all``."""
    methods = _Methods(specs)
    methods.skip_unreachable = True
    return methods


def _method_list(text: str) -> _Methods:
    """Method specs; ``all`` stands for every registered method (:func:`hieravid.methods.all_methods`), and
    a spec named twice is kept once."""
    from hieravid.methods import all_methods

    specs = _Methods()
    for item in _comma_list(text):
        specs.skip_unreachable |= item == "all"
        for spec in all_methods() if item == "all" else [item]:
            if spec not in specs:
                specs.append(spec)
    return specs


def _budget_list(text: str) -> list[float]:
    try:
        return [float(item) for item in _comma_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated budgets such as 0.3,0.2,0.1, got {text!r}") from exc


def _add_bench(subparsers: Any) -> None:
    from hieravid.bench.shapes import SHAPE_NAMES  # names only: no torch import at parser build

    parser = subparsers.add_parser(
        "bench",
        help="prefill latency, TTFT, decoding, memory and KV cache of every method on a model shape",
        description=(
            "Build a real model architecture with random weights, then measure every method at every "
            "budget in one process, interleaved: decoder prefill time, speed-up over vanilla against the "
            "exact-FLOPs speed-up, time spent deciding, time to first token, decode time per token, peak "
            "memory and KV-cache bytes after prefill. Medians over --repeats rounds after --warmup rounds. "
            "Ctrl-C after a timed round reports the rounds completed (exit status 130)."
        ),
    )
    parser.add_argument("--shape", default=None, choices=SHAPE_NAMES,
                        help="model shape: tiny (seconds), mini (Qwen2-0.5B-shaped decoder), or a 7B shape for a GPU "
                             "(on a CPU with --allow-cpu)")
    parser.add_argument("--from-json", metavar="FILE", type=_path, default=None,
                        help="measure nothing: print the report (and --plot) of a run saved with --json")
    parser.add_argument("--frames", type=_positive_int, default=None,
                        help="raw video frames (default: the shape's; Qwen2-VL takes 2 per temporal group)")
    parser.add_argument("--methods", type=_method_list,
                        default=_default_methods("vanilla", "hieravid", "fastv", "framefusion", "evs"),
                        help="comma-separated methods (default vanilla,hieravid,fastv,framefusion,evs; 'all' = "
                             "every method; 'all' and the default leave out with a warning the budgets one cannot "
                             "reach on the model; "
                             "'unpatched' = the model without hieravid.apply); options as "
                             "name:key=value, e.g. hieravid:greedy_backend=torch")
    parser.add_argument("--budgets", type=_budget_list, default=[0.3, 0.2, 0.1],
                        help="comma-separated relative token budgets (default 0.3,0.2,0.1)")
    parser.add_argument("--device", default="cpu", help="torch device, cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights and activations (default: bfloat16 on cuda and for the 7B shapes, "
                             "float32 for tiny and mini on cpu); weights beyond the free memory are refused")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=_non_negative_int, default=2,
                        help="untimed rounds first (default 2; on CPU memory is measured in those after the first)")
    parser.add_argument("--new-tokens", type=lambda text: _int_at_least(text, 2), default=8,
                        help="greedy tokens per generate, >= 2: the decode time per token needs a second (default 8)")
    parser.add_argument("--scenes", type=_positive_int, default=None,
                        help="plant this many scenes in the video's features (random weights give the 7B towers "
                             "one segment whatever the pixels; the DPP's cost depends on the segments); default: "
                             "the tower's own output")
    parser.add_argument("--allow-cpu", action="store_true", help="run a 7B shape on the CPU anyway")
    parser.add_argument("--cpu-malloc", default="keep", choices=("keep", "default"),
                        help="on CPU: keep (default) has glibc keep freed memory for reuse, so large activations "
                             "do not page-fault afresh on every call (as on a GPU, whose caching allocator does "
                             "the same); default measures the C library as it is")
    parser.add_argument("--json", metavar="FILE", type=_path, default=None,
                        help="also write every number to FILE as JSON, rewritten after every timed round")
    parser.add_argument("--plot", metavar="FILE.png", type=_path, default=None,
                        help="also plot speed-up and visual KV cache against the budget to FILE.png")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    measuring = ("frames", "methods", "budgets", "device", "dtype", "repeats", "warmup", "new_tokens", "scenes",
                 "allow_cpu", "cpu_malloc", "json")  # what --from-json, which measures nothing, refuses
    parser.set_defaults(func=_cmd_bench, measuring_defaults={dest: parser.get_default(dest) for dest in measuring})


_PICTURES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _say(text: str, end: str = "\n", err: bool = False) -> None:
    """Print ``text`` on stdout (stderr with ``err``). A reader that went away (``| head`` done, ``| tee``
    stopped by the same Ctrl-C) ends the printing on that stream only: the command goes on, writes its
    files and keeps its own exit status."""
    try:
        print(text, end=end, file=sys.stderr if err else sys.stdout, flush=True)
    except BrokenPipeError:
        _silence(err)


def _silence(err: bool = False) -> None:
    """Send what is left for stdout (stderr with ``err``), whose reader went away, to the null device: the
    flush at interpreter exit too."""
    null = open(os.devnull, "w")  # noqa: SIM115 - open until the process ends
    if err:
        sys.stderr = null
    else:
        sys.stdout = null


def _progress(line: str) -> None:
    """A progress line of a long command, on stderr."""
    _say(line, err=True)


def _check_output(path: str | None, option: str, suffixes: Sequence[str] | None = None) -> None:
    """Refuse an output file whose folder is missing (or, with ``suffixes``, whose format is not one of
    them) before any work, not when it is written at the end."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a folder: name a file in it")
    from hieravid.files import is_stream

    if is_stream(path):  # written into, not replaced: its folder (/dev for /dev/stdout) takes no file
        if not os.access(path, os.W_OK):
            raise ValueError(f"{option} {path!r} is not writable: pick another path")
    else:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"the folder of {option} {path!r} does not exist: create it or pick another path")
        if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            raise ValueError(f"{option} {path!r} is not writable: pick another path")
        try:  # a file made there (permissions alone say yes to root, also on a read-only or special file system)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise ValueError(f"{option} {path!r} is not writable ({exc.strerror or exc}): pick another path") from None
    if suffixes is not None and os.path.splitext(path)[1].lower() not in suffixes:
        raise ValueError(f"{option} {path!r}: name a picture file ending in {', '.join(suffixes)}")


def _check_folder(path: str, option: str) -> None:
    """Refuse an output folder that cannot be made, before any work: a file in its place or above it, or
    a nearest existing folder that is not writable."""
    if not path.strip():  # Path("") is the current folder
        raise ValueError(f"{option} is empty: pass a folder")
    folder = Path(path).absolute()  # as it will be created
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if existing == folder and not folder.is_dir():
        raise ValueError(f"{option} {path!r} is a file: pass a folder")
    if not existing.is_dir():
        raise ValueError(f"{option} {path!r}: {existing} is a file, so the folder cannot be made; pass another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path!r}: {existing} is not writable; pick another folder")


def _make_folder(path: str, option: str) -> Path:
    """Create the output folder ``path`` (checked by :func:`_check_folder`), its failure a one-line error."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option} {path!r} cannot be created ({exc.strerror}): pick another folder") from None
    return folder


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run ``hieravid bench``."""
    import torch

    from hieravid.bench.models import format_report, plot_report, run_model_bench
    from hieravid.eval.records import write_json
    from hieravid.files import is_stream, writes_to_stdout

    _check_output(args.json, "--json")
    _check_output(args.plot, "--plot", _PICTURES)
    if args.json and args.plot and os.path.realpath(args.json) == os.path.realpath(args.plot):
        raise ValueError(f"--json and --plot name the same file {args.json!r}: the picture would replace the "
                         "measurements; name two files")
    if args.shape is not None and args.from_json is not None:
        raise ValueError("--shape measures and --from-json reports a saved run without measuring: pass one of them")
    if args.shape is None and args.from_json is None:
        raise ValueError("pass --shape to measure, or --from-json FILE to report a saved run")
    if args.from_json is not None:
        return _bench_from_json(args)

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)

    unsaved: list[str] = []  # why the last write of --json failed (a full disk): measuring goes on

    def save(result: Any, last: bool = False) -> None:  # after every round too (a file): a killed run keeps them
        try:
            write_json(args.json, result.to_dict())
        except OSError as exc:
            if not unsaved and not last:  # the last write's failure is said with the report
                _say(f"hieravid bench: warning: cannot write --json {args.json}: {exc.strerror or exc}; measuring "
                     "goes on, and the report is printed at the end", err=True)
            unsaved[:] = [exc.strerror or str(exc)]
        else:
            unsaved.clear()

    try:
        result = run_model_bench(
            args.shape,
            frames=args.frames,
            methods=args.methods,
            skip_unreachable=getattr(args.methods, "skip_unreachable", False),
            budgets=args.budgets,
            device=args.device,
            dtype=dtype,
            repeats=args.repeats,
            warmup=args.warmup,
            new_tokens=args.new_tokens,
            allow_cpu=args.allow_cpu,
            cpu_malloc=args.cpu_malloc,
            scenes=args.scenes,
            progress=None if args.quiet else _progress,
            # A stream (standard output, a pipe) takes one document, written at the end.
            on_round=save if args.json and not is_stream(args.json) else None,
        )
    except KeyboardInterrupt:  # before the first timed round ended (from one on, the rounds done are reported)
        untouched = ""
        if args.json and not is_stream(args.json):
            earlier = " (it holds an earlier file)" if os.path.exists(args.json) else ""
            untouched = f"; --json {args.json} was not written{earlier}"
        _say(f"hieravid bench: interrupted before the first timed round ended: nothing measured{untouched}", err=True)
        return 130
    if args.json:
        save(result, last=True)
    # Before the plot: with no --json, a plot that fails loses no measurement. Beside the JSON on standard
    # output, on standard error.
    _say(format_report(result), err=bool(args.json) and writes_to_stdout(args.json))
    if args.plot:
        plot_report(result, args.plot)
    if unsaved:
        _say(f"hieravid bench: error: --json {args.json} was not written ({unsaved[0]}): the report above is the "
             "run's only copy", err=True)
    if result.interrupted:
        _say(f"hieravid bench: interrupted after {result.repeats} of {result.repeats_asked} timed rounds; "
             "the report above is of those", err=True)
        return 130
    return 1 if unsaved else 0


def _bench_from_json(args: argparse.Namespace) -> int:
    """``hieravid bench --from-json FILE``: the report (and plot) of a saved run, e.g. one made on a GPU."""
    from hieravid.bench.models import ModelBenchResult, format_report, plot_report

    given = [dest for dest, default in args.measuring_defaults.items() if getattr(args, dest) != default]
    if given:
        flags = ", ".join("--" + dest.replace("_", "-") for dest in given)
        raise ValueError(f"--from-json reports a saved run without measuring: {flags} would change nothing; leave "
                         "them out (--plot applies)")
    try:
        text = Path(args.from_json).read_text()
        if not text.strip():
            raise ValueError("it is empty")
        result = ModelBenchResult.from_dict(json.loads(text))  # checks the type of every value it knows
        report = format_report(result) if result.results else ""
    except OSError as exc:
        raise ValueError(f"cannot read --from-json {args.from_json!r}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, KeyError, IndexError,
            AttributeError, ArithmeticError) as exc:
        raise ValueError(f"{args.from_json} is not a file written by hieravid bench --json ({exc})") from None
    if not result.results:
        raise ValueError(f"{args.from_json} holds no measurement (its results are empty): it was saved before a "
                         "timed round ended, or is not a file written by hieravid bench --json")
    _say(report)  # before the plot, which may fail to be written
    if args.plot:
        plot_report(result, args.plot)
    return 0


# ------------------------------------------------------------------------------------------ eval


def _add_eval(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="benchmark accuracy (MVBench, EgoSchema, NExT-QA, VideoMME) of every method at every budget",
        description=(
            "Answer every question of the chosen benchmarks with every method at every budget, scored as "
            "lmms-eval scores them. Each answer is appended to OUT/predictions.part<rank>.jsonl as it finishes; "
            "running the same command again resumes. At the end: OUT/predictions.jsonl, OUT/summary.json and "
            "OUT/summary.md (scores per task, average, % of vanilla, FLOPs). Run on several GPUs with "
            "`accelerate launch -m hieravid eval ...`. See the README section 'Benchmark evaluation' for the "
            "data layout."
        ),
    )
    parser.add_argument("--model", default=None,
                        help="hub id or local model directory (from_pretrained); default: the shipped proxy model")
    parser.add_argument("--tasks", type=_comma_list, default=None,
                        help="comma-separated tasks: mvbench,egoschema,nextqa_mc,nextqa_oe,videomme,videomme_sub")
    parser.add_argument("--suite", default=None,
                        help="a named list of tasks instead of --tasks: 'paper' (the six above) or 'synthetic'")
    parser.add_argument("--methods", type=_method_list, default=["vanilla", "hieravid"],
                        help="comma-separated methods (default vanilla,hieravid; 'all' = every method, leaving "
                             "out with a warning the budgets one cannot reach on the model; vanilla runs once at "
                             "budget 1); "
                             "options as name:key=value[:key=value], e.g. hieravid:relevance_sign=positive, "
                             "each spec its own row")
    parser.add_argument("--budgets", type=_budget_list, default=[0.3, 0.2, 0.1],
                        help="comma-separated relative token budgets (default 0.3,0.2,0.1)")
    parser.add_argument("--data-root", type=_path, default="data", help="folder holding the benchmarks (default ./data)")
    parser.add_argument("--num-frames", type=_positive_int, default=32,
                        help="frames per video (default 32, the paper's for LLaVA-OneVision; the paper "
                             "gives LLaVA-Video 64: pass --num-frames 64 there)")
    parser.add_argument("--out", type=_path, required=True, help="output folder (an existing one is resumed)")
    parser.add_argument("--device", default="auto",
                        help="auto (one GPU per process if CUDA is there, else CPU), cpu, cuda (default auto)")
    _add_dtype_option(parser)
    parser.add_argument("--attn-implementation", default="sdpa", choices=("sdpa", "eager"),
                        help="attention kernel (default sdpa)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=None,
                        help="tokens per answer (default: each task's lmms-eval setting)")
    parser.add_argument("--limit", type=_positive_int, default=None, help="only the first N samples of each task")
    parser.add_argument("--retry-failed", action="store_true", help="run again the samples recorded as failed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    """Run ``hieravid eval``."""
    from hieravid.eval import EvalConfig, run_eval, suite_tasks

    if (args.tasks is None) == (args.suite is None):
        raise ValueError("pass either --tasks (e.g. mvbench,videomme) or --suite (paper or synthetic)")
    tasks = args.tasks if args.tasks is not None else suite_tasks(args.suite)
    if args.device != "auto":
        from hieravid.infer import check_device

        check_device(args.device)
    _check_folder(args.out, "--out")
    config = EvalConfig(
        tasks=tasks,
        out=Path(args.out),
        model=args.model,
        methods=args.methods,
        skip_unreachable=getattr(args.methods, "skip_unreachable", False),
        budgets=args.budgets,
        data_root=Path(args.data_root),
        num_frames=args.num_frames,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
    )
    from hieravid.eval.runner import ProcessesLost

    def kept() -> bool:
        return any(part.stat().st_size for part in Path(args.out).glob("predictions*.jsonl"))  # opened empty at start

    again = f"the answers written so far are kept in {args.out}: run the same command again to go on from there"
    try:
        with _no_transformers_bars():
            summary = run_eval(config)
    except ProcessesLost as exc:  # not the command line's fault: said as what happened, with the way on
        _say(f"hieravid eval: error: {exc}; " + (again if kept() else "no answer was written"), err=True)
        return 1
    except (FileNotFoundError, RuntimeError) as exc:  # missing model files, NLTK data, pyarrow: name the fix
        raise ValueError(str(exc)) from exc
    except KeyboardInterrupt:
        if kept():
            _say(f"hieravid eval: interrupted; {again}", err=True)
        else:
            _say("hieravid eval: interrupted before any answer was written", err=True)
        return 130
    if summary is not None:
        from hieravid.eval.report import group_markdown, plot_summary
        from hieravid.eval.summary import to_markdown

        text = to_markdown(summary) + "".join("\n" + table for task in summary["tasks"]
                                              if (table := group_markdown(summary, task)))
        if any(row["scores"] for row in summary["rows"]):  # nothing to draw when every task failed to load
            plot = Path(args.out) / "scores.png"
            plot_summary(summary, plot)
            text += f"\nplot: {plot}\n"
        _say(text, end="")
        if summary["task_errors"] and len(summary["task_errors"]) == len(summary["tasks"]):
            _say("hieravid eval: error: no task could be loaded (reasons above)", err=True)
            return 1
    return 0


# ------------------------------------------------------------------------------------------ main


# ----------------------------------------------------------------------------------------- train-proxy


def _add_train_proxy(subparsers: Any) -> None:
    from hieravid.proxy.config import TrainConfig

    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train-proxy",
        help="train the small proxy VideoLLM from scratch on the synthetic suite (CPU)",
        description=(
            "Train the proxy model (a small Qwen2-VL, see hieravid.proxy.build) from scratch on freshly "
            f"generated synthetic videos. Checkpoints every {defaults.checkpoint_every} steps and at the last; "
            "--resume continues an interrupted run."
        ),
    )
    parser.add_argument("--out", type=_path, required=True, help="directory for the model, checkpoint and training log")
    parser.add_argument("--steps", type=_positive_int, default=defaults.steps, help="optimizer steps (default %(default)s)")
    parser.add_argument("--batch", type=_positive_int, default=defaults.batch, help="videos per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (default %(default)s)")
    parser.add_argument("--seed", type=_non_negative_int, default=defaults.seed, help="initial weights' seed (default %(default)s)")
    parser.add_argument("--threads", type=_non_negative_int, default=defaults.threads, help="torch threads (0: torch's own choice; default %(default)s)")
    parser.add_argument(
        "--eval-every", type=_positive_int, default=defaults.eval_every, help="steps between validation measurements (default %(default)s)"
    )
    parser.add_argument(
        "--describe", action=argparse.BooleanOptionalAction, default=defaults.describe,
        help="end each training conversation with the video's caption (default: %(default)s)",
    )
    parser.add_argument(
        "--aux-weight", type=float, default=defaults.aux_weight,
        help="weight of the per-visual-token auxiliary heads' loss (0: none; default %(default)s)",
    )
    parser.add_argument(
        "--type-weight", type=float, default=defaults.type_weight,
        help="weight of the question-type head's loss at each answer position (0: none; default %(default)s)",
    )
    parser.add_argument(
        "--summary-weight", type=float, default=defaults.summary_weight,
        help="weight of the video-summary heads' loss at <|vision_end|> and at each answer position (0: none; default %(default)s)",
    )
    parser.add_argument(
        "--curriculum", type=_non_negative_int, default=defaults.curriculum,
        help="steps between unlocking the question types one by one (0: all types from the start)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_cmd_train_proxy)


def _cmd_train_proxy(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hieravid.proxy.train import TrainConfig, train

    config = TrainConfig(
        steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads, describe=args.describe,
        aux_weight=args.aux_weight, type_weight=args.type_weight, eval_every=args.eval_every, curriculum=args.curriculum,
        summary_weight=args.summary_weight,
    )
    _check_folder(args.out, "--out")
    console = Console(stderr=True)

    def show(entry: dict) -> None:
        scores = " ".join(f"{k} {v:.2f}" for k, v in entry["validation"].items())
        console.print(f"step {entry['step']}: loss {entry['loss']:.3f}, validation {scores}", soft_wrap=True)

    from hieravid.proxy.card import write_card

    try:
        with _no_transformers_bars():
            result = train(args.out, config, resume=args.resume, log=show, progress=not args.json)
        with console.status("measuring the test split for CARD.md"), _no_transformers_bars():
            write_card(args.out)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from exc
    except KeyboardInterrupt:
        if (Path(args.out) / "checkpoint.pt").exists():
            _say(f"hieravid train-proxy: interrupted; {args.out}/checkpoint.pt holds the last checkpoint (every "
                 f"{config.checkpoint_every} steps): run the same command with --resume to go on", err=True)
        else:
            _say(f"hieravid train-proxy: interrupted before the first checkpoint (at step "
                 f"{min(config.checkpoint_every, config.steps)}): nothing to resume; run the same command again, "
                 "without --resume", err=True)
        return 130
    if args.json:
        _print_json(result)
    else:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in result["validation"].items())
        print(f"trained {result['steps']} steps in {result['train_seconds'] / 60:.1f} min -> {args.out} (see CARD.md)")
        print(f"validation accuracy: {scores}")
    return 0


# ------------------------------------------------------------------------------------------ run, demo

DEMO_NAME = "hieravid-demo"  # the demo writes DEMO_NAME.mp4 (the sample video) and DEMO_NAME.png (the picture)


def _add_run(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="answer a question about a video file with a pruned model; print what was kept and the time saved",
        description=(
            "Decode VIDEO (PyAV), sample --num-frames frames evenly, answer --question with the model pruned by "
            "--method at --budget, and print the visual tokens kept at each stage, the prefill FLOPs against the "
            "unpruned model and the prefill time. --compare also answers with the unpruned model (vanilla) and "
            "prints both answers and the prefill speed-up; --viz writes a picture of what was merged, kept and "
            "dropped. The default model is the small proxy shipped with hieravid (offline); --model takes any "
            "supported Hugging Face model id or directory."
        ),
    )
    parser.add_argument("video", type=_path, help="video file (anything FFmpeg decodes: .mp4, .mkv, .webm, ...)")
    parser.add_argument("--question", "-q", required=True, help="the question to ask about the video")
    parser.add_argument("--model", default=None,
                        help="hub id or local model directory (from_pretrained); default: the shipped proxy model")
    parser.add_argument("--method", default="hieravid",
                        help="pruning method (default hieravid; 'vanilla' prunes nothing); options as "
                             "name:key=value[:key=value], e.g. hieravid:segmentation=none")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"relative token budget in (0, 1]: visual tokens kept, averaged over layers (default "
                             f"{DEFAULT_BUDGET:g}; vanilla keeps every token)")
    parser.add_argument("--num-frames", type=_positive_int, default=32, help="frames sampled from the video (default 32)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=16, help="tokens generated (default 16)")
    parser.add_argument("--compare", action="store_true", help="also answer unpruned (vanilla) and print the speed-up")
    parser.add_argument("--viz", metavar="FILE.png", type=_path, default=None, help="write the picture of the decisions to FILE.png")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _add_dtype_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=_cmd_run)


def _add_demo(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="offline demo: a generated video, answered unpruned and with HieraVid, and the picture",
        description=(
            f"Generate a synthetic test video with a multiple-choice question, write it to OUT/{DEMO_NAME}.mp4 "
            "and decode it back, answer it with the unpruned model (vanilla) and with HieraVid, print both "
            f"answers, the correct one and the timings, and draw what HieraVid kept to OUT/{DEMO_NAME}.png. "
            "Needs no network and no arguments (the shipped proxy model)."
        ),
    )
    parser.add_argument("--out", type=_path, default=".", help="folder for the video and the picture (default: the current one)")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="which synthetic test sample (default 0)")
    parser.add_argument("--budget", type=float, default=0.3, help="HieraVid's relative token budget (default 0.3)")
    parser.add_argument("--model", default=None,
                        help="hub id or local model directory; default: the shipped proxy model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _add_dtype_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=_cmd_demo)


def _status(enabled: bool) -> Any:
    """``status(text)``: a context manager showing a spinner with ``text`` on stderr (rich; silent when
    stderr is not a terminal or ``enabled`` is False)."""
    from contextlib import nullcontext

    from rich.console import Console

    console = Console(stderr=True)

    def status(text: str) -> Any:
        return console.status(text) if enabled else nullcontext()

    return status


def _add_dtype_option(parser: argparse.ArgumentParser) -> None:
    """``--dtype`` of the commands that load a checkpoint with :func:`hieravid.infer.load_model`."""
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="model weights (default: the checkpoint's)")


def _model_fields(loaded: Any, device: str) -> dict[str, Any]:
    """What ``run --json`` and ``demo --json`` say of the model they loaded."""
    return {"model": loaded.name, "family": loaded.family, "device": device,
            "dtype": str(loaded.model.dtype).removeprefix("torch.")}


def _load(name: str | None, device: str, dtype: str = "auto") -> Any:
    """:func:`hieravid.infer.load_model` with its failures as one-line ``ValueError`` s naming the fix."""
    from hieravid.infer import check_device, load_model

    check_device(device)
    if name is not None and not name.strip():
        raise ValueError("--model is empty: pass a hub id or a model directory, or leave it out for the shipped proxy")
    try:
        with _no_transformers_bars():  # our own status line says what is loading
            return load_model(name, device=device, dtype=dtype)
    except (FileNotFoundError, ImportError) as exc:  # no proxy weights, no config.json, no torchvision
        raise ValueError(str(exc)) from exc
    except OSError as exc:  # not on the hub, no network
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"could not load model {name!r}: {first} (pass a local directory saved with save_pretrained, or a hub "
            "id reachable from this machine)"
        ) from exc


@contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """transformers' own progress bars ("Loading weights", "Writing model shards") off for the while: the
    command's bar or status line says what is going on, and theirs would break its lines."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _read(path: str, num_frames: int) -> Any:
    """:func:`hieravid.video.read_video`, a missing file as a ``ValueError``."""
    from hieravid.video import read_video

    try:
        return read_video(path, num_frames)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from exc
    except OSError as exc:  # not allowed to read it, or its folder
        raise ValueError(f"cannot read video {path!r}: {exc.strerror or exc}") from exc


def _stages(tokens_per_layer: list[int]) -> list[dict[str, int]]:
    """The layers where the visual tokens change (layer 0 always), with the tokens entering them."""
    return [
        {"layer": layer, "tokens": n}
        for layer, n in enumerate(tokens_per_layer)
        if layer == 0 or n != tokens_per_layer[layer - 1]
    ]


def _result(method: str, budget: float, answer: Any) -> dict[str, Any]:
    """One answer as JSON: text, tokens per stage, FLOPs ratios, seconds."""
    stats = answer.stats
    pruned = stats is not None and stats.pruned
    tokens = stats.per_sample_tokens_per_layer[0] if pruned else []
    return {
        "method": method,
        "budget": budget,
        "answer": answer.text,
        "visual_tokens": stats.visual_tokens[0] if pruned else 0,
        "tokens_per_layer": tokens,
        "stages": _stages(tokens) if tokens else [],
        "segments": stats.per_sample_segments[0] if pruned else None,
        "achieved_budget": stats.achieved_budget if pruned else 1.0,
        "flops_ratio": stats.flops_ratio if stats is not None else 1.0,
        "exact_flops_ratio": stats.flops.exact_ratio if stats is not None else 1.0,
        "prefill_seconds": answer.prefill_seconds,
        "decide_seconds": stats.decide_seconds if stats is not None else 0.0,
        # decision point (decoder layer the decision was made before; 0: before the LLM) -> seconds
        "decide_seconds_by_layer": (
            {str(layer): s for layer, s in stats.decide_seconds_by_layer.items()} if stats is not None else {}
        ),
        "vision_seconds": answer.vision_seconds,
        "total_seconds": answer.total_seconds,
        "new_tokens": answer.new_tokens,
        "input_tokens": answer.input_tokens,
    }


def _format_result(result: dict[str, Any]) -> str:
    name = result["method"] if result["method"] == "vanilla" else f"{result['method']}, budget {result['budget']:g}"
    lines = [name, f"  answer         {result['answer']!r}"]
    if result["method"] != "vanilla" and result["stages"]:
        flow = f"{result['visual_tokens']}"
        for stage in result["stages"]:
            if stage["tokens"] != result["visual_tokens"] or stage["layer"] > 0:
                flow += f" -> {stage['tokens']} (layer {stage['layer']})"
        if result["segments"]:
            flow += f"; {result['segments']} segment{'s' if result['segments'] != 1 else ''}"
        lines.append(f"  visual tokens  {flow}")
        lines.append(f"  kept           {result['achieved_budget']:.3f} of the visual tokens, averaged over layers")
        lines.append(
            f"  FLOPs          {100 * result['flops_ratio']:.1f}% of vanilla (Eq. 12, visual tokens), "
            f"{100 * result['exact_flops_ratio']:.1f}% exact (all matmuls)"
        )
    elif result["visual_tokens"]:
        lines.append(f"  visual tokens  {result['visual_tokens']} in every layer")
    deciding = f" (deciding {result['decide_seconds']:.3f} s)" if result["method"] != "vanilla" else ""
    lines.append(
        f"  time           prefill {result['prefill_seconds']:.3f} s{deciding}, vision {result['vision_seconds']:.3f} s, "
        f"total {result['total_seconds']:.2f} s for {result['new_tokens']} tokens"
    )
    return "\n".join(lines)


# How far below its budget a run may keep before the command says so (relative): whole-token counts per
# segment or frame always land a little off it.
_BUDGET_SHORTFALL = 0.15


def _warn_if_far_below_budget(method: str, result: dict[str, Any]) -> None:
    """Warn when HieraVid (or an ablation) kept far fewer visual tokens than its budget: its per-segment counts,
    rounded down (Eq. 5), add up far from the budget on a video of few tokens per segment, which
    ``exact_total=True`` tops up. Not when its ``ratios`` fix the schedule whatever the budget, nor for other
    methods, whose schedules fall short by design where they do (PruneVid on a static video). Keeping more
    than the budget has its own warning where it happens: stage 1's merge cap."""
    from hieravid.methods import parse_method
    from hieravid.warning import HieravidWarning

    kept, budget = result["achieved_budget"], result["budget"]
    name, options = parse_method(method)
    hieravid = name == "hieravid" or name.startswith("hieravid_")  # and its ablations
    if not hieravid or "ratios" in options or options.get("exact_total") is True or not result["stages"]:
        return
    if kept >= (1.0 - _BUDGET_SHORTFALL) * budget:
        return
    given = "set exact_total=True in --method" if "exact_total" in options else f"pass --method {method}:exact_total=True"
    fix = f"{given} to keep the budget's total, or give the video more frames or pixels (more tokens per segment)"
    segments = f" in {result['segments']} segments" if result["segments"] else ""
    warnings.warn(
        f"{name} kept {kept:.3f} of the visual tokens for budget {budget:g} (averaged over layers): its token "
        f"counts, whole numbers rounded down, add up far below the budget on {result['visual_tokens']} visual "
        f"tokens{segments}; {fix}",
        HieravidWarning, stacklevel=2,
    )


def _speedup(vanilla: dict[str, Any], pruned: dict[str, Any]) -> float:
    """Prefill seconds of vanilla / of the pruned run."""
    return vanilla["prefill_seconds"] / pruned["prefill_seconds"] if pruned["prefill_seconds"] > 0 else float("nan")


def _format_speedup(method: str, speedup: float, pruned: dict[str, Any]) -> str:
    line = f"prefill speed-up of {method} over vanilla: {speedup:.2f}x"
    if pruned.get("flops_ratio", 0.0) >= 1.0:  # nothing was pruned: the two prefills did the same work
        return line + " (nothing was pruned at this budget: the difference is noise)"
    if speedup < 1.0:
        line += (
            f"\nnote: deciding took {pruned['decide_seconds']:.3f} s of the {pruned['prefill_seconds']:.3f} s prefill; "
            "on a model this small that costs more than the pruned layers save (the FLOPs ratio is what scales)"
        )
    return line


def _answer_all(
    loaded: Any, video: Any, question: str, runs: list[tuple[str, float]], trace_method: str | None,
    status: Any, max_new_tokens: int = 16,
) -> dict[str, tuple[dict[str, Any], Any]]:
    """Answer with each ``(method, budget)`` after untimed warm-up calls (first-call overhead of the model
    and of each pruning method's operations; the pruned calls warm up the model too, so vanilla gets its
    own only when nothing is pruned); the run of ``trace_method`` records its trace. Returns per method
    its JSON result and its ``Answer``."""
    from hieravid.bench.models import CpuWatch
    from hieravid.infer import answer

    common = dict(timestamps_s=video.timestamps_s, source_fps=video.fps)
    warmups = [(m, b) for m, b in runs if m != "vanilla"] or [("vanilla", 1.0)]
    with status(f"Warming up {loaded.name} ..."):
        for method, budget in warmups:
            answer(loaded, video.frames, question, method=method, budget=budget, max_new_tokens=1, **common)
    out: dict[str, tuple[dict[str, Any], Any]] = {}
    watch = CpuWatch()
    for method, budget in runs:
        label = method if method == "vanilla" else f"{method} at budget {budget:g}"
        with status(f"Answering with {label} ..."):
            ans = answer(loaded, video.frames, question, method=method, budget=budget,
                         max_new_tokens=max_new_tokens, trace=method == trace_method, **common)
        out[method] = (_result(method, budget, ans), ans)
    if loaded.device.type == "cpu":
        watch.warn_if_busy()
    return out


def _picture(path: str, video: Any, ans: Any, budget: float, title: str, notes: list[str]) -> list[str]:
    """Draw ``ans.trace`` over the video's frames to ``path``; returns the panel titles."""
    from hieravid.viz import render_decisions  # matplotlib only when a picture is asked for

    picture = render_decisions(
        path, video.frames, ans.trace, budget=budget, title=title, notes=notes,
        frame_labels=[f"{t:.1f}s" for t in video.timestamps_s],
        flops_ratio=ans.stats.flops_ratio if ans.stats is not None else None,
    )
    return picture.panels


def _video_dict(video: Any) -> dict[str, Any]:
    return {
        "path": video.path, "num_frames": video.num_frames, "source_frames": video.source_frames,
        "fps": video.fps, "duration_s": video.duration_s, "height": video.height, "width": video.width,
    }


def _cmd_run(args: argparse.Namespace) -> int:
    """Run ``hieravid run``."""
    from hieravid.config import check_budget

    question = args.question.strip()
    if not question:
        raise ValueError("the question is empty: pass the text to ask with --question \"...\"")
    budget = None if args.budget is None else check_budget(args.budget)
    from hieravid.methods import build, method_name

    build(args.method, budget)  # an unknown method or option fails now, before decoding and loading
    if method_name(args.method) == "vanilla":
        args.method = "vanilla"  # as named, blanks and all, it would not be told apart from a pruning method
    budget = DEFAULT_BUDGET if budget is None else budget
    _check_output(args.viz, "--viz", _PICTURES)
    status = _status(not args.json)
    with status(f"Decoding {args.video} ..."):
        video = _read(args.video, args.num_frames)
    with status(f"Loading {args.model or 'the shipped proxy model'} ..."):
        loaded = _load(args.model, args.device, args.dtype)
    if args.method == "vanilla":
        budget = 1.0  # vanilla keeps every token whatever --budget says
    runs = ([("vanilla", 1.0)] if args.compare and args.method != "vanilla" else []) + [(args.method, budget)]
    results = _answer_all(loaded, video, question, runs, args.method if args.viz else None, status,
                          args.max_new_tokens)
    main_result, main_answer = results[args.method]
    _warn_if_far_below_budget(args.method, main_result)
    payload: dict[str, Any] = {
        "video": _video_dict(video), "question": question, **_model_fields(loaded, args.device),
        "results": [r for r, _ in results.values()],
    }
    if "vanilla" in results and args.method != "vanilla":
        payload["prefill_speedup"] = _speedup(results["vanilla"][0], main_result)
    if args.viz:
        notes = [f"question: {' '.join(question.split())}"]
        notes += [f"{r['method']}: {r['answer']!r}, prefill {r['prefill_seconds']:.3f} s" for r, _ in results.values()]
        with status(f"Drawing {args.viz} ..."):
            payload["viz_panels"] = _picture(args.viz, video, main_answer, budget,
                                             f"{args.method} at budget {budget:g} on {loaded.name}", notes)
        payload["viz"] = args.viz
    if args.json:
        _print_json({**payload, "warnings": args.warnings})
        return 0
    repeated = " (frames repeated: the video has fewer)" if video.num_frames > video.source_frames else ""
    print(f"video     {video.path}: {video.num_frames} of {video.source_frames} frames{repeated} "
          f"({video.fps:.2f} fps, {video.duration_s:.2f} s), {video.width}x{video.height}")
    print(f"model     {loaded.name} ({loaded.family}) on {args.device}")
    print(f"question  {' '.join(question.split())}")
    for result, _ in results.values():
        print()
        print(_format_result(result))
    if "prefill_speedup" in payload:
        print("\n" + _format_speedup(args.method, payload["prefill_speedup"], main_result))
    if args.viz:
        print(f"picture   {args.viz}")
    return 0


def _letter(text: str, letters: Sequence[str]) -> str | None:
    """The option letter an answer starts with ('B', 'B.', '(B) circle'), or None."""
    head = text.strip().lstrip("(").upper()
    return head[0] if head and head[0] in letters and (len(head) == 1 or not head[1].isalpha()) else None


def _cmd_demo(args: argparse.Namespace) -> int:
    """Run ``hieravid demo``."""
    from hieravid.config import check_budget
    from hieravid.synthetic import LETTERS, generate_sample
    from hieravid.video import write_test_video

    budget = check_budget(args.budget)
    _check_folder(args.out, "--out")
    for name, what in ((f"{DEMO_NAME}.mp4", "video"), (f"{DEMO_NAME}.png", "picture")):
        if (Path(args.out) / name).is_dir():
            raise ValueError(f"--out {args.out!r} holds a folder named {name}, where the demo writes its {what}: "
                             "move it, or pick another --out")
    status = _status(not args.json)
    with status(f"Loading {args.model or 'the shipped proxy model'} ..."):  # first: a missing model writes nothing
        loaded = _load(args.model, args.device, args.dtype)
    with status("Generating a synthetic test video ..."):
        out = _make_folder(args.out, "--out")
        sample = generate_sample(args.seed, "test")
        video_path = out / f"{DEMO_NAME}.mp4"
        write_test_video(video_path, sample.frames, fps=max(1, int(round(sample.fps))))
        video = _read(str(video_path), int(sample.frames.shape[0]))  # the real path: decode the file back
    results = _answer_all(loaded, video, sample.question, [("vanilla", 1.0), ("hieravid", budget)], "hieravid", status)
    vanilla, pruned = results["vanilla"][0], results["hieravid"][0]
    letters = LETTERS[: len(sample.options)]
    for result in (vanilla, pruned):
        result["correct"] = _letter(result["answer"], letters) == sample.answer
    speedup = _speedup(vanilla, pruned)
    picture_path = out / f"{DEMO_NAME}.png"
    notes = [
        "question: " + "  ".join(line.strip() for line in sample.question.splitlines()),
        f"correct answer: {sample.answer} ({sample.answer_text})",
        f"vanilla:  {vanilla['answer']!r} ({'right' if vanilla['correct'] else 'wrong'}), prefill "
        f"{vanilla['prefill_seconds']:.3f} s, {vanilla['visual_tokens']} visual tokens in every layer",
        f"hieravid: {pruned['answer']!r} ({'right' if pruned['correct'] else 'wrong'}), prefill "
        f"{pruned['prefill_seconds']:.3f} s ({speedup:.2f}x), FLOPs {100 * pruned['flops_ratio']:.1f}% of vanilla",
    ]
    with status(f"Drawing {picture_path} ..."):
        panels = _picture(str(picture_path), video, results["hieravid"][1], budget,
                          f"HieraVid at budget {budget:g}: synthetic test video {args.seed}, {sample.qtype} question",
                          notes)
    payload = {
        "sample": {"split": "test", "index": args.seed, "qtype": sample.qtype, "question": sample.question,
                   "options": sample.options, "answer": sample.answer, "answer_text": sample.answer_text},
        "video": _video_dict(video), **_model_fields(loaded, args.device),
        "results": [vanilla, pruned], "prefill_speedup": speedup,
        "picture": str(picture_path), "viz_panels": panels,
    }
    if args.json:
        _print_json({**payload, "warnings": args.warnings})
        return 0
    print(f"video     {video_path} ({video.num_frames} frames, {video.duration_s:.1f} s, synthetic test sample "
          f"{args.seed})")
    print(f"model     {loaded.name} ({loaded.family}) on {args.device}")
    print("question  " + sample.question.replace("\n", "\n          "))
    print(f"correct   {sample.answer} ({sample.answer_text})")
    for result in (vanilla, pruned):
        print()
        print(_format_result(result) + f"\n  correct        {'yes' if result['correct'] else 'no'}")
    print("\n" + _format_speedup("hieravid", speedup, pruned))
    print(f"picture   {picture_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``hieravid`` argument parser with one subparser per subcommand."""
    from hieravid import __version__

    parser = argparse.ArgumentParser(
        prog="hieravid", description="Hierarchical visual-token pruning for fast video LLMs."
    )
    parser.add_argument("--version", action="version", version=f"hieravid {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_flops(subparsers)
    _add_schedule(subparsers)
    _add_bench_ops(subparsers)
    _add_bench(subparsers)
    _add_run(subparsers)
    _add_demo(subparsers)
    _add_train_proxy(subparsers)
    _add_eval(subparsers)
    return parser


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    """Exit through the subcommand's parser, naming its options nearest each unknown one (``run`` and
    ``eval`` spell it ``--num-frames``, ``bench`` ``--frames``)."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    options = [o for action in sub._actions for o in action.option_strings]
    hints = []
    for arg in unknown:
        near = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1, cutoff=0.6) if arg.startswith("-") else []
        if near:
            hints.append(f"{arg.split('=', 1)[0]}: did you mean {near[0]}?")
    sub.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else ""))


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM (``kill``, ``timeout``, a job scheduler) stops it as Ctrl-C does: it
    reports and keeps what it finished. Signals reach the main thread only, and a SIGTERM the parent
    process ignores stays ignored (as Python leaves an ignored SIGINT)."""
    current = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or current in (None, signal.SIG_IGN):
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hieravid`` command; returns the process exit code (2 on bad input)."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said by the subcommand, with its usage and the option it has nearest each
            _refuse_unknown(parser, args.command, unknown)
    except SystemExit as exc:  # argparse already printed usage and the error on stderr
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    except KeyboardInterrupt:  # while an option's check imports what it needs (torch, for --methods)
        _say("hieravid: interrupted", err=True)
        return 130
    args.warnings = []  # what the command warned about, for the --json answers that carry them

    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        args.warnings.append(str(message))
        _say(f"hieravid {args.command}: warning: {message}", err=True)

    try:
        with warnings.catch_warnings(), _terminate_as_interrupt():  # both undone when the command is done
            warnings.showwarning = show
            return int(args.func(args))
    except BrokenPipeError:  # stdout piped into e.g. `head`, which stopped reading (stderr lines go by _say)
        _silence()
        return 0
    except ValueError as exc:  # our validators name the bad value and the fix
        _say(f"hieravid {args.command}: error: {exc}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say(f"hieravid {args.command}: interrupted", err=True)
        return 130
    except OSError as exc:  # a file that could not be written or read mid-way (a full disk, permissions)
        _say(f"hieravid {args.command}: error: {exc}", err=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
