"""A client for vLLM's ``POST /pooling`` with step-tag (STEP) pooling, shared by the served
process reward models (``vllm-prm``, ``math-shepherd``).

Wire format (checked against vLLM's ``entrypoints/openai/protocol.py`` (0.7 - 0.10) and
``entrypoints/pooling/pooling/protocol.py`` (0.11 on))::

    request   {"model": M, "input": [text, ...]}                      completion form, batched
              {"model": M, "messages": [...], "add_generation_prompt": false}   chat form, one
    response  {"id": "pool-...", "object": "list", "created": T, "model": M,
               "data": [{"index": i, "object": "pooling", "data": ROWS_i}, ...],
               "usage": {"prompt_tokens": P, "total_tokens": P, "completion_tokens": 0}}

``ROWS_i`` holds one row per step tag in input ``i`` (STEP pooling), each row the class
probabilities at that tag: ``[p_neg, p_pos]`` for Qwen2.5-Math-PRM, ``[p(+), p(-)]`` for
Math-Shepherd (``returned_token_ids`` ``[648, 387]``). Variants handled: rows as a list of
lists (the usual), a flat list of 2k floats, a base64 string of float32 (``encoding_format``
"base64"), and raw logits (servers started without softmax): a row that is not a probability
vector is soft-maxed. No ``task`` field is sent: vLLM >= 0.11 picks the model's own pooling
task (``token_classify`` for PRMs) and rejects removed names such as ``encode``.

Serving flags by vLLM version: 0.7 - 0.9 ``--task reward`` (Qwen2.5-Math-PRM needs vLLM >= 0.7;
its STEP pooler with ``step_tag_id`` 151651 is built in); 0.10 on ``--runner pooling``
(usually detected automatically). Math-Shepherd needs ``--override-pooler-config`` (0.7 -
0.11; removed in 0.12) / ``--pooler-config`` (0.11 on) ``'{"pooling_type": "STEP",
"step_tag_id": 12902, "returned_token_ids": [648, 387]}'``. Checked on a real vLLM 0.32 (CPU
build; ``tests/test_vllm_real.py``): Qwen2.5-Math-PRM (``Qwen2ForProcessRewardModel``) needs
nothing beyond the model (pooling runner, STEP pooling and step_tag_id 151651 are its
defaults); a Math-Shepherd ``*ForCausalLM`` under ``--runner pooling`` is converted to an
*embedding* model, whose ``/pooling`` answer is one vector per input (the ``returned_token_ids``
then index hidden dimensions, not the vocabulary), so it is served with ``--convert classify
--hf-overrides '{"classifier_from_token": ["+", "-"], "method": "no_post_processing"}'
--pooler-config '{"task": "token_classify", "pooling_type": "STEP", "step_tag_id": 12902}'``
(the classifier is the LM head's ``+``/``-`` rows, soft-maxed: ``[P(+), P(-)]``). Rows that
are not ``(step tags, 2)`` are refused with those flags in the message.

Concurrent calls are batched: requests that arrive in the same event-loop tick are sent as
one ``input`` list (up to ``max_batch`` texts), and a failure is handed to every caller.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from particlescale.backends.http import HttpEndpoint, split_base_url
from particlescale.errors import BackendError, ConfigError
from particlescale.types import Usage

NOT_POOLING_HINT = (
    "the server at {url} does not serve a pooling (reward) model: start vLLM with "
    "`--runner pooling` (vLLM >= 0.10) or `--task reward` (vLLM 0.7 - 0.9){extra}")


STEP_HINT = (
    "start the server with STEP pooling at the step tag: --pooler-config '{\"pooling_type\": "
    "\"STEP\", \"step_tag_id\": <tag id>}' (a *ForCausalLM PRM such as Math-Shepherd on "
    "recent vLLM (0.32 checked) also needs --convert classify --hf-overrides "
    "'{\"classifier_from_token\": [\"+\", \"-\"], \"method\": \"no_post_processing\"}' "
    "and \"task\": \"token_classify\" in --pooler-config; without them vLLM serves it as an "
    "embedding model)")


def rows_of(item: Any, n_tags: int, classes: int = 2) -> np.ndarray:
    """The ``(n_tags, classes)`` probability rows of one ``data[i].data`` value."""
    data = item
    if isinstance(data, str):
        data = np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float64)
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim == 1:
        if arr.size != n_tags * classes:
            raise BackendError(
                f"/pooling returned {arr.size} numbers for {n_tags} step tag(s), expected "
                f"{n_tags} rows of {classes} class probabilities: the server is not scoring "
                f"at step tags; {STEP_HINT}", kind="protocol")
        arr = arr.reshape(n_tags, classes)
    if arr.ndim != 2 or arr.shape != (n_tags, classes):
        raise BackendError(
            f"/pooling returned rows of shape {arr.shape} for {n_tags} step tag(s), expected "
            f"({n_tags}, {classes}): the server is not using STEP pooling (one row per step "
            f"tag); {STEP_HINT}", kind="protocol")
    if not np.all(np.isfinite(arr)):
        raise BackendError("/pooling returned non-finite values", kind="protocol")
    is_prob = np.all(arr >= 0) and np.all(arr <= 1) and np.allclose(arr.sum(axis=1), 1, atol=1e-3)
    if not is_prob:  # raw logits (no softmax on the server): normalise here
        arr = np.exp(arr - arr.max(axis=1, keepdims=True))
        arr /= arr.sum(axis=1, keepdims=True)
    return arr


@dataclass
class _Pending:
    text: str
    future: asyncio.Future[tuple[Any, int, float]]


@dataclass
class PoolingClient:
    """``POST /pooling`` against one vLLM server, with batching of concurrent calls."""

    url: str
    model: str | None = None
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 4
    max_concurrency: int = 16
    max_batch: int = 64
    endpoint: HttpEndpoint = field(init=False)
    api: str = field(init=False)
    _queue: list[_Pending] = field(default_factory=list, init=False)
    _flush: asyncio.Task[None] | None = field(default=None, init=False)
    _ids: itertools.count[int] = field(default_factory=itertools.count, init=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError("max_batch: must be >= 1")
        root, api = split_base_url(self.url)
        self.api = api[len(root):]
        self.endpoint = HttpEndpoint(root, api_key=self.api_key, timeout=self.timeout,
                                     retries=self.retries, max_concurrency=self.max_concurrency)

    async def resolve_model(self) -> str:
        if self.model is None:
            listing = await self.endpoint.get(self.api + "/models")
            try:
                self.model = str(listing["data"][0]["id"])
            except (KeyError, IndexError, TypeError) as e:
                raise BackendError(f"{self.url}/models lists no model", kind="protocol") from e
        return self.model

    async def post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            out = await self.endpoint.post("/pooling", body)
        except BackendError as e:
            msg = str(e).lower()
            if e.status == 404 and "model" not in msg.replace("/models", ""):
                raise BackendError(NOT_POOLING_HINT.format(url=self.endpoint.base_url,
                                                           extra=f" ({e})"),
                                   kind=e.kind, status=e.status) from e
            if e.status == 400 and any(w in msg for w in ("pooling", "task", "runner")):
                raise BackendError(NOT_POOLING_HINT.format(url=self.endpoint.base_url,
                                                           extra=f"; server said: {e}"),
                                   kind=e.kind, status=e.status) from e
            raise
        if not isinstance(out, dict) or not isinstance(out.get("data"), list):
            raise BackendError(f"/pooling answer has no data list: {str(out)[:200]}",
                               kind="protocol")
        return out

    async def pool_texts(self, texts: Sequence[str], usage: Usage) -> list[Any]:
        """``data[i].data`` for each text, batched with concurrent callers' texts."""
        if not texts:
            return []
        await self.resolve_model()
        loop = asyncio.get_running_loop()
        mine = [_Pending(t, loop.create_future()) for t in texts]
        self._queue.extend(mine)
        if self._flush is None or self._flush.done() or self._flush.get_loop() is not loop:
            self._flush = loop.create_task(self._flush_soon())
        results = await asyncio.gather(*(p.future for p in mine))
        requests = {rid for _, rid, _ in results}
        usage.prm_calls += len(requests)
        usage.prm_tokens += round(sum(tok for _, _, tok in results))
        return [data for data, _, _ in results]

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0)  # let callers that are ready in this tick join the batch
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            out = await self.post({"model": self.model, "input": [p.text for p in batch]})
            items = sorted(out["data"], key=lambda d: d.get("index", 0))
            if len(items) != len(batch):
                raise BackendError(f"/pooling returned {len(items)} results for "
                                   f"{len(batch)} inputs", kind="protocol")
            total = float((out.get("usage") or {}).get("prompt_tokens") or 0)
            z = sum(len(p.text) for p in batch) or 1
            rid = next(self._ids)
            for p, item in zip(batch, items, strict=True):
                if not p.future.done():
                    p.future.set_result((item["data"], rid, total * len(p.text) / z))
        except BaseException as e:  # hand the failure to every waiting caller
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e if isinstance(e, Exception)
                                           else BackendError(str(e), kind="protocol"))
            if not isinstance(e, Exception):
                raise

    async def pool_messages(self, messages: list[dict[str, str]], usage: Usage) -> Any:
        """``data[0].data`` for one conversation (the chat form cannot be batched)."""
        await self.resolve_model()
        out = await self.post({"model": self.model, "messages": messages,
                               "add_generation_prompt": False})
        usage.prm_calls += 1
        usage.prm_tokens += int((out.get("usage") or {}).get("prompt_tokens") or 0)
        if len(out["data"]) != 1:
            raise BackendError(f"/pooling returned {len(out['data'])} results for one "
                               "conversation", kind="protocol")
        return out["data"][0]["data"]

    async def aclose(self) -> None:
        await self.endpoint.aclose()
