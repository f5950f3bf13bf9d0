"""The server over real HTTP (uvicorn on 127.0.0.1) with the scripted generator and reward:
the OpenAI wire format, the scaling extensions, how each OpenAI field is honoured, bad input,
auth, limits, cancellation, streaming and metrics. No model needed."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from particlescale import solve
from particlescale.protocols import SamplingParams
from particlescale.server import ServerConfig
from particlescale.testing.live_server import LiveServer, SlowGenerator
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward
from particlescale.types import Problem, Usage
from particlescale.wiring import Wired

QUESTION = "What is 2 + 2?"
STEPS = {"Add 2 and 2. ": 0.5, "So \\boxed{4}.": 0.3, "So \\boxed{5}.": 0.2}


def dist(prefix: tuple[str, ...]) -> dict[str, float]:
    return STEPS


def reward(texts: tuple[str, ...]) -> float:
    return 0.9 if "{4}" in texts[-1] else 0.2 if "{5}" in texts[-1] else 0.5


def make_gen(**kw: Any) -> ScriptedGenerator:
    return ScriptedGenerator(kw.pop("dist", dist), horizon=kw.pop("horizon", 4), **kw)


@dataclass
class Recording:
    """Records what the server hands the generator (problem, sampling params)."""

    inner: Any
    name: str = "recording"
    seen: list[tuple[Problem, SamplingParams]] = field(default_factory=list)

    def session(self, problem: Problem, params: SamplingParams, rng: np.random.Generator,
                usage: Usage) -> Any:
        self.seen.append((problem, params))
        return self.inner.session(problem, params, rng, usage)


def serve(gen: Any = None, rew: Any = None, **config: Any) -> LiveServer:
    config.setdefault("generators", [{"spec": "scripted:test", "id": "scripted"}])
    cfg = ServerConfig(**config)
    return LiveServer(cfg, Wired({"scripted": gen or make_gen()},
                                 rew or ScriptedReward(reward)))


def chat(server: LiveServer, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    payload = {"messages": [{"role": "user", "content": QUESTION}], **(body or {})}
    kw.setdefault("timeout", 30)
    return httpx.post(server.url + "/v1/chat/completions", json=payload, **kw)


@pytest.fixture(scope="module")
def server():
    with serve() as s:
        yield s


def sse_events(response: httpx.Response) -> list[Any]:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --- the completion -------------------------------------------------------------------------


def test_completion_is_the_run_that_asolve_gives_for_the_same_seed(server: LiveServer) -> None:
    r = chat(server, {"model": "pf-4", "seed": 11, "return_particles": True})
    assert r.status_code == 200, r.text
    body = r.json()
    direct = solve(QUESTION, generator=make_gen(), reward=ScriptedReward(reward), method="pf",
                   budget=4, seed=11)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "pf-4"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": direct.text}
    assert choice["finish_reason"] == "stop"
    u = direct.usage
    assert body["usage"] == {
        "prompt_tokens": u.prompt_tokens, "completion_tokens": u.generated_tokens,
        "total_tokens": u.prompt_tokens + u.generated_tokens, "reward_tokens": u.prm_tokens,
        "reward_calls": u.prm_calls, "lm_calls": u.lm_calls,
        "answer_tokens": next(c.tokens for c in direct.candidates if c.text == direct.text)}
    sc = body["scaling"]
    assert (sc["method"], sc["budget"], sc["seed"], sc["answer"]) == ("pf", 4, 11, direct.answer)
    assert [(c["text"], c["weight"], c["copies"]) for c in sc["candidates"]] == [
        (c.text, pytest.approx(c.weight), c.copies) for c in direct.candidates]
    assert sum(c["weight"] for c in sc["candidates"]) == pytest.approx(1.0)
    assert sc["usage"]["generated_tokens"] == u.generated_tokens


def test_candidates_only_with_return_particles(server: LiveServer) -> None:
    sc = chat(server, {"seed": 1}).json()["scaling"]
    assert "candidates" not in sc and sc["budget"] == 8 and sc["method"] == "pf"


def test_missing_seed_is_drawn_and_reported_so_the_run_can_be_repeated(server: LiveServer) -> None:
    first = chat(server, {"return_particles": True}).json()
    seed = first["scaling"]["seed"]
    assert isinstance(seed, int)
    again = chat(server, {"return_particles": True, "seed": seed}).json()
    assert again["scaling"]["candidates"] == first["scaling"]["candidates"]


@pytest.mark.parametrize(("body", "headers", "method", "budget"), [
    ({"model": "pf-4"}, {}, "pf", 4),
    ({"model": "beam-6"}, {}, "beam", 6),
    ({"model": "best-of-n"}, {}, "best-of-n", 8),
    ({"model": "scripted"}, {}, "pf", 8),
    ({"model": "pf-4", "method": "best-of-n"}, {}, "best-of-n", 4),
    ({"budget": 3}, {}, "pf", 3),
    ({}, {"X-Scaling-Budget": "5", "X-Scaling-Method": "self-consistency"},
     "self-consistency", 5),
    ({"budget": 5}, {"X-Scaling-Budget": "5"}, "pf", 5),
])
def test_method_and_budget_come_from_model_fields_and_headers(
        server: LiveServer, body: dict, headers: dict, method: str, budget: int) -> None:
    r = chat(server, {"seed": 0, **body}, headers=headers)
    assert r.status_code == 200, r.text
    assert (r.json()["scaling"]["method"], r.json()["scaling"]["budget"]) == (method, budget)


def test_seed_header_sets_the_seed(server: LiveServer) -> None:
    r = chat(server, headers={"X-Scaling-Seed": "77"})
    assert r.json()["scaling"]["seed"] == 77


def test_system_message_and_last_user_message_make_the_problem() -> None:
    rec = Recording(make_gen())
    with serve(rec) as s:
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "old question"},
                    {"role": "assistant", "content": "old answer"},
                    {"role": "developer", "content": [{"type": "text", "text": "Box it."}]},
                    {"role": "user", "content": [{"type": "text", "text": "What is "},
                                                 {"type": "text", "text": "3 + 3?"}]}]
        r = chat(s, {"messages": messages, "seed": 0})
    assert r.status_code == 200, r.text
    problem, _ = rec.seen[-1]
    assert problem.question == "What is 3 + 3?"
    assert problem.system_prompt == "Be brief.\n\nBox it."
    assert problem.id == r.json()["id"]
    assert r.json()["scaling"]["ignored_messages"] == 2


def test_temperature_and_top_p_set_the_lm_sampling() -> None:
    rec = Recording(make_gen())
    with serve(rec) as s:
        assert chat(s, {"temperature": 0.3, "top_p": 0.5, "seed": 0}).status_code == 200
        assert rec.seen[-1][1].temperature == 0.3 and rec.seen[-1][1].top_p == 0.5
        assert chat(s, {"seed": 0}).status_code == 200
        assert rec.seen[-1][1].temperature == 0.8 and rec.seen[-1][1].top_p == 1.0  # paper
        # temperature 0 is greedy: every particle takes the most likely step.
        body = chat(s, {"temperature": 0, "seed": 0, "return_particles": True}).json()
    texts = [c["text"] for c in body["scaling"]["candidates"]]
    assert texts == ["\n\n".join(["Add 2 and 2. "] * 4)]


def test_max_tokens_is_a_hard_cap_per_particle() -> None:
    never_done = {"one. ": 0.5, "two. ": 0.5}  # the scripted generator spends 1 token per step
    with serve(make_gen(dist=lambda p: never_done, horizon=12)) as s:
        capped = chat(s, {"max_tokens": 8, "seed": 0, "return_particles": True}).json()
        free = chat(s, {"seed": 0, "return_particles": True}).json()
        alias = chat(s, {"max_completion_tokens": 8, "seed": 0}).json()
        steps = chat(s, {"options": {"max_steps": 3}, "seed": 0}).json()
    # step cap c = max(1, 8 // 4) = 2 > 1 token per step: stop once u + 2 > 8, i.e. at u = 7
    assert {c["tokens"] for c in capped["scaling"]["candidates"]} == {7}
    assert {c["finish_reason"] for c in capped["scaling"]["candidates"]} == {"length"}
    assert capped["choices"][0]["finish_reason"] == "length"
    assert capped["usage"]["answer_tokens"] == 7
    assert alias["choices"][0]["message"] == capped["choices"][0]["message"]
    assert {c["tokens"] for c in free["scaling"]["candidates"]} == {12}
    assert free["choices"][0]["finish_reason"] == "stop"  # the generator's EOS
    assert steps["choices"][0]["finish_reason"] == "length"  # the method's step cap


def test_stop_cuts_the_step_ends_the_particle_and_frees_its_handle() -> None:
    gen = make_gen(dist=lambda p: {"alpha STOP beta. ": 1.0}, horizon=5)
    with serve(gen) as s:
        body = chat(s, {"stop": ["STOP", "zzz"], "seed": 0, "return_particles": True}).json()
        one = chat(s, {"stop": "beta", "seed": 0}).json()
    assert body["choices"][0] == {"index": 0, "finish_reason": "stop", "logprobs": None,
                                  "message": {"role": "assistant", "content": "alpha "}}
    assert [c["steps"] for c in body["scaling"]["candidates"]] == [1]
    assert one["choices"][0]["message"]["content"] == "alpha STOP "
    assert gen.leaked == [0, 0]  # the cut steps' handles were released, none left at close


def test_models_lists_generators_and_presets(server: LiveServer) -> None:
    body = httpx.get(server.url + "/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["scripted", "pf-4", "pf-8", "pf-16"]
    assert body["data"][1]["scaling"] == {"kind": "preset", "method": "pf", "budget": 4,
                                          "generator": "scripted"}


def test_configured_presets_carry_their_options() -> None:
    rec = Recording(make_gen())
    presets = {"careful": {"method": "pf", "budget": 2, "options": {"temperature": 0.1}}}
    with serve(rec, presets=presets) as s:
        ids = [m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"]]
        body = chat(s, {"model": "careful", "seed": 0}).json()
    assert ids == ["scripted", "careful"]
    assert body["scaling"]["budget"] == 2 and rec.seen[-1][1].temperature == 0.1


def test_health_and_ready(server: LiveServer) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "active_runs": 0}
    r = httpx.get(server.url + "/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "backends": {"generator:scripted": {"ready": True},
                                                        "reward": {"ready": True}}}


# --- bad input ------------------------------------------------------------------------------

USER = [{"role": "user", "content": "hi"}]
BAD_BODIES = [
    # (body, status, param, words the message must contain)
    ({}, 400, "messages", "Field required"),
    ({"messages": []}, 400, "messages", "at least 1"),
    ({"messages": "hi"}, 400, "messages", "valid list"),
    ({"messages": [{"content": "hi"}]}, 400, "messages.0.role", "Field required"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role", "'user'"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content", "string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
     "messages.0.content", "only text parts"),
    ({"messages": [*USER, {"role": "assistant", "content": "x"}]}, 400, "messages",
     "last message"),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages.0.content", "empty"),
    ({"messages": USER, "budget": "8"}, 400, "budget", "valid integer"),
    ({"messages": USER, "budget": True}, 400, "budget", "valid integer"),
    ({"messages": USER, "budget": 0}, 422, "budget", "budget 0 is out of range; this server"),
    ({"messages": USER, "budget": 10**9}, 422, "budget", "1..64"),
    ({"messages": USER, "method": "magic"}, 400, "method", "unknown method 'magic'"),
    ({"messages": USER, "model": "gpt-9"}, 404, "model", "unknown 'gpt-9'"),
    ({"messages": USER, "model": "magic-4"}, 404, "model", "unknown 'magic-4'"),
    ({"messages": USER, "temperature": "hot"}, 400, "temperature", "valid number"),
    ({"messages": USER, "temperature": 2.5}, 400, "temperature", "less than or equal to 2"),
    ({"messages": USER, "top_p": 0}, 400, "top_p", "greater than 0"),
    ({"messages": USER, "n": 2}, 400, "n", "n=2 is not supported"),
    ({"messages": USER, "max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
    ({"messages": USER, "max_tokens": 5, "max_completion_tokens": 6}, 400,
     "max_completion_tokens", "differ"),
    ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ({"messages": USER, "stop": [""]}, 400, "stop", "non-empty"),
    ({"messages": USER, "seed": -1}, 400, "seed", "greater than or equal to 0"),
    ({"messages": USER, "stream": "yes"}, 400, "stream", "valid boolean"),
    ({"messages": USER, "logprobs": True}, 400, "logprobs", "not supported"),
    ({"messages": USER, "tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    ({"messages": USER, "frequency_penalty": 0.5}, 400, "frequency_penalty", "not supported"),
    ({"messages": USER, "response_format": {"type": "json_object"}}, 400, "response_format",
     "not supported"),
    ({"messages": USER, "best_of": 3}, 400, "best_of", "unknown field"),
    ({"messages": USER, "options": {"resampling": "lucky"}}, 400, "options", "resampling"),
    ({"messages": USER, "options": {"beam_width": 2}}, 400, "options", "beam_width"),
    ({"messages": USER, "temperature": 0.5, "options": {"temperature": 0.7}}, 400,
     "temperature", "conflicts with options.temperature"),
]


@pytest.mark.parametrize(("body", "status", "param", "words"), BAD_BODIES)
def test_bad_body_gets_the_documented_status_naming_the_field(
        server: LiveServer, body: dict, status: int, param: str, words: str) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert param.split(".")[0] in err["message"] and words in err["message"], err["message"]
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(("raw", "words"), [
    (b'{"messages": [', "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"", "must be a JSON object"),
])
def test_unparseable_body_is_400(server: LiveServer, raw: bytes, words: str) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", content=raw,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and words in r.json()["error"]["message"]


@pytest.mark.parametrize(("headers", "param"), [
    ({"X-Scaling-Budget": "lots"}, "x-scaling-budget"),
    ({"X-Scaling-Seed": "1.5"}, "x-scaling-seed"),
])
def test_bad_header_is_400_naming_the_header(server: LiveServer, headers: dict, param: str
                                             ) -> None:
    r = chat(server, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_body_and_header_disagreeing_is_400(server: LiveServer) -> None:
    r = chat(server, {"budget": 4}, headers={"X-Scaling-Budget": "8"})
    assert r.status_code == 400
    assert "both in the body (4) and in the x-scaling-budget header (8)" in \
        r.json()["error"]["message"]


def test_oversized_body_is_413_whether_announced_or_chunked() -> None:
    with serve(limits={"max_body_bytes": 4096}) as s:
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        r = httpx.post(s.url + "/v1/chat/completions", json=big)
        assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]

        def chunks():
            data = json.dumps(big).encode()
            for i in range(0, len(data), 1000):
                yield data[i:i + 1000]

        r = httpx.post(s.url + "/v1/chat/completions", content=chunks(),
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert chat(s, {"seed": 0}).status_code == 200  # under the limit: served


# --- auth -----------------------------------------------------------------------------------


def test_bearer_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PS_TEST_KEYS", "env-key, other")
    with serve(api_keys=["file-key"], api_keys_env="PS_TEST_KEYS") as s:
        r = chat(s)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "missing_api_key"
        assert chat(s, headers={"Authorization": "Basic abc"}).status_code == 401
        r = chat(s, headers={"Authorization": "Bearer env-ke"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_api_key"
        # A bad key is refused before the body is even parsed.
        r = httpx.post(s.url + "/v1/chat/completions", content=b"{",
                       headers={"Authorization": "Bearer nope"})
        assert r.status_code == 403
        for key in ("file-key", "env-key", "other"):
            assert chat(s, {"seed": 0}, headers={"Authorization": f"Bearer {key}"}
                        ).status_code == 200
        assert httpx.get(s.url + "/v1/models").status_code == 401
        assert httpx.get(s.url + "/v1/models",
                         headers={"Authorization": "Bearer other"}).status_code == 200
        for open_path in ("/health", "/ready", "/metrics"):
            assert httpx.get(s.url + open_path).status_code == 200


# --- concurrency, cancellation, timeouts ----------------------------------------------------


def wait_for(predicate: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_runs_overlap_and_the_concurrency_limit_answers_429() -> None:
    slow = SlowGenerator(make_gen(), delay=0.25)
    with serve(slow, limits={"max_concurrent": 2}) as s:

        async def main() -> tuple[list[httpx.Response], httpx.Response, float]:
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"messages": [{"role": "user", "content": QUESTION}], "budget": 2}
                t0 = time.perf_counter()
                runs = [asyncio.create_task(client.post(s.url + "/v1/chat/completions",
                                                        json={**body, "seed": i}))
                        for i in range(2)]
                while s.state.slots.active < 2:
                    await asyncio.sleep(0.01)
                third = await client.post(s.url + "/v1/chat/completions", json=body)
                done = await asyncio.gather(*runs)
                return done, third, time.perf_counter() - t0

        done, third, both = asyncio.run(main())
        single = time.perf_counter()
        assert chat(s, {"budget": 2, "seed": 0}).status_code == 200
        single = time.perf_counter() - single
    assert [r.status_code for r in done] == [200, 200]
    assert third.status_code == 429 and third.headers["retry-after"] == "1"
    assert "2 runs in flight" in third.json()["error"]["message"]
    assert both < 1.8 * single  # the two runs overlapped: no lock around a run


def test_client_disconnect_cancels_the_run_and_closes_its_session() -> None:
    slow = SlowGenerator(make_gen(dist=lambda p: {"more. ": 1.0}, horizon=1000), delay=0.05)
    with serve(slow) as s:
        with pytest.raises(httpx.ReadTimeout):
            chat(s, {"seed": 0}, timeout=0.5)
        wait_for(lambda: slow.log == ["opened", "closed"] and s.state.slots.active == 0)
        assert slow.inner.leaked == [8]  # aclose found the 8 live particles and freed them
        metrics = httpx.get(s.url + "/metrics").text
        assert 'particlescale_errors_total{kind="cancelled"} 1.0' in metrics


def test_stream_disconnect_cancels_the_run() -> None:
    slow = SlowGenerator(make_gen(dist=lambda p: {"more. ": 1.0}, horizon=1000), delay=0.05)
    with serve(slow) as s:
        payload = {"messages": [{"role": "user", "content": QUESTION}], "stream": True}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=payload) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            while "progress" not in next(lines):
                pass
        wait_for(lambda: slow.log == ["opened", "closed"] and s.state.slots.active == 0)
        assert chat(s, {"seed": 0, "max_tokens": 8}).status_code == 200


def test_request_timeout_is_504_and_the_server_keeps_serving() -> None:
    slow = SlowGenerator(make_gen(dist=lambda p: {"more. ": 1.0}, horizon=1000), delay=0.05)
    with serve(slow, limits={"request_timeout": 0.3}) as s:
        r = chat(s, {"seed": 0})
        assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
        assert slow.log == ["opened", "closed"]
        assert chat(s, {"seed": 0, "max_tokens": 4}).status_code == 200


def test_a_generator_bug_is_500_and_the_server_keeps_serving() -> None:
    calls = []

    def flaky(prefix: tuple[str, ...]) -> dict[str, float]:
        calls.append(prefix)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return STEPS

    with serve(make_gen(dist=flaky)) as s:
        r = chat(s, {"seed": 0})
        assert r.status_code == 500
        assert r.json()["error"] == {"message": "internal error (RuntimeError); see the server "
                                                "log", "type": "server_error", "param": None,
                                     "code": "internal_error"}
        assert chat(s, {"seed": 0}).status_code == 200


# --- streaming ------------------------------------------------------------------------------


def test_stream_sends_progress_then_the_answer_then_done(server: LiveServer) -> None:
    body = {"messages": [{"role": "user", "content": QUESTION}], "model": "pf-4", "seed": 5,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    plain = chat(server, {"model": "pf-4", "seed": 5}).json()
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"]
               for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    progress = [c["scaling"]["progress"] for c in chunks if "progress" in c.get("scaling", {})]
    assert [p["step"] for p in progress] == list(range(1, len(progress) + 1))
    assert all(p["band"] == "pf" and p["n"] == 4 and 1 <= p["ess"] <= 4
               and p["live"] + p["finished"] == 4 for p in progress)
    assert progress[-1]["live"] == 0
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(final) == 1 and final[0]["choices"][0]["finish_reason"] == "stop"
    assert final[0]["scaling"]["answer"] == plain["scaling"]["answer"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_stream_failure_after_start_is_an_error_event() -> None:
    slow = SlowGenerator(make_gen(dist=lambda p: {"more. ": 1.0}, horizon=1000), delay=0.05)
    with serve(slow, limits={"request_timeout": 0.3}) as s:
        body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body) as r:
            events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "request_timeout"


# --- metrics --------------------------------------------------------------------------------


def test_metrics_count_requests_tokens_errors_and_runs() -> None:
    with serve() as s:
        bodies = [chat(s, {"seed": i, "budget": 3}).json() for i in range(3)]
        chat(s, {"budget": 0})
        chat(s, {"n": 3})
        text = httpx.get(s.url + "/metrics").text
    samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
               for m in text_string_to_metric_families(text) for x in m.samples}

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    ep = "/v1/chat/completions"
    assert get("particlescale_requests_total", endpoint=ep, status="200") == 3
    assert get("particlescale_requests_total", endpoint=ep, status="422") == 1
    assert get("particlescale_requests_total", endpoint=ep, status="400") == 1
    assert get("particlescale_errors_total", kind="budget") == 1
    assert get("particlescale_errors_total", kind="bad_request") == 1
    assert get("particlescale_tokens_total", kind="completion") == sum(
        b["usage"]["completion_tokens"] for b in bodies)
    assert get("particlescale_runs_total", method="pf") == 3
    assert get("particlescale_active_runs") == 0
    assert get("particlescale_request_duration_seconds_count", endpoint=ep) == 5
