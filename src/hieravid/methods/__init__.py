"""Pruning methods. A method only decides what to keep or merge; it never touches a model."""

from hieravid.methods.hieravid import Stage1Decision, decide_stage, decide_stage1, selector_for_stage

__all__ = ["Stage1Decision", "decide_stage", "decide_stage1", "selector_for_stage"]
