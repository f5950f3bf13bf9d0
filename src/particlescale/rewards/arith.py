"""``arith``: a model-free reward that checks the arithmetic a reasoning step writes down.

A step such as ``She sold 48/2 = 24 clips, so 48 + 24 = \\boxed{72}.`` contains two
checkable equations; both hold, so the step *passes*. ``12 × 50 = 650`` *fails*. A step with
nothing checkable (``Let x be the number of apples.``) is *neutral*. The step's reward is
``pass_value`` / ``fail_value`` / ``neutral_value`` (defaults 0.9 / 0.1 / 0.5: a failure is a
strong negative signal, a pass a mild positive one; 0 and 1 are avoided because rewards are
combined in log space). Prefix rewards are aggregated by ``mean`` over steps by default
(``default_aggregation``): on GSM8K with the default generator that is what predicted a
correct final answer best (see BENCHMARKS.md, ``bench:rewards``).

How equations are found, without evaluating arbitrary text:

1. Normalise notation: LaTeX ``\\times \\cdot \\div \\frac{a}{b} \\left( \\boxed{}``, unicode
   ``× · ÷ − ≈``, ``$`` and ``\\$``, ``a% of b``, ``half of b``, ``3 x 4``, mixed numbers ``1 1/2``.
2. Tokenise into numbers (``1,000``, ``2.50``, ``.5``), operators ``+ - * / ^``, ``%``,
   parentheses, ``=`` and ``≈``. Anything else (a word, a colon, ``<<``) breaks the text into
   *spans*; each span is a chain ``s0 = s1 = ... = sk``.
3. Parse each side with a small recursive-descent parser over :class:`fractions.Fraction`
   (exact: ``0.1 + 0.2 = 0.3`` holds). A side that does not parse is dropped, as is a first
   side that starts with a binary operator (``apples - 3 = 5`` lost its left operand to a word).
4. Check each neighbouring pair of parsed sides of which at least one computes something
   (``5 = 5`` checks nothing). Tolerances: a side that is a written number with ``d``
   decimals may be rounded (``10/3 = 3.33``); ``≈`` also allows truncation and, for an
   integer, an error below 1; ``25%`` matches 25 or 0.25 (both readings are common).

Known blind spots (they give *neutral*, not false failures, where possible): units written
between operands (``5 apples + 3 apples = 8``), number words, ``sqrt``; sloppy running chains
(``3 * 4 = 12 + 2 = 14``) count as failures because they are literally false.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from particlescale.errors import ConfigError
from particlescale.rewards.cache import PrefixCache
from particlescale.types import Problem, Step, Usage

Status = Literal["pass", "fail", "none"]

# --- 1. notation -----------------------------------------------------------------------------

_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_REPLACEMENTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"\\(?:left|right|displaystyle|boxed|fbox|big|Big|bigg)\b", " "),
        (r"\\[,;:! ]", ""),  # thin spaces (also inside numbers: 1\,000)
        (r"\{,\}", ","),  # 1{,}000
        (r"\\(?:text|mathrm|textbf|mbox|operatorname)\s*\{[^{}]*\}", " ; "),  # units: a break
        (r"\\[()\[\]]|\*\*|&|<<|>>", " ; "),  # math delimiters, markdown bold, aligns, calc marks
        (r"\\(?:times|cdot|ast)\b|[×·⋅∙∗]", " * "),
        (r"\\div\b|÷", " / "),
        (r"\\approx\b|≈|\\sim\b", " ≈ "),
        (r"~", " "),  # a LaTeX non-breaking space
        (r"[−–](?=\s*[\d(.])", "-"),  # unicode minus / en dash used as minus
        (r"\\%", "%"),
        (r"\\\$|\$|€|£", " "),
        (r"(?<=%)\s+of\s+(?=[\d(.])", " * "),  # 20% of 50
        (r"\bhalf\s+of\s+(?=[\d(.])", " 0.5 * "),
    )
)
# Mixed numbers: "1 1/2", "1 and 1/2" (proper fractions only: "2 3/4", not "2 8/4").
_MIXED = re.compile(r"(?<![\d.,/])(\d+)\s+(?:and\s+)?(\d+)\s*/\s*(\d+)(?![\d.,]|\s*[*/^(])")


def _mixed(m: re.Match[str]) -> str:
    whole, num, den = m.groups()
    if 0 < int(num) < int(den):
        return f"({whole}+{num}/{den})"
    return m.group()


def normalize(text: str) -> str:
    """Rewrite LaTeX / unicode arithmetic into the plain notation the tokenizer reads."""
    for _ in range(4):  # nested \frac
        new = _FRAC.sub(r"((\1)/(\2))", text)
        if new == text:
            break
        text = new
    for pattern, repl in _REPLACEMENTS:
        text = pattern.sub(repl, text)
    return _MIXED.sub(_mixed, text)


# --- 2. tokens and spans ---------------------------------------------------------------------

_TOKEN = re.compile(
    # A number glued to letters is a name or a term, not a number: 5A, 3x+2, D3, 2nd, 5kg;
    # a clock time 6:48 is not a ratio.
    r"(?P<x>[xX](?=\s*[\d(.]))"
    r"|(?P<word>\d{1,2}:\d\d(?:\s*[AaPp]\.?[Mm]\.?)?|\d+(?:\.\d+)?(?![xX]\s*\d)[A-Za-z]+\w*|[A-Za-z]+\w*|\\[A-Za-z]+)"
    r"|(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])|\d+(?:\.\d+)?|\.\d+)"
    r"|(?P<op>[-+*/^])"
    r"|(?P<pct>%)"
    r"|(?P<lp>[({])"
    r"|(?P<rp>[)}])"
    r"|(?P<rel>[=≈])"
    r"|(?P<space>[ \t]+)"
    r"|(?P<other>[\s\S])",
    re.ASCII,
)

Token = tuple[str, str]  # (kind, text); kinds: num op pct lp rp rel

# Words that are operators: a side next to one lost an operand to it ("1/3 of 60 + 5 = 25",
# "24 out of 60 = 40%", "= 1/3 of 150"), so that side is not checked.
_LEFT_CUT = frozenset(
    ["of", "times", "plus", "minus", "by", "per", "over", "divided", "multiplied", "and"])
_RIGHT_CUT = frozenset(["of", "times", "plus", "minus", "per", "over", "divided", "multiplied"])


@dataclass
class Span:
    tokens: list[Token]
    cut_left: bool = False  # right after an operator word: the first side lost an operand
    cut_right: bool = False  # right before one: the last side lost an operand
    after_word: bool = False  # right after a word: a leading "-" is "x - 5", not a sign


def spans(text: str) -> list[Span]:
    """Maximal runs of arithmetic tokens; words and other characters break them."""
    out: list[Span] = []
    cur: list[Token] = []
    prev_word: str | None = None  # the word right before the current span, if any
    after_break: str | None = None
    end = -1  # where the previous token ended
    for m in _TOKEN.finditer(normalize(text)):
        kind = m.lastgroup or "other"
        tok = m.group()
        if kind == "space":
            continue
        glued, end = m.start() == end, m.end()
        if kind == "x":  # "3 x 4" is a product only between operands
            if cur and cur[-1][0] in ("num", "rp", "pct"):
                cur.append(("op", "*"))
                continue
            kind = "word"
        if kind in ("word", "other"):
            word = tok.lower() if kind == "word" else None
            if cur:
                # "(3/2)x - 5": a word glued to the last operand is part of it.
                cut_right = word in _RIGHT_CUT or (word is not None and glued)
                out.append(Span(cur, prev_word in _LEFT_CUT, cut_right, prev_word is not None))
                cur = []
            after_break = word
            continue
        if not cur:
            prev_word = after_break
        cur.append((kind, tok))
    if cur:
        out.append(Span(cur, prev_word in _LEFT_CUT, False, prev_word is not None))
    return out


# --- 3. parsing a side -----------------------------------------------------------------------


class _ParseError(Exception):
    pass


@dataclass(frozen=True)
class Side:
    """One side of an equation: its exact value and how it was written."""

    text: str
    value: Fraction
    ops: int  # operations it performs (0: a written number; "25%" counts one)
    written: bool  # a written number, maybe with %: it may have been rounded
    decimals: int  # decimals of a written number (for rounding tolerance)
    percent: bool  # a written number followed by %: 25% may mean 25 or 0.25


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/'|implicit) unary)* ;
    unary := ('-'|'+') unary | power ; power := postfix ('^' unary)? ;
    postfix := atom '%'? ; atom := NUM | '(' expr ')'."""

    MAX_EXP = 64
    MAX_DIGITS = 60

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.t = tokens
        self.i = 0
        self.ops = 0

    def peek(self) -> Token | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise _ParseError("unexpected end")
        self.i += 1
        return tok

    def parse(self) -> Fraction:
        v = self.expr()
        if self.i != len(self.t):
            raise _ParseError("trailing tokens")
        return v

    def expr(self) -> Fraction:
        v = self.term()
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in "+-":
            self.take()
            self.ops += 1
            rhs = self.term()
            v = v + rhs if tok[1] == "+" else v - rhs
        return v

    def term(self) -> Fraction:
        v = self.unary()
        while (tok := self.peek()) is not None:
            if tok[0] == "op" and tok[1] in "*/":
                self.take()
                rhs = self.unary()
            elif tok[0] == "lp" and self.t[self.i - 1][0] in ("num", "rp"):
                rhs = self.unary()  # implicit product: 2(3 + 4), (1 + 2)(3 + 4)
            else:
                break
            self.ops += 1
            if tok[1] == "/":
                if rhs == 0:
                    raise _ParseError("division by zero")
                v = v / rhs
            else:
                v = v * rhs
            self._check_size(v)
        return v

    def unary(self) -> Fraction:
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] in "+-":
            self.take()
            v = self.unary()
            return -v if tok[1] == "-" else v
        return self.power()

    def power(self) -> Fraction:
        base = self.postfix()
        tok = self.peek()
        if tok is not None and tok == ("op", "^"):
            self.take()
            exp = self.unary()
            if exp.denominator != 1 or abs(exp) > self.MAX_EXP or (base == 0 and exp < 0):
                raise _ParseError("unsupported power")
            self.ops += 1
            base = base ** int(exp)
            self._check_size(base)
        return base

    def postfix(self) -> Fraction:
        v = self.atom()
        tok = self.peek()
        if tok is not None and tok[0] == "pct":
            self.take()
            self.ops += 1
            v = v / 100
        return v

    def atom(self) -> Fraction:
        kind, text = self.take()
        if kind == "num":
            return Fraction(text.replace(",", ""))
        if kind == "lp":
            v = self.expr()
            if self.take()[0] != "rp":
                raise _ParseError("unbalanced parenthesis")
            return v
        raise _ParseError(f"unexpected {text!r}")

    def _check_size(self, v: Fraction) -> None:
        if len(str(v.numerator)) > self.MAX_DIGITS or len(str(v.denominator)) > self.MAX_DIGITS:
            raise _ParseError("number too large")


