"""The fake vLLM's streamed completions and llama_cpp.server's tokeniser routes (a mixin of
:class:`~particlescale.testing.fake_vllm.server.FakeVLLM`).

``stream: true`` on ``/v1/completions`` (one prompt, ``n=1``) is written as vLLM's
``completion_stream_generator`` writes it: server-sent events ``data: {...}\\n\\n`` sent one by
one (a client that closes the connection stops the rest), one per token, each choice with
``finish_reason`` and ``stop_reason`` (``null`` until the last token's event, which carries
them with its text) and ``"usage": null``; then, when ``stream_options.include_usage``, an
event with ``"choices": []`` and the usage; then ``data: [DONE]``. With ``strict_openai`` the
finish comes in an extra event with empty text and without ``stop_reason``, as the OpenAI
API writes it. ``owned_by="me"`` adds ``POST /extras/tokenize`` (``{"input"}`` ->
``{"tokens"}``) and ``/extras/tokenize/count``, as ``python -m llama_cpp.server`` serves them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from particlescale.testing.fake_vllm.wire import tokenize


class StreamingRoutes:
    """Routes that stream or that only llama_cpp.server has; they read the fake's fields."""

    async def _stream(self, body: dict[str, Any], p: dict[str, Any]) -> Response:
        prompt = body["prompt"]
        if not isinstance(prompt, str) or p["n"] != 1:
            return self._error(400, "fake server: streams are emulated for one string prompt "
                               "and n=1")
        n_prompt = len(tokenize(prompt))
        if err := self._context_error(n_prompt, p["max_tokens"]):
            return err
        text, finish, stop_reason, n_gen = self._generate(prompt, p, body, 0)
        await self._cost(n_prompt, [n_gen])
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.model}
        strict = self.strict_openai

        def event(text: str, finish: str | None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None,
                                      "finish_reason": finish}
            if not strict:
                choice["stop_reason"] = stop_reason if finish is not None else None
            return b"data: " + json.dumps({**head, "choices": [choice], "usage": None}
                                          ).encode() + b"\n\n"

        pieces = tokenize(text)
        if strict or not pieces:
            out = [event(piece, None) for piece in pieces] + [event("", finish)]
        else:  # vLLM: the last token's event carries the finish
            out = [event(piece, None) for piece in pieces[:-1]] + [event(pieces[-1], finish)]
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
                     "total_tokens": n_prompt + n_gen}
            out.append(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode()
                       + b"\n\n")
        out.append(b"data: [DONE]\n\n")

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in out:
                yield chunk
                await asyncio.sleep(0)  # one event at a time, as tokens are decoded

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def _extras_tokenize(self, body: dict[str, Any]) -> Any:
        return {"tokens": self.vocab.encode(str(body.get("input", "")))}

    async def _extras_count(self, body: dict[str, Any]) -> Any:
        return {"count": len(self.vocab.encode(str(body.get("input", ""))))}
