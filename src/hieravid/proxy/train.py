"""Train the proxy model from scratch on the synthetic suite (``hieravid train-proxy``).

Every step draws ``batch`` fresh training videos (sample indices ``step * batch ...``, so a run is reproducible
and a resumed run sees the same data), renders them, runs the real Qwen2-VL processor and trains the whole model
(vision tower included). Each video is asked all five question types in one conversation, in a random order
(the first turn has exactly the evaluation prompt's form), then, with ``describe``, asked for its caption
(:func:`hieravid.synthetic.questions.describe`); the loss is the cross-entropy of every reply token. With
``aux_weight``, four linear heads on the vision tower's output also learn what each visual token shows
(:mod:`hieravid.proxy.labels`); they give the vision tower a direct signal. With ``type_weight``, a linear head on
the hidden state after :data:`TYPE_LAYER` decoder layers learns, at each answer's position, which question is
asked (see :func:`_type_loss`). With ``summary_weight``, two sets of linear heads learn the facts the questions
ask about (:func:`hieravid.proxy.labels.video_summary`: scene count, first and last scene's shape and object
count, the mover's direction, the flash colour), one from the ``<|vision_end|>`` token's hidden state after
:data:`SUMMARY_LAYER` layers, one from every answer position's after :data:`ANSWER_LAYER` (see
:func:`_summary_loss`). The heads are dropped from the saved model.
AdamW, linear warm-up then cosine decay. A checkpoint is written every ``checkpoint_every`` steps (atomically),
so an interrupted run continues where it stopped with ``--resume``. Validation accuracy (teacher-forced: the
answer letter the model scores highest among A-D) is logged per question type every ``eval_every`` steps.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from hieravid.files import only_writer, replaced_whole, write_whole
from hieravid.proxy.build import build_model, build_processor, save
from hieravid.proxy.config import TrainConfig
from hieravid.proxy.labels import HEADS, SUMMARY, token_labels, video_summary
from hieravid.synthetic import FPS, LETTERS, QUESTION_TYPES, SyntheticSample, generate_sample
from hieravid.synthetic.questions import DESCRIBE_PROMPT, ask, describe

__all__ = ["CURRICULUM", "TYPE_LAYER", "asked_types", "TrainConfig", "batch_inputs", "letter_accuracy", "train"]

TYPE_LAYER = 2  # the question-type head reads the hidden state after this many decoder layers
SUMMARY_LAYER = 4  # the summary heads read the <|vision_end|> token's hidden state after this many layers
ANSWER_LAYER = 6  # ... and a second set reads each answer position's hidden state after this many layers


# With ``curriculum``, training asks only the first k of these types during steps [(k-1) c, k c): a type learnt
# alone settles its circuit before the next one competes for the same weights.
CURRICULUM = ("needle", "scene_count", "direction", "count", "scene_shape")


def asked_types(config: TrainConfig, step: int) -> tuple[str, ...]:
    """The question types the training conversations of ``step`` ask (all of them without a curriculum)."""
    if not config.curriculum:
        return QUESTION_TYPES
    unlocked = min(step // config.curriculum + 1, len(CURRICULUM))
    return tuple(t for t in QUESTION_TYPES if t in CURRICULUM[:unlocked])


def batch_inputs(
    processor, samples: Sequence[SyntheticSample], conversations: Sequence[Sequence[tuple[str, str]]] | None = None
) -> dict[str, torch.Tensor]:
    """Processor inputs for ``samples``. Without ``conversations``: each sample's own question, ready for the
    answer (evaluation). With them: for each sample the ``(prompt, reply)`` turns of ``conversations[i]``, replies
    included, the video in the first turn (training)."""
    from transformers.video_utils import VideoMetadata

    texts = []
    for i, s in enumerate(samples):
        if conversations is None:
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": s.question}]}]
        else:
            messages = []
            for turn, (prompt, reply) in enumerate(conversations[i]):
                content = [{"type": "text", "text": prompt}]
                if turn == 0:
                    content.insert(0, {"type": "video"})
                messages += [{"role": "user", "content": content}, {"role": "assistant", "content": reply}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=conversations is None))
    metadata = [
        VideoMetadata(
            total_num_frames=len(s.frames), fps=FPS, frames_indices=list(range(len(s.frames))),
            height=s.frames.shape[1], width=s.frames.shape[2],
        )
        for s in samples
    ]
    return processor(
        text=texts, videos=[s.frames for s in samples], video_metadata=metadata, do_sample_frames=False,
        return_tensors="pt", padding=True,
    )


def _reply_loss(logits: torch.Tensor, ids: torch.Tensor, replies: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every reply token (``replies``, ``(B, L)`` bool) given the tokens before it;
    ``logits`` ``(B, L, V)`` and ``ids`` ``(B, L)`` of the same forward pass."""
    chosen = replies[:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1][chosen], ids[:, 1:][chosen])


