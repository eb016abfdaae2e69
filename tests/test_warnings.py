"""Every warning hieravid gives is a ``HieravidWarning``, so that users (and the lmms-eval plugin, under
lmms-eval's blanket ignore) can tell them apart."""

from __future__ import annotations

import ast
from pathlib import Path

import hieravid

SOURCE = Path(hieravid.__file__).parent


def _warn_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "warn":
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "warnings":
                yield node


def test_every_warning_is_a_hieravid_warning():
    calls, wrong = 0, []
    for path in sorted(SOURCE.rglob("*.py")):
        for call in _warn_calls(ast.parse(path.read_text())):
            if isinstance(call.args[0], ast.Constant) and call.args[0].value == "probe":
                continue  # the lmms-eval plugin asking whether a category is ignored
            calls += 1
            category = call.args[1] if len(call.args) > 1 else next(
                (k.value for k in call.keywords if k.arg == "category"), None)
            if not (isinstance(category, ast.Name) and category.id == "HieravidWarning"):
                wrong.append(f"{path.relative_to(SOURCE)}:{call.lineno}")
    assert calls >= 10  # the scan finds the calls
    assert wrong == []
    assert issubclass(hieravid.HieravidWarning, UserWarning)


def _leading_text(node: ast.AST) -> str:
    """The text a message expression starts with (an f-string's first literal part)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return node.values[0].value
    if isinstance(node, ast.BinOp):  # "a" + "b", "a" "b" is one constant already
        return _leading_text(node.left)
    return ""


def test_no_warning_names_hieravid_itself():
    """The command prints each warning as ``hieravid COMMAND: warning: ...`` and Python names its category:
    a message starting with ``hieravid:`` would say it twice."""
    named = [f"{path.relative_to(SOURCE)}:{call.lineno}"
             for path in sorted(SOURCE.rglob("*.py")) for call in _warn_calls(ast.parse(path.read_text()))
             if _leading_text(call.args[0]).startswith("hieravid:")]
    assert named == []
