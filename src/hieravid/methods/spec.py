"""Method specs: a method name with its options in one string, for the command line and for records.

``"hieravid"`` is the method with its defaults; ``"hieravid:relevance_sign=positive:lam=1.0"`` sets two of
its switches. A value is read as a Python literal where it is one (``1``, ``0.5``, ``True``, ``None``,
``(0.5,0.2,0.2,0.2)``; lists become tuples) and as a plain string otherwise (``positive``). The spec string
itself is what ``eval`` and ``bench`` record and print, so every variant is its own row.
"""

from __future__ import annotations

import ast
from typing import Any

__all__ = ["parse_method", "split_top_level"]


def _value(text: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value:key=value"`` -> ``(name, {key: value, ...})``; a bare name has no options."""
    name, *parts = spec.strip().split(":")
    options: dict[str, Any] = {}
    for part in parts:
        key, sep, text = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or not text.strip():
            raise ValueError(
                f"bad option {part!r} in method {spec!r}: write name:key=value[:key=value...], "
                "e.g. hieravid:relevance_sign=positive:lam=1.0"
            )
        if key in options:
            raise ValueError(f"option {key!r} is given twice in method {spec!r}")
        options[key] = _value(text.strip())
    return name.strip(), options


def split_top_level(text: str, sep: str = ",", keep_empty: bool = False) -> list[str]:
    """Split ``text`` at ``sep`` outside brackets: ``"a,b:ratios=(0.5,0.2)"`` -> ``["a", "b:ratios=(0.5,0.2)"]``;
    empty items are dropped unless ``keep_empty``."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == sep and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if keep_empty or item.strip()]