def _aux_loss(
    heads: Mapping[str, torch.nn.Module], visual: torch.Tensor, labels: torch.Tensor, tally: dict[str, list[int]]
) -> torch.Tensor:
    """Sum over the auxiliary heads of a class-balanced cross-entropy on every visual token (a sum, not a mean:
    each head's share of the vision tower's gradient then does not shrink as heads are added; at a quarter
    weight the mover's direction was still unread after 700 steps).

    ``visual`` ``(N, hidden)``: the vision tower's merged tokens; ``labels`` ``(N, heads)``. For the heads
    whose class 0 means "nothing here" (all but the first), tokens with something and tokens with nothing
    weigh half each, so the one flash token of a video is not drowned by the 575 others. ``tally`` gains, per
    head, [right, asked] on the tokens with something (every token for the first head)."""
    losses = []
    for h, (name, head) in enumerate(heads.items()):
        target = labels[:, h]
        logits = head(visual)
        each = torch.nn.functional.cross_entropy(logits, target, reduction="none")  # (N,)
        hit = target > 0 if h else torch.ones_like(target, dtype=torch.bool)
        _count(tally, name, logits[hit], target[hit])
        if h == 0:
            losses.append(each.mean())
            continue
        negative = each[~hit].mean()
        losses.append(0.5 * (negative + each[hit].mean()) if bool(hit.any()) else negative)
    return torch.stack(losses).sum()


def _count(tally: dict[str, list[int]], name: str, logits: torch.Tensor, target: torch.Tensor) -> None:
    right, asked = tally.setdefault(name, [0, 0])
    tally[name] = [right + int((logits.argmax(-1) == target).sum()), asked + target.numel()]


