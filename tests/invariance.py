"""Invariance checks for Markov kernels on an enumerable tree of solutions (tests only).

A particle Gibbs kernel K leaves its target pi invariant: if the reference x0 is drawn exactly
from pi, the reference x1 after one conditional sweep is distributed as pi too, for any number
of particles. ``kernel_histogram`` draws x0 ~ pi, applies a kernel, and counts x1 over the
trajectories; ``chi_square_p`` tests the counts against pi (bins expected under 5 pooled;
Wilson-Hilferty p-value). The seeds are fixed, so each test is deterministic.

Model: steps from {A, B, C}; the scripted LM is "sticky" (after A it writes A with 0.8, after
B B with 0.8), C ends a solution, otherwise solutions end after 4 steps: 31 trajectories.
With incremental weights the sweep's target is pi(x) ∝ q(x) r(x)^beta, enumerated exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from particlescale.testing.scripted import enumerate_paths
from particlescale.types import Particle, Step

HORIZON = 4
EOS = frozenset({"C"})


def sticky(prefix: tuple[str, ...]) -> dict[str, float]:
    if not prefix:
        return {"A": 0.5, "B": 0.4, "C": 0.1}
    if prefix[-1] == "A":
        return {"A": 0.8, "B": 0.1, "C": 0.1}
    return {"A": 0.1, "B": 0.8, "C": 0.1}


def abc(prefix: tuple[str, ...]) -> dict[str, float]:
    """An LM on which A becomes rarer and C likelier as A's accumulate (test_exactness)."""
    a = sum(s == "A" for s in prefix)
    return {"A": 0.5 - 0.1 * a, "B": 0.4 + 0.05 * a, "C": 0.1 + 0.05 * a}


def sticky_session(seed: int):
    """(rng, a scripted session over ``sticky``, its usage, the parity reward)."""
    from particlescale.protocols import SamplingParams
    from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward
    from particlescale.types import Problem, Usage

    rng = np.random.default_rng(seed)
    gen = ScriptedGenerator(sticky, horizon=HORIZON, eos_steps=EOS)
    usage = Usage()
    return rng, gen.session(Problem("q"), SamplingParams(), rng, usage), usage, \
        ScriptedReward(parity_reward)


def parity_reward(prefix: tuple[str, ...]) -> float:
    """High when the prefix has an even number of A's: the reward of a spliced path is not
    the reward of its prefix, and rewards change sharply from step to step."""
    base = (0.8 if prefix.count("A") % 2 == 0 else 0.2) + (0.1 if prefix[-1] == "C" else 0.0)
    return float(min(0.95, max(0.05, base)))


def target(dist, beta: float, reward=parity_reward, log_potential=None,
           ) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Every trajectory and pi(x) ∝ q(x) exp(beta * phi(x)), phi = log r unless given."""
    paths = enumerate_paths(dist, HORIZON, EOS)
    phi = log_potential or (lambda x: math.log(reward(x)))
    logpi = np.array([math.log(p) + beta * phi(x) for x, p in paths])
    pi = np.exp(logpi - logpi.max())
    return [x for x, _ in paths], pi / pi.sum()


def as_particle(x: Sequence[str], reward=parity_reward) -> Particle:
    steps = tuple(Step(s, tokens=1, finish="eos" if k == len(x) - 1 else "step")
                  for k, s in enumerate(x))
    return Particle(id=-1, steps=steps, finished=True,
                    rewards=tuple(reward(tuple(x[: k + 1])) for k in range(len(x))))


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """Upper tail p-value of Pearson's chi-square (bins expected < 5 pooled into one)."""
    expected = probs * counts.sum()
    small = expected < 5
    obs, exp = counts[~small], expected[~small]
    if small.any():
        obs, exp = np.append(obs, counts[small].sum()), np.append(exp, expected[small].sum())
    chi = float(((obs - exp) ** 2 / exp).sum())
    k = obs.size - 1
    z = ((chi / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))
