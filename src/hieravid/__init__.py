"""hieravid: hierarchical visual-token pruning for fast video LLMs.

``hieravid.apply(model, method="hieravid", budget=0.3)`` patches a Hugging Face VideoLLM in place;
the algorithms live in :mod:`hieravid.ops`, the methods in :mod:`hieravid.methods`.
"""

import importlib
import importlib.util

from hieravid.config import HieraVidConfig
from hieravid.warning import HieravidWarning

__version__ = "0.1.0"

__all__ = ["HieraVidConfig", "HieravidWarning", "PruneHandle", "apply", "__version__"]


def __getattr__(name: str):
    # The model integration imports transformers; load it only when it is used.
    if name in ("apply", "PruneHandle"):
        from hieravid import api

        return getattr(api, name)
    # Subpackages on first use, so `import hieravid; hieravid.methods.available()` works.
    if name.isidentifier() and not name.startswith("_") and importlib.util.find_spec(f"hieravid.{name}") is not None:
        return importlib.import_module(f"hieravid.{name}")
    raise AttributeError(f"module 'hieravid' has no attribute {name!r}")
