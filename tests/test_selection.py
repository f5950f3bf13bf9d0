"""Selectors (algorithms.selection) on exact cases: which answer each picks, how ties and
missing answers go, and select_from agreeing with a run's own selection."""

from __future__ import annotations

import numpy as np
import pytest

from particlescale.algorithms.common import candidates_from
from particlescale.algorithms.selection import SELECTORS, select, select_answer, select_from
from particlescale.types import Particle, Step


def test_argmax_takes_the_heaviest_answering_solution() -> None:
    assert select_from(["1", "2", "3"], [0.2, 0.5, 0.3], "argmax") == "2"
    # the heaviest solution gave no answer: the heaviest one that did wins
    assert select_from([None, "2", "3"], [0.9, 0.05, 0.05 + 1e-9], "argmax") == "3"
    # ties go to the first in order
    assert select_from(["1", "2"], [0.5, 0.5], "argmax") == "1"


def test_weighted_vote_sums_normalised_answers() -> None:
    # "1,000" and "1000" are one answer: 0.3 + 0.3 beats 0.4
    answers = ["1,000", "7", "1000"]
    assert select_from(answers, [0.3, 0.4, 0.3], "weighted-vote") == "1,000"
    assert select_from(answers, [0.3, 0.4, 0.3], "vote") == "1,000"
    assert select_from(answers, [0.3, 0.4, 0.3], "argmax") == "7"
    # the winning group answers as its heaviest member wrote it
    assert select_from(["1,000", "1000"], [0.1, 0.2], "weighted-vote") == "1000"


def test_vote_counts_solutions_and_weights_break_ties() -> None:
    assert select_from(["a", "b", "b"], [0.9, 0.01, 0.01], "vote") == "b"
    assert select_from(["a", "b"], [0.2, 0.7], "vote") == "b"
    assert select_from(["a", "b"], [1.0, 1.0], "vote") == "a"  # equal: the first
    assert select_from(["a", None, None], [1.0, 1.0, 1.0], "vote") == "a"  # None never wins


@pytest.mark.parametrize("selector", SELECTORS)
def test_no_answer_at_all_is_none(selector: str) -> None:
    assert select_from([None, None], [0.5, 0.5], selector) is None
    assert select_from([], [], selector) is None


def test_bad_input_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="argmax, weighted-vote, vote"):
        select_from(["1"], [1.0], "weighted")
    with pytest.raises(ValueError, match="one weight per answer"):
        select_from(["1", "2"], [1.0], "argmax")


def _solution(k: int, answer: str) -> Particle:
    text = f"step {k}: so the answer is \\boxed{{{answer}}}"
    return Particle(id=k, steps=(Step(text=text, tokens=1, finish="eos"),), finished=True)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("selector", SELECTORS)
def test_select_from_agrees_with_a_runs_candidates(seed: int, selector: str) -> None:
    """Independent solutions read offline pick the answer a best-of-n style run would pick
    from its candidates (weights normalised by the run; distinct texts, one copy each)."""
    rng = np.random.default_rng(seed)
    answers = [str(x) for x in rng.integers(0, 4, 8)]
    scores = rng.random(8)
    particles = [_solution(k, a) for k, a in enumerate(answers)]
    cands = candidates_from(particles, np.log(scores), "last")
    assert select_from(answers, scores, selector) == select_answer(cands, selector)
    assert select(cands, selector) is not None
