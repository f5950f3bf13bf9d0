"""Property-based checks of the server against its own OpenAPI schema (schemathesis): no input
the schema allows or forbids makes it fail with a 5xx, every status, header and body it
answers is the documented one, and bodies the schema forbids are rejected.

Not checked: that every schema-valid body is accepted. Some rules of the API are not
expressible in JSON Schema (the last message must be a non-empty user message; a budget given
in the body and in X-Scaling-Budget must agree; ``options`` are validated per method), and
their 400s are tested in test_server_api.py.

(Driven through hypothesis directly: schemathesis' pytest fixture loader does not run under
pytest 9.)"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from particlescale.server import ServerConfig
from particlescale.testing.live_server import LiveServer
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward
from particlescale.wiring import Wired

STEPS = {"Add 2 and 2. ": 0.5, "So \\boxed{4}.": 0.5}
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# Negative data only where there is input to get wrong (the GETs take no parameters).
CASES = [("/v1/chat/completions", "POST", POSITIVE), ("/v1/chat/completions", "POST", NEGATIVE),
         ("/v1/models", "GET", POSITIVE), ("/health", "GET", POSITIVE),
         ("/ready", "GET", POSITIVE), ("/metrics", "GET", POSITIVE)]


KEY = "test-key"


@pytest.fixture(scope="module", params=["open", "keyed"])
def live(request: pytest.FixtureRequest):
    cfg = ServerConfig(generators=[{"spec": "scripted:test", "id": "scripted"}],
                       limits={"max_budget": 8, "max_body_bytes": 65536},
                       api_keys=[KEY] if request.param == "keyed" else [], api_keys_env=None)
    gen = ScriptedGenerator(lambda p: STEPS, horizon=3)
    with LiveServer(cfg, Wired({"scripted": gen}, ScriptedReward(lambda t: 0.5))) as s:
        yield s


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_server_conforms_to_its_openapi_schema(live: LiveServer, path: str, method: str,
                                                mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operation = schema[path][method]
    keyed = live.state.config.api_keys != ()
    headers = {"Authorization": f"Bearer {KEY}"} if keyed else None

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=live.url, headers=headers,
                               excluded_checks=[positive_data_acceptance])

    check()
