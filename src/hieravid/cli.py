"""The ``hieravid`` command.

Subcommands:

- ``hieravid flops``: prefill FLOPs of a pruning method on a model preset (paper convention and exact).
- ``hieravid schedule``: the per-stage pruning ratios for a relative token budget.
- ``hieravid bench-ops``: time HieraVid's four-stage decision alone on features of a real model's shape.
- ``hieravid bench``: prefill latency, TTFT, decoding, memory and KV cache of every method on a model shape.
- ``hieravid train-proxy``: train the small proxy VideoLLM on the synthetic suite.

Each subcommand is registered in :func:`build_parser` by a ``_add_xxx(subparsers)`` function and run by a
``_cmd_xxx(args) -> int`` function stored as the parser's ``func`` default; to add one, write both and
call the first from :func:`build_parser`. Bad input prints one line on stderr naming the fix and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from hieravid.flops import MODEL_PRESETS, FlopsReport, compare
from hieravid.schedule import Schedule, solve_schedule

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


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
            "multiplication (GQA, SwiGLU, text tokens, LM head) with integer token counts."
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
        "--frames", type=_positive_int, default=None, help="override the preset's frame count"
    )
    parser.add_argument(
        "--text-tokens", type=_non_negative_int, default=None, help="override the preset's text tokens (exact count)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=_cmd_flops)


def _format_flops(report: FlopsReport) -> str:
    lines = [
        f"{report.preset}  method={report.method}  budget={report.budget:g}  "
        f"achieved budget={report.achieved_budget:.4f}",
        f"visual tokens {report.visual_tokens}, text tokens {report.text_tokens} (exact count only)",
        "",
        f"{'':24}{'vanilla':>12}{'pruned':>12}{'ratio':>9}",
        f"{'paper (Eq. 12) TFLOPs':24}{report.vanilla_tflops:>12.2f}{report.pruned_tflops:>12.2f}"
        f"{100 * report.ratio:>8.1f}%",
        f"{'exact TFLOPs':24}{report.exact_vanilla_tflops:>12.2f}{report.exact_pruned_tflops:>12.2f}"
        f"{100 * report.exact_ratio:>8.1f}%",
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
        args.preset, args.method, args.budget, frames=args.frames, text_tokens=args.text_tokens
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
    schedule: Schedule = solve_schedule(
        args.budget, args.layers, args.stages, use_presets=not args.no_presets
    )
    if args.json:
        payload: dict[str, Any] = {"budget": args.budget, **schedule.to_dict()}
        if args.tokens is not None:
            payload["stage_tokens"] = schedule.stage_tokens(args.tokens)
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
    parser.add_argument("--scenes", type=_positive_int, default=8, help="planted scenes (default 8)")
    parser.add_argument("--repeats", type=_positive_int, default=5, help="timed runs (default 5)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=_cmd_bench_ops)


def _cmd_bench_ops(args: argparse.Namespace) -> int:
    """Run ``hieravid bench-ops``."""
    from hieravid.bench.ops import run_ops_bench  # imported here: the other commands need no benchmark

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    result = run_ops_bench(
        frames=args.frames,
        slots=args.slots,
        dim=args.dim,
        budget=args.budget,
        scenes=args.scenes,
        repeats=args.repeats,
        device=args.device,
        progress=not args.json,
    )
    if args.json:
        _print_json(result.to_dict())
        return 0
    print(f"machine: {result.machine}")
    print(
        f"shape: {result.frames} frames x {result.slots} tokens, d = {result.dim}, {result.scenes} planted "
        f"scenes ({result.segments_found} segments found), budget {result.budget:g}, "
        f"ratios {[round(r, 4) for r in result.ratios]}"
    )
    print(f"{'stage':>5}  {'tokens after':>12}  {'median ms':>10}")
    for k, (tokens, ms) in enumerate(zip(result.tokens_per_stage, result.stage_ms), start=1):
        print(f"{k:>5}  {tokens:>12d}  {ms:>10.1f}")
    print(f"total (median of {result.repeats} runs): {result.total_ms:.1f} ms")
    return 0

# ----------------------------------------------------------------------------------------- bench


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


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
            "memory and KV-cache bytes after prefill. Medians over --repeats rounds after --warmup rounds."
        ),
    )
    parser.add_argument("--shape", required=True, choices=SHAPE_NAMES,
                        help="model shape: tiny (seconds), mini (Qwen2-0.5B-shaped decoder), or a 7B shape for a GPU")
    parser.add_argument("--frames", type=_positive_int, default=None,
                        help="raw video frames (default: the shape's; Qwen2-VL takes 2 per temporal group)")
    parser.add_argument("--methods", type=_comma_list, default=["vanilla", "hieravid", "fastv", "framefusion", "evs"],
                        help="comma-separated methods (default vanilla,hieravid,fastv,framefusion,evs; "
                             "'unpatched' = the model without hieravid.apply)")
    parser.add_argument("--budgets", type=_budget_list, default=[0.3, 0.2, 0.1],
                        help="comma-separated relative token budgets (default 0.3,0.2,0.1)")
    parser.add_argument("--device", default="cpu", help="torch device, cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights and activations (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=_non_negative_int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--new-tokens", type=_positive_int, default=8,
                        help="greedy tokens per generate, >= 2 (default 8)")
    parser.add_argument("--allow-cpu", action="store_true", help="run a 7B shape on the CPU anyway")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write every number to FILE as JSON")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="also plot speed-up and visual KV cache against the budget to FILE.png")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run ``hieravid bench``."""
    import torch

    from hieravid.bench.models import format_report, plot_report, run_model_bench

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_model_bench(
        args.shape,
        frames=args.frames,
        methods=args.methods,
        budgets=args.budgets,
        device=args.device,
        dtype=dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        new_tokens=args.new_tokens,
        allow_cpu=args.allow_cpu,
        progress=None if args.quiet else progress,
    )
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=1)
    if args.plot:
        plot_report(result, args.plot)
    return 0


