"""The model card of a trained proxy: how it was made and how accurate it is (``CARD.md`` beside the weights)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from hieravid.synthetic import QUESTION_TYPES, generate_sample

__all__ = ["write_card"]


def _status(scores: dict[str, float], target: float = 0.85) -> str:
    """One honest paragraph: does the model meet the suite's target, and which types it really reads."""
    strong = [t for t in QUESTION_TYPES if scores[t] >= 0.6]
    if scores["all"] >= target and len(strong) == len(QUESTION_TYPES):
        return f"It meets the suite's target ({100 * target:.0f}% overall, every type well above chance).\n"
    return (
        f"**It does not meet the suite's target** ({100 * target:.0f}% overall, every type well above chance). "
        f"Types it answers well above chance: {', '.join(strong) or 'none'}; on the others its answers are near "
        "chance, so pruning results on them carry no signal.\n"
    )


def write_card(directory: str | Path, test_size: int = 500) -> str:
    """Measure the model in ``directory`` on the first ``test_size`` test questions (teacher-forced letter
    accuracy) and write ``CARD.md`` from its training result and log. Returns the card's text."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from hieravid.proxy.train import ANSWER_LAYER, CURRICULUM, SUMMARY_LAYER, TYPE_LAYER, letter_accuracy

    directory = Path(directory)
    result = json.loads((directory / "train_result.json").read_text())
    log = [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines() if line.strip()]
    model = Qwen2VLForConditionalGeneration.from_pretrained(directory).eval()
    processor = AutoProcessor.from_pretrained(directory)
    test = [generate_sample(i, "test") for i in range(test_size)]
    scores = letter_accuracy(model, processor, test)
    config = result["config"]
    text_config, vision_config = model.config.text_config, model.config.vision_config
    params = sum(p.numel() for p in model.parameters())
    size_mb = (directory / "model.safetensors").stat().st_size / 1e6
    curve = "\n".join(
        f"| {e['step']} | {e['loss']:.3f} | {100 * e['validation']['all']:.1f} | "
        + " | ".join(f"{100 * e['validation'].get(t, float('nan')):.0f}" for t in QUESTION_TYPES)
        + f" | {e['seconds'] / 60:.1f} |"
        for e in log
    )
    caption = ", then asked to describe it (`hieravid.synthetic.questions.describe`)" if config["describe"] else ""
    aux = (
        f"\nDuring training only, four linear heads on the vision tower's output learn what each visual token shows"
        f" (background, object shape, flash colour, mover direction: `hieravid.proxy.labels`; their losses summed), loss weight"
        f" {config['aux_weight']}; they are not part of the shipped model." if config["aux_weight"] else ""
    )
    if config["type_weight"]:
        aux += (
            f"\nA linear head on the hidden state after {TYPE_LAYER} decoder layers, at each answer's position, learns which"
            f" of the five question types is asked (loss weight {config['type_weight']}; also dropped): it brings"
            " the question to where the answer is produced, which the answer letters alone teach slowly."
        )
    if config.get("summary_weight"):
        aux += (
            f"\nTwo sets of linear heads (loss weight {config['summary_weight']}; also dropped) learn the facts the questions ask"
            f" about (scene count, first and last scene's shape and object count, mover direction, flash colour:"
            f" `hieravid.proxy.labels.video_summary`), one from the `<|vision_end|>` token after {SUMMARY_LAYER} decoder"
            f" layers, one from every answer position after {ANSWER_LAYER}: the video's facts are gathered in one place"
            " whatever is asked, then brought to where the answer is produced."
        )
    if config.get("curriculum"):
        c = config["curriculum"]
        asked = (
            f"each asked several question types in one conversation: only {CURRICULUM[0]} for the first {c} steps, then"
            f" one more type every {c} steps in the order {', '.join(CURRICULUM)}, all five from step"
            f" {c * (len(CURRICULUM) - 1)} on"
        )
    else:
        asked = "every one asked all five question types in one conversation"
    per_type = " | ".join(f"{100 * scores[t]:.1f}" for t in QUESTION_TYPES)
    card = f"""# hieravid proxy model

A small `Qwen2VLForConditionalGeneration` trained from scratch, on CPU, on the synthetic video-QA suite
(`hieravid.synthetic`). It exists so that the effect of a pruning method on accuracy can be measured on any
machine, through the same adapters and runtime as real Qwen2-VL checkpoints. It knows only the synthetic
suite's five question types and vocabulary; it is a proxy, not a general VideoLLM.

## Architecture ({params / 1e6:.2f} M parameters, {size_mb:.1f} MB of float32 safetensors)
- vision: patch {vision_config.patch_size} x {vision_config.patch_size} over {vision_config.temporal_patch_size} frames,
  {vision_config.depth} blocks of width {vision_config.embed_dim}, 2 x 2 merge: a 32-frame 96 x 96 video gives 576 visual tokens
- language model: {text_config.num_hidden_layers} decoder layers, width {text_config.hidden_size},
  {text_config.num_attention_heads} query / {text_config.num_key_value_heads} key-value heads, SwiGLU {text_config.intermediate_size},
  M-RoPE, a {text_config.vocab_size}-entry word-level vocabulary (`hieravid.proxy.build`)

## How it was made
```
hieravid train-proxy --out DIR --steps {config['steps']} --batch {config['batch']} --lr {config['lr']} --seed {config['seed']} --threads {config['threads']} --eval-every {config['eval_every']} {'--describe' if config['describe'] else '--no-describe'} --aux-weight {config['aux_weight']} --type-weight {config['type_weight']} --summary-weight {config.get('summary_weight', 0)} --curriculum {config.get('curriculum', 0)}
```
{config['steps']} AdamW steps of {config['batch']} fresh training videos each
({config['steps'] * config['batch']} videos, {asked}{caption}),
warm-up {config['warmup']} steps then cosine decay; weights initialised from seed {config['seed']}; {config['threads']} torch thread(s).{aux}
The training steps took **{result['train_seconds'] / 60:.1f} min** of wall time (the validation measurements
every {config['eval_every']} steps not included) on {platform.processor() or platform.machine()}
({os.cpu_count()} cores, torch {torch.__version__}).

| step | loss | validation accuracy (%) | {' | '.join(QUESTION_TYPES)} | minutes |
|---|---|---|{'---|' * len(QUESTION_TYPES)}---|
{curve}

## Accuracy
First {test_size} questions of the test split (100 per type), the letter the model scores highest among A-D
(chance 25%):

| all | {' | '.join(QUESTION_TYPES)} |
|---|{'---|' * len(QUESTION_TYPES)}
| **{100 * scores['all']:.1f}** | {per_type} |

{_status(scores)}
Generated answers and every pruning method: `hieravid eval --suite synthetic` (see the README).
"""
    (directory / "CARD.md").write_text(card)
    return card
