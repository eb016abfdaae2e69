"""hieravid: hierarchical visual-token pruning for fast video LLMs."""

from hieravid.config import HieraVidConfig

__version__ = "0.1.0"

__all__ = ["HieraVidConfig", "__version__"]
