"""An OpenAI-compatible server that scales inference behind one API call.

Point any OpenAI client at it; the last user message is solved by a scaling method (particle
filtering by default) over the configured generator and reward, and the chosen solution comes
back as the assistant message::

    particlescale serve                      # embedded llama.cpp model, http://127.0.0.1:8000
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="pf-8", messages=[{"role": "user", "content": q}],
                                   extra_body={"seed": 0, "return_particles": True})

Modules: ``config`` (file + flags), ``schemas`` (request/response shapes and what each OpenAI
field means here), ``translate`` (request -> run), ``capped`` (max_tokens / stop),
``runs`` (a task per request, cancellation), ``responses`` (bodies and SSE chunks),
``errors`` (status codes), ``auth``, ``limits``, ``metrics``, ``readiness``, ``app``. The
generators and the reward are built by :mod:`particlescale.wiring` (as every face builds them).
"""

from particlescale.server.app import create_app
from particlescale.server.config import ServerConfig, load_config

__all__ = ["ServerConfig", "create_app", "load_config"]
