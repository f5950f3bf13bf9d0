"""Particle Gibbs with ancestor sampling (PGAS) against exact answers on an enumerable tree.

Model: steps from {A, B, C}; the scripted LM is "sticky" (after A it writes A with 0.8, after B
B with 0.8), C ends a solution, otherwise solutions end after 4 steps: 31 trajectories in all.
With incremental weights the sweep's target is pi(x) ∝ q(x) r(x)^beta, enumerated exactly.

Invariance test: a particle Gibbs kernel leaves pi invariant, so if the reference x0 is drawn
exactly from pi, the reference x1 after one conditional sweep is distributed as pi too, for
any number of particles. We draw x0 ~ pi, run one sweep, draw x1 from its final weights,
DRAWS times, and test the histogram of x1 against pi (chi-square, bins with an expected count
under 5 pooled; Wilson-Hilferty p-value). The seeds are fixed, so the test is deterministic;
the correct sampler gives p = 0.65 and 0.50 here. With N = 2 or 3 the reference's ancestor
decides much of the sweep, so wrong ancestor weights show at once: dropping the LM term
q(x'_{t+1:T} | x^i_{1:t}) gives p ~ 1e-27 (tested below), dropping the reward term
exp(beta*phi(spliced) - beta*phi(prefix)) p ~ 1e-23 (checked by hand).
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from particlescale import ConfigError, Problem, solve
from particlescale.algorithms.common import IdSource
from particlescale.algorithms.config import PGConfig
from particlescale.algorithms.pf import sweep
from particlescale.algorithms.smc_methods import _draw_reference
from particlescale.protocols import SamplingParams
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward, ScriptedSession
from particlescale.types import Step, Trace, Usage

from invariance import EOS, HORIZON, as_particle, chi_square_p, parity_reward, sticky, target

DRAWS = 3000
reward = parity_reward


class NoLMTerm:
    """A session whose continuation scores drop the LM term (a deliberately wrong PGAS)."""

    def __init__(self, inner: ScriptedSession) -> None:
        self.inner = inner

    async def extend(self, parents, children):
        return await self.inner.extend(parents, children)

    def release(self, particles) -> None:
        self.inner.release(particles)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def continuation_logprob(self, prefixes, continuation) -> list[float]:
        return [0.0] * len(prefixes)


async def one_sweep_from_pi(n: int, seed: int, *, ancestor_sampling: bool, beta: float = 1.0,
                            wrong: bool = False, dist=sticky) -> np.ndarray:
    """Histogram over paths of x1, the reference after one sweep started from x0 ~ pi."""
    paths, pi = target(dist, beta)
    index = {x: i for i, x in enumerate(paths)}
    rng = np.random.default_rng(seed)
    gen = ScriptedGenerator(dist, horizon=HORIZON, eos_steps=EOS)
    usage = Usage()
    session = gen.session(Problem("q"), SamplingParams(), rng, usage)
    if wrong:
        session = NoLMTerm(session)
    rew = ScriptedReward(reward)
    cfg = PGConfig(weights="incremental", max_steps=10, softmax_temperature=1 / beta,
                   ancestor_sampling=ancestor_sampling)
    counts = np.zeros(len(paths))
    for _ in range(DRAWS):
        x0 = paths[int(rng.choice(len(paths), p=pi))]
        s = await sweep(Problem("q"), session, rew, cfg, "last", rng, usage, Trace("pg", {}, {}),
                        IdSource(), n, reference=as_particle(x0),
                        ancestor_sampling=ancestor_sampling)
        x1 = _draw_reference(s, rng)
        # a spliced reference carries the rewards of its own prefixes
        assert x1.rewards == as_particle(x1.texts()).rewards
        counts[index[tuple(x1.texts())]] += 1
    await session.aclose()
    assert gen.leaked == [0]
    return counts


@pytest.mark.parametrize(("n", "beta", "seed"), [(2, 1.0, 0), (3, 0.5, 1)])
def test_pgas_leaves_the_target_invariant(n: int, beta: float, seed: int) -> None:
    _, pi = target(sticky, beta)
    counts = asyncio.run(one_sweep_from_pi(n, seed, ancestor_sampling=True, beta=beta))
    assert chi_square_p(counts, pi) > 1e-3


def test_plain_conditional_sweep_leaves_the_target_invariant() -> None:
    _, pi = target(sticky, 1.0)
    counts = asyncio.run(one_sweep_from_pi(2, 2, ancestor_sampling=False))
    assert chi_square_p(counts, pi) > 1e-3


def test_ancestor_weights_without_the_lm_term_break_invariance() -> None:
    """The same test has the power to see a wrong ancestor weight."""
    _, pi = target(sticky, 1.0)
    counts = asyncio.run(one_sweep_from_pi(2, 0, ancestor_sampling=True, wrong=True))
    assert chi_square_p(counts, pi) < 1e-6


# -- mixing -----------------------------------------------------------------------------------


def flat(prefix: tuple[str, ...]) -> dict[str, float]:
    return {"A": 0.45, "B": 0.45, "C": 0.1}


async def first_step_changes(ancestor_sampling: bool, iterations: int, seed: int) -> float:
    """Fraction of particle Gibbs iterations (N = 2) whose reference starts with another
    first step than the previous one."""
    rng = np.random.default_rng(seed)
    gen = ScriptedGenerator(flat, horizon=HORIZON, eos_steps=EOS)
    usage = Usage()
    session = gen.session(Problem("q"), SamplingParams(), rng, usage)
    rew = ScriptedReward(reward)
    cfg = PGConfig(weights="incremental", max_steps=10, ancestor_sampling=ancestor_sampling)
    ref = None
    firsts = []
    for _ in range(iterations):
        s = await sweep(Problem("q"), session, rew, cfg, "last", rng, usage, Trace("pg", {}, {}),
                        IdSource(), 2, reference=ref, ancestor_sampling=ancestor_sampling)
        ref = _draw_reference(s, rng)
        firsts.append(ref.steps[0].text)
    await session.aclose()
    return float(np.mean([a != b for a, b in itertools.pairwise(firsts)]))


def test_ancestor_sampling_moves_the_reference_more_than_plain_particle_gibbs() -> None:
    """With two particles, plain PG changes the reference's first step only when the free
    particle's line survives every resampling; PGAS can re-attach the reference's rest to
    the free particle's prefix at each step."""
    plain = asyncio.run(first_step_changes(False, 400, 0))
    pgas = asyncio.run(first_step_changes(True, 400, 0))
    assert pgas > 1.5 * plain, (plain, pgas)


