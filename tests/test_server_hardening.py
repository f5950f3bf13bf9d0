"""Issue 23, the server as a hostile or careless client meets it, over real HTTP on 127.0.0.1:
credentials in an upstream URL never reach a client or the log, ``pf-0`` is a 422, a lone
surrogate is a 400 naming the field, an upstream 200 with wrong field types is a 502
``upstream_protocol``, an unexpected exception is a 500 on a connection that stays usable, and
a property-based test over the request schema (arbitrary Unicode, ``<method>-<N>`` model names)
finds no 5xx."""

from __future__ import annotations

import json
import logging
import socket
import string
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from particlescale.algorithms import METHODS
from particlescale.backends.openai import OpenAIGenerator
from particlescale.rewards.registry import make_reward
from particlescale.server import ServerConfig
from particlescale.testing.fake_vllm import FakeVLLM, Fault
from particlescale.testing.live_server import LiveServer
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward
from particlescale.wiring import Wired

MODEL = "Qwen/Qwen2.5-Math-1.5B-Instruct"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "What is 2 + 2?"}]
STEPS = {"Add 2 and 2. ": 0.5, "So \\boxed{4}.": 0.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scripted_server(**config: Any) -> LiveServer:
    cfg = ServerConfig(generators=[{"spec": "scripted:test", "id": "scripted"}],
                       api_keys_env=None, **config)
    gen = ScriptedGenerator(lambda p: STEPS, horizon=3)
    return LiveServer(cfg, Wired({"scripted": gen}, ScriptedReward(lambda t: 0.5)))


@pytest.fixture(scope="module")
def scripted():
    with scripted_server(limits={"max_budget": 8}) as s:
        yield s


# -- 1. credentials -------------------------------------------------------------------------


def test_upstream_credentials_never_reach_ready_errors_models_or_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there: the upstream is down
    spec = f"openai:http://admin:s3cretpw@127.0.0.1:{port}/v1"
    cfg = ServerConfig(generators=[{"spec": spec}], reward="arith", api_keys=[KEY],
                       api_keys_env=None)
    backends = cfg.wire()  # as `particlescale serve -g SPEC` builds them
    for g in backends.generators.values():
        for r in g.replicas:
            r.endpoint.retries = 0
    secrets = ("s3cretpw", "admin", str(port))
    with caplog.at_level(logging.INFO), LiveServer(cfg, backends) as server:
        anonymous = httpx.get(server.url + "/ready")
        keyed = httpx.get(server.url + "/ready", headers=AUTH)
        models = httpx.get(server.url + "/v1/models", headers=AUTH)
        run = httpx.post(server.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                         json={"messages": USER, "budget": 1, "max_tokens": 8})
    assert anonymous.status_code == keyed.status_code == 503
    assert anonymous.json() == {"status": "unavailable"}  # no details without a key
    backend = keyed.json()["backends"]["generator:openai"]
    assert backend["ready"] is False and "ConnectError on GET /v1/models" in backend["error"]
    assert models.status_code == 200
    assert run.status_code == 502, run.text
    assert run.json()["error"]["code"] == "upstream_connect"
    assert "cannot connect (connection refused)" in run.json()["error"]["message"]
    for text in (anonymous.text, keyed.text, models.text, run.text):
        for s in (*secrets, "127.0.0.1"):
            assert s not in text, (s, text)
    log = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "run failed (502)" in log  # the operator's log has the failure and the address...
    assert f"127.0.0.1:{port}" in log
    assert "s3cretpw" not in log and "admin" not in log  # ...but no credentials


def test_query_secrets_and_addresses_are_masked_in_what_clients_see() -> None:
    from particlescale.errors import BackendError
    from particlescale.server.errors import from_exception

    exc = BackendError("POST http://u:pw@gpu-box:8000/v1/completions?api-key=XYZ: cannot "
                       "connect to gpu-box:8000", kind="connect")
    message = from_exception(exc, hide=("gpu-box:8000", "gpu-box")).message
    assert "pw" not in message and "XYZ" not in message and "gpu-box" not in message
    assert "/v1/completions" in message


# -- 2. pf-0 --------------------------------------------------------------------------------


def test_a_preset_name_with_budget_zero_is_422_and_the_connection_stays_usable(
        scripted: LiveServer) -> None:
    with httpx.Client(base_url=scripted.url, timeout=30) as client:  # one keep-alive connection
        for model in ("pf-0", "pf-00", "pf-99999", "beam-" + "9" * 5000):
            r = client.post("/v1/chat/completions", json={"model": model, "messages": USER})
            assert r.status_code == 422, (model[:20], r.text[:300])
            err = r.json()["error"]
            assert err["code"] == "budget_out_of_range" and err["param"] == "model"
            ok = client.post("/v1/chat/completions",
                             json={"model": "pf-2", "messages": USER, "seed": 0})
            assert ok.status_code == 200, ok.text
        # A budget in the body overrides the preset's, as for any preset.
        r = client.post("/v1/chat/completions",
                        json={"model": "pf-0", "budget": 2, "messages": USER, "seed": 0})
        assert r.status_code == 200 and r.json()["scaling"]["budget"] == 2


# -- 3. lone surrogates ---------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ('{"messages":[{"role":"user","content":"\\ud800"}]}', "messages.0.content"),
    ('{"messages":[{"role":"user","content":"What is 1+1? \\udfff"}]}', "messages.0.content"),
    ('{"messages":[{"role":"user","content":[{"type":"text","text":"\\ud83d"}]}]}',
     "messages.0.content.0.text"),
    ('{"messages":[{"role":"user","content":"q","name":"\\udc00"}]}', "messages.0.name"),
    ('{"model":"\\ud800","messages":[{"role":"user","content":"q"}]}', "model"),
    ('{"stop":["\\ud800"],"messages":[{"role":"user","content":"q"}]}', "stop.0"),
    ('{"metadata":{"\\ud800":"x"},"messages":[{"role":"user","content":"q"}]}', "metadata"),
    ('{"options":{"resampling":"\\ud800"},"messages":[{"role":"user","content":"q"}]}',
     "options.resampling"),
])
def test_a_lone_surrogate_is_400_naming_the_field(scripted: LiveServer, body: str,
                                                  param: str) -> None:
    r = httpx.post(scripted.url + "/v1/chat/completions", content=body.encode(),
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "invalid_unicode", err
    assert "surrogate" in err["message"]


@pytest.fixture
def upstream():
    with FakeVLLM(model=MODEL) as fake:
        yield fake


@pytest.fixture
def openai_server(upstream: FakeVLLM):
    gen = OpenAIGenerator(upstream.v1, MODEL, retries=0, timeout=30)
    cfg = ServerConfig(generators=[{"spec": f"openai:{upstream.v1}", "model": MODEL}],
                       reward="arith", api_keys_env=None)
    backends = Wired({MODEL: gen}, make_reward("arith"),
                     specs={f"generator:{MODEL}": f"openai:{upstream.v1}"})
    with LiveServer(cfg, backends) as s:
        yield s


def test_a_lone_surrogate_never_reaches_the_openai_upstream(openai_server: LiveServer,
                                                           upstream: FakeVLLM) -> None:
    r = httpx.post(openai_server.url + "/v1/chat/completions",
                   content=b'{"messages":[{"role":"user","content":"\\ud800"}]}',
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"
    assert upstream.records == []


# -- 4. upstream answers with wrong field types ---------------------------------------------


def completion(**change: Any) -> dict[str, Any]:
    choice = {"index": 0, "text": "## Step 1: 2 + 2 = 4", "finish_reason": "stop",
              "stop_reason": "\n\n"}
    usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    choice.update(change.pop("choice", {}))
    usage.update(change.pop("usage", {}))
    return {"id": "cmpl-x", "object": "text_completion", "created": 0, "model": MODEL,
            "choices": [choice], "usage": usage}


@pytest.mark.parametrize(("body", "field"), [
    (completion(usage={"prompt_tokens": "abc"}), "usage.prompt_tokens"),
    (completion(choice={"text": 5}), "choices[0].text"),
])
def test_upstream_200_with_wrong_field_types_is_502_upstream_protocol(
        openai_server: LiveServer, upstream: FakeVLLM, body: dict[str, Any],
        field: str) -> None:
    upstream.inject(Fault(path="/v1/completions", kind="body", body=body, times=-1))
    with httpx.Client(base_url=openai_server.url, timeout=30) as client:
        r = client.post("/v1/chat/completions", json={"messages": USER, "budget": 2})
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_protocol" and field in err["message"], err
        upstream.faults.clear()
        again = client.post("/v1/chat/completions",
                            json={"messages": USER, "budget": 2, "max_tokens": 64})
        assert again.status_code == 200, again.text


# -- an unexpected exception ----------------------------------------------------------------


def test_an_unexpected_exception_is_a_json_500_and_the_connection_survives(
        scripted: LiveServer) -> None:
    async def boom() -> None:
        raise RuntimeError("a bug")

    scripted.app.add_api_route("/boom", boom)
    with httpx.Client(base_url=scripted.url, timeout=30) as client:
        for _ in range(2):
            r = client.get("/boom")
            assert r.status_code == 500
            assert r.json()["error"] == {"message": "internal error (RuntimeError); see the "
                                                    "server log", "type": "server_error",
                                         "param": None, "code": "internal_error"}
        assert client.get("/health").status_code == 200


# -- property-based: the request schema, arbitrary Unicode, model-name presets --------------

SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
TEXT = st.text(st.one_of(st.characters(), SURROGATE), max_size=12)
QUESTION = st.text(st.one_of(st.characters(), SURROGATE), min_size=1, max_size=12)
DIGITS = st.text(string.digits, min_size=1, max_size=25)
MODEL_NAMES = st.one_of(
    st.builds(lambda m, d: f"{m}-{d}", st.sampled_from([*METHODS, "nope", "PF"]), DIGITS),
    st.builds(lambda d: f"pf-{d}", st.text(st.characters(categories=["Nd"]), min_size=1,
                                            max_size=3)),
    st.sampled_from(["scripted", "pf-4", "pf-8", "", *METHODS]), TEXT, st.none())
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), TEXT,
                                 st.floats(allow_nan=False)),
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
# Mostly valid bodies (so that what they carry reaches the run: Unicode, model names), and a
# share of arbitrary ones.
VALID = st.fixed_dictionaries(
    {"messages": st.tuples(st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "assistant"]), "content": TEXT},
        optional={"name": TEXT}), max_size=2), QUESTION).map(
            lambda t: [*t[0], {"role": "user", "content": t[1]}])},
    optional={
        "model": MODEL_NAMES, "stop": st.lists(TEXT.filter(bool), min_size=1, max_size=2),
        "user": TEXT, "metadata": st.dictionaries(TEXT, TEXT, max_size=2),
        "method": st.sampled_from(list(METHODS)), "budget": st.integers(1, 4),
        "seed": st.integers(0, 2**63 - 1), "max_tokens": st.integers(1, 40),
        "temperature": st.floats(0, 2), "return_particles": st.booleans(),
        "options": st.fixed_dictionaries({}, optional={
            "resampling": st.sampled_from(["multinomial", "systematic", "stratified",
                                           "residual"]), "max_steps": st.integers(1, 4)}),
        "stream": st.booleans()})
