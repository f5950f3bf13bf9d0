"""Monte-Carlo step labels (Math-Shepherd): against a scripted generator whose chance of
ending correct from each prefix is known exactly."""

from __future__ import annotations

import asyncio

import numpy as np

from particlescale.eval.value_train import mc_labels
from particlescale.protocols import SamplingParams
from particlescale.testing.scripted import ScriptedGenerator
from particlescale.types import Particle, Problem, Step, Usage

# After "A" the answer is right with probability 0.8, after "B" with 0.1.
P_RIGHT = {"A": 0.8, "B": 0.1}


def dist(prefix: tuple[str, ...]) -> dict[str, float]:
    if not prefix:
        return {"A": 0.5, "B": 0.5}
    if len(prefix) == 1:
        return {"so": 1.0}
    p = P_RIGHT[prefix[0]]
    return {"\\boxed{7}": p, "\\boxed{5}": 1 - p}


def solution(*texts: str) -> Particle:
    return Particle(id=0, steps=tuple(Step(t, tokens=1) for t in texts), finished=True)


def test_mc_labels_estimate_the_chance_of_ending_correct_from_each_prefix() -> None:
    gen = ScriptedGenerator(dist, horizon=3)
    sols = [solution("A", "so", "\\boxed{5}"), solution("B", "so", "\\boxed{7}")]
    usage = Usage()
    labels = asyncio.run(mc_labels(gen, Problem("q", answer="7"), sols, 400, SamplingParams(),
                                   seed=0, max_steps=3, usage=usage))
    # last steps: the solution's own outcome, whatever the rollouts from earlier prefixes say
    assert labels[0][2] == 0.0 and labels[1][2] == 1.0
    # earlier prefixes: the fraction of 400 completions that end right (sd ~0.02)
    for j, first in enumerate(("A", "B")):
        assert abs(labels[j][0] - P_RIGHT[first]) < 0.08, labels
        assert abs(labels[j][1] - P_RIGHT[first]) < 0.08, labels
    # per solution: 400 completions of 2 steps after its first step, of 1 after its second
    assert usage.generated_tokens == 2 * (400 * 2 + 400 * 1)
    assert gen.leaked == [0]


def test_mc_labels_are_seeded() -> None:
    gen = ScriptedGenerator(dist, horizon=3)
    sols = [solution("A", "so", "\\boxed{5}")]

    def run(seed: int) -> list[list[float]]:
        return asyncio.run(mc_labels(gen, Problem("q", answer="7"), sols, 5, SamplingParams(),
                                     seed=seed, max_steps=3, usage=Usage()))

    assert run(1) == run(1)
    assert any(run(1) != run(s) for s in range(2, 8))
    assert np.isclose(run(1)[0][2], 0.0)
