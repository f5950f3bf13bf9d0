"""The server on the embedded llama.cpp engine, driven by the official OpenAI SDK over real
HTTP: plain and streaming completions, max_tokens/stop on real tokens (smollm2-135m), many
requests batched through one engine (qwen2.5-0.5b), and a client that leaves freeing its KV
sequences."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from particlescale.server import ServerConfig
from particlescale.testing.live_server import LiveServer
from particlescale.wiring import Wired

pytestmark = pytest.mark.model
MODEL = "smollm2-135m"
MESSAGES = [{"role": "system", "content": "Solve step by step. Separate steps by a blank line."},
            {"role": "user", "content": "What is 3 + 4?"}]


def _serve(model: str):
    llamacpp = pytest.importorskip("particlescale.backends.llamacpp")
    from particlescale.models import is_pulled, resolve
    from particlescale.rewards.registry import make_reward

    if not is_pulled(model):
        pytest.skip(f"run `particlescale models pull {model}` (make test does)")
    gen = llamacpp.LlamaCppGenerator(resolve(model), n_ctx=16384, n_seq_max=128)
    cfg = ServerConfig(generators=[{"spec": f"llamacpp:{model}", "id": model}], reward="arith",
                       limits={"max_concurrent": 32})
    try:
        with LiveServer(cfg, Wired({model: gen}, make_reward("arith", gen))) as server:
            yield server, gen.engine
    finally:
        gen.close()


@pytest.fixture(scope="module")
def served():
    yield from _serve(MODEL)


def client(server: LiveServer, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, **kw)


def wait_for(predicate: Any, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_openai_sdk_plain_and_streaming_give_the_same_run(served) -> None:
    server, engine = served
    kw = dict(model="pf-4", messages=MESSAGES, seed=7, max_tokens=48, temperature=0.7)
    plain = client(server).chat.completions.create(**kw, extra_body={"return_particles": True})
    text = plain.choices[0].message.content
    assert text and plain.choices[0].finish_reason in ("stop", "length")
    u = plain.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    scaling = plain.model_extra["scaling"]
    assert (scaling["method"], scaling["budget"], scaling["seed"]) == ("pf", 4, 7)
    # max_tokens is a hard cap on every particle, counted in real tokens.
    assert all(c["tokens"] <= 48 for c in scaling["candidates"])
    assert u.model_extra["answer_tokens"] <= 48
    assert sum(c["tokens"] * c["copies"] for c in scaling["candidates"]) <= u.completion_tokens

    stream = client(server).chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    progress = [c.model_extra["scaling"]["progress"] for c in chunks
                if "progress" in (c.model_extra or {}).get("scaling", {})]
    assert streamed == text
    assert progress and all(p["n"] == 4 and 0 < p["ess"] <= 4 for p in progress)
    assert chunks[-1].usage.completion_tokens == u.completion_tokens
    assert engine.live_sequences == 0


def test_stop_sequences_cut_real_text(served) -> None:
    server, engine = served
    r = client(server).chat.completions.create(model="pf-2", messages=MESSAGES, seed=1,
                                               stop=["."], max_tokens=64)
    assert "." not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert engine.live_sequences == 0


def test_a_lone_surrogate_is_400_with_the_embedded_generator(served) -> None:
    # Issue 23: "\ud800" in a message reached the tokenizer (UnicodeEncodeError, 500).
    server, engine = served
    with httpx.Client(base_url=server.url, timeout=120) as c:
        r = c.post("/v1/chat/completions", content=b'{"messages":[{"role":"user","content":'
                   b'"What is 3 + \\ud800?"}], "max_tokens": 8}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "messages.0.content"
        ok = c.post("/v1/chat/completions", json={"messages": MESSAGES, "model": "pf-2",
                                                  "seed": 0, "max_tokens": 8})
        assert ok.status_code == 200, ok.text
    assert engine.live_sequences == 0


@pytest.fixture(scope="module")
def served_qwen():
    """The default embedded model: on 2 CPU cores batching pays off for qwen2.5-0.5b (about 3x
    the single-sequence rate at 16 sequences), hardly for smollm2-135m (about 1.6x)."""
    yield from _serve("qwen2.5-0.5b")


def test_sixteen_simultaneous_requests_batch_through_one_engine(served_qwen) -> None:
    server, engine = served_qwen
    # The same seed for all: identical work per request, so 16x one request's time is exactly
    # what serving them one after the other would cost.
    kw = dict(model="pf-1", messages=MESSAGES, max_tokens=64, seed=5)
    client(server).chat.completions.create(**kw)  # warm-up
    calls = engine.stats.decode_calls
    alone = client(server).chat.completions.create(**kw)
    one = engine.stats.decode_calls - calls

    async def burst() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused",
                                      max_retries=0, timeout=600) as c:
            return await asyncio.gather(*(c.chat.completions.create(**kw) for _ in range(16)))

    calls = engine.stats.decode_calls
    results = asyncio.run(burst())
    sixteen = engine.stats.decode_calls - calls
    # Every request got its own, complete run: the same seed gives the same text whatever
    # else shares the batch.
    assert len({r.id for r in results}) == 16
    assert {r.choices[0].message.content for r in results} == {alone.choices[0].message.content}
    assert {r.usage.completion_tokens for r in results} == {alone.usage.completion_tokens}
    # The engine decoded tokens of many requests in one llama_decode call: serving them one
    # after the other would take 16x one request's decode calls; batched, the 16 share them.
    # (Counted, not timed: the wall-clock ratio depends on the machine and is measured in
    # BENCHMARKS.md, `server`.)
    assert engine.stats.max_sessions_per_decode >= 8
    assert sixteen < 4 * one, (sixteen, one)
    assert engine.live_sequences == 0


def test_a_client_that_leaves_frees_its_sequences(served) -> None:
    server, engine = served
    body = {"model": "pf-8", "messages": MESSAGES, "seed": 3, "max_tokens": 2000}
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(engine.live_sequences)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", json=body, timeout=2.0)
        wait_for(lambda: engine.live_sequences == 0 and server.state.slots.active == 0)
        # The same with a stream the client closes after the first progress event.
        with httpx.stream("POST", server.url + "/v1/chat/completions",
                          json={**body, "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if "progress" in line:
                    break
        wait_for(lambda: engine.live_sequences == 0 and server.state.slots.active == 0)
    finally:
        stop.set()
        watcher.join()
    assert max(seen) >= 8  # the runs held sequences when their clients left
    r = client(server).chat.completions.create(model="pf-2", messages=MESSAGES, seed=0,
                                               max_tokens=16)
    assert r.choices[0].message.content
    assert engine.live_sequences == 0


def test_cli_serves_the_embedded_model_with_curl_style_requests() -> None:
    """``particlescale serve -g llamacpp:...`` as a user runs it (a subprocess, its own port)."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from particlescale.models import is_pulled

    if not is_pulled(MODEL):
        pytest.skip(f"run `particlescale models pull {MODEL}` (make test does)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "from particlescale.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "-g", f"llamacpp:{MODEL}", "-r", "arith",
         "--port", str(port), "--budget", "2", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _up(url), timeout=900)
        assert proc.poll() is None, proc.stdout.read()
        assert httpx.get(url + "/ready").json()["status"] == "ready"
        r = httpx.post(url + "/v1/chat/completions", timeout=900,
                       headers={"X-Scaling-Budget": "2", "X-Scaling-Method": "pf"},
                       json={"messages": [{"role": "user", "content": "What is 3 + 4?"}],
                             "seed": 0, "max_tokens": 32})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"]
        assert body["model"] == MODEL and body["scaling"]["budget"] == 2
        assert body["usage"]["completion_tokens"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health").status_code == 200
    except httpx.HTTPError:
        return False
