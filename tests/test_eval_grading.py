"""Grading: tricky MATH500 equivalences, integer-answer number forms, answers judged wrong,
and our own deadline around math-verify (which runs in spawned worker processes)."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import pytest

from particlescale.eval.grading import Grader, parse_number

# (gold as the dataset writes it, prediction as a model might box it)
EQUIVALENT = [
    # intervals
    ("(3,4]", "(3, 4]"),
    ("(2,\\infty)", "(2, \\infty)"),
    ("x \\in [-2,7]", "[-2,7]"),
    ("(-\\infty, 0]", "(-\\infty,0]"),
    # fractions vs decimals, LaTeX fraction forms
    ("\\frac{3}{2}", "1.5"),
    ("0.15", "\\frac{3}{20}"),
    ("\\frac{3}{2}", "3/2"),
    ("\\frac43", "\\frac{4}{3}"),
    ("\\dfrac{17}{50}", "0.34"),
    ("\\frac 59", "\\frac{5}{9}"),
    # pi
    ("\\frac{\\pi}{2}", "\\pi/2"),
    ("-\\frac{\\pi}{6}", "-\\pi/6"),
    ("288 \\pi", "288\\pi"),
    # tuples, sets, matrices
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("(6,31,-1)", "(6, 31, -1)"),
    ("1,-2", "-2, 1"),
    ("3, 5, 7", "7,5,3"),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}"),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
     "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}"),
    # degrees and units
    ("90^\\circ", "90"),
    ("145^\\circ", "145^{\\circ}"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
    ("5.4 \\text{ cents}", "5.4"),
    ("864 \\mbox{ inches}^2", "864"),
    # radicals, expressions, equations, bases
    ("3\\sqrt{13}", "\\sqrt{117}"),
    ("x=5", "5"),
    ("52_8", "52_8"),
    ("6 - 5i", "6-5i"),
    # text answers
    ("\\text{Evelyn}", "Evelyn"),
    ("\\text{(C)}", "C"),
    ("\\text{east}", "\\text{ East }"),
    # thousands separators in MATH answers
    ("10,\\!080", "10080"),
    ("\\$32,\\!348", "32348"),
    # AIME / AMC / GSM8K number forms
    ("025", "25"),
    ("204", "204.0"),
    ("27.0", "27"),
    ("1,000", "1000"),
    ("18", "\\$18"),
    ("-3", "-3.00"),
]

WRONG = [
    ("(3,4]", "(3,4)"),  # open vs half-open
    ("(2,\\infty)", "[2, \\infty)"),
    ("\\frac{3}{2}", "2/3"),
    ("\\frac{14}{3}", "4.6667"),  # a rounded decimal is not the fraction
    ("1.25", "1.24"),
    ("(6,31,-1)", "(6,31,1)"),
    ("\\text{Evelyn}", "Levyne"),  # an anagram (math-verify alone would say equal)
    ("\\text{east}", "west"),
    ("52_8", "42"),
    ("\\frac{\\pi}{2}", "\\pi"),
    ("3\\sqrt{13}", "3\\sqrt{12}"),
    ("025", "250"),
    ("1,000", "1"),  # "1,000" is one thousand, not the list {1, 0}
    ("27.0", "27.5"),
    ("18", "17"),
]


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_s=20) as g:
        yield g


@pytest.mark.parametrize(("gold", "pred"), EQUIVALENT)
def test_equivalent_answers_are_correct(grader: Grader, gold: str, pred: str):
    g = grader.grade(gold, pred)
    assert g.correct, (gold, pred, g)
    assert g.error is None


@pytest.mark.parametrize(("gold", "pred"), WRONG)
def test_different_answers_are_wrong(grader: Grader, gold: str, pred: str):
    g = grader.grade(gold, pred)
    assert not g.correct, (gold, pred, g)


def test_numeric_mode_reads_unit_words(grader: Grader):
    assert grader.grade("18", "18 \\text{ dollars}", "numeric").correct
    assert grader.grade("5", "5 apples", "numeric").correct
    assert not grader.grade("5", "6 apples", "numeric").correct
    # in math mode a unit word is not dropped by the number reader
    assert grader.grade("5", "5 apples").how != "numeric"


def test_missing_sides():
    with Grader() as g:
        assert g.grade("3", None).how == "empty" and not g.grade("3", "").correct
        no_gold = g.grade(None, "3")
        assert not no_gold.correct and no_gold.error == "no gold answer"


@pytest.mark.parametrize(("text", "value"), [
    ("025", Fraction(25)), ("27.0", Fraction(27)), ("1,000", Fraction(1000)),
    ("-1,234.5", Fraction(-24690, 20)), ("10,\\!080", Fraction(10080)), ("\\$18", Fraction(18)),
    ("50\\%", Fraction(50)), (".5", Fraction(1, 2)), ("\\frac{6}{4}", Fraction(3, 2)),
    ("-\\frac{1}{3}", Fraction(-1, 3)), ("\\text{42}", Fraction(42)), ("7.", Fraction(7)),
    ("1,-2", None), ("1,00", None), ("x=5", None), ("\\sqrt{2}", None), ("2^{10}", None),
    ("", None), ("\\frac{1}{0}", None),
])
def test_parse_number(text: str, value: Fraction | None):
    assert parse_number(text) == value


def test_grading_works_from_any_thread(grader: Grader):
    # math-verify's own signal-based timeout only works in a main thread; our pool runs it in
    # worker processes, so a sweep's grading thread gets a verdict, not an exception.
    out = {}

    def work():
        out["g"] = grader.grade("\\frac{\\pi}{2}", "\\pi/2")

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert out["g"].correct and out["g"].how == "math-verify"


def slow_verify(gold: str, pred: str, timeout_s: int) -> tuple[bool, str | None]:
    """A verifier stuck far beyond its deadline unless the answer is "fast"."""
    if pred != "fast":
        time.sleep(600)
    return True, None


def test_our_deadline_kills_a_stuck_worker_and_the_pool_recovers():
    with Grader(workers=1, timeout_s=1.5, verify_fn=slow_verify) as g:
        start = time.perf_counter()
        stuck = g.submit("x", "slow")
        queued = g.submit("x", "fast")  # waits behind the stuck one, then succeeds
        r1, r2 = stuck.result(timeout=900), queued.result(timeout=900)
        assert r1.how == "timeout" and not r1.correct and "1.5s" in (r1.error or "")
        assert r2.correct and r2.how == "math-verify"
        assert g.restarts == 1
        assert time.perf_counter() - start < 60


def test_many_answers_are_graded_in_order(grader: Grader):
    pairs = [(str(i), f"\\frac{{{2 * i}}}{{2}}") for i in range(40)] + \
        [("\\frac{\\pi}{3}", "\\pi/3"), ("\\frac{\\pi}{3}", "\\pi/4")]
    grades = grader.grade_many(pairs)
    assert [g.correct for g in grades] == [True] * 41 + [False]
