"""Answer extraction shared by every algorithm, selector and grader.

The answer of a solution is the content of its last ``\\boxed{...}`` (or ``\\fbox{...}``) with
balanced braces. Fallbacks, in order: "final answer is $X$" / "answer: X" phrases, then the
last number in the text. Normalisation for voting strips spaces, ``$``, ``\\text{}``, trailing
dots and units-like ``\\%`` and turns numbers like ``1,000`` / ``27.0`` into canonical forms.
"""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PHRASE = re.compile(
    r"(?:final answer is|answer is|answer:)\s*[:\s]*\$?([^\n$]+?)\$?\s*(?:\.(?:\s|$)|\n|$|I hope)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    result = None
    for m in _BOX.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            result = text[m.end() : i - 1].strip()
    return result


def has_boxed(text: str) -> bool:
    return _BOX.search(text) is not None


def extract_answer(text: str) -> str | None:
    """The answer a solution gives: last boxed, else an answer phrase, else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrases = _PHRASE.findall(text)
    if phrases:
        return phrases[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _canonical_number(s: str) -> str | None:
    t = s.replace(",", "").replace(" ", "")
    try:
        v = float(t)
    except ValueError:
        return None
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def normalize_answer(answer: str | None) -> str | None:
    """A canonical key so that equivalent surface forms vote together."""
    if answer is None:
        return None
    s = answer.strip()
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|displaystyle|!|,|;)", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace("dfrac", "frac")
    s = s.replace("tfrac", "frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    num = _canonical_number(s)
    if num is not None:
        return num
    m = re.fullmatch(r"\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if m and int(m.group(2)) != 0:
        from fractions import Fraction

        f = Fraction(int(m.group(1)), int(m.group(2)))
        return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
    return s
