"""Answer extraction and normalisation shared by every algorithm and the selectors."""

from __future__ import annotations

import pytest

from particlescale.answers import extract_answer, last_boxed, normalize_answer


@pytest.mark.parametrize(("text", "boxed"), [
    ("so \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed {x^{2}+1}", "x^{2}+1"),
    ("\\fbox{7}", "7"),
    ("unbalanced \\boxed{1", None),
    ("no box here", None),
])
def test_last_boxed(text: str, boxed: str | None) -> None:
    assert last_boxed(text) == boxed


@pytest.mark.parametrize(("text", "answer"), [
    ("Therefore, the final answer is: $\\boxed{18}$. I hope it is correct.", "18"),
    ("Therefore, the final answer is: $18$. I hope it is correct.", "18"),
    ("The answer is 3.5.", "3.5"),
    ("She has 3 apples and buys 4 more, 7 in all", "7"),
    ("nothing numeric", None),
])
def test_extract_answer_fallbacks(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize(("a", "b"), [
    ("1,000", "1000"),
    ("27.0", "27"),
    ("\\$18", "18"),
    ("\\text{(B)}", "(B)"),
    ("\\dfrac{6}{4}", "3/2"),
    ("50\\%", "50"),
    ("90^\\circ", "90"),
    ("x + 1", "x+1"),
])
def test_equivalent_forms_vote_together(a: str, b: str) -> None:
    assert normalize_answer(a) == normalize_answer(b)


def test_different_answers_stay_apart() -> None:
    assert normalize_answer("12") != normalize_answer("21")
    assert normalize_answer("\\frac{1}{2}") != normalize_answer("\\frac{2}{1}")
