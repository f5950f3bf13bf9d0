"""The ``judge`` reward on the real embedded engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from particlescale.models import is_pulled
from particlescale.rewards.judge import LlamaJudge, judge_messages
from particlescale.rewards.registry import make_reward
from particlescale.types import Problem, Step, Usage

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.model

NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
           "clips in May. How many clips did Natalia sell altogether in April and May?")
# (question, correct steps, wrong steps): only the last step differs.
CASES = [
    (NATALIA, ["In May she sold 48 / 2 = 24 clips.", "Altogether she sold 48 + 24 = 72 clips."],
     ["In May she sold 48 / 2 = 24 clips.", "Altogether she sold 48 + 24 = 96 clips."]),
    ("Tom has 7 apples and eats 2. How many apples are left?",
     ["Tom has 7 - 2 = 5 apples left."], ["Tom has 7 + 2 = 9 apples left."]),
    ("A train travels 60 miles per hour for 3 hours. How far does it travel?",
     ["It travels 60 * 3 = 180 miles."], ["It travels 60 + 3 = 63 miles."]),
]


def test_judge_messages_show_previous_steps_and_the_new_one() -> None:
    msgs = judge_messages("Q?", ["a = 1", "b = 2", "c = 3"])
    user = msgs[1]["content"]
    assert "a = 1\n\nb = 2" in user and "New step:\nc = 3" in user
    assert "(nothing yet)" in judge_messages("Q?", ["a"])[1]["content"]


@pytest.mark.skipif(not is_pulled("smollm2-135m"), reason="run: particlescale models pull "
                    "smollm2-135m")
async def test_judge_on_the_generators_model_shares_its_engine_and_caches() -> None:
    from particlescale.backends.llamacpp import LlamaCppGenerator

    with LlamaCppGenerator("smollm2-135m", n_ctx=4096, n_seq_max=8) as gen:
        judge = make_reward("judge:smollm2-135m", generator=gen)
        assert isinstance(judge, LlamaJudge) and judge.engine is gen.engine
        usage = Usage()
        trajs = [[Step("48 / 2 = 24"), Step("48 + 24 = 72")], [Step("48 / 2 = 24")]]
        values = await judge.score(Problem(NATALIA), trajs, usage)
        assert [len(v) for v in values] == [2, 1]
        assert all(0 < x < 1 for v in values for x in v)
        assert values[0][0] == values[1][0]  # the same prefix, scored once
        assert usage.prm_calls == 1 and usage.prm_tokens > 0
        again = await judge.score(Problem(NATALIA), trajs, usage)
        assert again == values and usage.prm_calls == 1  # all from the cache
        judge.close()  # a shared engine stays open
        assert gen.engine.live_sequences == 0


@pytest.mark.skipif(not is_pulled("smollm2-135m"), reason="run: particlescale models pull "
                    "smollm2-135m")
async def test_p_yes_is_the_two_way_softmax_of_the_engine_logits() -> None:
    from particlescale.backends.llamacpp import LlamaEngine

    # No scoring cache: the second call must decode the prompt exactly as the first did. (With
    # the cache it decodes only the last token, and llama.cpp's CPU kernels are not
    # batch-invariant: one 117-token batch vs smaller chunks moves these log-probs by ~0.17
    # nats on smollm2-135m, P(yes) 0.24 vs 0.20; see the next test.)
    with LlamaEngine("smollm2-135m", n_ctx=4096, n_seq_max=4, score_cache_size=0) as engine:
        judge = LlamaJudge(engine)
        steps = ["48 / 2 = 24"]
        [p] = await judge.p_yes(NATALIA, [steps])
        lp = await engine.next_token_logprobs([judge.prompt_tokens(NATALIA, steps)],
                                              judge.yes_ids + judge.no_ids)
        yes = sum(math.exp(x) for x in lp[0, : len(judge.yes_ids)])
        no = sum(math.exp(x) for x in lp[0, len(judge.yes_ids):])
        assert p == pytest.approx(yes / (yes + no), rel=1e-6)
        assert np.all(lp <= 0)


@pytest.mark.skipif(not is_pulled("smollm2-135m"), reason="run: particlescale models pull "
                    "smollm2-135m")
async def test_scoring_cache_differs_only_by_the_decode_chunking() -> None:
    """A cached prefix is decoded in a different chunking than a fresh prompt. The difference
    is llama.cpp's, not the cache's: chunking the fresh decode the same way gives the same
    numbers bit for bit."""
    from particlescale.backends.llamacpp import LlamaEngine

    steps = ["48 / 2 = 24"]
    with LlamaEngine("smollm2-135m", n_ctx=4096, n_seq_max=4) as engine:
        judge = LlamaJudge(engine)
        tokens = judge.prompt_tokens(NATALIA, steps)
        ids = judge.yes_ids + judge.no_ids
        await engine.next_token_logprobs([tokens[:-1]], ids)  # cached: all but the last token
        cached = await engine.next_token_logprobs([tokens], ids)  # decodes the last one alone
        assert engine.stats.cached_prefix_tokens == len(tokens) - 1
    # The same split without a cache: the first len-1 tokens in one batch, then one token.
    with LlamaEngine("smollm2-135m", n_ctx=4096, n_seq_max=4, score_cache_size=0,
                     n_batch=len(tokens) - 1) as engine:
        split = await engine.next_token_logprobs([tokens], ids)
    np.testing.assert_array_equal(cached, split)


@pytest.mark.slow
@pytest.mark.skipif(not is_pulled("qwen2.5-1.5b"), reason="run: particlescale models pull "
                    "qwen2.5-1.5b")
async def test_judge_ranks_a_correct_step_above_a_wrong_one() -> None:
    judge = make_reward("judge:qwen2.5-1.5b")
    try:
        for question, good, bad in CASES:
            trajs = [[Step(s) for s in good], [Step(s) for s in bad]]
            values = await judge.score(Problem(question), trajs, Usage())
            assert values[0][-1] > values[1][-1], (question, values)
    finally:
        judge.close()  # type: ignore[attr-defined]
