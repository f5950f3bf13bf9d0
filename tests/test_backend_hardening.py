"""Issue 23 at the HTTP boundary of the remote backends, against the fake vLLM server over
real HTTP: a generation that timed out is not sent again, an answer with wrong field types is a
``protocol`` error naming the field (never a ``TypeError`` inside a run), and credentials in a
server URL are sent as basic auth and never shown."""

from __future__ import annotations

import base64
import re

import pytest

from particlescale.backends.openai import OpenAIGenerator, wire
from particlescale.errors import BackendError, ConfigError
from particlescale.testing.fake_vllm import Fault
from test_openai_backend import MODEL, completion_bodies, extend, fake, gen_for, particle

__all__ = ["fake"]  # the fixture, shared with test_openai_backend


async def test_a_timed_out_generation_is_not_sent_again(fake):
    # Issue 23: a busy server got long generations re-sent after a read timeout.
    fake.inject(Fault(path="/v1/completions", kind="drop", times=1),
                Fault(path="/v1/completions", kind="delay", delay=1.0, times=1))
    gen = gen_for(fake, retries=3, timeout=0.3)
    with pytest.raises(BackendError, match="not sent again") as err:
        await extend(gen, [particle()], [1])
    assert err.value.kind == "timeout"
    assert len(completion_bodies(fake)) == 2  # the dropped one was re-sent, the slow one not


@pytest.mark.parametrize(("body", "field"), [
    ({"choices": [{"index": 0, "text": "2", "finish_reason": "stop"}],
      "usage": {"prompt_tokens": "abc", "completion_tokens": 1}}, "usage.prompt_tokens"),
    ({"choices": [{"index": 0, "text": 5, "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, "choices[0].text"),
    ({"choices": [{"index": 0, "text": "2", "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 3, "completion_tokens": -1}}, "usage.completion_tokens"),
    ({"choices": [{"index": 0, "text": "2", "finish_reason": "stop"}],
      "usage": {"prompt_tokens": True}}, "usage.prompt_tokens"),
    ({"choices": "none"}, "choices"),
    ({"choices": [], "usage": "12 tokens"}, "usage"),
])
def test_wrong_field_types_are_protocol_errors_naming_the_field(body, field):
    with pytest.raises(BackendError, match=re.escape(field)) as err:
        wire.parse_openai("vllm", body, chat=False)
    assert err.value.kind == "protocol"


def test_wrong_field_types_of_llamacpp_and_echo_answers_are_protocol_errors():
    with pytest.raises(BackendError, match="content") as err:
        wire.parse_llamacpp({"content": 5, "stop_type": "eos"})
    assert err.value.kind == "protocol"
    with pytest.raises(BackendError, match="tokens_predicted"):
        wire.parse_llamacpp({"content": "x", "stop_type": "eos", "tokens_predicted": "many"})
    echo = {"choices": [{"logprobs": {"token_logprobs": [None, "-1.5"]}}]}
    with pytest.raises(BackendError, match=re.escape("token_logprobs[1]")):
        wire.parse_echo(echo, 1)
    with pytest.raises(BackendError, match="tokens"):
        wire.get_token_ids({"tokens": ["a"]}, "tokens", "/tokenize")


async def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(fake):
    url = fake.v1.replace("http://", "http://admin:s3cret%40pw@")
    gen = OpenAIGenerator(url, MODEL, retries=0)
    assert "s3cret" not in gen.replicas[0].endpoint.base_url
    await extend(gen, [particle()], [1])
    auth = [r.headers.get("authorization") for r in fake.records]
    assert set(auth) == {"Basic " + base64.b64encode(b"admin:s3cret@pw").decode()}
    fake.stop()
    with pytest.raises(BackendError) as err:
        await extend(gen, [particle()], [1])
    assert "s3cret" not in str(err.value) and "admin" not in str(err.value)
    with pytest.raises(ConfigError, match="give one of them"):
        OpenAIGenerator(url, MODEL, api_key="sk-also")