CHAOS = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
         "content": st.one_of(TEXT, JSONISH, st.lists(st.fixed_dictionaries(
             {"type": st.just("text"), "text": TEXT}), max_size=2))}), max_size=3)},
    optional={"model": MODEL_NAMES, "budget": st.integers(-3, 12),
              "seed": st.integers(-1, 2**64), "method": TEXT, "stop": JSONISH,
              "options": st.dictionaries(TEXT, JSONISH, max_size=2), "n": JSONISH,
              "temperature": st.floats(-1, 3), "max_tokens": st.integers(-1, 40)})
BODY = st.one_of(VALID, VALID, CHAOS)
HEADERS = st.fixed_dictionaries({}, optional={
    "X-Scaling-Budget": st.one_of(DIGITS, st.text(string.printable.strip(), max_size=6)),
    "X-Scaling-Method": st.text(string.ascii_letters + "-", max_size=8)})


def test_no_request_body_is_a_5xx(scripted: LiveServer) -> None:
    with httpx.Client(base_url=scripted.url, timeout=60) as client:

        @given(body=BODY, headers=HEADERS)
        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(body: dict[str, Any], headers: dict[str, str]) -> None:
            raw = json.dumps(body, ensure_ascii=True)  # lone surrogates travel as \\udXXX
            r = client.post("/v1/chat/completions", content=raw.encode(),
                            headers={"Content-Type": "application/json", **headers})
            assert r.status_code in (200, 400, 404, 422), (r.status_code, r.text[:500], raw)
            if body.get("stream") and r.status_code == 200:
                assert r.text.rstrip().endswith("data: [DONE]")
                assert '"error"' not in r.text, r.text[-500:]
            else:
                payload = r.json()
                if r.status_code != 200:
                    assert set(payload["error"]) == {"message", "type", "param", "code"}

        check()
        assert client.get("/health").json()["active_runs"] == 0
