"""The paper-style summary of an evaluation: one row per method and budget, one column per task, the average,
the average as a percentage of vanilla's, and the prefill FLOPs as a fraction of vanilla's."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hieravid.eval.records import budget_key
from hieravid.eval.tasks import Task

__all__ = ["combinations", "summarize", "to_markdown"]


def combinations(methods: Sequence[str], budgets: Sequence[float]) -> list[tuple[str, float]]:
    """(method, budget) pairs to run: ``vanilla`` once at budget 1, every other method at every budget."""
    pairs: list[tuple[str, float]] = []
    for method in methods:
        for budget in [1.0] if method == "vanilla" else budgets:
            if (method, float(budget)) not in pairs:
                pairs.append((method, float(budget)))
    return pairs


def summarize(
    records: Sequence[Mapping[str, Any]],
    tasks: Sequence[Task],
    pairs: Sequence[tuple[str, float]],
    task_errors: Mapping[str, str],
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Summary of ``records`` as a JSON-ready dict.

    Per row (method, budget): ``scores`` (task -> percent, from :meth:`Task.aggregate`), ``average`` over the tasks
    with results, ``relative_to_vanilla`` (average / vanilla's average over the same tasks, percent),
    ``flops_ratio`` (sum of prefill FLOPs / sum of the unpruned model's, paper convention, over the samples that
    ran), ``tflops_per_sample`` (mean prefill TFLOPs), ``achieved_budget`` and ``prefill_seconds`` (means),
    ``samples`` and ``failed`` (per task) and ``details`` (per task breakdowns).
    """
    by_pair: dict[tuple[str, str], dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        by_pair[(str(record["method"]), budget_key(record["budget"]))][str(record["task"])].append(record)
    rows = []
    for method, budget in pairs:
        per_task = by_pair.get((method, budget_key(budget)), {})
        row: dict[str, Any] = {"method": method, "budget": budget, "scores": {}, "samples": {}, "failed": {},
                               "details": {}}
        ran: list[Mapping[str, Any]] = []
        for task in tasks:
            task_records = per_task.get(task.name, [])
            if not task_records:
                continue
            result = task.aggregate(task_records)
            row["scores"][task.name] = result.score
            row["details"][task.name] = {"metric": result.metric, **result.details}
            row["samples"][task.name] = len(task_records)
            row["failed"][task.name] = sum(1 for r in task_records if r.get("status") != "ok")
            ran += [r for r in task_records if r.get("flops") is not None]
        scores = list(row["scores"].values())
        row["average"] = float(np.mean(scores)) if scores else None
        flops = sum(float(r["flops"]) for r in ran)
        vanilla_flops = sum(float(r["vanilla_flops"]) for r in ran)
        row["flops_ratio"] = flops / vanilla_flops if vanilla_flops else None
        row["tflops_per_sample"] = flops / len(ran) / 1e12 if ran else None
        row["achieved_budget"] = _mean(r.get("achieved_budget") for r in ran)
        row["prefill_seconds"] = _mean(r.get("prefill_seconds") for r in ran)
        rows.append(row)
    vanilla = next((r for r in rows if r["method"] == "vanilla"), None)
    for row in rows:
        row["relative_to_vanilla"] = None
        if vanilla is None:
            continue
        common = [t for t in row["scores"] if t in vanilla["scores"]]
        base = float(np.mean([vanilla["scores"][t] for t in common])) if common else 0.0
        if common and base > 0:
            row["relative_to_vanilla"] = 100.0 * float(np.mean([row["scores"][t] for t in common])) / base
    return {
        **dict(info),
        "tasks": [t.name for t in tasks],
        "metrics": {t.name: t.metric for t in tasks},
        "rows": rows,
        "task_errors": dict(task_errors),
        "failed_total": sum(sum(r["failed"].values()) for r in rows),
    }


def _mean(values: Any) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _cell(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def to_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table (scores in percent) with the run's settings and any task errors."""
    tasks = list(summary["tasks"])
    lines = [
        f"# hieravid eval: {summary.get('model') or 'the shipped proxy model'}",
        "",
        f"{summary.get('num_frames')} frames per video; scores in percent "
        f"({', '.join(f'{t}: {m}' for t, m in summary['metrics'].items())}); FLOPs = prefill FLOPs of the visual "
        "tokens (paper convention) relative to the unpruned model.",
        "",
        "| method | budget | " + " | ".join(tasks) + " | Avg | % of vanilla | FLOPs | achieved budget | failed |",
        "|---|---|" + "---|" * len(tasks) + "---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        cells = [row["method"], f"{row['budget']:g}"]
        cells += [_cell(row["scores"].get(t)) for t in tasks]
        cells += [
            _cell(row["average"]),
            _cell(row["relative_to_vanilla"]),
            _cell(None if row["flops_ratio"] is None else 100 * row["flops_ratio"], "{:.1f}%"),
            _cell(row["achieved_budget"], "{:.3f}"),
            str(sum(row["failed"].values())),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("task_errors"):
        lines += ["", "Tasks that could not be read:"]
        lines += [f"- {task}: {reason}" for task, reason in summary["task_errors"].items()]
    failed = summary.get("failed_total", 0)
    if failed:
        lines += ["", f"{failed} answer(s) failed (scored 0; a sample counts once per method and budget); their "
                   "reasons are in predictions.jsonl (status 'failed')."]
    return "\n".join(lines) + "\n"
