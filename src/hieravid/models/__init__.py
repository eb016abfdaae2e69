"""Model adapters: one per family. ``find_adapter(model)`` picks the right one."""

from __future__ import annotations

from torch import nn

from hieravid.models.base import CallContext, ModelAdapter, VideoLayout
from hieravid.models.llava_onevision import LlavaOnevisionAdapter
from hieravid.models.qwen_vl import Qwen3VLAdapter, QwenVLAdapter

__all__ = ["CallContext", "ModelAdapter", "VideoLayout", "find_adapter", "FAMILIES", "SUPPORTED"]

# Class names of the multimodal models (the inner model or its ForConditionalGeneration wrapper).
_FAMILIES: dict[str, tuple[type[ModelAdapter], str]] = {
    "Qwen2VLForConditionalGeneration": (QwenVLAdapter, "qwen2_vl"),
    "Qwen2VLModel": (QwenVLAdapter, "qwen2_vl"),
    "Qwen2_5_VLForConditionalGeneration": (QwenVLAdapter, "qwen2_5_vl"),
    "Qwen2_5_VLModel": (QwenVLAdapter, "qwen2_5_vl"),
    "Qwen3VLForConditionalGeneration": (Qwen3VLAdapter, "qwen3_vl"),
    "Qwen3VLModel": (Qwen3VLAdapter, "qwen3_vl"),
    "LlavaOnevisionForConditionalGeneration": (LlavaOnevisionAdapter, "llava_onevision"),
    "LlavaOnevisionModel": (LlavaOnevisionAdapter, "llava_onevision"),
}

#: Model classes hieravid supports.
SUPPORTED = tuple(_FAMILIES)
#: Model families hieravid supports, named as their configs' ``model_type``.
FAMILIES = tuple(dict.fromkeys(family for _, family in _FAMILIES.values()))


def find_adapter(model: nn.Module) -> tuple[ModelAdapter, nn.Module]:
    """The adapter for ``model`` and the multimodal module whose calls carry ``input_ids`` (it is
    ``model`` itself or ``model.model``)."""
    name = type(model).__name__
    if name not in _FAMILIES and hasattr(model, "get_base_model"):  # a PEFT wrapper (PeftModel, LoraModel)
        inner = type(model.get_base_model()).__name__
        raise ValueError(
            f"{name} is a PEFT wrapper of {inner}: apply hieravid to the model it wraps, "
            "hieravid.apply(peft_model.get_base_model(), ...), and call the wrapper as before (its adapters stay "
            "in the layers hieravid runs)"
        )
    if name not in _FAMILIES and isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
        raise ValueError(
            f"{name} is a torch.compile wrapper of {type(model._orig_mod).__name__}: apply hieravid to the model "
            "before compiling it (or to compiled._orig_mod)"
        )
    inner = getattr(model, "model", None)  # a PEFT tuner (LoraModel), a transformers pipeline
    if name not in _FAMILIES and type(inner).__name__ in _FAMILIES:
        raise ValueError(
            f"{name} holds {type(inner).__name__} in its .model: apply hieravid to that, "
            "hieravid.apply(wrapper.model, ...), and call the wrapper as before"
        )
    if name not in _FAMILIES:
        fix = (
            "hieravid has no adapter for this model family"
            if name.endswith("ForConditionalGeneration")
            else "Load the model with its ...ForConditionalGeneration class (e.g. via AutoModelForImageTextToText)"
        )
        raise ValueError(f"hieravid does not support {name}; supported model classes: {', '.join(SUPPORTED)}. {fix}")
    adapter_cls, family = _FAMILIES[name]
    multimodal = model.model if name.endswith("ForConditionalGeneration") else model
    adapter = adapter_cls(model, multimodal.language_model)
    adapter.family = family
    return adapter, multimodal