def _reply_starts(processor, ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: the first token of every assistant reply (the one after ``assistant`` ``\n``)."""
    assistant, newline = processor.tokenizer.convert_tokens_to_ids(["assistant", "\n"])
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, 2:] = (ids[:, :-2] == assistant) & (ids[:, 1:-1] == newline)
    return starts


def _answer_positions(processor, ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: the position whose next-token prediction is each reply's first token (the ``\n`` after
    ``assistant``), one per turn."""
    starts = _reply_starts(processor, ids)
    answer = torch.zeros_like(starts)
    answer[:, :-1] = starts[:, 1:]
    return answer


def _reply_tokens(processor, ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: the tokens of every assistant reply, from its first token to the ``<|im_end|>`` that
    closes it, included."""
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    starts = _reply_starts(processor, ids)
    ends = torch.zeros_like(ids, dtype=torch.bool)
    ends[:, 1:] = ids[:, :-1] == end  # the token after an <|im_end|> is outside
    last_start = torch.where(starts, positions, -1).cummax(dim=1).values
    last_end = torch.where(ends, positions, -1).cummax(dim=1).values
    return (last_start >= 0) & (last_start > last_end)


@torch.no_grad()
def letter_accuracy(model, processor, samples: Sequence[SyntheticSample], batch: int = 50) -> dict[str, float]:
    """Fraction of ``samples`` whose highest-scoring letter among A-D is the answer, overall and per type."""
    letter_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(LETTERS)))
    was_training = model.training
    model.eval()
    correct: dict[str, list[bool]] = {t: [] for t in QUESTION_TYPES}
    for i in range(0, len(samples), batch):
        chunk = samples[i : i + batch]
        logits = model(**batch_inputs(processor, chunk), logits_to_keep=1).logits[:, -1]
        picks = logits[:, letter_ids].argmax(-1).tolist()
        for s, pick in zip(chunk, picks):
            correct[s.qtype].append(LETTERS[pick] == s.answer)
    model.train(was_training)
    scores = {t: sum(v) / len(v) for t, v in correct.items() if v}
    scores["all"] = sum(sum(v) for v in correct.values()) / len(samples)
    return scores


def _conversation(
    sample: SyntheticSample, describe_video: bool, types: Sequence[str] = QUESTION_TYPES
) -> list[tuple[str, str, str]]:
    """A question of each of ``types`` about ``sample``'s video, in an order (and first/last choices) drawn from
    its index, as ``(prompt, letter, type)`` turns; then, with ``describe_video``, the caption turn (type
    ``describe``)."""
    rng = np.random.default_rng([sample.index, 7])
    order = rng.permutation(len(types))
    turns = [(q.prompt, q.answer, q.qtype) for q in (ask(sample.spec, types[k], rng) for k in order)]
    if describe_video:
        turns.append((DESCRIBE_PROMPT, describe(sample.spec), "describe"))
    return turns


def _type_loss(head: torch.nn.Linear, hidden: torch.Tensor, answer: torch.Tensor, kinds: list[str]) -> torch.Tensor:
    """Cross-entropy of the question type predicted from the hidden state (after :data:`TYPE_LAYER` layers) at
    each answer's position (the token before the reply). It teaches the early layers to bring the question to
    where the answer is produced, which the answer alone teaches slowly: until the type is there, reading the
    right visual tokens cannot help, and until that helps, nothing asks for the type.

    ``hidden`` ``(B, L, hidden)``; ``answer`` ``(B, L)`` bool, :func:`_answer_positions`; ``kinds`` the turns'
    types, row by row."""
    target = torch.tensor([QUESTION_TYPES.index(k) if k in QUESTION_TYPES else -100 for k in kinds])
    return torch.nn.functional.cross_entropy(head(hidden[answer]), target, ignore_index=-100)  # row-major = turn order


def _summary_loss(
    heads: Mapping[str, torch.nn.Module], hidden: torch.Tensor, facts: torch.Tensor, tally: dict[str, list[int]], where: str
) -> torch.Tensor:
    """Mean cross-entropy of the video's facts (:func:`hieravid.proxy.labels.video_summary`, ``(n, facts)``)
    predicted from ``hidden`` ``(n, d)``: the hidden state of the ``<|vision_end|>`` token, or of each answer
    position. The first gives the video one place where what every question needs is gathered, independent of
    the question; the second brings it to where the answers are produced. ``tally`` gains [right, asked] per
    fact, under ``where``."""
    losses = []
    for i, (name, head) in enumerate(heads.items()):
        logits = head(hidden)
        _count(tally, f"{where}_{name}", logits, facts[:, i])
        losses.append(torch.nn.functional.cross_entropy(logits, facts[:, i]))
    return torch.stack(losses).mean()


def _lr(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.steps - config.warmup, 1)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_atomic(state: dict, path: Path) -> None:
    try:
        with replaced_whole(path, binary=True) as f:  # on disk before it replaces the last checkpoint
            torch.save(state, f)
    except RuntimeError as err:  # torch's own report of a write that failed (a full disk, say)
        raise OSError(f"could not write the checkpoint {path} ({err}): is its disk full? the checkpoint before it "
                      "is kept") from err


def _read_checkpoint(path: Path) -> dict:
    """The state :func:`_save_atomic` wrote at ``path``; ``ValueError`` naming the fix when the file is not
    one (cut short by a full disk or a copy, or another file in its place)."""
    try:
        state = torch.load(path, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        # An OSError is the file's contents only as EINVAL (cut short below torch's header size); any other
        # (permissions, a folder) is left as it is.
        if isinstance(err, OSError) and err.errno not in (None, errno.EINVAL):
            raise
        problem = str(err)
    else:
        if not isinstance(state, dict):
            problem = f"a {type(state).__name__}, not a checkpoint"
        elif missing := sorted({"config", "model", "heads", "optimizer", "step", "elapsed"} - set(state)):
            problem = f"it lacks {', '.join(missing)}"
        else:
            return state
    raise ValueError(f"{path} cannot be read ({problem}): remove it and run without --resume, or use a new "
                     "directory")


def _log_lines_up_to(path: Path, step: int) -> list[str]:
    """The training log's lines of steps up to ``step``; a last line cut short (a kill while it was written)
    is dropped with the rest after the checkpoint."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not JSON: remove that line (or the file) to resume") from None
        if not (isinstance(entry, dict) and type(entry.get("step")) is int):  # a hand-edited line
            raise ValueError(f"{path}: line {number} is not a step's record: remove that line (or the file) to resume")
        if entry["step"] <= step:
            kept.append(line)
    return kept


def train(
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    log: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> dict:
    """Train the proxy into ``out_dir`` (model, processor, ``train_log.jsonl``, ``checkpoint.pt``).

    Returns the final validation scores and the training wall time (seconds).
    """
    config = config or TrainConfig()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory: name a directory to write the model into")
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_dir():
        raise ValueError(f"{checkpoint} is a folder, where the run keeps its checkpoint: move it, or use another --out")
    if resume and not checkpoint.is_file():
        raise ValueError(f"--resume: {out} holds no checkpoint.pt to continue; run without --resume to start")
    model_files = [name for name in ("model.safetensors", "config.json") if (out / name).exists()]
    if not resume and not checkpoint.exists() and model_files:
        raise ValueError(
            f"--out {out} already holds a trained model ({', '.join(model_files)}) and no checkpoint to resume: "
            "use a new directory, or remove that model first"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create --out {out}: {err.strerror or err}") from None
    with only_writer(out, f"another hieravid train-proxy is writing to {out} now: wait for it to finish, or use "
                          "another --out"):
        return _train(out, config, resume=resume, log=log, progress=progress)


def _train(out: Path, config: TrainConfig, *, resume: bool, log: Callable[[dict], None] | None,
           progress: bool) -> dict:
    """:func:`train`'s work, in the folder ``out`` it holds the lock of."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    checkpoint = out / "checkpoint.pt"
    if config.threads:
        torch.set_num_threads(config.threads)
    model = build_model(config.seed, hidden=config.hidden, intermediate=config.intermediate, vision_dim=config.vision_dim,
        init=config.init,
    )
    processor = build_processor()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        heads = torch.nn.ModuleDict({name: torch.nn.Linear(config.hidden, n) for name, n in HEADS.items()})
        heads["question"] = torch.nn.Linear(config.hidden, len(QUESTION_TYPES))
        if config.summary_weight:
            heads["summary"] = torch.nn.ModuleDict({name: torch.nn.Linear(config.hidden, n) for name, n in SUMMARY.items()})
            heads["answer_summary"] = torch.nn.ModuleDict(
                {name: torch.nn.Linear(config.hidden, n) for name, n in SUMMARY.items()}
            )
    visual: dict[str, torch.Tensor] = {}  # the vision tower's merged tokens of the last forward pass
    if config.aux_weight:
        model.model.visual.merger.register_forward_hook(lambda module, args, output: visual.update(tokens=output))
    params = [*model.parameters(), *heads.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98),
    )
    step, elapsed = 0, 0.0
    running: float | None = None  # the loss's moving average, as the log shows it
    tally: dict[str, list[int]] = {}  # training heads' [right, asked] since the last validation
    if resume:
        state = _read_checkpoint(checkpoint)
        if state["config"] != asdict(config):
            now = asdict(config)
            changed = ", ".join(f"{k}: {state['config'].get(k)!r} there, {now.get(k)!r} now"
                                for k in sorted(set(now) | set(state["config"])) if state["config"].get(k) != now.get(k))
            raise ValueError(f"{checkpoint} was written with other settings ({changed}): resume with the same ones "
                             "(every setting, threads included, can change the result) or use a new directory")
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
        # what the next log line averages over continues too (absent from older checkpoints)
        running, tally = state.get("running"), state.get("tally", {})
    elif checkpoint.exists():
        raise FileExistsError(f"{checkpoint} exists: pass --resume to continue that run, or use a new directory")
    validation = [generate_sample(i, "validation") for i in range(config.val_size)]
    log_path = out / "train_log.jsonl"
    # The log holds this run's lines up to its checkpoint: a fresh run starts it anew, and a resumed one
    # drops what was logged after the checkpoint (those steps are trained and logged again).
    kept = _log_lines_up_to(log_path, step) if resume and log_path.exists() else []
    write_whole(log_path, [line + "\n" for line in kept])

    def record(entry: dict) -> None:  # log_file: opened for the training loop below
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()
        if log:
            log(entry)

    model.train()
    columns = (
        TextColumn("train-proxy"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.3f} elapsed"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    scores = None  # validation of the weights as they are now
    with log_path.open("a") as log_file, Progress(*columns, disable=not progress) as bar:  # closed when interrupted too
        task = bar.add_task("train", total=config.steps, completed=step, loss=float("nan"))
        while step < config.steps:
            start = time.perf_counter()
            samples = [generate_sample(step * config.batch + i, "train") for i in range(config.batch)]
            turns = [_conversation(s, config.describe, asked_types(config, step)) for s in samples]
            inputs = batch_inputs(processor, samples, [[(prompt, reply) for prompt, reply, _ in t] for t in turns])
            for group in optimizer.param_groups:
                group["lr"] = _lr(config, step)
            ids = inputs["input_ids"]
            outputs = model(**inputs, output_hidden_states=bool(config.type_weight or config.summary_weight))
            loss = _reply_loss(outputs.logits, ids, _reply_tokens(processor, ids))
            if config.aux_weight:
                labels = torch.from_numpy(np.concatenate([token_labels(s.spec) for s in samples]))
                token_heads = {name: heads[name] for name in HEADS}
                loss = loss + config.aux_weight * _aux_loss(
                    token_heads, visual["tokens"], labels.reshape(-1, len(HEADS)), tally
                )
            answer = _answer_positions(processor, ids)  # (B, L) one per turn
            if config.type_weight:
                kinds = [kind for t in turns for _, _, kind in t]
                hidden = outputs.hidden_states[TYPE_LAYER]  # (B, L, hidden): after TYPE_LAYER decoder layers
                loss = loss + config.type_weight * _type_loss(heads["question"], hidden, answer, kinds)
            if config.summary_weight:
                facts = torch.from_numpy(np.stack([video_summary(s.spec) for s in samples]))  # (B, facts)
                ends = ids == model.config.vision_end_token_id  # (B, L), one per row
                turn_facts = facts.repeat_interleave(answer.sum(dim=1), dim=0)  # (turns, facts)
                loss = loss + config.summary_weight * (
                    _summary_loss(heads["summary"], outputs.hidden_states[SUMMARY_LAYER][ends], facts, tally, "end")
                    + _summary_loss(
                        heads["answer_summary"], outputs.hidden_states[ANSWER_LAYER][answer], turn_facts, tally, "answer"
                    )
                ) / 2
            value = loss.item()
            if not math.isfinite(value):  # every later step would be too, and the weights with them
                raise ValueError(
                    f"the loss is {value} at step {step + 1} (the training diverged): start again in a new directory "
                    f"with a lower --lr (this run's is {config.lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            step += 1
            elapsed += time.perf_counter() - start
            running = value if running is None else 0.95 * running + 0.05 * value
            bar.update(task, completed=step, loss=running)
            if step % config.eval_every == 0 or step == config.steps:
                scores = letter_accuracy(model, processor, validation)  # the final ones at the last step
                heads_seen = {name: round(right / max(asked, 1), 3) for name, (right, asked) in sorted(tally.items())}
                record({"step": step, "loss": running, "seconds": round(elapsed, 1), "validation": scores, "heads": heads_seen})
                tally.clear()
            if step % config.checkpoint_every == 0 or step == config.steps:
                _save_atomic(
                    {"model": model.state_dict(), "heads": heads.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "elapsed": elapsed, "running": running, "tally": tally, "config": asdict(config)},
                    checkpoint,
                )
    model.eval()
    save(model, out)
    if scores is None:  # the run had ended before this resume: its last weights were not measured here
        scores = letter_accuracy(model, processor, validation)
    result = {"validation": scores, "train_seconds": elapsed, "steps": step, "config": asdict(config)}
    write_whole(out / "train_result.json", [json.dumps(result, indent=2) + "\n"])
    return result
