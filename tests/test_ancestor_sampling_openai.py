"""Continuation scoring on the OpenAI-compatible backend against the fake vLLM server (echoed
prompt log-probabilities over real HTTP), and its refusals for servers that cannot score.

The expected values are computed from the fake's own tokenizer and token log-probability
function, independently of the client's parsing: the continuation's log-probability is the
sum over its tokens of log p(token | text before it), plus the end-of-turn token when the
continuation ends the solution.
"""

from __future__ import annotations

import numpy as np
import pytest

from particlescale import ConfigError, Problem, solve
from particlescale.backends.openai import OpenAIGenerator
from particlescale.protocols import SamplingParams
from particlescale.testing.fake_vllm import FakeVLLM, tokenize
from particlescale.testing.scripted import ScriptedReward
from particlescale.types import Particle, Step, Usage

MODEL = "Qwen/Qwen2.5-Math-1.5B-Instruct"
QUESTION = "What is 40 + 2?"
T1 = SamplingParams(temperature=1.0)


@pytest.fixture
def fake():
    with FakeVLLM(model=MODEL) as server:
        yield server


def expected(fake: FakeVLLM, prompt: str, suffix: str) -> float:
    """log p(suffix | prompt) from the fake's tokens (first token where the tokenisations of
    prompt and prompt + suffix differ, to the end)."""
    own, both = tokenize(prompt), tokenize(prompt + suffix)
    start = next(i for i, (a, b) in enumerate(zip([*own, None], both, strict=False)) if a != b)
    at = sum(len(x) for x in both[:start])
    total = 0.0
    for piece in both[start:]:
        total += fake.token_logprob((prompt + suffix)[:at], piece)
        at += len(piece)
    return total


async def score(gen, prefixes, continuation, params=T1, usage=None):
    session = gen.session(Problem(QUESTION), params, np.random.default_rng(0), usage or Usage())
    try:
        return await session.continuation_logprob(prefixes, continuation), session
    finally:
        await session.aclose()


async def test_scores_are_the_servers_prompt_logprobs_of_the_continuation(fake):
    gen = OpenAIGenerator(fake.v1, MODEL)
    prefixes = [Particle(id=0),
                Particle(id=1, steps=(Step("## Step 1: 1 + 1 = 2"),)),
                Particle(id=2, steps=(Step("## Step 1: 5 + 5 = 10"),)),
                Particle(id=3, steps=(Step("## Step 1: 5 + 5 = 10"),))]  # a resampled copy
    cont = (Step("## Step 2: 2 + 40 = 42"), Step("So $\\boxed{42}$.", finish="eos"))
    usage = Usage()
    got, session = await score(gen, prefixes, cont, usage=usage)
    (body,) = [b for b in fake.bodies("/v1/completions")]
    assert body["echo"] is True and body["logprobs"] == 0 and body["max_tokens"] == 1
    assert body["add_special_tokens"] is False
    assert len(body["prompt"]) == 3  # one request, identical prompts scored once
    suffix = "## Step 2: 2 + 40 = 42\n\nSo $\\boxed{42}$.<|im_end|>"
    want = [expected(fake, session._prompt(p), suffix) for p in prefixes]
    assert got == pytest.approx(want, abs=1e-9)
    assert got[2] == got[3] and len(set(got[:3])) == 3
    assert usage.lm_calls == 1 and usage.prompt_tokens == sum(len(tokenize(p))
                                                               for p in body["prompt"])


async def test_a_continuation_that_does_not_end_has_no_end_token(fake):
    gen = OpenAIGenerator(fake.v1, MODEL)
    prefix = Particle(id=1, steps=(Step("## Step 1: 1 + 1 = 2"),))
    got, session = await score(gen, [prefix], (Step("## Step 2: 2 + 2 = 4"),))
    assert got[0] == pytest.approx(expected(fake, session._prompt(prefix),
                                            "## Step 2: 2 + 2 = 4\n\n"), abs=1e-9)


async def test_tokens_merging_across_the_boundary_are_scored_from_the_first_difference(fake):
    """A step cut by the token cap ends in the middle of a word: the fake tokeniser merges
    its end with the continuation's start; the merged token belongs to the continuation."""
    gen = OpenAIGenerator(fake.v1, MODEL)
    prefix = Particle(id=1, steps=(Step("## Step 1: twenty", finish="length"),))
    cont = (Step("two is the answer"),)
    got, session = await score(gen, [prefix], cont)
    prompt = session._prompt(prefix)
    assert tokenize(prompt + "two")[-1] == "twentytwo"  # the merge under test
    assert got[0] == pytest.approx(expected(fake, prompt, "two is the answer\n\n"), abs=1e-9)


async def test_empty_call_checks_without_scoring(fake):
    got, _ = await score(OpenAIGenerator(fake.v1, MODEL), [], (Step("x"),))
    assert got == [] and fake.bodies("/v1/completions") == []


@pytest.mark.parametrize(("server", "gen_kw", "params", "match"), [
    ({"strict_openai": True}, {}, T1,
     r"cannot score continuations: that needs vLLM's prompt log-probabilities.*this server is "
     r"'openai'.*use ancestor_sampling=false, a vLLM server, or the llamacpp backend"),
    ({}, {"mode": "chat"}, T1, r"create it with mode='completions'"),
    ({}, {}, SamplingParams(temperature=0.8),
     r"temperature=0.8, top_p=1; set temperature=1 and top_p=1"),
])
async def test_sessions_that_cannot_score_say_why(server, gen_kw, params, match):
    with FakeVLLM(model=MODEL, **server) as fake:
        gen = OpenAIGenerator(fake.v1, MODEL, **gen_kw)
        with pytest.raises(ConfigError, match=match):
            await score(gen, [], (Step("x"),), params=params)


def test_pg_with_ancestor_sampling_on_the_fake(fake):
    gen = OpenAIGenerator(fake.v1, MODEL)
    res = solve(QUESTION, generator=gen, reward=ScriptedReward(lambda t: 0.3 + 0.1 * len(t)),
                method="pg", budget=8, iterations=4, seed=0, weights="incremental",
                ancestor_sampling=True, temperature=1.0, max_steps=6)
    assert len(res.info["ancestor_moves"]) == 4
    echo = [b for b in fake.bodies("/v1/completions") if b.get("echo")]
    assert echo and res.usage.lm_calls > len(echo)
    # refused before any generation at the paper's temperature
    with FakeVLLM(model=MODEL) as other:
        with pytest.raises(ConfigError, match=r"temperature=0\.8"):
            solve(QUESTION, generator=OpenAIGenerator(other.v1, MODEL), reward=ScriptedReward(
                lambda t: 0.5), method="pg", budget=8, weights="incremental",
                ancestor_sampling=True)
        assert other.bodies("/v1/completions") == []