def _text(tokens: Sequence[Token]) -> str:
    return " ".join(t for _, t in tokens)


def parse_side(tokens: Sequence[Token]) -> Side | None:
    """The value of one side, or None when it is not a complete arithmetic expression."""
    if not tokens:
        return None
    p = _Parser(tokens)
    try:
        value = p.parse()
    except (_ParseError, ValueError, ZeroDivisionError, OverflowError):
        return None
    literal = [t for t in tokens if t[0] not in ("lp", "rp")]
    written = bool(literal) and literal[0][0] == "num" and (
        len(literal) == 1 or (len(literal) == 2 and literal[1][0] == "pct")
    )
    decimals = 0
    if written:
        num = literal[0][1]
        decimals = len(num.split(".")[1]) if "." in num else 0
    percent = written and len(literal) == 2
    return Side(_text(tokens), value, p.ops, written, decimals, percent)


def _first_side(tokens: Sequence[Token], after_word: bool) -> Side | None:
    """The left-most side of a chain, whose left end may have been cut by a word.

    A side starting with a binary operator lost its left operand (dropped; a leading ``-``
    is read as a sign unless a word precedes it, as in ``3x - 5 = 16``). A side after a list
    marker, ``1) 5 + 3``, is read after the marker.
    """
    if not tokens:
        return None
    if tokens[0][0] == "op" and (tokens[0][1] != "-" or after_word):
        return None
    side = parse_side(tokens)
    if side is not None:
        return side
    for start in range(1, len(tokens)):
        if tokens[start - 1][0] == "rp" and tokens[start][0] in ("num", "lp"):
            side = parse_side(tokens[start:])
            if side is not None:
                return side
    return None


