"""Method specs (``name:key=value``) reach every method's switches from one string, and bad ones say why."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hieravid.methods import build, method_name, parse_method
from hieravid.methods.spec import split_top_level


def test_a_bare_name_has_no_options():
    assert parse_method("hieravid") == ("hieravid", {})
    assert parse_method(" fastv ") == ("fastv", {})


def test_values_are_literals_or_strings():
    name, options = parse_method("hieravid:lam=1:tau=0.5:exact_total=True:relevance_sign=positive:ratios=[0.5,0.2]")
    assert name == "hieravid"
    assert options == {"lam": 1, "tau": 0.5, "exact_total": True, "relevance_sign": "positive", "ratios": (0.5, 0.2)}
    assert isinstance(options["exact_total"], bool) and isinstance(options["ratios"], tuple)


def test_spec_options_reach_the_method():
    method = build("hieravid:relevance_sign=positive:segmentation=none:lam=1.0", 0.3)
    assert method.config.relevance_sign == "positive"
    assert method.config.segmentation == "none" and method.config.lam == 1.0
    assert build("hieravid:ratios=(0.5,0.2,0.2,0.2)", 0.3).config.ratios == (0.5, 0.2, 0.2, 0.2)
    assert build("fastv:k=3", 0.3).k == 3
    assert build("hieravid", 0.3).config.relevance_sign == "negative"  # the spec's default is untouched


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hieravid:lam", "write name:key=value"),
        ("hieravid:=1", "write name:key=value"),
        ("hieravid:lam=", "write name:key=value"),
        ("hieravid:lam=1:lam=0", "given twice"),
        ("hieravid:bogus=1", "allowed: avgpool_threshold, beta, delta,"),  # not budget: it is no option
        ("hieravid:lam=2", "lam must be in [0, 1]"),
        ("nope:k=1", "unknown method 'nope'"),
        ("vanilla:k=1", "takes no options"),
        ("framefusion:budget=0.1", r"the budget is not an option of framefusion: pass it as the budget \(budget=B in "
         r"Python and lmms-eval's model args, --budget B for hieravid run, --budgets B,\.\.\. for eval and bench\)"),
        ("hieravid:budget=0.1", "the budget is not an option of hieravid"),
    ],
)
def test_bad_specs_name_the_fix(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build(spec, 0.3)


def test_an_option_given_both_ways_is_refused():
    with pytest.raises(ValueError, match="both in the method spec"):
        build("hieravid:lam=1.0", 0.3, lam=0.5)
    assert build("hieravid:lam=1.0", 0.3, tau=0.5).config.tau == 0.5  # distinct options combine


def test_method_name_checks_the_name_only():
    assert method_name("hieravid:anything=1") == "hieravid"
    with pytest.raises(ValueError, match="available: "):
        method_name("nope")


def test_commas_inside_brackets_stay_with_their_option():
    assert split_top_level("vanilla, hieravid:ratios=(0.5,0.2,0.2,0.2),fastv:k=3,") == [
        "vanilla", "hieravid:ratios=(0.5,0.2,0.2,0.2)", "fastv:k=3",
    ]


_item = st.from_regex(r"[a-z_]{1,8}(:[a-z]{1,5}=(\([0-9.,]{0,9}\)|[a-z0-9.]{1,5}))?", fullmatch=True)


@given(st.lists(_item, min_size=1, max_size=5))
def test_joining_and_splitting_gives_the_items_back(items):
    assert split_top_level(",".join(items)) == items


def test_ratios_with_several_budgets_are_called_out(recwarn):
    from hieravid.methods import warn_if_budget_is_ignored

    warn_if_budget_is_ignored(["vanilla", "hieravid", "hieravid:ratios=(0.5,0.3,0.3,0.57)"], [0.3, 0.2])
    warn_if_budget_is_ignored(["hieravid:ratios=(0.5,0.3,0.3,0.57)"], [0.3])  # one budget: one row, no warning
    messages = [str(w.message) for w in recwarn.list]
    assert messages == [
        "hieravid:ratios=(0.5,0.3,0.3,0.57): its ratios fix the schedule whatever the budget, so its rows at "
        "budgets 0.3, 0.2 are the same run under different labels"
    ]


def test_build_refuses_what_an_instance_would_ignore():
    """An instance carries its budget and options: a budget passed beside it would be silently ignored,
    so it is refused; a method that is neither a name nor an instance is named, with the choices."""
    from hieravid.config import HieraVidConfig
    from hieravid.methods import available
    from hieravid.methods.hieravid import HieraVid

    instance = HieraVid(HieraVidConfig(budget=0.3))
    assert build(instance) is instance
    with pytest.raises(ValueError, match="budget given with a method instance"):
        build(instance, 0.1)
    with pytest.raises(ValueError, match="lam given with a method instance"):
        build(instance, lam=1.0)
    for bad in (123, None, ["hieravid"]):
        with pytest.raises(TypeError, match="available: " + ", ".join(available())):
            build(bad)
    assert build("hieravid").config.budget == 0.3  # the default budget


@pytest.mark.parametrize(("spec", "attribute"), [("fastv:k=2", "k"), ("pyramiddrop:stages=2", "stages"),
                                                 ("prunevid:knn=2", "knn"), ("streamingllm:sinks=2", "sinks"),
                                                 ("prumerge:neighbors=2", "neighbors"),
                                                 ("divprune:max_matrix_elements=2", "max_matrix_elements")])
def test_integer_options_take_numpy_integers(spec, attribute):
    import numpy as np

    name, options = parse_method(spec)
    method = build(name, np.float32(0.3), **{k: np.int64(v) for k, v in options.items()})
    assert getattr(method, attribute) == 2 and type(getattr(method, attribute)) is int


@pytest.mark.parametrize(("spec", "attribute"), [("cdpruner:theta=0.5", "theta"), ("pyramiddrop:lambda_=0.5", "lambda_"),
                                                 ("framefusion:similarity_lower_bound=0.5", "similarity_lower_bound")])
def test_real_options_take_numpy_floats(spec, attribute):
    import numpy as np

    name, options = parse_method(spec)
    method = build(name, 0.3, **{k: np.float32(v) for k, v in options.items()})
    assert getattr(method, attribute) == 0.5 and type(getattr(method, attribute)) is float
