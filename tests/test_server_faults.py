"""Upstream failures through the server: the faithful fake vLLM server
(``particlescale.testing.fake_vllm``) behind the OpenAI-compatible generator answers 500s, times
out, drops connections or goes away; the server answers 502/504 with the upstream error
summarised, stays healthy, and serves the next request.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from particlescale.backends.openai import OpenAIGenerator
from particlescale.rewards.registry import make_reward
from particlescale.server import ServerConfig
from particlescale.testing.fake_vllm import FakeVLLM, Fault
from particlescale.testing.live_server import LiveServer
from particlescale.wiring import Wired

MODEL = "Qwen/Qwen2.5-Math-1.5B-Instruct"
BODY = {"messages": [{"role": "user", "content": "What is 40 + 2?"}], "budget": 2, "seed": 0,
        "max_tokens": 64}


@pytest.fixture
def upstream():
    with FakeVLLM(model=MODEL) as fake:
        yield fake


@pytest.fixture
def server(upstream: FakeVLLM):
    gen = OpenAIGenerator(upstream.v1, MODEL, retries=1, timeout=1.0)
    for r in gen.replicas:  # keep retry waits short
        r.endpoint.backoff = 0.01
        r.endpoint.jitter = random.Random(0)
    cfg = ServerConfig(generators=[{"spec": f"openai:{upstream.v1}", "model": MODEL}],
                       reward="arith")
    with LiveServer(cfg, Wired({MODEL: gen}, make_reward("arith"),
                               specs={f"generator:{MODEL}": f"openai:{upstream.v1}"})) as s:
        yield s


def post(server: LiveServer) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=BODY, timeout=30)


def test_healthy_upstream_serves(server: LiveServer) -> None:
    r = post(server)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] > 0
    assert httpx.get(server.url + "/ready").json()["status"] == "ready"


@pytest.mark.parametrize(("fault", "status", "code", "words"), [
    (Fault(path="/v1/completions", status=500, times=-1), 502, "upstream_http",
     "HTTP 500: fake: injected failure (gave up after 2 attempts)"),
    (Fault(path="/v1/completions", status=400, message="bad prompt", times=-1), 502,
     "upstream_http", "HTTP 400: bad prompt"),
    (Fault(path="/v1/completions", kind="delay", delay=3.0, times=-1), 504,
     "upstream_timeout", "no answer within 1 s"),
    (Fault(path="/v1/completions", kind="drop", times=-1), 502, "upstream_connect",
     "connection dropped"),
])
def test_upstream_fault_is_summarised_and_the_next_request_succeeds(
        server: LiveServer, upstream: FakeVLLM, fault: Fault, status: int, code: str,
        words: str) -> None:
    upstream.inject(fault)
    r = post(server)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and words in err["message"], err
    assert "127.0.0.1" not in err["message"]  # the upstream's address stays in the server log
    assert err["type"] == ("timeout_error" if status == 504 else "upstream_error")
    upstream.faults.clear()
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "active_runs": 0}
    assert post(server).status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert f'particlescale_errors_total{{kind="{code}"}} 1.0' in metrics


def test_a_fault_in_one_request_does_not_touch_its_neighbours(
        server: LiveServer, upstream: FakeVLLM) -> None:
    upstream.inject(Fault(path="/v1/completions", status=500, times=-1, match="poisoned"))
    poisoned = {**BODY, "messages": [{"role": "user", "content": "poisoned question"}]}

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(client.post("/v1/chat/completions", json=poisoned),
                                        client.post("/v1/chat/completions", json=BODY))

    bad, good = asyncio.run(both())
    assert (bad.status_code, good.status_code) == (502, 200)


def test_upstream_down_is_502_and_not_ready(server: LiveServer, upstream: FakeVLLM) -> None:
    upstream.stop()
    r = post(server)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_connect"
    assert "cannot connect" in r.json()["error"]["message"]
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 503
    backend = ready.json()["backends"][f"generator:{MODEL}"]
    assert backend["ready"] is False and "ConnectError" in backend["error"]
    assert ready.json()["backends"]["reward"] == {"ready": True}
    assert httpx.get(server.url + "/health").status_code == 200