def test_pg_and_pt_report_ancestor_moves_and_use_the_scorer() -> None:
    gen = ScriptedGenerator(flat, horizon=HORIZON, eos_steps=EOS)
    res = solve("q", generator=gen, reward=ScriptedReward(reward), method="pg", budget=16,
                seed=0, iterations=4, weights="incremental", ancestor_sampling=True)
    moves = res.info["ancestor_moves"]
    assert len(moves) == 4 and moves[0] == 0  # the first sweep has no reference
    assert sum(moves) == sum(e["kind"] == "ancestor" for e in res.trace.events) > 0
    assert gen.scored_continuations > 0 and gen.leaked == [0]
    gen = ScriptedGenerator(flat, horizon=HORIZON, eos_steps=EOS)
    pt = solve("q", generator=gen, reward=ScriptedReward(reward), method="pt", budget=32,
               seed=0, iterations=4, chains=2, weights="incremental", ancestor_sampling=True)
    assert pt.info["ancestor_moves"] > 0 and gen.leaked == [0]


def test_ancestor_sampling_off_does_not_score_continuations() -> None:
    gen = ScriptedGenerator(flat, horizon=HORIZON, eos_steps=EOS)
    res = solve("q", generator=gen, reward=ScriptedReward(reward), method="pg", budget=16,
                seed=0, iterations=4, weights="incremental")
    assert gen.scored_continuations == 0 and "ancestor_moves" not in res.info


# -- configuration errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("options", "match"), [
    ({"method": "pg"}, "pg: ancestor_sampling=true needs weights='incremental'.*set "
                       "weights='incremental' or ancestor_sampling=false"),
    ({"method": "pt", "weights": "paper"}, "pt: ancestor_sampling=true needs "
                                           "weights='incremental'"),
    ({"method": "pg", "weights": "incremental", "tempering": "adaptive"},
     "pg: ancestor_sampling=true needs tempering='none', got tempering='adaptive'.*set "
     "tempering='none' or ancestor_sampling=false"),
    ({"method": "pt", "weights": "incremental", "tempering": "linear"},
     "needs tempering='none'"),
])
def test_ancestor_sampling_needs_incremental_weights_and_constant_beta(options, match) -> None:
    gen = ScriptedGenerator(flat, horizon=HORIZON, eos_steps=EOS)
    with pytest.raises(ConfigError, match=match):
        solve("q", generator=gen, reward=ScriptedReward(reward), budget=8,
              ancestor_sampling=True, **options)
    assert gen.calls == []


class Plain:
    """A generator whose sessions cannot score continuations."""

    name = "plain-lm"

    def __init__(self) -> None:
        self.extended = 0

    def session(self, problem, params, rng, usage):
        outer = self

        class S:
            async def extend(self, parents, children):
                outer.extended += 1
                return [[Step("A", finish="eos") for _ in range(k)] for k in children]

            def release(self, particles):
                pass

            async def aclose(self):
                pass

        return S()


@pytest.mark.parametrize("method", ["pg", "pt"])
def test_generator_without_the_capability_is_refused_before_generating(method: str) -> None:
    gen = Plain()
    with pytest.raises(ConfigError, match=r"ancestor_sampling: generator 'plain-lm' cannot score "
                       r"continuations.*use ancestor_sampling=false or a backend that can: "
                       r"llamacpp, openai with a vLLM server"):
        solve("q", generator=gen, reward=ScriptedReward(reward), method=method, budget=8,
              weights="incremental", ancestor_sampling=True)
    assert gen.extended == 0
    # without ancestor sampling the same generator is fine
    solve("q", generator=gen, reward=ScriptedReward(reward), method=method, budget=8)
    assert gen.extended > 0
