"""Train the proxy model from scratch on the synthetic suite (``hieravid train-proxy``).

Every step draws ``batch`` fresh training videos (sample indices ``step * batch ...``, so a run is reproducible
and a resumed run sees the same data), renders them, runs the real Qwen2-VL processor and trains the whole model
(vision tower included) with cross-entropy on the answers: the letter and the ``<|im_end|>`` after it. Each video
is asked all five question types in one conversation, in a random order (the first turn has exactly the
evaluation prompt's form), so one forward pass over the video's tokens teaches five answers. AdamW,
linear warm-up then cosine decay. A checkpoint is written every ``checkpoint_every`` steps (atomically), so an
interrupted run continues where it stopped with ``--resume``. Validation accuracy (teacher-forced: the answer
letter the model scores highest among A-D) is logged per question type every ``eval_every`` steps.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from hieravid.proxy.build import build_model, build_processor, save
from hieravid.synthetic import FPS, LETTERS, QUESTION_TYPES, SyntheticSample, generate_sample
from hieravid.synthetic.questions import Question, ask

__all__ = ["TrainConfig", "batch_inputs", "letter_accuracy", "train"]


@dataclass
class TrainConfig:
    """Hyper-parameters of ``hieravid train-proxy``."""

    steps: int = 1500
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    val_size: int = 150
    eval_every: int = 250
    checkpoint_every: int = 25
    hidden: int = 64  # model sizes, see hieravid.proxy.build.build_config
    intermediate: int = 192
    vision_dim: int = 48
    init: float = 0.08  # initial weights' standard deviation
    threads: int = 1  # torch threads; 1 keeps the speed steady when other work shares the cores


def batch_inputs(
    processor, samples: Sequence[SyntheticSample], questions: Sequence[Sequence[Question]] | None = None
) -> dict[str, torch.Tensor]:
    """Processor inputs for ``samples``. Without ``questions``: each sample's own question, ready for the answer
    (evaluation). With them: for each sample a conversation asking ``questions[i]`` in turn, answers included
    (training)."""
    from transformers.video_utils import VideoMetadata

    texts = []
    for i, s in enumerate(samples):
        if questions is None:
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": s.question}]}]
        else:
            messages = []
            for turn, question in enumerate(questions[i]):
                content = [{"type": "text", "text": question.prompt}]
                if turn == 0:
                    content.insert(0, {"type": "video"})
                messages += [{"role": "user", "content": content}, {"role": "assistant", "content": question.answer}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=questions is None))
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


def _answer_loss(model, inputs: dict[str, torch.Tensor], answer_start: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every answer letter and the ``<|im_end|>`` that closes it. ``answer_start`` marks the
    positions right after ``<|im_start|>assistant\n`` (where a letter stands)."""
    ids = inputs["input_ids"]  # (B, L)
    targets = answer_start | answer_start.roll(1, dims=1)  # the letter and the token after it
    logits = model(**inputs).logits[:, :-1]  # (B, L - 1, V): the prediction of token j + 1
    chosen = targets[:, 1:]
    return torch.nn.functional.cross_entropy(logits[chosen], ids[:, 1:][chosen])


def _answer_starts(processor, ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: tokens that follow ``assistant`` ``\n``."""
    assistant, newline = processor.tokenizer.convert_tokens_to_ids(["assistant", "\n"])
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, 2:] = (ids[:, :-2] == assistant) & (ids[:, 1:-1] == newline)
    return starts


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


def _all_questions(sample: SyntheticSample) -> list[Question]:
    """Every question type about ``sample``'s video, in an order (and first/last choices) drawn from its index."""
    rng = np.random.default_rng([sample.index, 7])
    order = rng.permutation(len(QUESTION_TYPES))
    return [ask(sample.spec, QUESTION_TYPES[k], rng) for k in order]


def _lr(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.steps - config.warmup, 1)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_atomic(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    config = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    checkpoint = out / "checkpoint.pt"
    model = build_model(config.seed, hidden=config.hidden, intermediate=config.intermediate, vision_dim=config.vision_dim,
        init=config.init,
    )
    processor = build_processor()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98),
    )
    step, elapsed = 0, 0.0
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["config"] != asdict(config):
            raise ValueError(f"{checkpoint} was written with other settings {state['config']}: use the same ones")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
    elif checkpoint.exists():
        raise FileExistsError(f"{checkpoint} exists: pass --resume to continue that run, or use a new directory")
    validation = [generate_sample(i, "validation") for i in range(config.val_size)]
    log_file = (out / "train_log.jsonl").open("a")

    def record(entry: dict) -> None:
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()
        if log:
            log(entry)

    model.train()
    columns = (
        TextColumn("train-proxy"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=config.steps, completed=step, loss=float("nan"))
        running = None
        while step < config.steps:
            start = time.perf_counter()
            samples = [generate_sample(step * config.batch + i, "train") for i in range(config.batch)]
            questions = [_all_questions(s) for s in samples]
            inputs = batch_inputs(processor, samples, questions)
            for group in optimizer.param_groups:
                group["lr"] = _lr(config, step)
            loss = _answer_loss(model, inputs, _answer_starts(processor, inputs["input_ids"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            step += 1
            elapsed += time.perf_counter() - start
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.update(task, completed=step, loss=running)
            if step % config.eval_every == 0 or step == config.steps:
                scores = letter_accuracy(model, processor, validation)
                record({"step": step, "loss": running, "seconds": round(elapsed, 1), "validation": scores})
            if step % config.checkpoint_every == 0 or step == config.steps:
                _save_atomic(
                    {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "elapsed": elapsed, "config": asdict(config)},
                    checkpoint,
                )
    log_file.close()
    model.eval()
    save(model, out)
    scores = letter_accuracy(model, processor, validation)
    result = {"validation": scores, "train_seconds": elapsed, "steps": step, "config": asdict(config)}
    (out / "train_result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
