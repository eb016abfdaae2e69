"""What differs between the transformers releases hieravid supports.

transformers 5.24 renamed the KV-cache argument of every model, text model and decoder layer, and the
field of their outputs, from ``past_key_values`` to ``cache`` (the old name is still accepted, with a
warning, by the models' own ``forward``; a replaced ``forward`` must accept and pass the new one).
"""

from __future__ import annotations

from typing import Any

from transformers.modeling_outputs import BaseModelOutputWithPast

__all__ = ["CACHE_ARG", "cache_of", "text_model_output"]

#: The name of the KV-cache argument and output field in the installed transformers.
CACHE_ARG: str = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_of(output: Any) -> Any:
    """The KV cache a model's output carries (None when it has none)."""
    return getattr(output, CACHE_ARG, None)


def text_model_output(hidden: Any, cache: Any) -> BaseModelOutputWithPast:
    """A language model's output: its last hidden states and the cache the prefill filled."""
    return BaseModelOutputWithPast(last_hidden_state=hidden, **{CACHE_ARG: cache})
