"""The peer benchmark's parts that run here without its_hub or llama-server: the counting
proxy in front of a real HTTP server (the fake vLLM, served over 127.0.0.1), its reading of
llama-server's usage fields, the runner's echo trimming and input errors; and, where
``.venv-itshub`` exists (``make itshub-venv``), the runner end to end through the proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from benchmarks.counting_proxy import CountingProxy, usage_of
from benchmarks.its_hub_runner import split_steps, trim_echo
from particlescale import solve
from particlescale.backends.openai import OpenAIGenerator
from particlescale.testing.fake_vllm import FakeVLLM
from particlescale.testing.scripted import ScriptedReward

ROOT = Path(__file__).resolve().parents[1]
MODEL = "Qwen/Qwen2.5-Math-1.5B-Instruct"
ITSHUB_PYTHON = ROOT / ".venv-itshub" / "bin" / "python"


def post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_proxy_counts_what_our_generator_spends() -> None:
    """Our pf through the proxy: the proxy's generation requests and tokens (from the server's
    usage fields) equal the library's own usage; /v1/models and friends are counted apart."""
    with FakeVLLM(model=MODEL) as server, CountingProxy(server.url) as proxy:
        gen = OpenAIGenerator(proxy.url + "/v1", MODEL)
        res = solve("What is 40 + 2?", generator=gen, reward=ScriptedReward(lambda t: 0.5),
                    method="pf", budget=4, seed=1, max_steps=4)
        c = proxy.take()
        assert c.gen_requests == res.usage.lm_calls > 0
        assert c.generated_tokens == res.usage.generated_tokens > 0
        assert c.prompt_tokens == res.usage.prompt_tokens > 0
        assert 0 < c.max_prompt_tokens <= c.prompt_tokens
        assert c.other_requests >= 1 and c.errors == 0  # the /v1/models probe
        assert proxy.take().gen_requests == 0  # take() starts again from zero


def test_proxy_forwards_unchanged_and_counts_errors() -> None:
    with FakeVLLM(model=MODEL) as server, CountingProxy(server.url) as proxy:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2 + 3?"}],
                "max_tokens": 16, "seed": 7, "temperature": 0.8}
        status, got = post(proxy.url + "/v1/chat/completions", body)
        assert status == 200
        assert server.bodies("/v1/chat/completions")[-1] == body  # the request, unchanged
        direct = json.loads(post(server.url + "/v1/chat/completions", body)[1])
        through = json.loads(got)
        assert through["choices"] == direct["choices"]  # same seed -> same answer
        status, _ = post(proxy.url + "/v1/chat/completions", {**body, "model": "nope"})
        assert status == 404  # the server's status comes back
        c = proxy.take()
        assert (c.gen_requests, c.errors) == (2, 1)
        assert c.generated_tokens == through["usage"]["completion_tokens"]
        assert c.prompt_tokens == through["usage"]["prompt_tokens"]


def test_proxy_reports_a_dead_upstream_as_502() -> None:
    with FakeVLLM(model=MODEL) as server:
        url = server.url
    with CountingProxy(url) as proxy:
        status, text = post(proxy.url + "/v1/completions", {"prompt": "x"})
        assert status == 502 and b"upstream" in text
        assert proxy.take().errors == 1


def test_bad_upstream_is_one_line_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"upstream: .* not an http"):
        CountingProxy("127.0.0.1:8080")


def test_usage_of_llama_server_answers() -> None:
    """llama-server's native /completion: one object, or a list for n_cmpl (the prompt is
    evaluated once, the generated tokens add up); OpenAI-style usage otherwise."""
    one = {"content": "a", "tokens_evaluated": 40, "tokens_predicted": 7, "stop_type": "word"}
    assert usage_of(one) == (40, 7)
    many = [one, {**one, "tokens_evaluated": 1, "tokens_predicted": 5}]  # 2nd: cached prompt
    assert usage_of(many) == (40, 12)
    assert usage_of({"usage": {"prompt_tokens": 9, "completion_tokens": 3}}) == (9, 3)
    assert usage_of({"choices": []}) == (0, 0)


def test_trim_echo() -> None:
    prefix = "Step 1: 2 + 3 = 5.\n\n"
    assert trim_echo(prefix, prefix + "Step 2: done.") == ("Step 2: done.", True)
    # the chat template dropped the prefix's trailing blank line before continuing
    assert trim_echo(prefix, prefix.rstrip() + "\n\nStep 2: done.") == ("Step 2: done.", True)
    assert trim_echo(prefix, "Step 2: done.") == ("Step 2: done.", False)  # no echo: as is
    assert trim_echo(None, "Step 1: x") == ("Step 1: x", False)
    assert split_steps("a\n\nb\n\n\n\nc", "\n\n") == ["a", "b", "c"]


def test_runner_rejects_bad_input_in_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for cfg, field in (({"question": "q"}, "url"),
                       ({"url": "http://x/v1", "question": "q", "variant": "fix"}, "variant")):
        p = subprocess.run([sys.executable, "-m", "benchmarks.its_hub_runner"], cwd=ROOT,
                           input=json.dumps(cfg), capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 2
        assert p.stderr.startswith(f"its_hub_runner: {field}:") and p.stderr.count("\n") == 1


@pytest.mark.skipif(not ITSHUB_PYTHON.is_file(), reason="no .venv-itshub (make itshub-venv)")
@pytest.mark.parametrize("variant", ["out-of-box", "echo-trim"])
def test_runner_end_to_end_through_the_proxy(variant: str) -> None:
    """its_hub's particle filtering against the fake vLLM (which does not echo), counted by
    the proxy: one chat request per live particle, those of a step sent concurrently (1 s
    each: one after another, the run would take as many seconds as requests)."""
    with FakeVLLM(model=MODEL, latency=1.0) as server, CountingProxy(server.url) as proxy:
        cfg = {"url": proxy.url + "/v1", "model": MODEL, "question": "What is 40 + 2?",
               "budget": 3, "seed": 0, "max_steps": 4, "max_step_tokens": 64,
               "variant": variant}
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        p = subprocess.run([str(ITSHUB_PYTHON), "-m", "benchmarks.its_hub_runner"], cwd=ROOT,
                           input=json.dumps(cfg), capture_output=True, text=True, env=env,
                           timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert out["error"] is None and out["text"] and out["trimmed"] == 0
        c = proxy.take()
        assert c.gen_requests >= 3  # the first step: one request per particle
        assert out["wall_s"] < 0.6 * c.gen_requests  # concurrent within a step
        assert c.generated_tokens > 0 and c.errors == 0
        bodies = server.bodies("/v1/chat/completions")
        assert len(bodies) == c.gen_requests
        assert all(b["temperature"] == 0.8 and b["max_completion_tokens"] == 64
                   for b in bodies)
        assert any(b.get("continue_final_message") for b in bodies[3:])
