"""``reference``: an answer-key PRM, an *instrument* for studying the algorithms.

It reads the problem's worked solution (``Problem.reference``, privileged: datasets such as
GSM8K carry it and it never reaches the generator) and scores a partial solution by whether
what it computes is on the reference's path. It is a PRM of known, tunable quality: with
noise 0 it is about as good as step supervision can be on GSM8K, and ``noise=S`` degrades it
smoothly, so that algorithms can be compared across PRM quality. A result obtained with it
used the answer key: it is never the system's accuracy, never a default, and the server
refuses it.

Reference values: the results of the worked solution's ``<<expression=value>>``
annotations and its final ``#### answer``. A step's *quantities* are the results its
equations state (``48/2 = 24`` states 24), found by :func:`particlescale.rewards.arith.equations`,
which also checks that each equation holds. A step's state:

* ``fail``: an equation in it does not hold;
* ``hit``: every quantity it computes is a reference value;
* ``part``: some are, some are not;
* ``off``: none is (a route the reference does not take, or a wrong one);
* ``none``: it computes nothing: it keeps the prefix's previous score.

The prefix score before noise is the mean of the values of its computing steps
(:data:`STATE_VALUES`; 0.5 before any): chosen by step AUC against Monte-Carlo labels (see
BENCHMARKS.md, ``reference``). A *finished* prefix (its last step ends at EOS or writes a
``\\boxed{}`` answer) scores by its answer against the gold answer instead
(:data:`FINAL_VALUES`).

Noise: ``score = sigmoid(logit(clean) + S·z)`` with ``z ~ N(0, 1)`` drawn from a generator
seeded by (problem id, the prefix's text, ``seed``): one prefix always gets one score, in any
order, batch or process. Scores are prefix scores: ``default_aggregation`` is ``last``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from particlescale.answers import extract_answer, has_boxed
from particlescale.errors import ConfigError
from particlescale.rewards.arith import equations
from particlescale.types import Problem, Step, Usage

STATE_VALUES = {"hit": 0.9, "part": 0.6, "off": 0.25, "fail": 0.1}
"""Value of a computing step by its state (``none`` keeps the previous score)."""
FINAL_VALUES = (0.02, 0.98)
"""Score of a finished prefix whose answer is wrong, right."""
START = 0.5
"""Score of a prefix that has computed nothing yet."""
PREFIX_AGGREGATIONS = ("mean", "min", "last", "evidence")

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
# Units and labels written in LaTeX text between operands ("60 \\text{ m} \\times 3"): arith
# breaks a chain at them, so they are dropped before its extraction (here only).
_UNITS = re.compile(r"\\(?:text|mathrm|textbf|mbox|operatorname)\s*\{[^{}]*\}")
_WRITTEN = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
# "1. ", "2) " at a line start, "Step 3": numbering, not quantities
_MARKERS = re.compile(r"(?m)^\s*(?:#+\s*)?(?:\*\*)?\d+[.)]\s|\b[Ss]tep\s+\d+")
# A code block's printed output states what the code computed.
_OUTPUT = re.compile(r"```output\s*\n(.*?)(?:\n```|$)", re.S)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def _number(text: str) -> tuple[Fraction, Fraction | None] | None:
    """A written number and the unit of its last decimal (None for an integer)."""
    t = text.strip().rstrip(".").replace(",", "").replace("$", "")
    if not t or not _NUMBER.fullmatch(t) or t in ("-", "."):
        return None
    try:
        v = Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None
    decimals = len(t.split(".")[1]) if "." in t else 0
    return v, (Fraction(1, 10**decimals) if decimals else None)


def reference_values(solution: str) -> list[tuple[Fraction, Fraction | None]]:
    """The intermediate results of a GSM8K-style worked solution and its final answer, with
    the rounding unit each was written to."""
    out = []
    for m in _ANNOTATION.finditer(solution):
        got = _number(m.group(1).rsplit("=", 1)[-1])
        if got is not None:
            out.append(got)
    if "####" in solution:
        got = _number(solution.rsplit("####", 1)[1])
        if got is not None:
            out.append(got)
    return out


def _matches(value: Fraction, unit: Fraction | None,
             refs: Sequence[tuple[Fraction, Fraction | None]]) -> bool:
    for r, r_unit in refs:
        diff = abs(value - r)
        if diff <= Fraction(1, 10**6) * max(abs(r), 1):
            return True
        # either side may have been rounded where it was written with decimals
        if any(u is not None and diff <= u / 2 for u in (unit, r_unit)):
            return True
    return False


def numbers_in(text: str) -> set[Fraction]:
    """The numbers written in ``text`` (a question's given quantities)."""
    out = set()
    for tok in _WRITTEN.findall(text):
        got = _number(tok)
        if got is not None:
            out.add(got[0])
    return out


def step_results(text: str, given: set[Fraction] | None = None
                 ) -> tuple[list[tuple[tuple[Fraction, ...], Fraction | None]], bool]:
    """The quantities a step computes (the readings of each, with the unit it was written
    to) and whether all of its arithmetic holds. With ``given`` (the question's numbers),
    every other number the step writes counts too, as a stated result ("so she has 72
    clips"), list markers and step numbers aside."""
    eqs = equations(_UNITS.sub(" ", text))
    found = [(e.result, e.result_unit) for e in eqs]
    for block in _OUTPUT.findall(text):
        for tok in block.split():
            got = _number(tok)
            if got is not None:
                found.append(((got[0],), got[1]))
    if given is not None:
        bare = _MARKERS.sub(" ", _UNITS.sub(" ", text))
        seen = {v for values, _ in found for v in values}
        for tok in _WRITTEN.findall(bare):
            got = _number(tok)
            if got is not None and got[0] not in given and got[0] not in seen:
                seen.add(got[0])
                found.append(((got[0],), got[1]))
    return found, all(e.holds for e in eqs)


def one_step_values(question: str, refs: Sequence[tuple[Fraction, Fraction | None]]
                    ) -> list[tuple[Fraction, Fraction | None]]:
    """Values one operation (+ - * /) away from two of the question's numbers and the
    reference values: the intermediate results of routes the reference does not take."""
    base = {v for v, _ in refs}
    for tok in re.findall(r"\d[\d,]*(?:\.\d+)?|\.\d+", question):
        got = _number(tok)
        if got is not None:
            base.add(got[0])
    vals = sorted(base)
    out = set()
    for i, a in enumerate(vals):
        for b in vals[i:]:
            out.update((a + b, a * b, abs(a - b)))
            if b:
                out.add(a / b)
            if a:
                out.add(b / a)
    return [(v, None) for v in sorted(out - base)]


def step_state(text: str, refs: Sequence[tuple[Fraction, Fraction | None]],
               near: Sequence[tuple[Fraction, Fraction | None]] = (),
               given: set[Fraction] | None = None) -> str:
    """``fail``, ``hit``, ``part``, ``off`` or ``none`` (see the module docstring); with
    ``near`` values, ``near`` for a step whose quantities are all reference values or near
    ones, some of them near."""
    found, holds = step_results(text, given)
    if not found:
        return "none"
    if not holds:
        return "fail"
    on = [any(_matches(v, unit, refs) for v in values) for values, unit in found]
    if all(on):
        return "hit"
    if near and all(o or any(_matches(v, unit, near) for v in values)
                    for o, (values, unit) in zip(on, found, strict=True)):
        return "near"
    return "part" if any(on) else "off"


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _seed(problem_id: str, prefix: Sequence[str], seed: int) -> int:
    h = hashlib.blake2b(digest_size=8)
    for part in (problem_id, str(seed), *prefix):
        b = part.encode()
        h.update(len(b).to_bytes(8, "little") + b)  # length-prefixed: no two splits collide
    return int.from_bytes(h.digest(), "little")


class ReferenceReward:
    """The answer-key PRM (see the module docstring). ``noise`` is the scale of the Gaussian
    added in logit space; ``seed`` picks the noise draw; ``aggregation`` how the values of a
    prefix's computing steps become its clean score."""

    name = "reference"
    default_aggregation = "last"
    uses_answer_key = True  # faces refuse or flag it (serve, solve, eval)

    def __init__(self, *, noise: float = 0.0, seed: int = 0, aggregation: str = "mean",
                 state_values: dict[str, float] | None = None,
                 final_values: tuple[float, float] = FINAL_VALUES,
                 near: float | None = None, stated: bool = False) -> None:
        if isinstance(noise, bool) or not isinstance(noise, int | float) or \
                not math.isfinite(noise) or noise < 0:
            raise ConfigError(f"reference: noise must be a number >= 0 (the scale of the "
                              f"Gaussian in logit space, e.g. reference:noise=0.5), got {noise!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"reference: seed must be an integer >= 0, got {seed!r}")
        if aggregation not in PREFIX_AGGREGATIONS:
            raise ConfigError(f"reference: aggregation must be one of "
                              f"{', '.join(PREFIX_AGGREGATIONS)}, got {aggregation!r}")
        self.values = {**STATE_VALUES, **(state_values or {})}
        if near is not None:
            self.values["near"] = near
        for k, v in (*self.values.items(), ("final wrong", final_values[0]),
                     ("final right", final_values[1])):
            if not 0 < v < 1:
                raise ConfigError(f"reference: the value of {k!r} must be in (0, 1), got {v}")
        self.noise = float(noise)
        self.seed = seed
        self.aggregation = aggregation
        self.final_values = final_values
        if noise:
            self.name = f"reference:noise={self.noise:g}" + (f",seed={seed}" if seed else "")
        self.near = near is not None
        self.stated = stated
        self._refs: dict[tuple[str, str], tuple[list[tuple[Fraction, Fraction | None]],
                                                list[tuple[Fraction, Fraction | None]],
                                                set[Fraction] | None]] = {}
        self._states: dict[tuple[str, str], str] = {}

    def _references(self, problem: Problem) -> tuple[Any, ...]:
        if not problem.reference:
            raise ConfigError(
                f"reward 'reference': problem {problem.id!r} has no worked solution "
                "(Problem.reference); it needs a dataset whose problems carry one, such as "
                "gsm8k")
        key = (problem.id, problem.reference)
        if key not in self._refs:
            refs = reference_values(problem.reference)
            near = one_step_values(problem.question, refs) if self.near else []
            self._refs[key] = (refs, near, numbers_in(problem.question) if self.stated
                               else None)
        return self._refs[key]

    def _state(self, problem_id: str, text: str, refs: tuple[Any, ...]) -> str:
        key = (problem_id, text)
        if key not in self._states:
            if len(self._states) > 100_000:
                self._states.clear()
            self._states[key] = step_state(text, *refs)
        return self._states[key]

    def clean_scores(self, problem: Problem, steps: Sequence[Step]) -> list[float]:
        """The noiseless score of every prefix of ``steps``."""
        refs = self._references(problem)
        out, seen = [], []
        for i, step in enumerate(steps):
            state = self._state(problem.id, step.text, refs)
            if state != "none":
                seen.append(self.values[state])
            if not seen:
                score = START
            elif self.aggregation == "mean":
                score = sum(seen) / len(seen)
            elif self.aggregation == "min":
                score = min(seen)
            elif self.aggregation == "evidence":  # independent evidence: logits add up
                score = 1 / (1 + math.exp(-sum(_logit(v) for v in seen)))
            else:
                score = seen[-1]
            if i == len(steps) - 1 and (step.finish == "eos" or has_boxed(step.text)):
                score = self.final_values[self._right(problem, steps)]
            out.append(score)
        return out

    @staticmethod
    def _right(problem: Problem, steps: Sequence[Step]) -> int:
        from particlescale.quick_grading import grade_numeric

        answer = extract_answer("\n\n".join(s.text for s in steps))
        g = grade_numeric(problem.answer or "", answer, lenient=True)
        return int(bool(g and g.correct))

    def noisy(self, problem: Problem, steps: Sequence[Step], clean: Sequence[float]
              ) -> list[float]:
        if not self.noise:
            return list(clean)
        texts = [s.text for s in steps]
        out = []
        for i, c in enumerate(clean):
            z = np.random.default_rng(_seed(problem.id, texts[: i + 1], self.seed)).normal()
            x = _logit(c) + self.noise * z
            out.append(min(max(1 / (1 + math.exp(-x)), 1e-6), 1 - 1e-6))
        return out

    async def score(self, problem: Problem, trajectories: Sequence[Sequence[Step]],
                    usage: Usage) -> list[list[float]]:
        # No model call: usage is left alone. Cheap enough not to need a prefix cache.
        return [self.noisy(problem, t, self.clean_scores(problem, t)) for t in trajectories]


def parse_arg(arg: str | None) -> dict[str, float | int]:
    """``noise=0.5,seed=2`` -> ``{"noise": 0.5, "seed": 2}``; ConfigError on anything else."""
    opts: dict[str, float | int] = {}
    for part in (arg or "").split(","):
        if not part.strip():
            continue
        name, eq, value = (x.strip() for x in part.partition("="))
        if not eq or name not in ("noise", "seed"):
            raise ConfigError(f"reward 'reference': unknown option {part.strip()!r}; write "
                              "reference, reference:noise=0.5 or reference:noise=0.5,seed=1")
        try:
            opts[name] = float(value) if name == "noise" else int(value)
        except ValueError:
            kind = "a number >= 0" if name == "noise" else "an integer >= 0"
            raise ConfigError(f"reward 'reference': {name} must be {kind}, got {value!r}"
                              ) from None
    return opts
