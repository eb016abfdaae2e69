"""``hieravid eval``: every (task, sample, method, budget), one JSONL record each, resumable, shardable.

What one run does:

1. reads every task's samples (:mod:`hieravid.eval.tasks`); a task whose files cannot be read is reported and
   skipped, a sample whose record is malformed is recorded as failed;
2. skips what the output folder already holds (a finished or interrupted earlier run with the same settings),
   unless the sample it answered has changed since (its question, options, answer or video, the video's
   contents included: an edited annotation file, or another data root holding other data under the same ids);
3. splits the samples left over the processes (``accelerate launch -m hieravid eval ...``: process r of W takes
   the samples r, r + W, r + 2W, ... of those), loads the model once per process, decodes each video once
   and answers it with every method at every budget (:func:`hieravid.infer.answer`), appending each record to the
   process's JSONL file as soon as it is scored;
4. waits for every process, then the main one merges the records into ``predictions.jsonl`` (a fixed order, so
   the file is the same whatever the number of processes) and writes ``summary.json`` and ``summary.md``.

Each answer is scored on the generated text cut at the task's first stop string (:attr:`Task.until`, lmms-eval's
``until``); the record keeps both (``raw``, ``prediction``) and the stop strings applied (``until``). A saved
record scored with other stop strings (one written before the answers were cut, whose ``prediction`` is the whole
text) is scored again from its text when merged: the text does not depend on the stop strings (generation runs to
the token limit or the end of the answer and is cut afterwards), so nothing is asked again.

A video that cannot be decoded, an answer that cannot be parsed, or an error while generating is recorded as a
failed sample (status ``failed``, its reason and kind) and scores 0; the run goes on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

from hieravid.eval.records import (
    MERGED,
    PredictionLog,
    budget_key,
    part_files,
    read_records,
    record_key,
    write_json,
    write_jsonl,
)
from hieravid.eval.summary import combinations, summarize, to_markdown
from hieravid.eval.tasks import Sample, Task, cut_at_stop, get_task
from hieravid.files import content_print, lock_folder, write_whole
from hieravid.warning import HieravidWarning

__all__ = ["EvalConfig", "run_eval"]

RUN_FILE = "run.json"
# settings that change the answers: a resumed run must use the same
_RESULT_SETTINGS = ("model", "num_frames", "dtype", "attn_implementation")  # and the tokens per answer, per task


@dataclass
class EvalConfig:
    """Settings of one evaluation.

    Attributes:
        tasks: task names (see :func:`hieravid.eval.tasks.available_tasks`).
        out: output folder (created; an existing one is resumed).
        model: hub id or local directory loaded with ``from_pretrained``; None = the shipped proxy model.
        methods: pruning methods, each a name or a spec with options (``hieravid:relevance_sign=positive``,
            see :func:`hieravid.methods.parse_method`), recorded and reported under that spec; ``vanilla``
            runs once at budget 1.
        budgets: relative token budgets in (0, 1] for every method but ``vanilla``.
        data_root: folder holding the benchmarks in their published layouts (see each task's module).
        num_frames: frames sampled uniformly from each video.
        device: ``auto`` (a GPU per process when CUDA is there, else the CPU), ``cpu``, ``cuda``...
        dtype: ``auto`` (the checkpoint's), ``bfloat16``, ``float16``, ``float32``.
        attn_implementation: ``sdpa`` or ``eager``.
        max_new_tokens: tokens to generate per answer; None = each task's own (:attr:`Task.max_new_tokens`).
        limit: evaluate only the first ``limit`` samples of each task (a quick look).
        retry_failed: run again the samples an earlier run recorded as failed.
        progress: show a progress bar with ETA on the main process.
        skip_unreachable: leave out, with a warning, a (method, budget) the method cannot reach on this
            model's depth (FastV below ``K / L``, ...) instead of failing; ``--methods all`` sets it.
    """

    tasks: list[str]
    out: Path
    model: str | None = None
    methods: list[str] = field(default_factory=lambda: ["vanilla", "hieravid"])
    budgets: list[float] = field(default_factory=lambda: [0.3, 0.2, 0.1])
    data_root: Path | None = None
    num_frames: int = 32
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    max_new_tokens: int | None = None
    limit: int | None = None
    retry_failed: bool = False
    progress: bool = True
    skip_unreachable: bool = False


@dataclass(frozen=True)
class _Processes:
    """Where this process sits among the ones ``accelerate launch`` started (one process: rank 0 of 1)."""

    rank: int
    world: int
    device: str
    wait: Callable[[], None]
    share: Callable[[Any], Any] = lambda value: value  # rank 0's value, on every process

    @property
    def main(self) -> bool:
        return self.rank == 0


class ProcessesLost(RuntimeError):
    """Another process of a run over several processes stopped (killed, crashed, interrupted) while this one
    waited for it or exchanged a value with it."""


@contextmanager
def _with_peers() -> Iterator[None]:
    """A block that waits for or exchanges with the other processes: a peer that went away (gloo's
    "Connection closed by peer", a RuntimeError) is a :class:`ProcessesLost`."""
    try:
        yield
    except RuntimeError as exc:
        raise ProcessesLost(f"another process of this run stopped ({exc})") from exc


def wait_for_others(barrier: Callable[[], Any], poll_seconds: float = 0.05) -> None:
    """Wait on ``barrier()``'s work (``torch.distributed.barrier(async_op=True)``) by polling, so that Ctrl-C
    and SIGTERM are taken while the other processes finish (a barrier waited on in C++ holds them off until
    it ends); a peer that went away is a :class:`ProcessesLost`."""
    with _with_peers():
        work = barrier()
        while not work.is_completed():
            time.sleep(poll_seconds)
        work.wait()


def _processes(device: str) -> _Processes:
    import torch
    from accelerate import PartialState

    cuda = torch.cuda.is_available() and device != "cpu"
    # A long timeout: processes wait for each other at the end, after shards of unequal length.
    state = PartialState(cpu=not cuda, timeout=timedelta(days=7))
    if device == "auto" or (cuda and device == "cuda" and state.num_processes > 1):
        device = f"cuda:{state.local_process_index}" if cuda else "cpu"
    if state.num_processes == 1:
        return _Processes(rank=0, world=1, device=device, wait=lambda: None)

    def wait() -> None:
        wait_for_others(lambda: torch.distributed.barrier(async_op=True))

    def share(value: Any) -> Any:
        from accelerate.utils import broadcast_object_list

        with _with_peers():
            return broadcast_object_list([value], from_process=0)[0]

    return _Processes(rank=state.process_index, world=state.num_processes, device=device, wait=wait, share=share)


def _check(config: EvalConfig) -> list[Task]:
    from hieravid.methods import available, build, check_budget, parse_method, warn_if_budget_is_ignored

    if not config.tasks:
        raise ValueError("no task to run: pass --tasks (e.g. mvbench,videomme) or --suite")
    if isinstance(config.num_frames, bool) or config.num_frames < 1:
        raise ValueError(f"--num-frames must be >= 1, got {config.num_frames}")
    unknown = [m for m in config.methods if parse_method(m)[0] not in available()]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(available())}")
    if not config.methods:
        raise ValueError("no method to run: pass --methods, e.g. vanilla,hieravid")
    for method in config.methods:
        build(method, 1.0)  # its options, before a model loads (the budgets are checked on the model's depth)
    for budget in config.budgets:
        check_budget(budget)
    warn_if_budget_is_ignored(config.methods, config.budgets)
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {config.limit}")
    tasks = [get_task(name) for name in dict.fromkeys(config.tasks)]
    for task in tasks:
        task.check_ready()
    return tasks


def _model_setting(model: Any) -> Any:
    """Which model answered: a local directory as an absolute path (``model``, ``./model`` and
    ``/abs/model`` are one); the shipped proxy model (None, or its directory named) by its weights'
    contents, wherever the package is installed."""
    from hieravid.proxy import model_dir

    local = Path(model).expanduser().resolve() if isinstance(model, str) and Path(model).expanduser().exists() else None
    if model is not None and local is None:  # a hub id
        return model
    try:
        shipped = Path(model_dir()).resolve()
    except FileNotFoundError:  # a package without its proxy: only naming it (model None) needs it
        if model is None:
            raise
        return str(local)
    if model is None or local == shipped:
        digest = hashlib.sha256((shipped / "model.safetensors").read_bytes()).hexdigest()[:16]
        return f"the shipped proxy model (weights {digest})"
    return str(local)


def _is_weights(file: Path) -> bool:
    """The weights and the architecture's configuration."""
    return file.suffix in (".safetensors", ".bin", ".pt") or file.name == "config.json"


_PROMPT_FILES = ("tokenizer*", "*chat_template*", "special_tokens_map.json", "added_tokens.json", "vocab.*",
                 "merges.txt", "*.model", "*.tiktoken", "*preprocessor_config.json", "processor_config.json",
                 "generation_config.json")


def _is_prompt_file(file: Path) -> bool:
    """The other files that shape an answer: tokenizer, chat template, processor and generation settings."""
    return any(fnmatch.fnmatch(file.name, pattern) for pattern in _PROMPT_FILES)


def _model_files(setting: Any, kind: Callable[[Path], bool] = _is_weights) -> str | None:
    """A short hash of the files that ``kind`` selects in the local model directory a run's model setting
    names (:func:`_model_setting`: its absolute path), each by its name and
    :func:`hieravid.files.content_print` (a model trained again into the same directory, or given another
    chat template, answers otherwise; a copy of it does not); None for the shipped proxy model (its setting
    names its contents) and for a hub id."""
    if not isinstance(setting, str) or not Path(setting).is_dir():
        return None
    files = sorted((f.name, content_print(f)) for f in Path(setting).iterdir() if f.is_file() and kind(f))
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def _settings(config: EvalConfig) -> dict[str, Any]:
    settings = asdict(config)
    settings["model"] = _model_setting(config.model)
    settings["model_files"] = _model_files(settings["model"])
    settings["model_prompt_files"] = _model_files(settings["model"], _is_prompt_file)
    settings["out"] = str(config.out)
    settings["data_root"] = None if config.data_root is None else str(config.data_root)
    return settings


def _tokens_per_answer(given: Any, tasks: Any) -> int | None:
    """The tokens per answer of a run: ``given``, or left out (None), the own number of its ``tasks``
    when they share one; None when that is not one number."""
    if given is not None:
        return given
    try:
        own = {get_task(name).max_new_tokens for name in tasks or ()}
    except (TypeError, ValueError):  # not a list of task names this release knows
        return None
    return next(iter(own)) if len(own) == 1 else None


def _answer_tokens(config: EvalConfig, task: Task) -> int:
    """The tokens each answer of ``task`` may take in this run: ``--max-new-tokens``, or the task's own."""
    return config.max_new_tokens or task.max_new_tokens


def _written_settings(config: EvalConfig, legacy: int | None) -> dict[str, Any]:
    """What run.json keeps: the run's settings, and the tokens per answer of the records an earlier release
    wrote without them (``legacy``, from :func:`_check_resume`), carried forward from the run.json that
    release wrote."""
    return {**_settings(config), "legacy_max_new_tokens": legacy}


def _check_resume(out: Path, config: EvalConfig, previous: Sequence[Mapping[str, Any]]) -> int | None:
    """Refuse to add records to ``out`` made with settings that change the answers, or to answers whose
    settings no readable run.json names (a folder that holds no answer, ``previous`` empty: a run that
    failed before any, takes new settings). Returns the tokens per answer of the records an earlier
    release wrote without them (None: each task's own)."""
    if not previous:
        return None
    path = out / RUN_FILE
    settings = _settings(config)
    before = None
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    if not isinstance(before, dict):
        raise ValueError(
            f"{out} holds answers but no readable {RUN_FILE} naming the settings they were made with (a run stopped "
            f"before its main process wrote it, or the file was removed): pass a new --out, or move the "
            f"predictions*.jsonl files out of {out} to start it over"
        )
    before["model"] = _model_setting(before.get("model"))
    diff = [f"{k}: {before.get(k)!r} there, {settings.get(k)!r} now" for k in _RESULT_SETTINGS
            if before.get(k) != settings.get(k)]
    for key, files in (("model_files", "weights or configuration"),
                       ("model_prompt_files", "tokenizer, chat template, processor or generation files")):
        # (compared where both run.json files have the key: one of an earlier release may not)
        if not diff and None not in (before.get(key), settings[key]) and before[key] != settings[key]:
            diff.append(f"the {files} of the model at {settings['model']} changed since")
    # The tokens per answer are each record's (those of an earlier release, which kept none: its run's, left
    # out the own number of its tasks, as the run.json it wrote says), compared task by task with what this
    # run gives the task. A run.json of this release (it has model_files) carries that number forward.
    if "model_files" in before:
        legacy = before.get("legacy_max_new_tokens")
    else:
        legacy = _tokens_per_answer(before.get("max_new_tokens"), before.get("tasks"))
    made: dict[str, set[int]] = {}
    for record in previous:
        task = str(record.get("task"))
        if task in config.tasks:
            made.setdefault(task, set()).add(record.get("max_new_tokens", legacy) or get_task(task).max_new_tokens)
    for task, then in made.items():
        now = _answer_tokens(config, get_task(task))
        if then != {now}:
            diff.append(f"max_new_tokens: {', '.join(map(str, sorted(then)))} there, {now} now ({task}'s answers)")
    if diff:
        raise ValueError(f"{out} holds a run with other settings ({', '.join(diff)}): resume it with the same settings "
                         "or pass a new --out")
    return legacy


def _load_tasks(tasks: Sequence[Task], data_root: Path, limit: int | None) -> tuple[dict[str, list[Sample]], dict[str, str]]:
    samples: dict[str, list[Sample]] = {}
    errors: dict[str, str] = {}
    for task in tasks:
        try:
            loaded = task.load(data_root)
        except (OSError, ValueError, RuntimeError) as err:
            errors[task.name] = str(err)
            continue
        except (TypeError, KeyError, AttributeError) as err:  # data of a shape the loader did not expect
            errors[task.name] = f"malformed data ({type(err).__name__}: {err})"
            continue
        if not loaded:  # files in place, but empty: nothing to score is not a score
            expected = f": expected layout {task.layout}" if task.layout else ""
            errors[task.name] = f"no samples in its files under {data_root}{expected}"
            continue
        repeated = [i for i, n in Counter(s.id for s in loaded).items() if n > 1]  # in order of first sight
        if repeated:
            more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
            named = ", ".join(repr(str(i)) for i in repeated[:5]) + more
            errors[task.name] = f"the task's sample ids are not unique: {named} appear more than once"
            continue
        samples[task.name] = loaded[:limit] if limit else loaded
    return samples, errors


def _sample_digest(sample: Sample, data_root: Path, prompt_files: Sequence[str] = ()) -> str:
    """A short hash of what ``sample`` asks: its question, options, answer, metadata, video path and error,
    with the paths under ``data_root`` (the video's, a metadata path such as a subtitle file's) taken
    relative to it, however the root is spelled (a moved data folder keeps its records). A saved record
    is reused only for a sample with the same digest."""
    root = os.path.abspath(data_root)

    def relative(value: Any) -> Any:
        if isinstance(value, str) and os.sep in value:
            path = os.path.abspath(value)
            if path == root or path.startswith(root + os.sep):
                return "<data_root>" + path[len(root) :]
        return value

    meta = {key: relative(value) for key, value in sample.meta.items()}
    # A file the prompt is built from (``prompt_files``: the metadata keys naming them, videomme_sub's
    # subtitle file) that is missing now asks another question than the one asked once it is there.
    missing = sorted(key for key in prompt_files
                     if isinstance(sample.meta.get(key), str) and not os.path.exists(sample.meta[key]))
    asked = [sample.question, sample.options, sample.answer, meta, relative(sample.video), sample.error]
    if missing:
        asked.append({"missing": missing})
    text = json.dumps(asked, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _files_digest(sample: Sample, prompt_files: Sequence[str], seen: dict[str, Any]) -> str:
    """A short hash of the contents of the files ``sample`` is asked from (its video, and the metadata
    files named by ``prompt_files``, such as a subtitle file): another video under the same name asks
    another question. Cheap for long videos (:func:`hieravid.files.content_print`); a folder of frames by
    its file names and sizes; a missing file, nothing. ``seen`` keeps each path's look for the next sample."""

    def look(path: str) -> Any:
        if path not in seen:
            try:
                seen[path] = (sorted((e.name, e.stat().st_size) for e in os.scandir(path) if e.is_file())
                              if os.path.isdir(path) else content_print(path))
            except OSError:
                seen[path] = None
        return seen[path]

    named = [sample.video] + [sample.meta.get(key) for key in prompt_files]
    text = json.dumps([look(path) if isinstance(path, str) else None for path in named])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _made_for_now(record: Mapping[str, Any], digests: Mapping[tuple[str, str], Mapping[str, str]]) -> bool:
    """Whether ``record`` was made for its sample as it is now (``digests``: each loaded sample's); a record
    of a release that kept a digest not yet stands for its sample."""
    current = digests.get((str(record["task"]), str(record["id"])))
    return current is not None and all(record.get(key, value) == value for key, value in current.items())


def _record(task: Task, sample: Sample, index: int, method: str, budget: float, rank: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "task": task.name,
        "id": sample.id,
        "index": index,
        "method": method,
        "budget": budget,
        "status": "ok",
        "failure_kind": None,
        "reason": None,
        "prediction": None,
        "raw": None,
        "until": None,
        "parsed": None,
        "target": sample.answer,
        "score": 0.0,
        "score_details": {},
        "meta": {"group": sample.meta.get("group")} if "group" in sample.meta else {},
        "flops": None,
        "vanilla_flops": None,
        "achieved_budget": None,
        "visual_tokens": None,
        "input_tokens": None,
        "new_tokens": None,
        "prefill_seconds": None,
        "vision_seconds": None,
        "total_seconds": None,
        "rank": rank,
    }
    record.update(fields)
    return record


def _failed(kind: str, reason: str) -> dict[str, Any]:
    return {"status": "failed", "failure_kind": kind, "reason": reason}


def _scored_fields(task: Task, sample: Sample, text: str) -> dict[str, Any]:
    """Record fields of the generated ``text``: the answer scored (``text`` cut at the task's stop strings), the
    text itself, the stop strings, what was read, the score and whether it failed to parse."""
    prediction = cut_at_stop(text, task.until)
    score = task.score(sample, prediction)
    fields: dict[str, Any] = {
        "prediction": prediction,
        "raw": text,
        "until": list(task.until),
        "parsed": score.parsed,
        "score": float(score.value) if score.failure is None else 0.0,
        "score_details": dict(score.details),
        "status": "ok",
        "failure_kind": None,
        "reason": None,
    }
    if score.failure is not None:
        fields.update(_failed("unparsed", score.failure))
    return fields


def _rescored(record: dict[str, Any], task: Task, sample: Sample) -> dict[str, Any]:
    """``record`` scored again from its generated text when it was scored with other stop strings than the
    task's (a record without ``until`` was scored on its whole text, kept in ``prediction``); records with
    no text (failed before an answer) and records scored as the task scores now are returned as they are."""
    text = record.get("raw", record.get("prediction"))
    if not isinstance(text, str) or list(record.get("until") or []) == list(task.until):
        return record
    return {**record, **_scored_fields(task, sample, text)}


def _answer_fields(task: Task, sample: Sample, result: Any) -> dict[str, Any]:
    """Record fields of a generated answer: the prediction, its score and the prefill statistics."""
    fields: dict[str, Any] = {
        **_scored_fields(task, sample, result.text),
        "input_tokens": result.input_tokens,
        "new_tokens": result.new_tokens,
        "prefill_seconds": result.prefill_seconds,
        "vision_seconds": getattr(result, "vision_seconds", None),
        "total_seconds": result.total_seconds,
    }
    stats = result.stats
    if stats is not None:
        fields.update(
            flops=float(stats.flops.paper),
            vanilla_flops=float(stats.flops.vanilla_paper),
            achieved_budget=float(stats.achieved_budget),
            visual_tokens=int(sum(stats.visual_tokens)),
        )
    return fields


def _decode(sample: Sample, num_frames: int) -> tuple[Any, Any, Any]:
    """(frames, timestamps in seconds or None, the SampledVideo or None)."""
    if sample.frames is not None:
        return sample.frames(num_frames), None, None
    from hieravid.video import read_video

    if sample.video is None:
        raise ValueError("the sample names no video")
    video = read_video(sample.video, num_frames)
    return video.frames, video.timestamps_s, video


class _ProgressLines:
    """The progress bar's lines where stderr is no terminal (a log file, a pipe), which a live bar would
    reach only at its end: one plain line every ``every_s`` seconds, and one at the end."""

    def __init__(self, console: Any, every_s: float = 30.0) -> None:
        self.console, self.every_s = console, every_s
        self.description, self.total, self.done = "", 0, 0
        self.start = self.last = time.monotonic()

    def __enter__(self) -> "_ProgressLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.done:
            self._line()

    def add_task(self, description: str, total: int) -> int:
        self.description, self.total = description, total
        return 0

    def update(self, task: int, description: str | None = None) -> None:
        self.description = description or self.description

    def advance(self, task: int) -> None:
        self.done += 1
        if time.monotonic() - self.last >= self.every_s:
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.start
        eta = elapsed / self.done * (self.total - self.done)
        self.console.print(f"{self.description}: {self.done}/{self.total} answers, elapsed {_clock(elapsed)}, "
                           f"ETA {_clock(eta)}", soft_wrap=True)


def _clock(seconds: float) -> str:
    """``h:mm:ss``."""
    return f"{int(seconds) // 3600}:{int(seconds) % 3600 // 60:02d}:{int(seconds) % 60:02d}"


def _progress_bar(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console

    console = Console(stderr=True)
    if not (console.is_terminal or console.is_jupyter):
        return _ProgressLines(console)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def run_eval(
    config: EvalConfig,
    *,
    loaded: Any | None = None,
    on_record: Callable[[Mapping[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Run the evaluation described by ``config`` (see the module docstring).

    Args:
        config: what to run and where to write.
        loaded: an already loaded :class:`hieravid.infer.LoadedModel` (else ``config.model`` is loaded).
        on_record: called with each record after it is written (tests use it to stop a run midway).

    Returns:
        The summary (also written to ``summary.json`` / ``summary.md``) on the main process, None on the others.
    """
    tasks = _check(config)
    procs = _processes(config.device)
    out = Path(config.out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with _only_writer(out, procs, created):
        return _evaluate(config, tasks, procs, out, loaded, on_record)


def _remove_if_unused(out: Path) -> None:
    """Remove the folder ``out`` when it holds nothing but its lock file."""
    try:
        if {entry.name for entry in out.iterdir()} <= {".lock"}:
            (out / ".lock").unlink(missing_ok=True)
            out.rmdir()
    except OSError:  # written meanwhile, or not ours to remove: it stays
        pass


@contextmanager
def _only_writer(out: Path, procs: _Processes, created: bool) -> Iterator[None]:
    """Hold ``out``'s lock for the run (its main process takes it and tells the others): a second run into
    the same folder at the same time, with any number of processes, whose files would be merged and removed
    under it, is refused on every process. Released when the run ends, however it ends; a run that made
    the folder (``created``) and stopped before it wrote anything in it (a budget the model cannot reach,
    Ctrl-C while it loads) removes it first."""
    handle, refused = None, None
    if procs.main:
        handle = lock_folder(out)
        if handle is None:
            refused = f"another hieravid eval is writing to {out} now: wait for it to finish, or use another --out"
    refused = procs.share(refused)
    if refused:
        raise ValueError(refused)
    try:
        yield
    except BaseException:
        if created and handle is not None:
            _remove_if_unused(out)
        raise
    finally:
        if handle is not None:
            handle.close()  # closing releases the lock


def _evaluate(
    config: EvalConfig, tasks: list[Task], procs: _Processes, out: Path, loaded: Any | None,
    on_record: Callable[[Mapping[str, Any]], None] | None,
) -> dict[str, Any] | None:
    """:func:`run_eval` with ``out`` locked."""
    previous = read_records(part_files(out) + [out / MERGED])
    legacy = _check_resume(out, config, previous)
    data_root = Path(config.data_root) if config.data_root is not None else Path("data")
    samples, task_errors = _load_tasks(tasks, data_root, config.limit)
    pairs = combinations(config.methods, config.budgets)

    units = [(task, i, s) for task in tasks for i, s in enumerate(samples.get(task.name, []))]
    contents: dict[str, Any] = {}  # each file's look, once for the questions it serves
    digests = {(task.name, str(s.id)): {"sample_digest": _sample_digest(s, data_root, task.prompt_files),
                                        "files_digest": _files_digest(s, task.prompt_files, contents)}
               for task, _, s in units}

    def reusable(record: Mapping[str, Any]) -> bool:
        """Not a failure to retry, and made for the sample as it is now."""
        retried = config.retry_failed and record.get("status") != "ok"
        return not retried and _made_for_now(record, digests)

    done = {record_key(r) for r in previous if reusable(r)}
    jobs = [
        (task, index, sample, [(m, b) for m, b in pairs if (task.name, sample.id, m, budget_key(b)) not in done])
        for task, index, sample in units
    ]
    # The samples left, shared out in turn: every process read the same files (none writes before the wait
    # below), so the shares are disjoint and even however the last run stopped.
    jobs = [job for job in jobs if job[3]][procs.rank :: procs.world]
    total = sum(len(job[3]) for job in jobs)

    if total:
        if loaded is None:
            from hieravid.infer import load_model

            loaded = load_model(config.model, device=procs.device, dtype=config.dtype,
                                attn_implementation=config.attn_implementation)
        pairs = _check_budgets(loaded, pairs, config.skip_unreachable)
        jobs = [(task, index, sample, [pair for pair in todo if pair in pairs]) for task, index, sample, todo in jobs]
        jobs = [job for job in jobs if job[3]]  # a sample whose every pair was left out is not decoded
        total = sum(len(job[3]) for job in jobs)
    if procs.main and (total or previous):  # once the model has loaded: a run with no answer leaves no settings
        write_json(out / RUN_FILE, _written_settings(config, legacy))
    procs.wait()  # no process writes an answer before run.json names the settings it is made with
    if total:
        from hieravid.bench.models import CpuWatch

        watch = CpuWatch()  # the answers' times, on the CPU, are unreliable when other processes took it
        with PredictionLog(out / f"predictions.part{procs.rank}.jsonl") as log, _progress_bar(
            config.progress and procs.main
        ) as bar:
            bar_task = bar.add_task(f"eval (process 1 of {procs.world})", total=total) if bar is not None else None
            for task, index, sample, todo in jobs:
                if bar is not None:
                    bar.update(bar_task, description=f"{task.name} (process 1 of {procs.world})")
                digest = digests[(task.name, str(sample.id))]
                for record in _run_sample(task, sample, index, todo, loaded, config, procs.rank):
                    log.append({**record, **digest, "max_new_tokens": _answer_tokens(config, task),
                                "written_at": time.time()})
                    if bar is not None:
                        bar.advance(bar_task)
                    if on_record is not None:
                        on_record(record)
        if procs.device == "cpu" and procs.world == 1:  # several processes share the CPUs by design
            watch.warn_if_busy()
    procs.wait()
    if not procs.main:
        return None
    return _finish(out, tasks, pairs, samples, task_errors, config, digests)


def _check_budgets(
    loaded: Any, pairs: Sequence[tuple[str, float]], skip: bool = False
) -> list[tuple[str, float]]:
    """Fail before the first sample when a method cannot reach a budget on this model's depth, or with
    ``skip`` leave that pair out (with a warning). Returns the pairs to run."""
    from hieravid.methods import build
    from hieravid.models import find_adapter

    adapter, _ = find_adapter(loaded.model)
    kept = []
    for method, budget in pairs:
        try:
            build(method, budget).decision_layers(adapter.num_layers)
        except ValueError as exc:
            if not skip:
                raise
            warnings.warn(f"not evaluated: {method} at budget {budget:g}: {exc}", HieravidWarning, stacklevel=2)
            continue
        kept.append((method, budget))
    return kept


def _run_sample(
    task: Task, sample: Sample, index: int, todo: Sequence[tuple[str, float]], loaded: Any, config: EvalConfig, rank: int
):
    """Yield one record per (method, budget) of ``todo`` for ``sample``, decoding its video once."""
    from hieravid.infer import answer

    if sample.error is not None:
        for method, budget in todo:
            yield _record(task, sample, index, method, budget, rank, **_failed("data", sample.error))
        return
    failure = None
    try:
        frames, timestamps, video = _decode(sample, config.num_frames)
    except FileNotFoundError as err:
        failure = _failed("data", str(err))
    except (ValueError, OSError, RuntimeError, MemoryError) as err:  # MemoryError: frames past a check's estimate
        failure = _failed("video", str(err) or type(err).__name__)
    if failure is None:
        try:
            prompt = task.prompt(sample, video)
        except (ValueError, OSError) as err:  # e.g. a malformed subtitle file
            failure = _failed("data", str(err))
    if failure is not None:
        for method, budget in todo:
            yield _record(task, sample, index, method, budget, rank, **failure)
        return
    max_new_tokens = _answer_tokens(config, task)
    for method, budget in todo:
        try:
            result = answer(loaded, frames, prompt, method=method, budget=budget, max_new_tokens=max_new_tokens,
                            timestamps_s=timestamps, source_fps=None if video is None else video.fps)
        except Exception as err:  # noqa: BLE001 - one sample's failure (out of memory, ...) must not end the run
            _free_cuda_memory()
            yield _record(task, sample, index, method, budget, rank,
                          **_failed("model", f"{type(err).__name__}: {err}"))
            continue
        try:
            fields = _answer_fields(task, sample, result)
        except Exception as err:  # noqa: BLE001 - a reference the scorer cannot read fails this sample only
            fields = _failed("data", f"could not score the answer ({type(err).__name__}: {err})")
        yield _record(task, sample, index, method, budget, rank, **fields)


def _free_cuda_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _finish(
    out: Path,
    tasks: Sequence[Task],
    pairs: Sequence[tuple[str, float]],
    samples: Mapping[str, Sequence[Sample]],
    task_errors: Mapping[str, str],
    config: EvalConfig,
    digests: Mapping[tuple[str, str], Mapping[str, str]],
) -> dict[str, Any]:
    """Merge every process's records into predictions.jsonl (all of them, this run's and earlier runs')
    and write the summary of this run: its tasks, (method, budget) pairs and the samples it loaded, so
    every method is scored on the same samples (main process). Of the records of one (task, sample,
    method, budget), the one kept was made for the sample as it is now (its ``digests``), and of those the
    last written: a retried or re-asked sample's new record, whichever process's file holds each. A kept
    record of a sample this run loaded, made for it as it is now but scored with other stop strings than
    its task's, is scored again (:func:`_rescored`)."""

    def rank(record: Mapping[str, Any]) -> tuple[bool, float]:
        return _made_for_now(record, digests), float(record.get("written_at") or 0.0)

    latest: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for record in read_records([out / MERGED] + part_files(out)):
        key = record_key(record)
        if key not in latest or rank(record) >= rank(latest[key]):  # ties: the later file or line
            latest[key] = record
    by_name = {task.name: task for task in tasks}
    by_id = {(name, str(sample.id)): sample for name, task_samples in samples.items() for sample in task_samples}
    for key, record in latest.items():
        sample = by_id.get((str(record["task"]), str(record["id"])))
        if sample is not None and rank(record)[0]:
            latest[key] = _rescored(record, by_name[str(record["task"])], sample)
    task_order = {t.name: i for i, t in enumerate(tasks)}
    pair_order = {(m, budget_key(b)): i for i, (m, b) in enumerate(pairs)}

    def order(record: Mapping[str, Any]) -> tuple:
        task, sample_id, method, budget = record_key(record)
        return (task_order.get(task, len(task_order)), task, int(record.get("index", 0)),
                sample_id, pair_order.get((method, budget), len(pair_order)), method, budget)

    merged = sorted(latest.values(), key=order)
    write_jsonl(out / MERGED, merged)
    for part in part_files(out):  # their records now live in the merged file
        part.unlink()
    loaded_ids = {name: {str(sample.id) for sample in task_samples} for name, task_samples in samples.items()}
    current = [
        r for r in merged
        if str(r["id"]) in loaded_ids.get(r["task"], ()) and (r["method"], budget_key(r["budget"])) in pair_order
    ]
    info = {
        "model": config.model,
        "num_frames": config.num_frames,
        "data_root": None if config.data_root is None else str(config.data_root),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if config.skip_unreachable:  # the pairs left out (no record at all) get no row
        recorded = {(r["method"], budget_key(r["budget"])) for r in current}
        pairs = [(m, b) for m, b in pairs if (m, budget_key(b)) in recorded]
    summary = summarize(current, tasks, pairs, task_errors, info)
    write_json(out / "summary.json", summary)
    write_whole(out / "summary.md", [to_markdown(summary)])
    return summary
