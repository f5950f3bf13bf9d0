"""Selectors: how a Result's answer is picked from its weighted candidates.

- ``argmax``: the answer of the highest-weight particle (the paper's choice for PF).
- ``weighted-vote``: the answer whose candidates' weights sum highest (weighted majority).
- ``vote``: the answer given by the most particles (self-consistency).
Answers are compared after :func:`particlescale.answers.normalize_answer`; candidates without an
answer never win: with none answering, there is no answer.

:func:`select_from` applies the same rules to bare lists of answers and weights (stored
samples re-read offline), so reports pick answers exactly as a run would.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from particlescale.answers import normalize_answer
from particlescale.types import Candidate

SELECTORS: tuple[str, ...] = ("argmax", "weighted-vote", "vote")


def select(candidates: Sequence[Candidate], selector: str) -> Candidate | None:
    with_answer = [c for c in candidates if c.answer is not None]
    if not with_answer:
        return None
    if selector == "argmax":
        # Per particle: identical copies made by resampling share one candidate whose weight
        # is their sum, but the paper picks the single highest-weight particle.
        return max(with_answer, key=lambda c: (c.weight / c.copies, c.score))
    if selector not in ("weighted-vote", "vote"):
        raise ValueError(f"selector: unknown {selector!r}; choose {', '.join(SELECTORS)}")
    totals: dict[str, float] = defaultdict(float)
    first: dict[str, Candidate] = {}
    for c in with_answer:
        key = normalize_answer(c.answer) or ""
        totals[key] += c.weight if selector == "weighted-vote" else c.copies
        if key not in first or c.weight > first[key].weight:
            first[key] = c
    best = max(totals, key=lambda k: (totals[k], first[k].weight))
    return first[best]


def select_answer(candidates: Sequence[Candidate], selector: str) -> str | None:
    """The selected answer string (as the winning candidate wrote it)."""
    c = select(candidates, selector)
    return c.answer if c is not None else None


def select_from(answers: Sequence[str | None], weights: Sequence[float] | np.ndarray,
                selector: str) -> str | None:
    """The answer ``selector`` picks among independent solutions given as their answers
    (None: no answer) and weights (any non-negative scale, e.g. a reward's scores; for
    ``vote`` they only break ties), each solution one candidate in the order given: the
    same rules, tie-breaks and ``None`` handling as a run's selection."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(answers),):
        raise ValueError(f"weights: {w.shape[0] if w.ndim == 1 else w.shape} for "
                         f"{len(answers)} answers; give one weight per answer")
    if selector not in SELECTORS:
        raise ValueError(f"selector: unknown {selector!r}; choose {', '.join(SELECTORS)}")
    cands = [Candidate(text="", answer=a, weight=float(x), score=float(x), steps=0, tokens=0)
             for a, x in zip(answers, w, strict=True)]
    return select_answer(cands, selector)
