"""Selectors: how a Result's answer is picked from its weighted candidates.

- ``argmax``: the answer of the highest-weight particle (the paper's choice for PF).
- ``weighted-vote``: the answer whose candidates' weights sum highest (weighted majority).
- ``vote``: the answer given by the most particles (self-consistency).
Answers are compared after :func:`particlescale.answers.normalize_answer`; candidates without an
answer only win when no candidate has one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from particlescale.answers import normalize_answer
from particlescale.types import Candidate


def select(candidates: Sequence[Candidate], selector: str) -> Candidate | None:
    with_answer = [c for c in candidates if c.answer is not None]
    if not with_answer:
        return None
    if selector == "argmax":
        # Per particle: identical copies made by resampling share one candidate whose weight
        # is their sum, but the paper picks the single highest-weight particle.
        return max(with_answer, key=lambda c: (c.weight / c.copies, c.score))
    if selector not in ("weighted-vote", "vote"):
        raise ValueError(f"selector: unknown {selector!r}; choose argmax, weighted-vote, vote")
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