# --- 4. checking -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Equation:
    """``lhs relation rhs`` and whether it holds. ``result`` is what the equation states the
    quantity to be: the readings of its right side (two for ``25%``: 0.25 and 25);
    ``result_unit`` the unit of its last written digit when it was written with decimals
    (it may be rounded: ``10/3 = 3.33``), else None."""

    lhs: str
    rhs: str
    relation: str
    holds: bool
    result: tuple[Fraction, ...] = ()
    result_unit: Fraction | None = None


def _readings(side: Side) -> list[tuple[Fraction, Fraction | None]]:
    """(value, unit of the last written digit) for each reading of a side; the unit is None
    for a computed side (it cannot have been rounded by the writer)."""
    if not side.written:
        return [(side.value, None)]
    unit = Fraction(1, 10**side.decimals)
    if side.percent:  # value is already v/100
        return [(side.value, unit / 100), (side.value * 100, unit)]
    return [(side.value, unit)]


def _close(a: Side, b: Side, approx: bool, rel_tol: float) -> bool:
    for x, ux in _readings(a):
        for y, uy in _readings(b):
            diff = abs(x - y)
            if diff <= Fraction(rel_tol) * max(abs(x), abs(y)):
                return True
            for unit, decimals in ((ux, a.decimals), (uy, b.decimals)):
                if unit is None:
                    continue
                # "=": rounding at the written precision, when decimals are written
                # (10/3 = 3.33 holds, 10/3 = 3 does not); "≈": rounding or truncation.
                if approx and diff < unit:
                    return True
                if decimals and diff <= unit / 2:
                    return True
    return False


