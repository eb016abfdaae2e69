"""Answer a question about a video with a supported model, pruned by any method, and time it.

The one code path behind ``hieravid run``, ``hieravid demo`` and ``hieravid eval``:

    loaded = load_model("Qwen/Qwen2-VL-7B-Instruct")      # or a local directory; None -> the shipped proxy model
    result = answer(loaded, frames, "What happens?", method="hieravid", budget=0.3)
    result.text, result.stats.tokens_per_layer, result.prefill_seconds

Frames are already sampled ``(T, H, W, 3)`` uint8 arrays (see :mod:`hieravid.video`); the processor is told not to
sample again. Greedy decoding.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from hieravid.api import apply
from hieravid.config import is_integer
from hieravid.methods import PruningMethod
from hieravid.models import FAMILIES, SUPPORTED, find_adapter
from hieravid.runtime import PruneStats, PruneTrace, device_clock
from hieravid.video import available_memory, size_text

__all__ = ["Answer", "LoadedModel", "answer", "build_inputs", "check_device", "load_model"]


@dataclass
class LoadedModel:
    """A model and its processor, ready for :func:`answer`.

    Attributes:
        model: the ``...ForConditionalGeneration`` model, in eval mode.
        processor: its ``AutoProcessor``.
        family: ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl`` or ``llava_onevision``.
        name: what it was loaded from (hub id or path).
    """

    model: nn.Module
    processor: Any
    family: str
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class Answer:
    """One generated answer.

    Attributes:
        text: the generated text, special tokens removed, stripped.
        stats: what the pruning did in the prefill (tokens per layer, FLOPs, decide time).
        prefill_seconds: the language model's prefill forward (first forward of ``generate``), seconds.
        vision_seconds: the vision encoder, seconds.
        total_seconds: the whole ``generate`` call, seconds (vision, prefill and decoding).
        new_tokens: tokens generated.
        input_tokens: prompt length in tokens, video tokens included.
        trace: the method's decisions token by token (:class:`hieravid.runtime.PruneTrace`) when
            :func:`answer` was called with ``trace=True``, else None.
    """

    text: str
    stats: PruneStats | None
    prefill_seconds: float
    vision_seconds: float
    total_seconds: float
    new_tokens: int
    input_tokens: int
    trace: PruneTrace | None = None


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device hieravid runs and times on: a CPU, or a CUDA device torch sees (its
    clocks wait for CUDA's queued work). Anything else is a ``ValueError`` naming the choices."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"hieravid runs on cpu or cuda devices, not {dev.type}: use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but torch sees no CUDA device; use device='cpu' (--device cpu on "
            "the command line)"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= (count := torch.cuda.device_count()):
        seen = "1 CUDA device (cuda:0)" if count == 1 else f"{count} CUDA devices (cuda:0 to cuda:{count - 1})"
        raise ValueError(f"device {str(device)!r} was asked for but torch sees {seen}: pick one of them")
    return dev


def load_model(
    id_or_path: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load a supported VideoLLM and its processor with ``from_pretrained``.

    Args:
        id_or_path: a Hugging Face hub id or a local directory; ``None`` loads the small proxy model shipped in
            the package (:func:`hieravid.proxy.model_dir`), which works offline.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (see :func:`check_device`)
        dtype: ``"auto"`` (the checkpoint's), or a torch dtype / its name (``"bfloat16"``).
        attn_implementation: ``"sdpa"`` or ``"eager"``.
    """
    device = check_device(device)  # before the weights are read
    try:
        import torchvision  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "transformers' video processors need torchvision, which is not installed: install the torchvision "
            f"release paired with your torch {torch.__version__.split('+')[0]} (e.g. pip install torch==2.14.1 "
            "torchvision==0.29.1)"
        ) from err
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if id_or_path is None:
        from hieravid.proxy import model_dir

        id_or_path = model_dir()
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}: use auto (the checkpoint's), bfloat16, float16 or float32")
        dtype = getattr(torch, dtype)
    name = str(id_or_path)
    local = Path(name).expanduser()
    if not local.exists() and (name.startswith(("/", ".", "~")) or name.count("/") != 1):
        raise FileNotFoundError(
            f"no model directory at {name!r}, and it is not a hub id (those read org/name, e.g. "
            "Qwen/Qwen2-VL-7B-Instruct): check the path"
        )
    if local.exists() and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{name} has no config.json: pass a model directory saved with save_pretrained")
    source = str(local) if local.exists() else name  # a "~" the shell left is the directory it names
    try:
        config = AutoConfig.from_pretrained(source)  # its family, before the weights are read
        if config.model_type not in FAMILIES:
            classes = ", ".join(getattr(config, "architectures", None) or []) or "no class named"
            raise ValueError(
                f"{name} is a {config.model_type!r} model ({classes}): hieravid supports the video-language "
                f"families {', '.join(FAMILIES)} (model classes {', '.join(SUPPORTED)})"
            )
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype,
                                                            attn_implementation=attn_implementation)
        try:
            processor = AutoProcessor.from_pretrained(source)
        except ValueError as err:  # a tokenizer that cannot be built from what is there
            raise OSError(f"its processor could not be built ({err})") from err
        adapter, _ = find_adapter(model)
        missing = _missing_from_processor(processor, adapter.video_token_id)
        if missing:
            raise OSError(missing)
    except (OSError, SafetensorError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if local.exists():  # a broken directory: weights missing or cut off, a bad config, no processor files
            raise ValueError(
                f"could not load the model directory {name}: {reason}; pass a directory saved with save_pretrained "
                "(the model's and the processor's), complete"
            ) from err
        raise FileNotFoundError(
            f"{name} is not a local directory, and loading it as a Hugging Face hub id failed ({reason}): pass a "
            "directory saved with save_pretrained, or a hub id that is in the local cache or reachable"
        ) from err
    model.to(device).eval()
    return LoadedModel(model=model, processor=processor, family=adapter.family, name=name)


def _missing_from_processor(processor: Any, expected: int) -> str | None:
    """What a loaded processor lacks to prompt the model with a video (a tokenizer that does not know the
    model's video token, id ``expected``; no chat template), or None."""
    token = getattr(processor, "video_token", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if token is None or tokenizer is None or tokenizer.convert_tokens_to_ids(token) != expected:
        return f"its tokenizer does not know the video token {token!r} as id {expected} (tokenizer files missing?)"
    if not getattr(processor, "chat_template", None):
        return "its processor has no chat template (chat_template.jinja), which prompts are built with"
    return None


# Families whose processors refuse frames whose longer side is more than 200 times the shorter (Qwen's smart_resize).
_MAX_ASPECT = {"qwen2_vl": 200, "qwen2_5_vl": 200, "qwen3_vl": 200}


def _aspect_error(family: str, height: int, width: int) -> ValueError:
    return ValueError(
        f"the {family} processor refuses frames of {width}x{height} pixels (width x height): the longer side is "
        f"{max(height, width) / min(height, width):.0f} times the shorter, above its limit of "
        f"{_MAX_ASPECT.get(family, 200)}; crop or pad the video to a less elongated frame (e.g. ffmpeg's crop or "
        "pad filter)"
    )


def _check_size(loaded: LoadedModel, prompt: str, count: int, height: int, width: int) -> None:
    """Refuse, before the processor builds them, frames the model or the machine cannot take, naming the most
    frames that fit:

    - LLaVA-OneVision gives each token a position of its own: more visual tokens, beside the prompt's text,
      than its decoder's positions (``max_position_embeddings``, default RoPE) lie past what it was trained on.
      (The Qwen families' M-RoPE positions grow with the frames' grid, not with their tokens.)
    - The Qwen families' processors build float32 pixel values of every patch (3 x temporal x patch^2 values
      each): twice their size beyond the memory available would end the process.

    The token count is the processor's own (transformers' ``_get_num_multimodal_tokens``, which vLLM reads; it
    counts Qwen2-VL's frames uncapped by ``cap_pixels_per_frame``, so it errs towards more); a processor
    without it is not checked."""
    processor = loaded.processor
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if counter is None:
        return
    text_config = loaded.model.config.get_text_config()
    positions = getattr(text_config, "max_position_embeddings", None)
    rope = (getattr(text_config, "rope_parameters", None) or {}).get("rope_type", "default")
    if loaded.family != "llava_onevision" or not is_integer(positions) or rope != "default":
        positions = None
    video = getattr(processor, "video_processor", None)
    sizes = [getattr(video, name, None) for name in ("merge_size", "temporal_patch_size", "patch_size")]
    per_token = 4 * 3 * sizes[0] ** 2 * sizes[1] * sizes[2] ** 2 if all(map(is_integer, sizes)) else None  # bytes
    available = available_memory() if loaded.family != "llava_onevision" and per_token else None

    def tokens(frames: int) -> int | None:
        try:
            return int(counter(video_sizes=[(frames, height, width)])["num_video_tokens"][0])
        except Exception:  # noqa: BLE001 - a count this processor cannot give: its own errors stand
            return None

    made = tokens(count)
    if made is None:
        return
    room = None
    if positions is not None and made > positions // 2:  # no prompt's text takes half the positions
        text = len(processor.tokenizer(prompt)["input_ids"]) - 1  # less the video's one placeholder
        room = positions - text
    memory = None if available is None else available // (2 * per_token)  # visual tokens whose pixels fit
    limit = min(v for v in (room, memory, made) if v is not None)
    if made <= limit:
        return
    low, high = 0, count  # the most frames that fit: tokens(low) <= limit < tokens(high)
    while high - low > 1:
        middle = (low + high) // 2
        fits = tokens(middle)
        low, high = (middle, high) if fits is not None and fits <= limit else (low, middle)
    made_text = f"{count} frames of {width}x{height} pixels make {made} visual tokens"
    fix = f"pass at most {low} frames (--num-frames on the command line)"
    if limit == room:
        raise ValueError(
            f"{made_text}, which with the prompt's {text} text tokens is more than the {positions} positions of the "
            f"model's decoder (max_position_embeddings): {fix}"
        )
    raise ValueError(
        f"{made_text}, whose pixel values the processor builds in {size_text(2 * made * per_token)} (float32, with a "
        f"copy), more than the {size_text(available)} of memory available: {fix}"
    )


def build_inputs(
    loaded: LoadedModel,
    frames: np.ndarray,
    question: str,
    *,
    timestamps_s: Sequence[float] | None = None,
    system: str | None = None,
    source_fps: float | None = None,
) -> dict[str, torch.Tensor]:
    """Processor inputs for one video and one question, rendered by the model's chat template.

    ``frames`` ``(T, H, W, 3)`` uint8; ``timestamps_s`` the time of each frame (Qwen3-VL writes them into the
    prompt); without them the frames are taken as 1 per second. ``source_fps``: the frame rate of the video they
    were sampled from (``SampledVideo.fps``), for Qwen2.5-VL's seconds per temporal patch, which its processor
    and ``qwen-vl-utils`` take as the patch's frames over ``N / clip duration``, the clip lasting its frames'
    span plus one source frame; without it, over the mean interval between the sampled frames (a little
    longer: ``(N - 1) / span``). The Qwen families' processors refuse frames
    whose longer side is more than 200 times the shorter: a ``ValueError`` names the frame size and the fix.
    """
    from transformers.video_utils import VideoMetadata

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise ValueError(
            f"frames must be a (T, H, W, 3) uint8 array with T, H, W >= 1, got {frames.dtype} {frames.shape}"
        )
    if not question.strip():
        raise ValueError("the question is empty: pass the text to ask about the video")
    processor = loaded.processor
    placeholders = [getattr(processor, name, None) for name in ("video_token", "image_token")]
    for text, what in ((question, "question"), (system or "", "system prompt")):
        for token in placeholders:
            if isinstance(token, str) and token and token in text:
                raise ValueError(
                    f"the {what} contains {token!r}, the text the model's processor replaces with the visual "
                    f"tokens of a video or an image: remove or reword it"
                )
    count, height, width = frames.shape[:3]
    limit = _MAX_ASPECT.get(loaded.family)
    if limit is not None and max(height, width) > limit * min(height, width):
        raise _aspect_error(loaded.family, height, width)
    if timestamps_s is None:
        fps, indices = 1.0, list(range(count))
    else:
        if len(timestamps_s) != count:
            raise ValueError(f"{len(timestamps_s)} timestamps for {count} frames")
        if loaded.family == "qwen3_vl":
            # Its prompt states each frame's time, indices / fps: on a millisecond grid they are the frames'
            # own (a variable frame rate's too), where the mean rate below would move them by up to half
            # a frame interval. It reads nothing else of the two.
            fps, indices = 1000.0, [int(round(1000 * float(t))) for t in timestamps_s]
        else:  # Qwen2.5-VL's second_per_grid_ts reads the sampled frame rate
            span = float(timestamps_s[-1] - timestamps_s[0])
            if source_fps is not None and source_fps > 0:
                fps = count / (span + 1.0 / source_fps)
            else:
                fps = (count - 1) / span if count > 1 and span > 0 else 1.0
            indices = [int(round(t * fps)) for t in timestamps_s]
    messages = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    _check_size(loaded, prompt, count, height, width)
    metadata = VideoMetadata(total_num_frames=count, fps=fps, frames_indices=indices, height=height, width=width)
    try:
        inputs = processor(  # channels last, stated: frames 1 or 3 pixels high would be guessed channels first
            text=[prompt], videos=[frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt",
            input_data_format="channels_last",
        )
    except ValueError as err:  # e.g. Qwen3-VL's video processor wants at least its temporal patch of frames
        if "aspect ratio" in str(err):  # should the processor's own rule differ from the check above
            raise ValueError(
                f"the {loaded.family} processor refused frames of {width}x{height} pixels ({err}): crop or pad the "
                "video to a less elongated frame (e.g. ffmpeg's crop or pad filter)"
            ) from err
        if "temporal" not in str(err):
            raise
        raise ValueError(f"the {loaded.family} processor refused {count} frame(s) ({err}): pass more frames "
                         "(--num-frames 2 or more)") from err
    return {k: v.to(loaded.device) if torch.is_tensor(v) else v for k, v in inputs.items()}


@contextmanager
def _timed_calls(module: nn.Module, device: torch.device) -> Iterator[list[float]]:
    """Seconds of each forward call of ``module`` while the block runs."""
    times: list[float] = []
    start: list[float] = []

    def before(*_: Any) -> None:
        start.append(device_clock(device))

    def after(*_: Any) -> None:
        times.append(device_clock(device) - start.pop())

    hooks = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield times
    finally:
        for hook in hooks:
            hook.remove()


def answer(
    loaded: LoadedModel,
    frames: np.ndarray,
    question: str,
    *,
    method: str | PruningMethod = "vanilla",
    budget: float | None = None,
    options: dict[str, Any] | None = None,
    max_new_tokens: int = 16,
    timestamps_s: Sequence[float] | None = None,
    system: str | None = None,
    trace: bool = False,
    source_fps: float | None = None,
) -> Answer:
    """Generate an answer (greedy) about ``frames`` with ``method`` at ``budget`` (default 0.3, as
    :func:`hieravid.apply`; an instance carries its own).

    The method is applied for this call only (``vanilla`` runs the same machinery and prunes nothing, so its
    statistics are comparable). See :func:`build_inputs` for the arguments describing the video. ``trace=True``
    also records the method's decisions in ``Answer.trace`` (for :func:`hieravid.viz.render_decisions`).
    """
    inputs = build_inputs(loaded, frames, question, timestamps_s=timestamps_s, system=system, source_fps=source_fps)
    model = loaded.model
    adapter, multimodal = find_adapter(model)
    vision = getattr(multimodal, "visual", None) or getattr(multimodal, "vision_tower", None)
    device = loaded.device
    with apply(model, method, budget, trace=trace, **(options or {})) as handle, torch.inference_mode():
        with _timed_calls(adapter.text_model, device) as llm_times, _timed_calls(vision, device) as vision_times:
            start = device_clock(device)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            total = device_clock(device) - start
        stats = handle.last_stats
        last_trace = handle.last_trace
    prompt_len = inputs["input_ids"].shape[1]
    new = out[0, prompt_len:]
    text = loaded.processor.batch_decode(new[None], skip_special_tokens=True)[0].strip()
    return Answer(
        text=text,
        stats=stats,
        prefill_seconds=llm_times[0] if llm_times else 0.0,
        vision_seconds=sum(vision_times),
        total_seconds=total,
        new_tokens=int(new.numel()),
        input_tokens=int(prompt_len),
        trace=last_trace,
    )
