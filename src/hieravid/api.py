"""``hieravid.apply``: patch a Hugging Face VideoLLM in place so its prefill prunes visual tokens."""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any

import torch
from torch import nn

from hieravid.methods import PruningMethod, build
from hieravid.models import CallContext, find_adapter
from hieravid.runtime import PruneStats, PruneTrace, Runtime

__all__ = ["PruneHandle", "apply"]

_MARK = "_hieravid_handle"
# The call arguments the adapters read to locate the video tokens.
_CONTEXT_KEYS = ("input_ids", "video_grid_thw", "pixel_values_videos", "attention_mask", "mm_encoder_outputs")
_VIDEO_KEYS = ("video_grid_thw",)  # small: never the pixels, which are not kept past their call


def _refuse_copy(*args: Any) -> None:
    """Raised from what :func:`apply` puts on a model when the model is copied (``copy.deepcopy``) or pickled
    (``torch.save(model)``): a copy would keep the patched forward without the hooks that feed it."""
    raise TypeError(
        "a model hieravid is applied to cannot be copied or pickled (the copy would keep the patched forward "
        "without the hooks that feed it): call handle.remove() first, copy or save the model, then "
        "hieravid.apply to each copy; torch.save(model.state_dict()) works while applied"
    )


class _Patch:
    """A hook or patched method that :func:`apply` puts on a model: calls ``fn`` (and looks like it to
    ``inspect.signature``), and refuses to be copied or pickled."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    __reduce_ex__ = _refuse_copy


class PruneHandle:
    """Returned by :func:`apply`. ``last_stats`` describes the last prefill (``last_trace`` too, token by
    token, when applied with ``trace=True``); ``remove()`` (or leaving a ``with`` block) gives the model back
    exactly as it was."""

    def __init__(self, model: nn.Module, runtime: Runtime, patches: list[tuple[nn.Module, str, _Patch]],
                 hooks: list) -> None:
        self.model = model
        self.runtime = runtime
        self._hooks = hooks
        # Each patch, where it goes and what that instance attribute was before (absent for the usual class
        # methods); install() puts them in place.
        self._saved = [(module, name, patch, module.__dict__.get(name)) for module, name, patch in patches]
        self.active = True

    def install(self) -> None:
        for module, name, patch, _ in self._saved:
            setattr(module, name, patch)

    @property
    def method(self) -> PruningMethod:
        """The method instance this handle applies (its name, config and schedule)."""
        return self.runtime.method

    @property
    def last_stats(self) -> PruneStats | None:
        """Statistics of the last prefill (None before the first call)."""
        return self.runtime.last_stats

    @property
    def last_trace(self) -> PruneTrace | None:
        """The decisions of the last prefill, token by token (:class:`hieravid.runtime.PruneTrace`): merged,
        kept and dropped tokens at every decision point, segments and relevance scores. None before the
        first call, and always None unless :func:`apply` was given ``trace=True``."""
        return self.runtime.last_trace

    __reduce_ex__ = _refuse_copy

    def remove(self) -> None:
        """Undo :func:`apply`: restore the language model's forward and remove the hooks."""
        if not self.active:
            return
        for hook in self._hooks:
            hook.remove()
        for module, name, patch, before in self._saved:
            # A forward patch moves where accelerate's hooks move forwards (see _forward_slot): restore it
            # where it is now, and leave whatever hook has since wrapped it in place.
            for slot in _FORWARD_SLOTS if name in _FORWARD_SLOTS else (name,):
                if module.__dict__.get(slot) is patch:
                    _restore(module, slot, before)
        for module in {self.model, *(m for m, _, _, _ in self._saved)}:
            module.__dict__.pop(_MARK, None)
        self.runtime.forget_call()  # nothing of the last call kept alive
        self.runtime._encodings = []
        self.active = False

    def __enter__(self) -> "PruneHandle":
        if not self.active:
            raise ValueError(
                "this handle was removed, so the model would run unpruned: call hieravid.apply(model, ...) "
                "again for a new handle"
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


# accelerate's hooks replace a module's ``forward`` with a wrapper that runs the hook around the forward it
# keeps as ``_old_forward``, and put that back as ``forward`` when they are removed.
_FORWARD_SLOTS = ("forward", "_old_forward")


def _forward_slot(module: nn.Module) -> str:
    """Where the pruned forward goes: inside the accelerate hook wrapping ``module``'s forward, if there is
    one (the hook may move the inputs to the module's device and bring in offloaded weights), else ``forward``."""
    hooked = getattr(module, "_hf_hook", None) is not None and "_old_forward" in module.__dict__
    return "_old_forward" if hooked else "forward"


def _restore(module: nn.Module, slot: str, before: Any) -> None:
    """Put ``module``'s original method back in ``slot``, which held a patch; ``before`` is what the patched
    attribute was (None: the class's own method)."""
    own = getattr(before, "__func__", None) is getattr(type(module), "forward", None) and (
        getattr(before, "__self__", None) is module)
    if slot == "_old_forward":  # a hook's wrapper calls it: it must stay
        module.__dict__[slot] = before if before is not None else types.MethodType(type(module).forward, module)
    elif before is None or own:
        module.__dict__.pop(slot, None)
    else:
        module.__dict__[slot] = before


def _forget_removed(module: nn.Module) -> None:
    """Drop what a removed handle left in ``module``'s own attributes: its mark and patched methods stay
    on a shallow copy (``copy.copy``) made while the handle was active, which its ``remove`` never sees."""
    mark = module.__dict__.get(_MARK)
    if mark is None or mark.active:
        return
    for name, value in list(module.__dict__.items()):
        if name == _MARK or isinstance(value, _Patch):
            if name in _FORWARD_SLOTS:
                _restore(module, name, None)
            else:
                del module.__dict__[name]


def _execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: its weights', or, where accelerate keeps them offloaded (on the
    meta device), the execution device of its first dispatch hook."""
    device = next(module.parameters()).device
    if device.type != "meta":
        return device
    for sub in module.modules():
        execution = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if execution is not None:
            return torch.device(execution)
    return device


def apply(
    model: nn.Module,
    method: str | PruningMethod = "hieravid",
    budget: float | None = None,
    *,
    trace: bool = False,
    **options: Any,
) -> PruneHandle:
    """Make ``model``'s prefill prune visual tokens, in place.

    Args:
        model: a supported transformers VideoLLM (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision /
            LLaVA-Video), as loaded with ``from_pretrained``; attention ``sdpa`` (default) or ``eager``.
        method: a name from :func:`hieravid.methods.available` (``"vanilla"`` prunes nothing) or an instance.
        budget: relative token budget in (0, 1]: visual tokens kept, averaged over the decoder layers
            (default 0.3; an instance carries its own and takes none here).
        trace: also record every decision token by token in ``handle.last_trace`` (for pictures and
            debugging; off by default, and then nothing is recorded).
        **options: the method's switches (for HieraVid, the fields of :class:`hieravid.HieraVidConfig`).

    Returns:
        A :class:`PruneHandle`; ``handle.remove()`` restores the model.
    """
    if not isinstance(trace, bool):
        raise ValueError(f"trace must be True or False, got {trace!r}")
    adapter, multimodal = find_adapter(model)
    text_model = adapter.text_model
    # Marked are the model and the modules a handle patches, so applying to an outer or inner module of
    # a model already patched (model and model.model share the language model) is refused too.
    marked = (model, multimodal, text_model)
    for module in marked:
        _forget_removed(module)
    if any(m.__dict__.get(_MARK) is not None for m in marked):
        raise ValueError("hieravid is already applied to this model: call handle.remove() before applying again")
    adapter.check_attention()
    layer_types = list(getattr(adapter.text_config, "layer_types", None) or [])
    windowed = [i for i, kind in enumerate(layer_types) if kind != "full_attention"]
    if windowed:
        raise ValueError(
            f"hieravid masks every decoder layer with full causal attention, but layers {windowed} of this model "
            f"use {layer_types[windowed[0]]!r}: load it with its sliding window off (Qwen2 decoders: "
            "use_sliding_window=False, as the released checkpoints have it), or run it without hieravid"
        )
    runtime = Runtime(adapter, build(method, budget, **options), trace=trace)
    runtime.method.decision_layers(adapter.num_layers)  # an unreachable budget fails here, not at prefill
    runtime.method.prepare(_execution_device(text_model))  # compile now, not in the first prefill

    signature = inspect.signature(type(multimodal).forward)

    def remember_call(module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind_partial(module, *args, **kwargs).arguments
        runtime.context = CallContext({k: bound.get(k) for k in _CONTEXT_KEYS})

    def forget_arguments(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        runtime.context = None

    # `generate` encodes the video before the first forward and passes only the encoder outputs, which
    # do not say how the tokens split into frames: remember the grid each encoding was given.
    encode_video = multimodal.get_video_features
    encode_signature = inspect.signature(encode_video)

    @functools.wraps(encode_video)  # same signature: `generate` inspects it to pick the arguments
    def remember_video(*args: Any, **kwargs: Any) -> Any:
        try:
            output = encode_video(*args, **kwargs)
        except BaseException:
            # The model call stops here: its inputs (the pixels) go now, as the hooks after its forward,
            # which a KeyboardInterrupt skips, would not forget them.
            runtime.forget_call()
            raise
        bound = encode_signature.bind_partial(*args, **kwargs).arguments
        runtime.remember_encoding(output, {k: bound[k] for k in _VIDEO_KEYS if bound.get(k) is not None})
        return output

    def refuse_what_pruning_cannot_return(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs.get("labels") is not None:
            raise ValueError(
                "hieravid prunes the prefill for inference: a pruned forward returns the kept positions only "
                "(the prompt's last token last), so a loss over labels cannot be computed; call "
                "handle.remove() to train or score every position"
            )
        for name, what in (("output_hidden_states", "hidden states"), ("output_attentions", "attention maps")):
            asked = kwargs.get(name)
            if asked is None:
                asked = getattr(module.config, name, False)
            if asked:
                raise ValueError(
                    f"hieravid's pruned forward returns no per-layer {what} (each layer keeps its own set of "
                    f"tokens; the last hidden state and logits cover the kept positions only): call without "
                    f"{name}=True (and with {name} False in model.config and model.generation_config), or "
                    "handle.remove() to get them"
                )

    hooks = [
        multimodal.register_forward_pre_hook(_Patch(remember_call), with_kwargs=True),
        # always_call: a forward that raises forgets its inputs too (they may be large: pixel values).
        multimodal.register_forward_hook(_Patch(forget_arguments), with_kwargs=True, always_call=True),
    ]
    if model is not multimodal:  # the outer model runs the LM head: on the positions logits_to_keep names
        outer = inspect.signature(type(model).forward).parameters.get("logits_to_keep")
        unset = 0 if outer is None or outer.default is inspect.Parameter.empty else outer.default

        def remember_logits(module: nn.Module, args: tuple, kwargs: dict) -> None:
            runtime.logits_to_keep = kwargs.get("logits_to_keep", unset)

        def forget_logits(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            runtime.logits_to_keep = None

        hooks.append(model.register_forward_pre_hook(_Patch(remember_logits), with_kwargs=True))
        hooks.append(model.register_forward_hook(_Patch(forget_logits), with_kwargs=True, always_call=True))
    for caller in dict.fromkeys((model, multimodal)):  # the multimodal model may be called on its own too
        hooks.append(caller.register_forward_pre_hook(_Patch(refuse_what_pruning_cannot_return), with_kwargs=True))
    patches = [
        (text_model, _forward_slot(text_model), _Patch(functools.partial(runtime.forward, text_model))),
        (multimodal, "get_video_features", _Patch(remember_video)),
    ]
    if model is not multimodal and callable(getattr(model, "generate", None)):
        generate = model.generate
        generate_signature = inspect.signature(generate)

        @functools.wraps(generate)
        def generate_whole_prompts(*args: Any, **kwargs: Any) -> Any:
            # As generate resolves it: its keyword, else the config passed (by name or position), whose
            # unset fields the model's generation config fills.
            bound = generate_signature.bind_partial(*args, **kwargs).arguments
            extra = bound.get("kwargs", {})
            configs = (bound.get("generation_config"), getattr(model, "generation_config", None))
            chunk = (extra["prefill_chunk_size"] if "prefill_chunk_size" in extra else
                     next((c.prefill_chunk_size for c in configs if getattr(c, "prefill_chunk_size", None) is not None), None))
            if chunk is not None:
                raise ValueError(
                    f"hieravid decides from the whole prompt in one prefill (its video and the instruction after "
                    f"it), but prefill_chunk_size={chunk!r} runs the prompt in pieces: generate with "
                    "prefill_chunk_size=None (and None in the generation config), or call handle.remove() first"
                )
            return generate(*args, **kwargs)

        patches.append((model, "generate", _Patch(generate_whole_prompts)))
    handle = PruneHandle(model, runtime, patches, hooks)
    handle.install()
    for module in marked:
        module.__dict__[_MARK] = handle
    return handle
