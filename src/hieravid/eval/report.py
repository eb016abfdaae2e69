"""Breakdowns and a plot of an evaluation summary (:func:`hieravid.eval.summary.summarize`).

``group_markdown`` tabulates a task's per-group scores (the question types of the synthetic suite, MVBench's
sub-tasks, VideoMME's durations) for every method and budget, with the percentage of vanilla's score;
``plot_summary`` draws each task's score against the budget, one line per method, vanilla as a dashed line, and
one panel per group for a single-task run that has groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from hieravid.files import save_figure

__all__ = ["group_markdown", "plot_summary"]


def _groups(summary: Mapping[str, Any], task: str) -> list[str]:
    names: list[str] = []
    for row in summary["rows"]:
        for name in (row["details"].get(task) or {}).get("groups", {}):
            if name not in names:
                names.append(name)
    return names


def _vanilla(summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((r for r in summary["rows"] if r["method"] == "vanilla"), None)


def group_markdown(summary: Mapping[str, Any], task: str) -> str:
    """Markdown table of ``task``'s per-group scores (percent), each followed by its % of vanilla's; empty when
    the task has no groups."""
    groups = _groups(summary, task)
    if not groups:
        return ""
    vanilla = _vanilla(summary)
    base = (vanilla["details"].get(task) or {}).get("groups", {}) if vanilla else {}
    lines = [
        f"{task}: score per group (percent; in brackets: % of vanilla)",
        "",
        "| method | budget | " + " | ".join(groups) + " | all |",
        "|---|---|" + "---|" * (len(groups) + 1),
    ]
    for row in summary["rows"]:
        scores = (row["details"].get(task) or {}).get("groups", {})
        if not scores:
            continue
        cells = [row["method"], f"{row['budget']:g}"]
        for name in groups:
            value = scores.get(name)
            if value is None:
                cells.append("-")
            elif row is vanilla or not base.get(name):
                cells.append(f"{value:.1f}")
            else:
                cells.append(f"{value:.1f} ({100 * value / base[name]:.0f}%)")
        total = row["scores"].get(task)
        relative = (vanilla["scores"].get(task) if vanilla else None) or None
        cells.append(
            "-" if total is None else f"{total:.1f}" + ("" if row is vanilla or not relative else f" ({100 * total / relative:.0f}%)")
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(summary: Mapping[str, Any], path: str | Path, title: str | None = None) -> list[str]:
    """Write the score-against-budget plot to ``path`` (PNG); returns the panel titles."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    errors = summary.get("task_errors") or {}
    tasks = [task for task in summary["tasks"] if task not in errors]  # a task that did not load has no point
    panels: list[tuple[str, str, str | None]] = []  # (title, task, group or None)
    for task in tasks:
        panels.append((f"{task} ({summary['metrics'].get(task, 'score')})", task, None))
        if len(tasks) == 1:
            panels += [(f"{task}: {group}", task, group) for group in _groups(summary, task)]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows))  # its own canvas: the caller's backend is left alone
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    vanilla = _vanilla(summary)
    methods = [m for m in dict.fromkeys(r["method"] for r in summary["rows"]) if m != "vanilla"]
    colors = matplotlib.colormaps["tab20"](range(len(methods)))

    def value(row: Mapping[str, Any], task: str, group: str | None) -> float | None:
        if group is None:
            return row["scores"].get(task)
        return (row["details"].get(task) or {}).get("groups", {}).get(group)

    for ax, (panel, task, group) in zip(axes.flat, panels):
        for method, color in zip(methods, colors):
            points = sorted(
                (r["budget"], value(r, task, group)) for r in summary["rows"]
                if r["method"] == method and value(r, task, group) is not None
            )
            if points:
                xs, ys = zip(*points)
                style = dict(linewidth=2.4, marker="o") if method == "hieravid" else dict(linewidth=1.2, marker=".")
                ax.plot(xs, ys, color="black" if method == "hieravid" else color, label=method, **style)
        base = value(vanilla, task, group) if vanilla else None
        if base is not None:
            ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="vanilla")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("relative token budget")
        ax.set_ylabel("score (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    legend: dict[str, Any] = {}  # label -> handle, over every panel (a method may miss a task's scores)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    labels = list(legend)
    figure.legend(list(legend.values()), labels, loc="lower center", ncol=max(1, min(8, len(labels))), fontsize=8,
                  frameon=False)
    figure.suptitle(title or f"hieravid eval: {summary.get('model') or 'the shipped proxy model'}", fontsize=11)
    figure.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 8), 1, 0.97))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, path, dpi=110)
    return [p[0] for p in panels]