# ------------------------------------------------------------------------------------------ main


# ----------------------------------------------------------------------------------------- train-proxy


def _add_train_proxy(subparsers: Any) -> None:
    from hieravid.proxy.train import TrainConfig

    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train-proxy",
        help="train the small proxy VideoLLM from scratch on the synthetic suite (CPU)",
        description=(
            "Train the proxy model (a small Qwen2-VL, see hieravid.proxy.build) from scratch on freshly "
            "generated synthetic videos. Checkpoints every few steps; --resume continues an interrupted run. "
            "The defaults made the shipped model."
        ),
    )
    parser.add_argument("--out", required=True, help="directory for the model, checkpoint and training log")
    parser.add_argument("--steps", type=_positive_int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch", type=_positive_int, default=defaults.batch, help="videos per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--seed", type=_non_negative_int, default=defaults.seed, help="initial weights' seed")
    parser.add_argument("--threads", type=_non_negative_int, default=0, help="torch threads (0: default)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_cmd_train_proxy)


def _cmd_train_proxy(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hieravid.proxy.train import TrainConfig, train

    config = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads)
    console = Console(stderr=True)

    def show(entry: dict) -> None:
        scores = " ".join(f"{k} {v:.2f}" for k, v in entry["validation"].items())
        console.print(f"step {entry['step']}: loss {entry['loss']:.3f}, validation {scores}")

    try:
        result = train(args.out, config, resume=args.resume, log=show, progress=not args.json)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from exc
    if args.json:
        _print_json(result)
    else:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in result["validation"].items())
        print(f"trained {result['steps']} steps in {result['train_seconds'] / 60:.1f} min -> {args.out}")
        print(f"validation accuracy: {scores}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``hieravid`` argument parser with one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="hieravid", description="Hierarchical visual-token pruning for fast video LLMs."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_flops(subparsers)
    _add_schedule(subparsers)
    _add_bench_ops(subparsers)
    _add_bench(subparsers)
    _add_train_proxy(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hieravid`` command; returns the process exit code (2 on bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error on stderr
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at interpreter exit
        return 0
    except ValueError as exc:  # our validators name the bad value and the fix
        print(f"hieravid {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
