"""lmms-eval plugin: pruned VideoLLMs as lmms-eval models.

Installing hieravid registers four models with lmms-eval through the entry-point group ``lmms_eval.models``
(lmms-eval's ``ModelRegistryV2.load_entrypoint_manifests`` calls each entry point and registers the
``ModelManifest`` it returns):

    hieravid_qwen2_vl, hieravid_qwen2_5_vl, hieravid_qwen3_vl, hieravid_llava_onevision

so that, with lmms-eval installed::

    lmms-eval --model hieravid_qwen2_vl --model_args pretrained=Qwen/Qwen2-VL-7B-Instruct,method=hieravid,budget=0.3 \\
        --tasks videomme

runs the model pruned by ``method`` at ``budget`` (``method=vanilla`` prunes nothing). Model arguments:
``pretrained`` (hub id or local directory), ``method`` (default ``vanilla``), ``budget`` (default 0.3, as
``hieravid run``; 1 for ``vanilla``), ``max_num_frames`` (frames sampled per
video, default 32), ``device`` (``auto``: the process's GPU under ``accelerate launch``, else ``cuda`` or
``cpu``), ``dtype`` (``auto``, ``bfloat16``...), ``attn_implementation`` (``sdpa``), ``max_new_tokens``
(used when the task sets none; default 128, as lmms-eval's own Qwen2-VL model).

Each request is answered alone (greedy decoding) by :func:`hieravid.infer.answer` on frames decoded by
:mod:`hieravid.video`: video tasks only (a request whose visual is not a video file path is refused with an error).
Each answer is cut at the earliest of the request's stop strings (``until``; lmms-eval gives ``"\\n\\n"`` to every
task whose yaml sets none), as ``hieravid eval`` cuts it (:func:`hieravid.eval.tasks.cut_at_stop`).
lmms-eval's output says nothing of the pruning, so each ``generate_until`` call ends with one line on stderr:
the answers, the visual tokens kept and the prefill FLOPs against the unpruned model's (means over the answers).
The requests lmms-eval adds to even out the processes' shares (``metadata["__padding_only__"]``; their answers are
dropped) are answered like the others but left out of that line and of ``last_stats``.

lmms-eval is a heavy install, and this module never imports it at import time: the entry points return manifests
built on call, and the classes lmms-eval loads (``HieravidQwen2VL``...) are made on first access, as subclasses
of :class:`HieravidLMM` and lmms-eval's ``lmms`` base class. :class:`HieravidLMM` itself needs only the
``Instance.args`` interface (``(context, generation_kwargs, doc_to_visual, doc_id, task, split)``) and the
``task_dict`` lmms-eval sets on the model, which is what hieravid's tests use, through a minimal stand-in of
lmms-eval's ``Instance``, without lmms-eval installed.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hieravid.config import DEFAULT_BUDGET
from hieravid.eval.tasks import cut_at_stop
from hieravid.warning import HieravidWarning

__all__ = ["CLASS_NAMES", "FAMILIES", "HieravidLMM"]

# lmms-eval model name -> hieravid model family
FAMILIES = {
    "hieravid_qwen2_vl": "qwen2_vl",
    "hieravid_qwen2_5_vl": "qwen2_5_vl",
    "hieravid_qwen3_vl": "qwen3_vl",
    "hieravid_llava_onevision": "llava_onevision",
}
# lmms-eval model name -> class lmms-eval imports from this module
CLASS_NAMES = {
    "hieravid_qwen2_vl": "HieravidQwen2VL",
    "hieravid_qwen2_5_vl": "HieravidQwen2_5VL",
    "hieravid_qwen3_vl": "HieravidQwen3VL",
    "hieravid_llava_onevision": "HieravidLlavaOneVision",
}
_MODEL_OF_CLASS = {cls: name for name, cls in CLASS_NAMES.items()}


@contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """hieravid's warnings (a video that looks truncated, a budget ignored or not reached exactly) on stderr,
    each once, where every warning is ignored: lmms-eval does that as it is imported
    (``warnings.filterwarnings("ignore")``). Elsewhere, a filter on ``HieravidWarning`` itself included,
    warnings go their usual way."""
    if not (_ignored(HieravidWarning) and _ignored(UserWarning)):
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HieravidWarning)
        try:
            yield
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, HieravidWarning)):
                print(f"hieravid: warning: {message}", file=sys.stderr, flush=True)


def _ignored(category: type[Warning]) -> bool:
    """Whether a warning of ``category`` given here would be ignored by the filters in force."""
    with warnings.catch_warnings(record=True) as probe:
        try:
            warnings.warn("probe", category)
        except Warning:  # warnings made errors
            return False
    return not probe


def _count(name: str, value: Any) -> int:
    """``value`` of model_args ``name`` (a string on lmms-eval's command line) as an int >= 1."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(count) != str(value).strip():
        raise ValueError(f"model_args {name} must be an integer >= 1, got {value!r}")
    return count


class HieravidLMM:
    """A supported VideoLLM, pruned, answering lmms-eval ``generate_until`` requests.

    Args:
        pretrained: hub id or local directory (``from_pretrained``).
        method: pruning method name (:func:`hieravid.methods.available`); ``vanilla`` prunes nothing.
        budget: relative token budget in (0, 1] (visual tokens kept, averaged over the decoder layers); default
            0.3, and 1 for ``vanilla``.
        max_num_frames: frames sampled uniformly from each video.
        device: ``auto`` (also None, lmms-eval's default), ``cuda``, ``cuda:1``, ``cpu``.
        dtype: ``auto`` (the checkpoint's) or a torch dtype name.
        attn_implementation: ``sdpa`` or ``eager``.
        max_new_tokens: tokens to generate when the request's generation arguments give none.
        loaded: an already loaded :class:`hieravid.infer.LoadedModel` instead of ``pretrained``.
        batch_size, max_batch_size: accepted from lmms-eval; requests are answered one at a time.
    """

    family: str = ""  # the family this wrapper is registered for ("" = any supported family)
    is_simple = True

    @_warnings_on_stderr()
    def __init__(
        self,
        pretrained: str | None = None,
        method: str = "vanilla",
        budget: float | str | None = None,
        max_num_frames: int = 32,
        device: str | None = "auto",
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        max_new_tokens: int = 128,
        loaded: Any | None = None,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"unknown model_args {sorted(unknown)}; accepted: pretrained, method, budget, max_num_frames, "
                "device, dtype, attn_implementation, max_new_tokens"
            )
        from hieravid.methods import build

        self.method = str(method)
        if budget is None:
            budget = 1.0 if self.method == "vanilla" else DEFAULT_BUDGET
        try:
            self.budget = float(budget)
        except ValueError:
            raise ValueError(f"model_args budget must be a number in (0, 1], got {budget!r}") from None
        build(self.method, self.budget)  # an unknown method or a bad budget fails here, naming the allowed values
        if self.method == "vanilla":  # a budget given to it was said to be ignored
            self.budget = 1.0  # what it runs at, as hieravid eval reports vanilla
        self.max_num_frames = _count("max_num_frames", max_num_frames)
        self.max_new_tokens = _count("max_new_tokens", max_new_tokens)
        # Under ``accelerate launch`` lmms-eval gathers the processes' request counts through the model's
        # accelerator (``lm.accelerator.gather``); one process needs none.
        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from datetime import timedelta

            import torch
            from accelerate import Accelerator, InitProcessGroupKwargs

            on_cpu = not torch.cuda.is_available() or str(device).startswith("cpu")
            wait = InitProcessGroupKwargs(timeout=timedelta(days=7))  # the processes' shards are of unequal length
            self.accelerator = Accelerator(cpu=on_cpu, kwargs_handlers=[wait])
        if loaded is None:
            if not pretrained:
                raise ValueError("pass the model with model_args pretrained=<hub id or local directory>")
            from hieravid.infer import load_model

            loaded = load_model(str(pretrained), device=_device(device or "auto"), dtype=str(dtype),
                                attn_implementation=str(attn_implementation))
        if self.family and loaded.family != self.family:
            right = next((name for name, fam in FAMILIES.items() if fam == loaded.family), None)
            raise ValueError(f"{pretrained or loaded.name} is a {loaded.family} model: use --model {right}")
        from hieravid.eval.runner import _check_budgets

        _check_budgets(loaded, [(self.method, self.budget)])  # the model's depth, before lmms-eval builds requests
        self.loaded = loaded
        self.task_dict: dict = getattr(self, "task_dict", {})
        self._rank = 0 if self.accelerator is None else self.accelerator.process_index
        self._world_size = 1 if self.accelerator is None else self.accelerator.num_processes
        self.last_stats: list[Any] = []  # PruneStats of each answer of the last generate_until call (no padding)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def device(self):
        return self.loaded.device

    @_warnings_on_stderr()
    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """One answer per request, in order. ``request.args`` is ``(context, generation_kwargs, doc_to_visual,
        doc_id, task, split)``; ``doc_to_visual(doc)`` must give one video file path."""
        from hieravid.infer import answer
        from hieravid.video import read_video

        outputs: list[str] = []
        self.last_stats = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            visuals = _flatten(doc_to_visual(self.task_dict[task][split][doc_id]))
            videos = [v for v in visuals if isinstance(v, (str, os.PathLike))]
            if len(videos) != 1 or len(visuals) != 1:
                raise ValueError(
                    f"{task} doc {doc_id}: hieravid models answer about exactly one video file, got "
                    f"{[type(v).__name__ for v in visuals]}"
                )
            video = read_video(videos[0], self.max_num_frames)
            result = answer(
                self.loaded, video.frames, context, method=self.method, budget=self.budget,
                max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
                timestamps_s=video.timestamps_s, source_fps=video.fps,
            )
            outputs.append(cut_at_stop(result.text, gen_kwargs.get("until")))
            if not _is_padding(request):
                self.last_stats.append(result.stats)
        if self.last_stats:
            print(self._summary(), file=sys.stderr, flush=True)
        return outputs

    def _summary(self) -> str:
        """One line on the last ``generate_until`` call's pruning (lmms-eval's results do not show it)."""
        stats = self.last_stats
        where = f" (process {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        kept = sum(s.achieved_budget for s in stats) / len(stats)
        flops = sum(s.flops.exact_ratio for s in stats) / len(stats)
        return (
            f"hieravid{where}: {len(stats)} answers by {self.method} at budget {self.budget:g}: visual tokens kept "
            f"{kept:.3f} of the unpruned model's, prefill FLOPs (exact, text included) {flops:.3f} of its (means "
            "over the answers)"
        )

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError("hieravid models support generate_until tasks only (not loglikelihood)")

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError("hieravid models support single-round generate_until tasks only")


def _device(device: str) -> str:
    """The device this process runs on: ``auto`` is this process's GPU (or the CPU), and a plain ``cuda``
    under several processes (``accelerate launch``) is this process's GPU too, as in ``hieravid eval``."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device == "auto" or (device == "cuda" and several):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return "cpu" if device == "auto" else device
    return device


def _flatten(visuals: Any) -> list[Any]:
    if isinstance(visuals, (list, tuple)):
        return [item for v in visuals for item in _flatten(v)]
    return [visuals]


def _is_padding(request: Any) -> bool:
    """Whether lmms-eval added ``request`` only so that every process runs as many requests (its evaluator
    marks the copies ``metadata["__padding_only__"]`` and drops their answers). It is still answered: lmms-eval
    expects an answer for each request, and its response cache keys a copy as the request it copies."""
    metadata = getattr(request, "metadata", None)
    return isinstance(metadata, dict) and bool(metadata.get("__padding_only__"))


def _manifest(model_id: str):
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=model_id, simple_class_path=f"{__name__}.{CLASS_NAMES[model_id]}")


# entry points (group lmms_eval.models): each returns the manifest lmms-eval registers
def qwen2_vl_manifest():
    return _manifest("hieravid_qwen2_vl")


def qwen2_5_vl_manifest():
    return _manifest("hieravid_qwen2_5_vl")


def qwen3_vl_manifest():
    return _manifest("hieravid_qwen3_vl")


def llava_onevision_manifest():
    return _manifest("hieravid_llava_onevision")


def __getattr__(name: str) -> type:
    """The lmms-eval model classes, made on first access (this is where lmms_eval is imported)."""
    if name not in _MODEL_OF_CLASS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lmms_eval.api.model import lmms

    cls = type(name, (HieravidLMM, lmms), {"family": FAMILIES[_MODEL_OF_CLASS[name]], "__module__": __name__})
    globals()[name] = cls
    return cls
