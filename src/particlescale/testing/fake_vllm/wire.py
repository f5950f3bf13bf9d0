"""The fake vLLM's wire pieces: its tokenizer and ChatML, the fake models' defaults, the
request fields of OpenAI and vLLM, injected faults and the ASGI layer that plays them."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from particlescale.testing.fake_vllm.server import FakeVLLM

INT64 = 2**63
SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
           "<extra_0>": 151651}
_TOKEN = re.compile("|".join(re.escape(s) for s in SPECIAL) + r"|\s+|\w+|[^\w\s]")

OPENAI_COMPLETION_FIELDS = frozenset({
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
    "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
    "suffix", "temperature", "top_p", "user"})
OPENAI_CHAT_FIELDS = frozenset({
    "messages", "model", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "max_tokens", "max_completion_tokens", "n", "presence_penalty", "response_format", "seed",
    "stop", "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "user", "service_tier", "store", "metadata", "modalities",
    "reasoning_effort"})
VLLM_SAMPLING_EXTRAS = frozenset({
    "use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "allowed_token_ids", "prompt_logprobs", "add_special_tokens", "response_format",
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "priority",
    "request_id", "logits_processors", "return_tokens_as_token_ids", "cache_salt",
    "kv_transfer_params", "vllm_xargs", "echo", "add_generation_prompt",
    "continue_final_message", "chat_template", "chat_template_kwargs", "documents",
    "bad_words", "mm_processor_kwargs"})


def tokenize(text: str) -> list[str]:
    """Pieces of a text: special tokens, whitespace runs, words, single symbols."""
    return _TOKEN.findall(text)


class Vocab:
    """A growing, reversible piece <-> id table (special tokens at Qwen's ids)."""

    def __init__(self) -> None:
        self.ids = dict(SPECIAL)
        self.pieces = {v: k for k, v in SPECIAL.items()}
        self.lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        out = []
        with self.lock:
            for p in tokenize(text):
                if p not in self.ids:
                    i = len(self.ids) + 1000
                    self.ids[p] = i
                    self.pieces[i] = p
                out.append(self.ids[p])
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


def chatml(messages: list[dict[str, Any]], *, add_generation_prompt: bool,
           continue_final_message: bool) -> str:
    """Qwen2.5's chat template, with vLLM's continue_final_message truncation."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if continue_final_message:
        text = text[: -len("<|im_end|>\n")]
    elif add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


def default_lm(prompt: str, rng: np.random.Generator) -> tuple[str, bool]:
    """The fake model's continuation of ``prompt``: (text, ends with EOS)."""
    answer_part = prompt.rsplit("<|im_start|>assistant\n", 1)[-1]
    done = answer_part.count("\n\n")
    pieces = []
    for k in range(done + 1, done + 4):
        if k > 1 and rng.random() < 0.45:
            x = int(rng.choice([42, 42, 41]))
            pieces.append(f"Therefore, the final answer is: $\\boxed{{{x}}}$. "
                          "I hope it is correct.")
            return "".join(pieces), True
        a, b = (int(v) for v in rng.integers(1, 50, size=2))
        pieces.append(f"## Step {k}: {a} + {b} = {a + b}\n\n")
    return "".join(pieces), False


def default_prm(prefix: str) -> float:
    """P(step correct) of the fake PRM: a fixed pseudo-random value per prefix."""
    return 0.05 + 0.9 * (zlib.crc32(prefix.encode()) % 1000) / 1000


def default_token_logprob(context: str, piece: str) -> float:
    """The fake model's log p(piece | context): a fixed pseudo-random value in [-3.05, -0.05]
    that depends on the piece and the last 40 characters before it."""
    return -0.05 - 3.0 * (zlib.crc32(f"{context[-40:]}\x00{piece}".encode()) % 1000) / 1000


@dataclass
class Fault:
    """An injected failure for requests to ``path`` (``*`` = any) whose raw body contains
    ``match``; applies ``times`` times (-1: always). ``kind``: ``status`` (answer ``status``
    with ``message``), ``drop`` (close the connection mid-answer), ``delay`` (sleep ``delay``
    seconds, then answer normally), ``body`` (answer 200 with ``body`` as JSON: a malformed
    answer)."""

    path: str = "*"
    kind: str = "status"
    status: int = 500
    message: str = "fake: injected failure"
    times: int = 1
    match: str | None = None
    delay: float = 0.0
    retry_after: float | None = None
    body: Any = None


@dataclass
class Record:
    path: str
    body: Any
    start: float
    end: float = 0.0
    status: int = 0
    raw: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class FaultLayer:
    """The outermost ASGI layer: records every request, counts requests in flight, and plays
    the injected faults (before the app sees the request, so nothing can turn a dropped
    connection into a tidy 500)."""

    def __init__(self, fake: FakeVLLM, app: Any) -> None:
        self.fake = fake
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        fake = self.fake
        rec = Record(scope["path"], body, time.perf_counter(), raw=raw,
                     headers={k.decode().lower(): v.decode() for k, v in scope["headers"]})
        fake.records.append(rec)
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def tap(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                rec.status = message["status"]
            await send(message)

        try:
            fault = fake._take_fault(scope["path"], raw.decode("utf-8", "replace"))
            if fault is not None and fault.kind == "drop":
                await tap({"type": "http.response.start", "status": 200,
                           "headers": [(b"content-type", b"application/json"),
                                       (b"content-length", b"1000")]})
                await send({"type": "http.response.body", "body": b'{"id": "cmpl-',
                            "more_body": True})
                raise ConnectionAbortedError("fake: connection dropped on purpose")
            if fault is not None and fault.kind == "delay":
                await asyncio.sleep(fault.delay)
            elif fault is not None and fault.kind == "body":
                await JSONResponse(fault.body)(scope, replay, tap)
                return
            elif fault is not None:
                headers = ({"Retry-After": f"{fault.retry_after:g}"}
                           if fault.retry_after is not None else None)
                await fake._error(fault.status, fault.message, headers=headers)(scope, replay,
                                                                                tap)
                return
            await self.app(scope, replay, tap)
        finally:
            rec.end = time.perf_counter()
            with fake._lock:
                fake.in_flight -= 1
