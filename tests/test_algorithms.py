"""Behaviour of the algorithms on scripted generators: the paper's rules for particle
filtering, particle Gibbs's reference, parallel tempering's swaps, the baselines' hand-computed
answers, reproducibility and option validation."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from particlescale import ConfigError, Problem, solve
from particlescale.algorithms.common import IdSource
from particlescale.algorithms.config import PFConfig
from particlescale.algorithms.pf import sweep
from particlescale.protocols import SamplingParams
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward
from particlescale.types import Particle, Step, Trace, Usage


def coin(prefix: tuple[str, ...]) -> dict[str, float]:
    return {"x": 0.45, "y": 0.45, "\\boxed{7}": 0.1}


def coin_reward(prefix: tuple[str, ...]) -> float:
    return 0.2 + 0.6 * (prefix.count("x") / len(prefix))


def test_pf_paper_rules() -> None:
    gen = ScriptedGenerator(coin, horizon=1000)
    res = solve("q", generator=gen, reward=ScriptedReward(coin_reward), method="pf", budget=16,
                seed=3, max_steps=12)
    steps = res.trace.steps
    # resampling after every step but the last, which ends the run
    assert all(s.resampled for s in steps[:-1]) and not steps[-1].resampled
    # the step cap: nothing has more than 12 steps and the run stops there
    assert len(steps) <= 12 and all(c.steps <= 12 for c in res.candidates)
    # finished particles stay in the pool and are never extended (the scripted session
    # asserts the latter); once finished, a lineage only produces finished copies
    finished_ids = set()
    for s in steps:
        for node in s.nodes:
            if node.parent in finished_ids:
                assert node.finished
            if node.finished:
                finished_ids.add(node.id)
    assert sum(len(s.nodes) for s in steps) == 16 * len(steps)
    # the answer is the highest-weight candidate's among those that give an answer
    answered = [c for c in res.candidates if c.answer is not None]
    assert res.answer == max(answered, key=lambda c: c.weight / c.copies).answer
    assert gen.leaked == [0]


def test_pf_forty_step_cap_by_default() -> None:
    gen = ScriptedGenerator(lambda p: {"x": 1.0}, horizon=10_000)
    res = solve("q", generator=gen, reward=ScriptedReward(lambda p: 0.5), method="pf", budget=2,
                seed=0)
    assert len(res.trace.steps) == 40
    assert all(c.steps == 40 for c in res.candidates)


def test_children_of_one_parent_are_generated_together() -> None:
    gen = ScriptedGenerator(coin, horizon=6)
    solve("q", generator=gen, reward=ScriptedReward(coin_reward), method="pf", budget=32, seed=1)
    # one entry per distinct live parent; the first call is the root with 32 children
    assert gen.calls[0] == [32]
    assert any(len(c) < 32 and sum(c) > 0 for c in gen.calls[1:])


def test_adaptive_tempering_reaches_ess_target() -> None:
    sharp = ScriptedReward(lambda p: 0.999 if p[-1] == "x" else 0.001)
    gen = ScriptedGenerator(coin, horizon=5)
    res = solve("q", generator=gen, reward=sharp, method="pf", budget=64, seed=4,
                tempering="adaptive", ess_target=0.6)
    # every step but the last keeps ESS/N at the target; the last is at the target temperature
    for s in res.trace.steps[:-1]:
        assert s.ess is not None and s.ess / 64 >= 0.6 - 1e-6
        assert s.temperature is not None and s.temperature >= 1.0
    assert res.trace.steps[-1].temperature == 1.0
    plain = solve("q", generator=ScriptedGenerator(coin, horizon=5), reward=sharp, method="pf",
                  budget=64, seed=4)
    assert min(s.ess for s in plain.trace.steps) < 0.6 * 64


def test_linear_annealing_schedule() -> None:
    gen = ScriptedGenerator(coin, horizon=6)
    res = solve("q", generator=gen, reward=ScriptedReward(coin_reward), method="pf", budget=4,
                seed=0, tempering="linear", temperature_start=3.0, anneal_steps=3,
                softmax_temperature=1.0)
    temps = [s.temperature for s in res.trace.steps]
    assert temps[0] == pytest.approx(3.0) and temps[1] == pytest.approx(2.0)
    assert all(t == pytest.approx(1.0) for t in temps[2:])


class _Session:
    """A session over a fixed step 'a' for the free particles."""

    def __init__(self) -> None:
        self.parents: list[tuple[str, ...]] = []

    async def extend(self, parents: Sequence[Particle], children: Sequence[int]):
        out = []
        for p, k in zip(parents, children, strict=True):
            self.parents.append(tuple(p.texts()))
            n = len(p.steps) + 1
            out.append([Step(text=f"a{n}", tokens=1, finish="eos" if n >= 3 else "step")
                        for _ in range(k)])
        return out

    def release(self, particles) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.asyncio
async def test_pg_reference_competes_with_its_reward_at_each_step() -> None:
    """The reference's final reward is high but its early rewards are low: at step t it must
    carry its step-t reward (its_hub #54 used the final one)."""
    ref = Particle(id=999, steps=(Step("r1"), Step("r2"), Step("r3", finish="eos")),
                   rewards=(0.05, 0.1, 0.99), finished=True)
    reward = ScriptedReward(lambda p: 0.5)
    trace = Trace("pg", {}, {})
    session = _Session()
    cfg = PFConfig()
    await sweep(Problem("q"), session, reward, cfg, "last", np.random.default_rng(0), Usage(),
                trace, IdSource(), 4, band="iteration 2", reference=ref)
    for step in trace.steps:
        refs = [n for n in step.nodes if n.reference]
        assert len(refs) == 1, "the reference keeps its slot at every step"
        r = refs[0]
        assert r.score == pytest.approx(ref.rewards[min(step.t, 3) - 1])
        others = [n.log_weight for n in step.nodes if not n.reference]
        if step.t < 3:
            assert r.log_weight < min(others)
        assert r.text == ref.steps[min(step.t, 3) - 1].text
    # the reference is never extended past its own steps, but free particles may fork from it
    assert all(len(p) < 3 for p in session.parents)


@pytest.mark.asyncio
async def test_pg_reference_can_be_forked() -> None:
    ref = Particle(id=999, steps=(Step("r1"), Step("r2"), Step("r3", finish="eos")),
                   rewards=(0.999, 0.999, 0.999), finished=True)
    reward = ScriptedReward(lambda p: 0.001)
    trace = Trace("pg", {}, {})
    session = _Session()
    await sweep(Problem("q"), session, reward, PFConfig(), "last", np.random.default_rng(0),
                Usage(), trace, IdSource(), 8, reference=ref)
    assert ("r1",) in session.parents, "free particles descend from the dominant reference"


def test_pg_and_pt_use_the_whole_budget_and_report() -> None:
    gen = ScriptedGenerator(coin, horizon=5)
    res = solve("q", generator=gen, reward=ScriptedReward(coin_reward), method="pg", budget=16,
                seed=0, iterations=4)
    assert res.info["particles"] * res.info["iterations"] == 16
    bands = {s.band for s in res.trace.steps}
    assert bands == {f"iteration {i}" for i in range(1, 5)}
    assert any(n.reference for s in res.trace.steps if s.band != "iteration 1" for n in s.nodes)
    pt = solve("q", generator=ScriptedGenerator(coin, horizon=5),
               reward=ScriptedReward(coin_reward), method="pt", budget=32, seed=0, chains=4,
               iterations=4)
    rates = pt.info["swap_acceptance"]
    assert len(rates) == 3 and all(r is None or 0 <= r <= 1 for r in rates)
    assert pt.info["temperatures"][0] == pytest.approx(1.0)
    assert pt.info["temperatures"][-1] == pytest.approx(4.0)


@dataclasses.dataclass
class Scripted:
    """Deterministic solutions: the k-th sample is outputs[k % len(outputs)]."""

    outputs: list[str]
    name: str = "fixed"

    def __post_init__(self) -> None:
        self.counter = itertools.count()

    def session(self, problem, params: SamplingParams, rng, usage):
        outer = self

        class S:
            async def extend(self, parents, children):
                return [[Step(outer.outputs[next(outer.counter) % len(outer.outputs)],
                              finish="eos") for _ in range(k)] for k in children]

            def release(self, particles):
                pass

            async def aclose(self):
                pass

        return S()


REWARDS = {"\\boxed{1}": 0.9, "\\boxed{2}": 0.6, "\\boxed{3}": 0.2}


def reward_of(prefix: tuple[str, ...]) -> float:
    return REWARDS[prefix[-1]]


def test_baselines_hand_computed() -> None:
    outputs = ["\\boxed{1}", "\\boxed{2}", "\\boxed{2}", "\\boxed{2}", "\\boxed{3}"] * 1
    kw = dict(reward=ScriptedReward(reward_of), budget=5, seed=0)
    assert solve("q", generator=Scripted(outputs), method="best-of-n", **kw).answer == "1"
    # weighted: answer 2 sums 1.8 > 0.9
    assert solve("q", generator=Scripted(outputs), method="weighted-best-of-n", **kw).answer == "2"
    assert solve("q", generator=Scripted(outputs), method="self-consistency", **kw).answer == "2"
    # a weighted vote that differs from the majority: 3 x 0.2 vs 1 x 0.9
    outs = ["\\boxed{1}", "\\boxed{3}", "\\boxed{3}", "\\boxed{3}"]
    kw4 = dict(reward=ScriptedReward(reward_of), budget=4, seed=0)
    assert solve("q", generator=Scripted(outs), method="weighted-best-of-n", **kw4).answer == "1"
    assert solve("q", generator=Scripted(outs), method="self-consistency", **kw4).answer == "3"


def test_greedy_uses_temperature_zero() -> None:
    gen = ScriptedGenerator(lambda p: {"\\boxed{a}": 0.3, "\\boxed{b}": 0.7}, horizon=1)
    res = solve("q", generator=gen, reward=ScriptedReward(lambda p: 0.5), method="greedy",
                budget=1, seed=9)
    assert res.answer == "b"


def tree(prefix: tuple[str, ...]) -> dict[str, float]:
    if not prefix:
        return {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}
    return {f"\\boxed{{{prefix[0]}}}": 1.0}


TREE_REWARD = {"a": 0.9, "b": 0.8, "c": 0.1, "d": 0.2}


def tree_reward(prefix: tuple[str, ...]) -> float:
    return TREE_REWARD[prefix[0]] if len(prefix) == 1 else TREE_REWARD[prefix[0]] - 0.05


def test_beam_keeps_the_best_n_over_m() -> None:
    gen = ScriptedGenerator(tree, horizon=2)
    res = solve("q", generator=gen, reward=ScriptedReward(tree_reward), method="beam", budget=8,
                seed=0, beam_width=4)
    first = {n.text for n in res.trace.steps[0].nodes}
    assert len(res.trace.steps[0].nodes) == 8
    # only the top 8/4 = 2 first steps were expanded, each 4 times
    assert gen.calls[1] == [4, 4]
    best_two = sorted(first, key=lambda t: -TREE_REWARD[t])[:2]
    assert {n.text.removeprefix("\\boxed{").removesuffix("}")
            for n in res.trace.steps[1].nodes} == set(best_two)
    assert res.answer == best_two[0]


def test_dvts_subtrees_are_independent() -> None:
    gen = ScriptedGenerator(tree, horizon=2)
    res = solve("q", generator=gen, reward=ScriptedReward(tree_reward), method="dvts", budget=8,
                seed=0, beam_width=4)
    bands = {s.band for s in res.trace.steps}
    assert bands == {"subtree 1", "subtree 2"}
    assert gen.calls[0] == [4, 4]
    assert res.answer in {"a", "b"}


def _strip(result) -> dict:
    d = result.to_dict(trace=True)
    d["usage"].pop("wall_time")
    return d


@pytest.mark.parametrize("method", ["pf", "pg", "pt", "best-of-n", "beam", "dvts"])
def test_same_seed_same_result(method: str) -> None:
    def go(seed: int) -> dict:
        return _strip(solve("q", generator=ScriptedGenerator(coin, horizon=6),
                            reward=ScriptedReward(coin_reward), method=method, budget=8,
                            seed=seed))

    assert go(11) == go(11)
    assert go(11)["trace"] != go(12)["trace"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "nope"}, "method: unknown 'nope'; choose one of pf, pg"),
    ({"method": "pf", "resampling": "bogus"}, "resampling"),
    ({"method": "pf", "wobble": 1}, "unknown option 'wobble'; accepted options:"),
    ({"method": "pf", "budget": 0}, "budget: must be >= 1"),
    ({"method": "pf", "budget": 10**9}, "budget: .* larger than the maximum"),
    ({"method": "pf", "ess_threshold": 2}, "ess_threshold"),
    ({"method": "pg", "iterations": 0}, "iterations"),
    ({"method": "pf", "seed": -1}, "seed"),
])
def test_bad_options_are_rejected_before_any_model_call(kwargs: dict, match: str) -> None:
    gen = ScriptedGenerator(coin, horizon=3)
    kwargs = {"budget": 4, **kwargs}
    with pytest.raises(ConfigError, match=match):
        solve("q", generator=gen, reward=ScriptedReward(coin_reward), **kwargs)
    assert gen.calls == []


def test_empty_question_is_rejected() -> None:
    with pytest.raises(ValueError, match="question"):
        Problem("  ")
