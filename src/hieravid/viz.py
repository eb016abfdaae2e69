"""The picture of one pruned prefill: what was merged, kept and dropped, where, and why.

``render_decisions(path, frames, trace, ...)`` writes one picture (PNG, or the format of the path's suffix:
PDF, SVG, JPEG), top to bottom:

1. **frames**: one column per frame as the model sees it (Qwen-VL: a temporal group of 2 input frames, the
   first one shown; the processor completes an odd count by repeating the last frame), coloured bars and
   vertical lines at the segment boundaries (HieraVid);
2. **one row per decision point** (HieraVid: stage 1 before layer 0, then the in-LLM stages): each frame
   with its token grid overlaid; a token merged at this stage is blue, dropped at this stage red, removed
   earlier dark, kept clear;
3. **relevance**: the score the method ranked tokens by at its first scoring stage (HieraVid: Eq. 8's r),
   a heat map over each frame's token grid; tokens already removed are grey;
4. **visual tokens per layer**: tokens entering each decoder layer against vanilla (all of them) and the
   average the budget allows.

The token grid of a frame (rows x cols with rows * cols = P) is the one the model arranged, as the trace
records it (Qwen-VL: the processor's grid; LLaVA-OneVision: square, whatever the video's shape); for a
trace without it, the factor pair of P closest to the frame's aspect ratio. Pass ``grid_hw`` to override.

A method that folds dropped tokens into kept ones by weights rather than into one target (PruMerge's kNN
update) shows them as dropped.

Matplotlib is imported here only; no pyplot state is touched (the figure is drawn with the Agg canvas).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from hieravid.files import save_figure
from hieravid.runtime.trace import PruneTrace, SampleTrace, StageTrace

__all__ = ["Picture", "render_decisions", "token_grid"]

# RGBA overlays of a token cell
_MERGED = (0.15, 0.45, 1.0, 0.70)
_DROPPED = (0.95, 0.10, 0.10, 0.70)
_GONE = (0.0, 0.0, 0.0, 0.80)
_SEGMENT_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
_MAX_STAGE_ROWS = 4


@dataclass
class Picture:
    """What :func:`render_decisions` drew.

    Attributes:
        path: the file written.
        panels: the title of every panel (row), top to bottom.
        frames_shown: model frames (columns) drawn.
        columns: for each column, the (first, last) input frame its model frame holds (the first is shown).
        grid_hw: token grid (rows, cols) of one frame.
        width_px: image width, pixels (as written, for a raster format; a vector format's nominal size).
        height_px: image height, pixels.
    """

    path: Path
    panels: list[str] = field(default_factory=list)
    frames_shown: int = 0
    columns: list[tuple[int, int]] = field(default_factory=list)
    grid_hw: tuple[int, int] = (0, 0)
    width_px: int = 0
    height_px: int = 0


def token_grid(num_slots: int, frame_hw: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) with ``rows * cols == num_slots`` whose shape is closest to the frame's ``(H, W)``
    aspect ratio (on a log scale)."""
    if num_slots < 1:
        raise ValueError(f"a frame needs at least one token, got num_slots={num_slots}")
    if not all(side > 0 for side in frame_hw):
        raise ValueError(f"frame_hw is a frame's (height, width), both above 0, got {tuple(frame_hw)}")
    target = math.log(frame_hw[0] / frame_hw[1])
    pairs = [(r, num_slots // r) for r in range(1, num_slots + 1) if num_slots % r == 0]
    return min(pairs, key=lambda rc: abs(math.log(rc[0] / rc[1]) - target))


def _frame_columns(num_input: int, num_model: int, temporal_patch: int = 1) -> list[tuple[int, int]]:
    """For each model frame, the (first, last) input frame it covers: groups of ``temporal_patch`` (Qwen-VL:
    2, the last group of an odd count holding one frame, which the processor repeats); otherwise, frames
    spread evenly over the model's."""
    k = temporal_patch
    if -(-num_input // k) == num_model:
        return [(g * k, min(g * k + k - 1, num_input - 1)) for g in range(num_model)]
    edges = np.linspace(0, num_input, num_model + 1)
    out = []
    for g in range(num_model):
        first = min(int(round(edges[g])), num_input - 1)
        last = max(first, min(int(round(edges[g + 1])) - 1, num_input - 1))
        out.append((first, last))
    return out


def _stage_title(stage: StageTrace, index: int, method: str, num_tokens: int) -> str:
    kept = int(stage.keep.sum())
    merged, dropped = int(stage.merged_tokens.numel()), int(stage.dropped_tokens.numel())
    where = "before layer 0 (LLM input)" if stage.layer == 0 else f"at layer {stage.layer}"
    what = []
    if merged:
        what.append(f"{merged} merged into an earlier frame" if method.startswith("hieravid") else f"{merged} merged")
    if dropped:
        what.append(f"{dropped} dropped")
    pct = 100.0 * kept / num_tokens if num_tokens else 0.0
    name = f"Stage {index}" if method.startswith("hieravid") else "Decision"
    return f"{name}, {where}: {stage.num_present} \u2192 {kept} tokens ({pct:.0f}% of the video); " + ", ".join(what)


def _removing_stages(sample: SampleTrace) -> list[int]:
    """Indices of the decision points that removed something, in layer order."""
    return [i for i, s in enumerate(sample.stages) if int((~s.keep).sum()) > 0]


def _stages_to_draw(sample: SampleTrace) -> list[int]:
    """Indices of the decision points that removed something (at most :data:`_MAX_STAGE_ROWS`, the
    ones that removed most, in layer order)."""
    removing = _removing_stages(sample)
    if len(removing) > _MAX_STAGE_ROWS:
        by_size = sorted(removing, key=lambda i: -int((~sample.stages[i].keep).sum()))
        removing = sorted(by_size[:_MAX_STAGE_ROWS])
    return removing


def _how_to_read(method: str, sample: SampleTrace) -> str:
    """A few lines that say what the rows show, for the space beside the curve."""
    if not sample.stages:
        return f"How to read: {method} removed no visual token;\nevery layer sees all {sample.num_tokens}."
    hidden = len(_removing_stages(sample)) - len(_stages_to_draw(sample))
    omitted = (f"\n- {hidden} smaller decision(s) are not drawn as rows;\n  the tokens-per-layer curve counts them."
               if hidden else "")
    return _reading_of(method) + omitted


def _reading_of(method: str) -> str:
    """What the rows of ``method``'s picture show."""
    if method.startswith("hieravid"):
        later = (
            "- Later stages keep, inside each segment, the tokens the\n"
            "  last prompt token attends to most (top-k, Eq. 5 counts);\n"
            if method == "hieravid_topk" else
            "- Later stages keep, inside each segment, a diverse and\n"
            "  question-relevant subset (conditional DPP, Eq. 5-10);\n"
        )
        return (
            "How to read:\n"
            "- Segments: runs of frames whose tokens stay alike (Eq. 1-2).\n"
            "- Stage 1 averages a token into the same slot of an earlier\n"
            "  frame when the two are alike (blue), before the LLM.\n"
            + later +
            "  red tokens are dropped there, dark ones were gone before.\n"
            "- Fewer tokens in later layers = less prefill compute."
        )
    return (
        "How to read:\n"
        f"- Each row is one decision of {method}: red tokens are dropped,\n"
        "  blue ones averaged into a kept token, dark ones were gone before.\n"
        "- Fewer tokens in later layers = less prefill compute."
    )


def _overlay(sample: SampleTrace, stage: int) -> np.ndarray:
    """``(T * P, 4)`` RGBA per token for decision point ``stage``."""
    rgba = np.zeros((sample.num_tokens, 4))
    before = sample.present_after(stage - 1).numpy()
    rgba[~before] = _GONE
    st = sample.stages[stage]
    rgba[st.merged_tokens.numpy()] = _MERGED
    rgba[st.dropped_tokens.numpy()] = _DROPPED
    return rgba


def render_decisions(
    path: str | Path,
    frames: np.ndarray,
    trace: PruneTrace | SampleTrace | None,
    *,
    sample: int = 0,
    budget: float | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
    frame_labels: Sequence[str] | None = None,
    grid_hw: tuple[int, int] | None = None,
    flops_ratio: float | None = None,
    dpi: int = 110,
) -> Picture:
    """Draw what a method decided for one video (see the module docstring) and write it as a picture.

    Args:
        path: the picture to write (its folder must exist; PNG, PDF, SVG or JPEG by its suffix; PNG, with
            ``.png`` added, when it has none).
        frames: ``(N, H, W, 3)`` uint8, the frames given to the model (N input frames; the model may see
            fewer, e.g. Qwen-VL's temporal groups of 2). Frames that are not those (a whole video the
            processor sampled itself, ``do_sample_frames=True``) are spread evenly over the model's frames,
            which need not be the ones it picked: pass the frames it was given.
        trace: ``handle.last_trace`` (of ``hieravid.apply(..., trace=True)``) or one :class:`SampleTrace`
            (then the method's name is not known, and the picture names it "method").
        sample: which sample of a batch's trace to draw.
        budget: the relative token budget asked for (drawn as the average it allows), or None.
        title: the headline (e.g. the method and budget).
        notes: extra header lines (the question, the answers, timings), drawn as given.
        frame_labels: one label per input frame (e.g. its time in seconds); default the frame numbers.
        grid_hw: (rows, cols) of a frame's token grid; default from ``num_slots`` and the frame aspect.
        flops_ratio: prefill FLOPs relative to vanilla, shown in the curve's title when given.
        dpi: pixels per inch of a raster picture.

    Returns:
        A :class:`Picture` with the panel titles and the image size.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    elif path.suffix[1:].lower() not in FigureCanvasAgg.get_supported_filetypes():  # refused before drawing
        raise ValueError(
            f"matplotlib cannot write a {path.suffix!r} picture ({str(path)!r}): end the name with .png, .pdf, .svg "
            "or .jpg (a name without a suffix gets .png)"
        )
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be an (N, H, W, 3) array, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 pixels (0-255), as given to the model; got {frames.dtype}")
    if trace is None:
        raise ValueError("no trace was recorded: pass trace=True to hieravid.apply, then draw handle.last_trace")
    method = trace.method if isinstance(trace, PruneTrace) else "method"
    num_layers = trace.num_layers if isinstance(trace, PruneTrace) else None
    if isinstance(trace, PruneTrace):
        if not 0 <= sample < len(trace.samples):
            raise ValueError(f"sample {sample}: the trace holds {len(trace.samples)} samples")
        drawn = trace.samples[sample]
        if drawn is None:
            raise ValueError(f"sample {sample} of the trace has no video: nothing to draw")
    else:
        drawn = trace
    num_layers = num_layers or len(drawn.tokens_per_layer)
    T, P = drawn.num_frames, drawn.num_slots
    rows, cols = grid_hw or drawn.grid_hw or token_grid(P, (frames.shape[1], frames.shape[2]))
    if rows * cols != P:
        raise ValueError(f"grid_hw {rows}x{cols} does not hold the {P} tokens of a frame")
    if frames.shape[0] < T:
        raise ValueError(f"{frames.shape[0]} frames for the {T} frames the model saw: pass the frames given to it")
    columns = _frame_columns(frames.shape[0], T, drawn.temporal_patch)
    labels = list(frame_labels) if frame_labels is not None else [str(i) for i in range(frames.shape[0])]
    if len(labels) != frames.shape[0]:
        raise ValueError(f"frame_labels must give one label per frame ({frames.shape[0]}), got {len(labels)}")

    stage_rows = _stages_to_draw(drawn)
    scored = next((i for i, s in enumerate(drawn.stages) if s.scores is not None), None)
    grid_rows = 1 + len(stage_rows) + (1 if scored is not None else 0)

    # geometry: a frame cell has the aspect ratio of the token grid drawn in it (the frame as the model saw
    # it), within 1:4 and 4:1 (a thinner grid is letterboxed in its cell)
    cell_w = min(1.0, max(0.55, 15.0 / T))  # inches
    cell_h = cell_w * min(4.0, max(0.25, rows / cols))
    left_in, right_in = 0.35, 1.0
    width = max(12.0, left_in + T * cell_w + right_in)  # wide enough for the header, legend and curve
    wrap = int((width - 2 * left_in) * 11.5)  # characters of 9.5 pt monospace per line
    header_lines = (1 if title else 0) + sum(len(textwrap.wrap(n, wrap)) or 1 for n in notes)
    legend_in = 0.3 if stage_rows else 0.0  # a line of its own for the overlay legend
    header_in = 0.25 + 0.2 * header_lines + legend_in
    row_gap_in = 0.42  # room for the row title above each row
    segment_bar_in = 0.19 * cell_h if drawn.frame_segment is not None else 0.0
    curve_in = 2.6
    height = header_in + grid_rows * (cell_h + row_gap_in) + segment_bar_in + 0.7 + curve_in + 0.5
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)

    def box(x_in: float, top_in: float, w_in: float, h_in: float) -> list[float]:
        """Axes rectangle from inches measured from the top-left corner."""
        return [x_in / width, 1 - (top_in + h_in) / height, w_in / width, h_in / height]

    picture = Picture(path=path, frames_shown=T, columns=columns, grid_hw=(rows, cols))

    # header
    y = 0.15
    if title:
        fig.text(left_in / width, 1 - y / height, title, fontsize=13, fontweight="bold", va="top")
        y += 0.3
    for note in notes:
        for line in textwrap.wrap(note, wrap) or [""]:
            fig.text(left_in / width, 1 - y / height, line, fontsize=9.5, va="top", family="monospace")
            y += 0.2
    legend_top = y
    top = header_in

    segment_of_frame = drawn.frame_segment.tolist() if drawn.frame_segment is not None else None
    starts = drawn.segment_starts
    frame_axes_rows: list[list] = []

    def frame_row(row_title: str, overlay: np.ndarray | None, heat: np.ndarray | None = None,
                  first: bool = False) -> list:
        nonlocal top
        top += row_gap_in
        axes = []
        for t in range(T):
            ax = fig.add_axes(box(left_in + t * cell_w + 0.03, top, cell_w - 0.06, cell_h))
            ax.imshow(frames[columns[t][0]], extent=(0, cols, rows, 0), interpolation="bilinear")
            if heat is not None:
                ax.imshow(heat[t], extent=(0, cols, rows, 0), interpolation="nearest", cmap="inferno",
                          vmin=0.0, vmax=1.0, alpha=0.8)
            if overlay is not None:
                ax.imshow(overlay[t], extent=(0, cols, rows, 0), interpolation="nearest")
            ax.set_xlim(0, cols)
            ax.set_ylim(rows, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.4)
            if first:
                lo, hi = columns[t]
                label = labels[lo] if lo == hi else f"{labels[lo]}-{labels[hi]}"
                ax.set_title(label, fontsize=7, pad=2)
            axes.append(ax)
        fig.text(left_in / width, 1 - (top - 0.2) / height, row_title, fontsize=10, fontweight="bold", va="bottom")
        picture.panels.append(row_title)
        top += cell_h
        frame_axes_rows.append(axes)
        return axes

    # 1. frames and segments
    if starts:
        frames_title = f"Sampled frames ({frames.shape[0]} input frames, {T} model frames); {len(starts)} segment" + (
            "s" if len(starts) != 1 else "") + ", colour bar = segment"
    else:
        frames_title = f"Sampled frames ({frames.shape[0]} input frames, {T} model frames of {P} tokens)"
    first_axes = frame_row(frames_title, None, first=True)
    if segment_of_frame is not None:  # a coloured bar under each frame, named at each segment's start
        bar = 0.16 * rows
        for t, ax in enumerate(first_axes):
            color = _SEGMENT_COLORS[segment_of_frame[t] % len(_SEGMENT_COLORS)]
            ax.add_patch(Rectangle((-0.06 * cols, rows * 1.03), cols * 1.12, bar, color=color, clip_on=False))
            if t in starts:
                ax.text(0.03 * cols, rows * 1.03 + bar / 2, f"segment {segment_of_frame[t] + 1}", color="white",
                        fontsize=6.5, fontweight="bold", va="center", clip_on=False)
        top += 0.19 * cell_h

    # 2. decision points
    for index in stage_rows:
        stage = drawn.stages[index]
        rgba = _overlay(drawn, index).reshape(T, rows, cols, 4)
        number = index + 1 if stage.stage is None else stage.stage  # HieraVid's own, where it skips a stage
        frame_row(_stage_title(stage, number, method, drawn.num_tokens), rgba)

    # 3. relevance
    if scored is not None:
        stage = drawn.stages[scored]
        heat = np.full(drawn.num_tokens, np.nan)
        heat[stage.tokens.numpy()] = stage.scores.numpy().clip(0.0, 1.0)
        gone = np.zeros((drawn.num_tokens, 4))
        gone[np.isnan(heat)] = (0.55, 0.55, 0.55, 0.92)
        heat_grid = np.ma.masked_invalid(heat).reshape(T, rows, cols)
        name = (
            "attention a (min-max normalised)" if method == "hieravid_topk"
            else "relevance r (Eq. 8)" if method.startswith("hieravid") else "score"
        )
        axes = frame_row(
            f"Token {name} at layer {stage.layer}, the first in-LLM stage (bright = relevant to the question; "
            "grey = already removed)",
            gone.reshape(T, rows, cols, 4), heat=heat_grid,
        )
        cax = fig.add_axes(box(left_in + T * cell_w + 0.15, top - cell_h, 0.12, cell_h))
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="inferno"), cax=cax)
        bar.ax.tick_params(labelsize=7)

    # segment boundaries across every frame row
    if len(starts) > 1:
        for axes in frame_axes_rows:
            y_top, y_bottom = axes[0].get_position().y1, axes[0].get_position().y0
            if axes is frame_axes_rows[0]:
                y_bottom -= segment_bar_in / height
            for t in starts[1:]:
                x = (left_in + t * cell_w) / width
                fig.add_artist(Line2D([x, x], [y_bottom, y_top], color="#ffcc00", linewidth=2.2, zorder=5))

    # legend for the overlays
    handles = [
        Patch(facecolor=_MERGED, label="merged this stage"),
        Patch(facecolor=_DROPPED, label="dropped this stage"),
        Patch(facecolor=_GONE, label="removed earlier"),
        Patch(facecolor="white", edgecolor="black", linewidth=0.5, label="kept"),
    ]
    if len(starts) > 1:
        handles.append(Line2D([], [], color="#ffcc00", linewidth=2.2, label="segment boundary"))
    if stage_rows:
        fig.legend(handles=handles, loc="upper left", fontsize=8.5, ncol=len(handles), frameon=False,
                   bbox_to_anchor=((left_in - 0.1) / width, 1 - (legend_top + 0.02) / height), borderaxespad=0.0)

    # 4. tokens per layer
    top += 0.7
    curve_w = min(width - left_in - 1.4, max(5.0, 0.5 * width))
    ax = fig.add_axes(box(left_in + 0.55, top, curve_w, curve_in))
    reading = _how_to_read(method, drawn)
    text_x = left_in + 0.55 + curve_w + 0.45
    if reading and width - text_x >= 4.2:
        fig.text(text_x / width, 1 - (top + 0.1) / height, reading, fontsize=8.5, va="top", linespacing=1.5)
    edges = np.arange(num_layers + 1)  # layer l spans [l, l + 1)
    kept = np.asarray(drawn.tokens_per_layer[:num_layers], dtype=float)
    N = drawn.num_tokens
    ax.stairs(np.full(num_layers, N), edges, baseline=None, color="0.45", linestyle="--",
              label=f"vanilla: all {N} tokens")
    ax.stairs(kept, edges, baseline=None, color="#d62728", linewidth=2.0, label=f"{method}")
    ax.stairs(kept, edges, color="#d62728", alpha=0.12, fill=True)
    if budget is not None:
        ax.axhline(budget * N, color="#1f77b4", linestyle=":", linewidth=1.6,
                   label=f"budget {budget:g}: {budget * N:.0f} tokens on average")
    for stage in drawn.stages:
        if int((~stage.keep).sum()) > 0:
            ax.axvline(stage.layer, color="0.75", linewidth=0.8, zorder=0)
    ax.set_xlim(0, num_layers)
    ax.set_ylim(0, N * 1.3)
    step = max(1, math.ceil(num_layers / 32))
    ax.set_xticks(edges[:-1:step] + 0.5, [str(l) for l in edges[:-1:step]])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("visual tokens entering the layer")
    average = kept.mean() / N if N else 1.0
    curve_title = f"Visual tokens per layer: average {average:.3f} of vanilla"
    if flops_ratio is not None:
        curve_title += f", prefill FLOPs {100 * flops_ratio:.1f}% of vanilla"
    ax.set_title(curve_title, loc="left", fontsize=10, fontweight="bold")
    ax.legend(fontsize=8, loc="upper right", frameon=False, ncol=3)
    ax.grid(alpha=0.25)
    picture.panels.append(curve_title)

    save_figure(fig, picture.path, dpi=dpi)  # the format of the file's suffix
    if picture.path.suffix.lower() in (".pdf", ".svg", ".svgz", ".eps", ".ps"):  # a vector format's nominal size
        picture.width_px, picture.height_px = (int(round(v * dpi)) for v in fig.get_size_inches())
    else:  # the size as written
        from PIL import Image  # matplotlib's own dependency

        with Image.open(picture.path) as image:
            picture.width_px, picture.height_px = image.size
    return picture
