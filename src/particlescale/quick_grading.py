"""The graders that need no process pool: numbers, word answers, a missing side.

They sit beside answer extraction (:mod:`particlescale.answers`) so that anything that
grades (the evaluation harness, value-head training, the trace viewer) uses one set of rules
without importing the harness. ``math-verify`` (expressions, sets, intervals) lives in
:mod:`particlescale.eval.grading`, which calls these first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer: ``how`` is ``numeric``, ``math-verify``, ``empty`` or
    ``timeout``/``error`` (then ``correct`` is False and ``error`` says why)."""

    correct: bool
    how: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "how": self.how, "error": self.error}


# ---------------------------------------------------------------------------------------------
# Numbers

_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_PLAIN = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_FRAC = re.compile(r"^([+-]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_TEXT_ANSWER = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{\s*(\(?[A-Za-z][A-Za-z ]*\)?)\s*\}$")
_UNIT_TAIL = re.compile(r"(?<=\d)\s*[A-Za-z][A-Za-z .]*$")
_JUNK = ("\\!", "\\,", "\\;", "\\ ", "\\$", "$", "\\%", "%", "^\\circ", "^{\\circ}",
         "\\left", "\\right", "\\displaystyle")


def parse_number(s: str | None, *, lenient: bool = False) -> Fraction | None:
    """The exact value of a plain-number answer, or None if it is not one.

    Strips what carries no value: ``$``, ``\\$``, spacing commands (``\\!``, ``\\,``),
    ``\\%``/``%``, ``^\\circ``, a trailing period, ``\\text{}`` around the number; keeps
    ``1,000``-style thousands separators only in the strict pattern. ``\\frac{a}{b}`` of integers
    counts. ``lenient`` (integer-answer sets) also drops unit words: ``18 \\text{ dollars}``,
    ``5 apples``.
    """
    if s is None:
        return None
    t = s.strip()
    if lenient:
        t = _UNIT_TAIL.sub("", _TEXT.sub(r" \1", t).strip())
    t = _TEXT.sub(r"\1", t)
    for junk in _JUNK:
        t = t.replace(junk, "")
    t = t.strip().rstrip(".").replace(" ", "")
    m = _FRAC.match(t)
    if m:
        if int(m.group(3)) == 0:
            return None
        v = Fraction(int(m.group(2)), int(m.group(3)))
        return -v if m.group(1) == "-" else v
    t = t.replace("{", "").replace("}", "")
    if not t:
        return None
    if "," in t:
        if not _THOUSANDS.match(t):
            return None
        t = t.replace(",", "")
    if not _PLAIN.match(t):
        return None
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def grade_numeric(gold: str, pred: str | None, *, lenient: bool = False) -> Grade | None:
    """Exact numeric verdict when both sides are plain numbers, else None (not decidable)."""
    g, p = parse_number(gold, lenient=lenient), parse_number(pred, lenient=lenient)
    if g is None or p is None:
        return None
    return Grade(g == p, "numeric")




def grade_text(gold: str, pred: str) -> Grade | None:
    """Word answers (``\\text{Evelyn}``, ``\\text{(C)}``) compare as case-folded words.

    math-verify reads a bare word as a product of symbols, so ``Evelyn`` would equal any
    anagram of it; when the gold answer is a word we decide by the words alone.
    """
    m = _TEXT_ANSWER.match(gold.strip())
    if not m:
        return None
    return Grade(_word_key(m.group(1)) == _word_key(_TEXT.sub(r"\1", pred)), "text")


def _word_key(s: str) -> str:
    return re.sub(r"[\s$().]", "", s).casefold()


def quick_grade(gold: str | None, pred: str | None, *, lenient: bool) -> Grade | None:
    """Verdicts that need no math-verify: a missing side, two plain numbers, a word answer."""
    if gold is None or not str(gold).strip():
        return Grade(False, "error", "no gold answer")
    if pred is None or not str(pred).strip():
        return Grade(False, "empty")
    return grade_numeric(str(gold), str(pred), lenient=lenient) or grade_text(str(gold),
                                                                              str(pred))
