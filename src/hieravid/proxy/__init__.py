"""The proxy: a small Qwen2-VL trained from scratch on the synthetic suite, shipped in the package.

``model_dir()`` is where its weights, config and processor live; ``hieravid.infer.load_model(None)`` loads it.
See ``weights/CARD.md`` for how it was made and how accurate it is, :mod:`hieravid.proxy.build` for the
architecture and :mod:`hieravid.proxy.train` for the training (``hieravid train-proxy``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["model_dir"]

_WEIGHTS = Path(__file__).with_name("weights")


def model_dir() -> Path:
    """Directory of the shipped proxy model (``from_pretrained`` loads it)."""
    if not (_WEIGHTS / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the proxy model is missing from {_WEIGHTS}: reinstall hieravid, or train one with "
            "`hieravid train-proxy --out DIR` and pass --model DIR"
        )
    return _WEIGHTS