def equations(text: str, rel_tol: float = 1e-6) -> list[Equation]:
    """Every checkable equation in ``text`` with whether it holds."""
    found: list[Equation] = []
    for span in spans(text):
        parts: list[list[Token]] = [[]]
        relations: list[str] = []
        for tok in span.tokens:
            if tok[0] == "rel":
                relations.append(tok[1])
                parts.append([])
            else:
                parts[-1].append(tok)
        if not relations:
            continue
        sides = [None if span.cut_left else _first_side(parts[0], span.after_word)]
        sides += [parse_side(p) for p in parts[1:]]
        if span.cut_right:
            sides[-1] = None
        for i, rel in enumerate(relations):
            a, b = sides[i], sides[i + 1]
            if a is None or b is None or (a.written and b.written):
                continue  # nothing computed: "5 = 5", "60 = 40%"
            holds = _close(a, b, rel == "≈", rel_tol)
            unit = Fraction(1, 10**b.decimals) if b.written and b.decimals else None
            found.append(Equation(a.text, b.text, rel, holds,
                                  tuple(v for v, _ in _readings(b)), unit))
    return found


def check_step(text: str, rel_tol: float = 1e-6) -> Status:
    """``pass`` when every checkable equation holds, ``fail`` when one does not, else ``none``."""
    eqs = equations(text, rel_tol)
    if not eqs:
        return "none"
    return "pass" if all(e.holds for e in eqs) else "fail"


class ArithReward:
    """Reward = the arithmetic check of each step (see the module docstring).

    ``score`` returns one value per step (the step's own check); the algorithms aggregate
    them with ``default_aggregation`` (``mean``) unless told otherwise.
    """

    name = "arith"
    default_aggregation = "mean"

    def __init__(
        self,
        *,
        pass_value: float = 0.9,
        fail_value: float = 0.1,
        neutral_value: float = 0.5,
        rel_tol: float = 1e-6,
        cache: PrefixCache | None = None,
    ) -> None:
        for field, v in (("pass_value", pass_value), ("fail_value", fail_value),
                         ("neutral_value", neutral_value)):
            if not 0 < v < 1:
                raise ConfigError(f"arith: {field} must be in (0, 1) (a probability), got {v}")
        self.values = {"pass": pass_value, "fail": fail_value, "none": neutral_value}
        self.rel_tol = rel_tol
        self.cache = cache if cache is not None else PrefixCache()

    def step_value(self, text: str) -> float:
        return self.values[check_step(text, self.rel_tol)]

    async def score(
        self, problem: Problem, trajectories: Sequence[Sequence[Step]], usage: Usage
    ) -> list[list[float]]:
        # No model call: usage.prm_calls is left alone (it counts calls to reward *models*).
        def compute(jobs: list[tuple[tuple[str, ...], int]]) -> list[float]:
            return [self.step_value(texts[-1]) for texts, _ in jobs]

        return self.cache.score_sync(self.name, problem, trajectories, compute)
