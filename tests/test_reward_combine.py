"""``combine`` (product of experts), ``logprob`` and the prefix cache."""

from __future__ import annotations

import math

import pytest

from particlescale.aggregation import aggregate
from particlescale.errors import ConfigError
from particlescale.rewards.arith import ArithReward
from particlescale.rewards.cache import PrefixCache
from particlescale.rewards.combine import Combined, parse_spec
from particlescale.rewards.logprob import LogprobReward
from particlescale.testing.scripted import ScriptedReward
from particlescale.types import Problem, Step, Usage


def steps(*pairs: tuple[str, float, int]) -> list[Step]:
    return [Step(text=t, logprob=lp, tokens=n) for t, lp, n in pairs]


async def test_logprob_is_exp_of_mean_token_logprob_of_prefix() -> None:
    traj = steps(("a", -2.0, 4), ("b", -1.0, 1))
    [[r1, r2]] = await LogprobReward().score(Problem("q"), [traj], Usage())
    assert r1 == pytest.approx(math.exp(-2.0 / 4))
    assert r2 == pytest.approx(math.exp(-3.0 / 5))


async def test_logprob_without_generator_logprobs_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="did not report step log-probabilities"):
        await LogprobReward().score(Problem("q"), [[Step("a")]], Usage())


async def test_combined_is_weighted_product_of_aggregated_parts() -> None:
    arith = ArithReward()  # per-step values, aggregated by mean
    traj = steps(("48/2 = 24", -1.0, 2), ("48 + 24 = 70", -3.0, 2))
    comb = Combined([(0.5, arith), (2.0, LogprobReward())])
    [[r1, r2]] = await comb.score(Problem("q"), [traj], Usage())
    assert r1 == pytest.approx(0.9**0.5 * math.exp(-0.5) ** 2)
    assert r2 == pytest.approx(((0.9 + 0.1) / 2) ** 0.5 * math.exp(-1.0) ** 2)
    assert comb.default_aggregation == "last"
    assert comb.name == "0.5*arith+2*logprob"


async def test_combined_stays_a_probability() -> None:
    tiny = ScriptedReward(lambda p: 1e-9)
    big = ScriptedReward(lambda p: 1.0)
    [[r]] = await Combined([(3.0, tiny)]).score(Problem("q"), [[Step("a")]], Usage())
    assert 0 < r < 1
    [[r]] = await Combined([(1.0, big), (1.0, big)]).score(Problem("q"), [[Step("a")]], Usage())
    assert 0 < r < 1


def test_combined_rejects_bad_weights() -> None:
    with pytest.raises(ConfigError, match="positive"):
        Combined([(-1.0, ArithReward())])
    with pytest.raises(ConfigError, match="at least one"):
        Combined([])


@pytest.mark.parametrize(
    ("spec", "terms"),
    [
        ("arith", [(1.0, "arith")]),
        ("judge+arith", [(1.0, "judge"), (1.0, "arith")]),
        ("0.5*arith+judge", [(0.5, "arith"), (1.0, "judge")]),
        ("arith*logprob", [(1.0, "arith"), (1.0, "logprob")]),
        (" 2 * arith + judge:qwen2.5-1.5b ", [(2.0, "arith"), (1.0, "judge:qwen2.5-1.5b")]),
        ("0.5*arith*logprob", [(0.5, "arith"), (0.5, "logprob")]),
        ("arith*0.5", [(0.5, "arith")]),
    ],
)
def test_parse_spec(spec: str, terms: list[tuple[float, str]]) -> None:
    assert parse_spec(spec) == terms


@pytest.mark.parametrize("spec", ["", "arith+", "+arith", "arith*", "0.5", "0*arith", "-1*arith"])
def test_parse_spec_rejects(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_spec(spec)


def test_aggregate() -> None:
    assert aggregate([0.2, 0.8], "mean") == pytest.approx(0.5)
    assert aggregate([0.2, 0.8], "min") == pytest.approx(0.2)
    assert aggregate([0.2, 0.8], "last") == pytest.approx(0.8)
    assert aggregate([0.5, 0.5], "prod") == pytest.approx(0.25)
    assert aggregate([0.0, 1.0], "last") == pytest.approx(1 - 1e-6)  # clipped: logit stays finite
    assert aggregate([], "min") == 0.5  # no steps scored: no evidence either way
    with pytest.raises(ConfigError, match=r"aggregation.*median"):
        aggregate([0.5], "median")
    with pytest.raises(ConfigError, match="aggregation"):
        aggregate([], "median")  # a bad name is an error even before any step is scored


async def test_cache_scores_each_prefix_once_and_separates_problems() -> None:
    cache = PrefixCache()
    seen: list[tuple[str, ...]] = []

    async def compute(jobs):
        seen.extend(texts for texts, _ in jobs)
        return [len(texts) / 10 for texts, _ in jobs]

    a, b = Problem("q1", id="p"), Problem("q2", id="p")  # same id, different question
    t1 = [Step("x"), Step("y")]
    t2 = [Step("x"), Step("z")]
    out = await cache.score("r", a, [t1, t2, t1], compute)
    assert out == [[0.1, 0.2], [0.1, 0.2], [0.1, 0.2]]
    assert seen == [("x",), ("x", "y"), ("x", "z")]  # shared and duplicate prefixes once
    await cache.score("r", a, [[*t1, Step("w")]], compute)
    assert seen[3:] == [("x", "y", "w")]  # a longer trajectory costs one new step
    await cache.score("r", b, [t1], compute)
    assert seen[4:] == [("x",), ("x", "y")]  # another question does not reuse scores


async def test_cache_is_bounded() -> None:
    cache = PrefixCache(max_entries=2)

    async def compute(jobs):
        return [0.5] * len(jobs)

    for name in "abc":
        await cache.score("r", Problem("q"), [[Step(name)]], compute)
    assert len(cache) == 2
