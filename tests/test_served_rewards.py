"""Served reward models (vLLM ``/pooling`` PRMs, a remote yes/no judge) against the fake
vLLM server over real HTTP: request bodies byte for byte on fixed examples, the response
variants of the vLLM versions users run, caching, batching, usage and errors."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from particlescale import Problem, solve
from particlescale.backends.openai import OpenAIGenerator
from particlescale.errors import BackendError, ConfigError
from particlescale.rewards.math_shepherd import MathShepherdPRM
from particlescale.rewards.registry import make_reward
from particlescale.rewards.remote_judge import RemoteJudge, p_yes
from particlescale.rewards.vllm_prm import VllmPRM
from particlescale.testing.fake_vllm import OPENAI_CHAT_FIELDS, FakeVLLM, Fault, default_prm
from particlescale.types import Step, Usage

PRM_MODEL = "Qwen/Qwen2.5-Math-PRM-7B"
SHEPHERD_MODEL = "peiyi9979/math-shepherd-mistral-7b-prm"
PROBLEM = Problem("Sue has 3 apples and buys 4 more. How many apples does she have?", id="sue")
STEPS = [Step("Sue starts with 3 apples.\n\n"), Step("She buys 4, so 3 + 4 = 7.\n\n"),
         Step("Therefore, the final answer is: $\\boxed{7}$.")]

QWEN_EXPECTED = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within "
    "\\boxed{}.<|im_end|>\n<|im_start|>user\nSue has 3 apples and buys 4 more. How many apples "
    "does she have?<|im_end|>\n<|im_start|>assistant\nSue starts with 3 apples.<extra_0>She "
    "buys 4, so 3 + 4 = 7.<extra_0>Therefore, the final answer is: $\\boxed{7}$.<extra_0>"
    "<|im_end|>\n")
SHEPHERD_EXPECTED = (
    "Sue has 3 apples and buys 4 more. How many apples does she have? Sue starts with 3 "
    "apples. ки\nShe buys 4, so 3 + 4 = 7. ки\nTherefore, the final answer is: $\\boxed{7}$. ки")


@pytest.fixture
def prm_server():
    with FakeVLLM(model=PRM_MODEL, runner="pooling") as server:
        yield server


def pooling_bodies(server: FakeVLLM) -> list[dict]:
    return server.bodies("/pooling")


def qwen_prefix(k: int) -> str:
    """The text before the k-th <extra_0> (0-based) in QWEN_EXPECTED."""
    parts = QWEN_EXPECTED.split("<extra_0>")
    return "<extra_0>".join(parts[: k + 1])


# -- request bodies, byte for byte ----------------------------------------------------------------


async def test_qwen_prm_request_body_is_exact(prm_server):
    prm = VllmPRM(prm_server.url, PRM_MODEL)
    usage = Usage()
    (scores,) = await prm.score(PROBLEM, [STEPS], usage)
    (body,) = pooling_bodies(prm_server)
    assert body == {"model": PRM_MODEL, "input": [QWEN_EXPECTED]}
    assert body["input"][0].encode("utf-8") == QWEN_EXPECTED.encode("utf-8")
    assert scores == pytest.approx([default_prm(qwen_prefix(k)) for k in range(3)])
    assert usage.prm_calls == 1 and usage.prm_tokens > 0


async def test_qwen_prm_messages_form_is_exact(prm_server):
    prm = VllmPRM(prm_server.url, PRM_MODEL, request_format="messages")
    (scores,) = await prm.score(PROBLEM, [STEPS], Usage())
    (body,) = pooling_bodies(prm_server)
    assert body == {"model": PRM_MODEL, "add_generation_prompt": False, "messages": [
        {"role": "system", "content": "Please reason step by step, and put your final answer "
                                      "within \\boxed{}."},
        {"role": "user", "content": PROBLEM.question},
        {"role": "assistant", "content": "Sue starts with 3 apples.<extra_0>She buys 4, so 3 + "
                                         "4 = 7.<extra_0>Therefore, the final answer is: "
                                         "$\\boxed{7}$.<extra_0>"}]}
    # The server renders the same conversation the client would: same rewards.
    assert scores == pytest.approx([default_prm(qwen_prefix(k)) for k in range(3)])


async def test_math_shepherd_request_body_and_positive_class():
    with FakeVLLM(model=SHEPHERD_MODEL, runner="pooling", step_tag="ки",
                  positive_index=0) as server:
        prm = MathShepherdPRM(server.url, SHEPHERD_MODEL)
        (scores,) = await prm.score(PROBLEM, [STEPS], Usage())
        (body,) = pooling_bodies(server)
        assert body == {"model": SHEPHERD_MODEL, "input": [SHEPHERD_EXPECTED]}
        assert body["input"][0].encode() == SHEPHERD_EXPECTED.encode()
        prefixes = SHEPHERD_EXPECTED.split("ки")[:3]
        expected = [default_prm("ки".join(prefixes[: k + 1])) for k in range(3)]
        assert scores == pytest.approx(expected)  # P(+), the first returned token
        assert prm.default_aggregation == "min"


async def test_judge_request_body_is_exact_and_standard():
    with FakeVLLM(model="judge-model", strict_openai=True, judge=lambda p: 0.8) as server:
        judge = RemoteJudge(server.v1, "judge-model")
        (scores,) = await judge.score(PROBLEM, [STEPS[:2]], Usage())
        bodies = server.bodies("/v1/chat/completions")
        assert len(bodies) == 2 and all(set(b) <= OPENAI_CHAT_FIELDS for b in bodies)
        second = next(b for b in bodies if "She buys 4" in b["messages"][1]["content"])
        assert second == {
            "model": "judge-model", "max_tokens": 1, "temperature": 0.0, "top_p": 1.0, "n": 1,
            "seed": 0, "logprobs": True, "top_logprobs": 20, "stream": False,
            "messages": [
                {"role": "system", "content": "You check solutions to math problems one step "
                                              "at a time. Answer with a single word: yes or no."},
                {"role": "user", "content": f"Problem:\n{PROBLEM.question}\n\nSolution so far:"
                                            "\nSue starts with 3 apples.\n\nNew step:\nShe buys "
                                            "4, so 3 + 4 = 7.\n\nIs the new step correct? "
                                            "Answer yes or no."}]}
        assert scores == pytest.approx([0.8, 0.8], abs=1e-6)


def test_p_yes_normalises_over_yes_and_no():
    lp = [{"token": " Yes", "logprob": np.log(0.6)}, {"token": "yes", "logprob": np.log(0.1)},
          {"token": "No", "logprob": np.log(0.1)}, {"token": "maybe", "logprob": np.log(0.2)}]
    assert p_yes(lp) == pytest.approx(0.7 / 0.8)
    assert p_yes([{"token": "maybe", "logprob": 0.0}]) == 0.5


# -- response variants ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["rows", "flat", "base64", "logits"])
async def test_response_variants_give_the_same_rewards(variant):
    with FakeVLLM(model=PRM_MODEL, runner="pooling", pooling_variant=variant) as server:
        (scores,) = await VllmPRM(server.url, PRM_MODEL).score(PROBLEM, [STEPS], Usage())
        expected = [default_prm(qwen_prefix(k)) for k in range(3)]
        assert scores == pytest.approx(expected, abs=1e-6)


async def test_all_token_pooling_is_rejected_with_the_fix():
    with (FakeVLLM(model=PRM_MODEL, runner="pooling", pooling_variant="all") as server,
          pytest.raises(BackendError, match="STEP pooling")):
        await VllmPRM(server.url, PRM_MODEL).score(PROBLEM, [STEPS], Usage())


async def test_an_embedding_answer_is_rejected_with_the_vllm_flags():
    # vLLM 0.32 serves a *ForCausalLM PRM under --runner pooling as an embedding model unless
    # it is given --convert classify: one vector per input, no rows at the step tags.
    with (FakeVLLM(model=SHEPHERD_MODEL, runner="pooling", step_tag="ки", positive_index=0,
                   pooling_variant="embed") as server,
          pytest.raises(BackendError) as err):
        await MathShepherdPRM(server.url, SHEPHERD_MODEL).score(PROBLEM, [STEPS[:2]], Usage())
    assert "64 numbers for 2 step tag(s)" in str(err.value)
    assert "--convert classify" in str(err.value) and "token_classify" in str(err.value)


async def test_a_generation_server_is_not_a_pooling_server():
    # runner="generate": no /pooling route
    with FakeVLLM(model=PRM_MODEL) as server, pytest.raises(BackendError) as err:
        await VllmPRM(server.url, PRM_MODEL).score(PROBLEM, [STEPS], Usage())
    assert "--runner pooling" in str(err.value) and "--task reward" in str(err.value)
    assert err.value.status == 404


async def test_unknown_model_fails_fast(prm_server):
    with pytest.raises(BackendError, match="`other` does not exist"):
        await VllmPRM(prm_server.url, "other").score(PROBLEM, [STEPS], Usage())
    assert len(pooling_bodies(prm_server)) == 1


async def test_model_name_is_read_from_the_server(prm_server):
    prm = VllmPRM(prm_server.url + "/v1")
    await prm.score(PROBLEM, [STEPS[:1]], Usage())
    assert pooling_bodies(prm_server)[0]["model"] == PRM_MODEL


# -- caching, batching, failures -----------------------------------------------------------------


async def test_prefixes_are_scored_once(prm_server):
    prm = VllmPRM(prm_server.url, PRM_MODEL)
    usage = Usage()
    first = await prm.score(PROBLEM, [STEPS[:1]], usage)
    second = await prm.score(PROBLEM, [STEPS[:2], STEPS[:1]], usage)
    third = await prm.score(PROBLEM, [STEPS[:2]], usage)
    bodies = pooling_bodies(prm_server)
    assert len(bodies) == 2  # the third call is served from the cache
    assert len(bodies[1]["input"]) == 1  # [s1] is a prefix of [s1, s2]: one input
    assert second[1] == first[0] and third[0] == second[0]
    assert usage.prm_calls == 2


async def test_concurrent_calls_are_batched_into_one_request(prm_server):
    prm = VllmPRM(prm_server.url, PRM_MODEL)
    usages = [Usage() for _ in range(3)]
    problems = [Problem(f"What is {i} + {i}?", id=f"p{i}") for i in range(3)]
    results = await asyncio.gather(*(prm.score(p, [STEPS[:2]], u)
                                     for p, u in zip(problems, usages, strict=True)))
    bodies = pooling_bodies(prm_server)
    assert len(bodies) == 1 and len(bodies[0]["input"]) == 3
    assert all(u.prm_calls == 1 for u in usages)
    assert results[0] != results[1]  # different questions, different prefixes


async def test_a_failure_reaches_every_waiting_caller(prm_server):
    prm_server.inject(Fault(path="/pooling", status=400, message="input too long", times=1))
    prm = VllmPRM(prm_server.url, PRM_MODEL)
    results = await asyncio.gather(*(prm.score(Problem(f"q{i}", id=f"p{i}"), [STEPS], Usage())
                                     for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, BackendError) and "input too long" in str(r) for r in results)


async def test_pooling_retries_on_503(prm_server):
    prm_server.inject(Fault(path="/pooling", status=503, times=1))
    prm = VllmPRM(prm_server.url, PRM_MODEL)
    prm.client.endpoint.backoff = 0.01
    (scores,) = await prm.score(PROBLEM, [STEPS], Usage())
    assert len(scores) == 3 and len(pooling_bodies(prm_server)) == 2


# -- factories and end to end --------------------------------------------------------------------


def test_make_reward_builds_served_rewards():
    assert isinstance(make_reward("vllm-prm:http://h:8001"), VllmPRM)
    assert isinstance(make_reward("math-shepherd:http://h:8002"), MathShepherdPRM)
    assert isinstance(make_reward("judge:http://h:8000/v1"), RemoteJudge)
    with pytest.raises(ConfigError, match="URL"):
        make_reward("vllm-prm:h:8001")
    assert VllmPRM("http://h").default_aggregation == "model"


def test_solve_with_served_prm_and_judge_end_to_end(prm_server):
    with FakeVLLM(model="Qwen/Qwen2.5-Math-1.5B-Instruct",
                  judge=lambda p: 0.9 if "42" in p[-200:] else 0.3) as lm:
        gen = OpenAIGenerator(lm.v1)
        for reward in (VllmPRM(prm_server.url), RemoteJudge(lm.v1)):
            result = solve("What is 40 + 2?", generator=gen, reward=reward, method="pf",
                           budget=8, seed=0)
            assert result.answer in ("41", "42")
            assert result.usage.prm_calls > 0 and result.usage.prm_tokens > 0
        trace = json.dumps(result.trace.to_dict())
        assert "boxed" in trace


# -- the same formats run locally with transformers (optional extra) ----------------------------


def tiny_tokenizer(*special: str):
    """A byte-level tokenizer built here (no download) with ``special`` as single tokens."""
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"additional_special_tokens": list(special)})
    return fast


@pytest.fixture
def tiny_qwen_prm():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = tiny_tokenizer("<|im_start|>", "<|im_end|>", "<extra_0>")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, num_labels=2)
    return transformers.Qwen2ForTokenClassification(config), tok


async def test_local_qwen_prm_reads_the_served_format_in_one_pass(tiny_qwen_prm):
    from particlescale.rewards.hf_prm import HFProcessPRM

    model, tok = tiny_qwen_prm
    prm = HFProcessPRM(model, tokenizer=tok, kind="qwen")
    usage = Usage()
    (scores,) = await prm.score(PROBLEM, [STEPS], usage)
    assert prm.forwards == 1 and usage.prm_calls == 1
    ids = tok(QWEN_EXPECTED)["input_ids"]
    assert usage.prm_tokens == len(ids) and tok.decode(ids) == QWEN_EXPECTED
    # Causal model: the reward of a prefix scored alone equals its reward inside the whole
    # trajectory, which is what lets one pass (and the cache) serve every prefix.
    alone = HFProcessPRM(model, tokenizer=tok, kind="qwen")
    for k in range(1, 4):
        (prefix_scores,) = await alone.score(PROBLEM, [STEPS[:k]], Usage())
        assert prefix_scores == pytest.approx(scores[:k], abs=1e-5)
    assert all(0 < s < 1 for s in scores) and len(set(scores)) == 3
    assert prm.default_aggregation == "model"


async def test_local_math_shepherd_uses_the_plus_minus_logits():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from particlescale.rewards.hf_prm import HFProcessPRM

    tok = tiny_tokenizer("ки")
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(config)
    prm = HFProcessPRM(model, tokenizer=tok, kind="math-shepherd")
    (scores,) = await prm.score(PROBLEM, [STEPS], Usage())
    ids = tok(SHEPHERD_EXPECTED, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    tag = tok.convert_tokens_to_ids("ки")
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    at = (ids[0] == tag).nonzero().flatten()
    expected = torch.softmax(logits[at][:, [plus, minus]], dim=-1)[:, 0]
    assert len(at) == 3
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
