"""Method specs with options, budgets and seeds: parsing, canonical names, early validation."""

from __future__ import annotations

import pytest

from particlescale.errors import ConfigError
from particlescale.eval.specs import (
    parse_budgets,
    parse_method,
    parse_methods,
    parse_options,
    parse_seeds,
    parse_value,
)


@pytest.mark.parametrize(("text", "value"), [
    ("4", 4), ("0.5", 0.5), ("1e-3", 0.001), ("true", True), ("False", False), ("none", None),
    ("systematic", "systematic"), ("'4'", "4"), ('"a,b"', "a,b"), (" last ", "last"),
])
def test_values(text, value):
    v = parse_value(text)
    assert v == value and type(v) is type(value)


def test_the_paper_ablations_parse_into_validated_variants():
    specs = parse_methods("pf,pf(resampling=systematic,ess_threshold=0.5),pf(aggregation=last),"
                          "pg(iterations=4),greedy,best-of-n")
    assert [s.label for s in specs] == [
        "pf", "pf(ess_threshold=0.5,resampling=systematic)", "pf(aggregation=last)",
        "pg(iterations=4)", "greedy", "best-of-n"]
    assert specs[1].config.resampling == "systematic" and specs[1].config.ess_threshold == 0.5
    assert specs[3].config.iterations == 4
    assert specs[4].budget_free and not specs[0].budget_free
    assert specs[5].reusable and not specs[0].reusable


def test_label_is_canonical_whatever_the_order_and_spacing():
    a = parse_method("pf( resampling = systematic , ess_threshold=0.5 )")
    b = parse_method("pf(ess_threshold=0.5,resampling=systematic)")
    assert a.label == b.label and a.options == b.options


def test_common_options_apply_but_do_not_rename():
    s = parse_method("pf(max_steps=3)", common={"max_steps": 9, "max_step_tokens": 64})
    assert s.label == "pf(max_steps=3)"
    assert s.config.max_steps == 3 and s.config.max_step_tokens == 64


@pytest.mark.parametrize(("text", "match"), [
    ("pf(ess=0.5)", "unknown option 'ess'.*ess_threshold"),
    ("pf(resampling=sideways)", "resampling"),
    ("pf(ess_threshold=2)", "ess_threshold"),
    ("pff", "unknown 'pff'.*self-consistency"),
    ("pf(resampling=systematic", "unbalanced"),
    ("pf(systematic)", "NAME=VALUE"),
    ("pf(a=1,a=2)", "given twice"),
    ("pf,pf", "listed twice"),
    ("pg(iterations=0)", "iterations"),
    ("", "empty"),
])
def test_bad_specs_are_rejected_with_the_reason(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_methods(text)


def test_options_text():
    assert parse_options("max_steps=4, max_step_tokens=64", "options") == {
        "max_steps": 4, "max_step_tokens": 64}
    assert parse_options("", "options") == {}


def test_budgets_and_seeds():
    assert parse_budgets("8,1,2,4,4") == [1, 2, 4, 8]
    assert parse_seeds("0, 2,1") == [0, 1, 2]
    for bad, match in [("0,1", ">= 1"), ("1,two", "not an integer"), ("", "empty"),
                       ("1,100000", "maximum")]:
        with pytest.raises(ConfigError, match=match):
            parse_budgets(bad)
    with pytest.raises(ConfigError, match="seeds"):
        parse_seeds("-1")
