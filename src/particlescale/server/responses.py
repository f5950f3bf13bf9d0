"""Building response bodies: the chat completion, the stream chunks, and the ``scaling``
extension they carry.

``usage`` holds the run's real totals: ``prompt_tokens`` (every prompt token the LM
processed), ``completion_tokens`` (every token generated, all particles), ``total_tokens``
(their sum), and the extensions ``reward_tokens``, ``reward_calls``, ``lm_calls`` and
``answer_tokens`` (the tokens of the returned message).

A stream is::

    data: {chunk: delta {role: assistant, content: ""}}
    data: {chunk: delta {}, scaling: {progress: {band, step, ess, n, live, finished,
                                                  resampled, elapsed}}}      one per step
    data: {chunk: delta {content: <the chosen solution>}}
    data: {chunk: delta {}, finish_reason: stop|length, scaling: {method, budget, ...}}
    data: {chunk: choices [], usage: {...}}       only with stream_options.include_usage
    data: [DONE]

A failure after the stream started is sent as ``data: {"error": {...}}`` then ``[DONE]``
(the OpenAI SDK raises it as an ``APIError``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from particlescale.server.capped import CapState
from particlescale.server.translate import RunSpec
from particlescale.types import Result


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars made Python and non-finite floats made ``None`` (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


def _best_tokens(result: Result) -> int:
    text = result.text
    for c in result.candidates:
        if c.text == text:
            return c.tokens
    return 0


def usage(result: Result) -> dict[str, int]:
    u = result.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.generated_tokens,
            "total_tokens": u.prompt_tokens + u.generated_tokens, "reward_tokens": u.prm_tokens,
            "reward_calls": u.prm_calls, "lm_calls": u.lm_calls,
            "answer_tokens": _best_tokens(result)}


def scaling(result: Result, spec: RunSpec, caps: CapState) -> dict[str, Any]:
    d: dict[str, Any] = {
        "method": spec.method, "budget": spec.budget, "seed": spec.seed,
        "generator": spec.generator, "answer": result.answer,
        "wall_time": result.usage.wall_time, "info": result.info,
        "ignored_messages": spec.ignored_messages,
    }
    if spec.return_particles:
        d["candidates"] = [{**c.to_dict(), "finish_reason": caps.finish_reason(c.text)}
                           for c in result.candidates]
        d["usage"] = result.usage.to_dict()
    return jsonable(d)


def completion(result: Result, spec: RunSpec, caps: CapState, created: int) -> dict[str, Any]:
    return {
        "id": spec.problem.id,
        "object": "chat.completion",
        "created": created,
        "model": spec.model,
        "system_fingerprint": None,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.text or ""},
            "finish_reason": caps.finish_reason(result.text),
            "logprobs": None,
        }],
        "usage": usage(result),
        "scaling": scaling(result, spec, caps),
    }


def chunk(spec: RunSpec, created: int, delta: dict[str, Any], finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {
        "id": spec.problem.id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": spec.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None,
                     "finish_reason": finish_reason}],
        **extra,
    }


def usage_chunk(result: Result, spec: RunSpec, created: int) -> dict[str, Any]:
    return {"id": spec.problem.id, "object": "chat.completion.chunk", "created": created,
            "model": spec.model, "choices": [], "usage": usage(result)}
