"""A faithful fake of vLLM's OpenAI-compatible server, served for real over HTTP.

It stands in for what cannot run here (a GPU vLLM server) and reproduces vLLM's wire format,
so the client code under test is the code users run against the real thing:

- ``GET /v1/models``: model card with ``owned_by: "vllm"`` and ``max_model_len``.
- ``POST /v1/completions``: ``n`` choices, ``stop`` strings (cut out of the text unless
  ``include_stop_str_in_output``), ``finish_reason`` (``stop``/``length``) and ``stop_reason``
  (the matched stop string, or ``null`` at EOS), ``usage`` (prompt tokens once per request,
  completion tokens summed over choices), ``seed`` (choice ``i`` is sampled with ``seed + i``
  as vLLM v1's ``ParentRequest`` does; same seed and prompt -> same text). Parameters are
  checked as vLLM's ``SamplingParams._verify_args`` checks them (same messages); unknown
  fields are accepted and ignored, as vLLM does (``OpenAIBaseModel`` has ``extra="allow"``),
  and recorded in :attr:`FakeVLLM.ignored_fields`.
- ``echo`` and ``logprobs`` on ``/v1/completions`` (the scoring request of ancestor sampling):
  the choice's text is prompt + completion and ``logprobs`` is the OpenAI legacy object over
  prompt and completion tokens (``tokens``, ``text_offset`` from 0, ``token_logprobs`` with
  ``None`` for the first prompt token, ``top_logprobs`` holding the token itself — no
  alternatives are emulated), as vLLM's ``_create_completion_logprobs`` builds it; the choice
  also carries vLLM's ``prompt_logprobs`` (``None``, then ``{token_id: {logprob, rank,
  decoded_token}}`` per prompt token); ``return_tokens_as_token_ids`` writes tokens as
  ``token_id:N``; more than ``max_logprobs`` is rejected with vLLM's message. The fake
  model's log-probability of a token is ``token_logprob(text before it, token)``.
- ``stream: true`` on ``/v1/completions`` (one prompt, ``n=1``) as vLLM's
  ``completion_stream_generator`` writes it: server-sent events ``data: {...}\n\n`` sent one
  by one (a client that closes the connection stops the rest), one per token, each choice
  with ``finish_reason`` and ``stop_reason`` (``null`` until the last token's event, which
  carries them with its text) and ``"usage": null``; then, when
  ``stream_options.include_usage``, an event with ``"choices": []`` and the usage; then
  ``data: [DONE]``. With ``strict_openai`` the finish comes in an extra event with empty
  text and without ``stop_reason``, as the OpenAI API writes it.
- ``owned_by="me"`` also serves ``POST /extras/tokenize`` (``{"input"}`` -> ``{"tokens"}``)
  and ``/extras/tokenize/count``, as ``python -m llama_cpp.server`` does.
- ``POST /v1/chat/completions``: ChatML rendering with ``add_generation_prompt`` /
  ``continue_final_message`` (both true is rejected), ``logprobs``/``top_logprobs``.
- ``POST /tokenize``, ``/detokenize``: a reversible fake tokenizer (Qwen's special-token ids).
- ``POST /pooling`` (``runner="pooling"``): STEP pooling at a step tag, ``data[i].data`` one
  row per tag, in the response variants of the vLLM versions users run (``pooling_variant``:
  ``rows``, ``flat``, ``base64``, ``logits``, or the misconfigurations ``all`` = an ALL
  pooler and ``embed`` = one normalised vector per input, what vLLM 0.32 answers for a
  ``*ForCausalLM`` PRM served with ``--runner pooling`` but not ``--convert classify``).
- Errors in vLLM's two dialects (``error_style``: ``new`` = ``{"error": {...}}`` of recent
  vLLM, about 0.10 on; ``old`` = the flat ``{"object": "error", ...}`` before), 404 for an
  unknown model (with vLLM's "Valid aliases" list), FastAPI's ``{"detail": "Not Found"}`` 404
  for a route the server does not have (``/pooling`` on a generation server, completions on
  a pooling server). Context limits as vLLM 0.32 checks them: ``max_tokens`` above
  ``max_model_len`` or a prompt longer than it is a 400 with vLLM's message; otherwise
  ``max_tokens`` is clamped to the room left and the choice ends with ``length`` there.
- ``strict_openai=True`` emulates the official OpenAI API instead: unknown parameters (every
  vLLM extra) are rejected with OpenAI's "Unrecognized request argument supplied" 400, there is
  no ``stop_reason``, no ``/tokenize`` or ``/pooling``.

Server cost model: each request sleeps ``latency + per_prompt_token * prompt_tokens +
per_token * (longest choice in tokens)`` (the choices of one request decode together, as in a
batch), concurrently with other requests. Fault injection (:class:`Fault`): HTTP statuses
(500, 429 with ``Retry-After``, 400...), dropped connections (headers sent, then the socket
closes mid-body), and delays longer than the client's timeout.

The fake language model writes "## Step k: a + b = c" steps separated by blank lines and, at
random, a final "Therefore, the final answer is: $\\boxed{X}$. I hope it is correct." followed
by EOS; its randomness comes only from the request seed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

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


@dataclass
class FakeVLLM:
    model: str = "Qwen/Qwen2.5-Math-1.5B-Instruct"
    runner: str = "generate"  # or "pooling"
    strict_openai: bool = False
    error_style: str = "new"
    latency: float = 0.0
    per_token: float = 0.0
    per_prompt_token: float = 0.0
    max_model_len: int = 4096
    max_logprobs: int = 20
    max_n: int | None = None  # answer at most this many choices (llama_cpp.server ignores n)
    owned_by: str | None = None
    lm: Callable[[str, np.random.Generator], tuple[str, bool]] = default_lm
    prm: Callable[[str], float] = default_prm
    token_logprob: Callable[[str, str], float] = default_token_logprob
    judge: Callable[[str], float] | None = None
    step_tag: str = "<extra_0>"
    positive_index: int = 1
    pooling_variant: str = "rows"
    faults: list[Fault] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    ignored_fields: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    vocab: Vocab = field(default_factory=Vocab)
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def start(self) -> FakeVLLM:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="critical", lifespan="off", http="h11",
                                loop="asyncio", backlog=4096, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake vLLM server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeVLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def bodies(self, path: str) -> list[Any]:
        """Request bodies received on ``path`` (faulted ones included), in arrival order."""
        return [r.body for r in self.records if r.path == path]

    # -- the ASGI app -------------------------------------------------------------------------

    def app(self) -> Any:
        routes = [Route("/v1/models", self._models, methods=["GET"]),
                  Route("/health", self._health, methods=["GET"])]
        handlers = {"/v1/completions": self._completions,
                    "/v1/chat/completions": self._chat}
        if not self.strict_openai:
            handlers.update({"/tokenize": self._tokenize, "/detokenize": self._detokenize})
            if self.owned_by == "me":
                handlers.update({"/extras/tokenize": self._extras_tokenize,
                                 "/extras/tokenize/count": self._extras_count})
            if self.runner == "pooling":
                handlers = {"/pooling": self._pooling, "/tokenize": self._tokenize,
                            "/detokenize": self._detokenize}
        for path, fn in handlers.items():
            routes.append(Route(path, self._wrap(path, fn), methods=["POST"]))

        async def not_found(request: Request, exc: Exception) -> Response:
            return JSONResponse({"detail": "Not Found"}, status_code=404)

        return _FaultLayer(self, Starlette(routes=routes, exception_handlers={404: not_found}))

    async def _health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def _models(self, request: Request) -> Response:
        created = int(time.time())
        if self.strict_openai:
            card = {"id": self.model, "object": "model", "created": created,
                    "owned_by": self.owned_by or "system"}
        else:
            card = {"id": self.model, "object": "model", "created": created,
                    "owned_by": self.owned_by or "vllm", "root": self.model, "parent": None,
                    "max_model_len": self.max_model_len,
                    "permission": [{"id": f"modelperm-{uuid.uuid4().hex}",
                                    "object": "model_permission", "created": created,
                                    "allow_create_engine": False, "allow_sampling": True,
                                    "allow_logprobs": True, "allow_search_indices": False,
                                    "allow_view": True, "allow_fine_tuning": False,
                                    "organization": "*", "group": None,
                                    "is_blocking": False}]}
        return JSONResponse({"object": "list", "data": [card]})

    def _wrap(self, path: str, fn: Callable[[dict[str, Any]], Any]) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                body = json.loads(await request.body())
            except json.JSONDecodeError:
                body = None
            if not isinstance(body, dict):
                return self._error(400, "Expected a JSON object body")
            result = await fn(body)
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    def _take_fault(self, path: str, raw: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.path in ("*", path) and (f.match is None or f.match in raw):
                    if f.times > 0:
                        f.times -= 1
                        if f.times == 0:
                            self.faults.remove(f)
                    return f
        return None

    def _error(self, status: int, message: str, *, param: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
        names = {400: "BadRequestError", 404: "NotFoundError", 429: "TooManyRequests",
                 500: "InternalServerError", 503: "ServiceUnavailable"}
        if self.strict_openai:
            body: dict[str, Any] = {"error": {"message": message,
                                              "type": "invalid_request_error"
                                              if status < 500 else "server_error",
                                              "param": param, "code": None}}
        elif self.error_style == "old":
            body = {"object": "error", "message": message,
                    "type": names.get(status, "Error"), "param": param, "code": status}
        else:
            body = {"error": {"message": message, "type": names.get(status, "Error"),
                              "param": param, "code": status}}
        return JSONResponse(body, status_code=status, headers=headers)

    # -- validation as vLLM / OpenAI do it ------------------------------------------------------

    def _check_fields(self, body: dict[str, Any], allowed: frozenset[str]) -> Response | None:
        unknown = [k for k in body if k not in allowed]
        if not unknown:
            return None
        if self.strict_openai:
            return self._error(400, f"Unrecognized request argument supplied: {unknown[0]}")
        # vLLM: extra="allow", logged and ignored.
        self.ignored_fields.extend(k for k in unknown if k not in VLLM_SAMPLING_EXTRAS)
        return None

    def _check_model(self, body: dict[str, Any]) -> Response | None:
        model = body.get("model")
        if model is not None and model != self.model:
            return self._error(404, f"The model `{model}` does not exist. Valid aliases: "
                               f"{self.model}.", param="model")
        if model is None and self.strict_openai:
            return self._error(400, "you must provide a model parameter")
        return None

    def _sampling(self, body: dict[str, Any]) -> tuple[dict[str, Any], Response | None]:
        def num(key: str, default: Any, kind: type = float) -> Any:
            v = body.get(key, default)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                    kind is int and not isinstance(v, int)):
                raise ValueError(f"{key}: Input should be a valid "
                                 f"{'integer' if kind is int else 'number'}")
            return v

        try:
            p = {"n": num("n", 1, int), "temperature": num("temperature", 1.0),
                 "top_p": num("top_p", 1.0), "top_k": num("top_k", 0, int),
                 "min_p": num("min_p", 0.0), "max_tokens": num("max_tokens", 16, int),
                 "min_tokens": num("min_tokens", 0, int),
                 "presence_penalty": num("presence_penalty", 0.0),
                 "frequency_penalty": num("frequency_penalty", 0.0),
                 "repetition_penalty": num("repetition_penalty", 1.0),
                 "seed": body.get("seed"), "logprobs": body.get("logprobs")}
        except ValueError as e:
            return {}, self._error(400, str(e))
        stop = body.get("stop") or []
        p["stop"] = [stop] if isinstance(stop, str) else list(stop)
        seed = p["seed"]
        checks = [
            (p["n"] < 1, f"n must be at least 1, got {p['n']}."),
            (not -2 <= p["presence_penalty"] <= 2,
             f"presence_penalty must be in [-2, 2], got {p['presence_penalty']}."),
            (not -2 <= p["frequency_penalty"] <= 2,
             f"frequency_penalty must be in [-2, 2], got {p['frequency_penalty']}."),
            (p["repetition_penalty"] <= 0,
             f"repetition_penalty must be greater than zero, got {p['repetition_penalty']}."),
            (p["temperature"] < 0, f"temperature must be non-negative, got {p['temperature']}."),
            (p["temperature"] > 2, f"temperature must be in [0, 2], got {p['temperature']}."),
            (not 0 < p["top_p"] <= 1, f"top_p must be in (0, 1], got {p['top_p']}."),
            (p["top_k"] < -1, f"top_k must be 0 (disable), or at least 1, got {p['top_k']}."),
            (not 0 <= p["min_p"] <= 1, f"min_p must be in [0, 1], got {p['min_p']}."),
            (p["max_tokens"] < (0 if body.get("echo") else 1),
             f"max_tokens must be at least 1, got {p['max_tokens']}. "
             f"(parameter=max_tokens, value={p['max_tokens']})"),
            (p["min_tokens"] < 0,
             f"min_tokens must be greater than or equal to 0, got {p['min_tokens']}."),
            (any(not s for s in p["stop"]), "stop cannot contain an empty string."),
            (seed is not None and (not isinstance(seed, int) or not -INT64 <= seed < INT64),
             "seed: Input should be less than or equal to 9223372036854775807"),
            (p["temperature"] == 0 and p["n"] > 1,
             f"n must be 1 when using greedy sampling, got {p['n']}."),
        ]
        if self.strict_openai:
            checks = [(p["n"] < 1 or p["n"] > 128, f"{p['n']} is not a valid value for 'n'"),
                      (not 0 <= p["temperature"] <= 2,
                       f"{p['temperature']} is greater than the maximum of 2 - 'temperature'"),
                      (not 0 <= p["top_p"] <= 1, f"{p['top_p']} is not valid for 'top_p'"),
                      (len(p["stop"]) > 4, "'stop' can hold at most 4 sequences")]
        for bad, message in checks:
            if bad:
                return p, self._error(400, message)
        return p, None

    # -- generation ---------------------------------------------------------------------------

    def _generate(self, prompt: str, p: dict[str, Any], body: dict[str, Any],
                  index: int) -> tuple[str, str, Any, int]:
        """One choice: (text, finish_reason, stop_reason, generated tokens)."""
        seed = p["seed"]
        rng = np.random.default_rng(None if seed is None else (seed + index) % INT64)
        if p["temperature"] == 0:
            rng = np.random.default_rng(zlib.crc32(prompt.encode()))
        text, eos = self.lm(prompt, rng)
        pieces = tokenize(text)
        limit = p["max_tokens"]
        # Stop strings are matched on the detokenized text as it grows, as vLLM does.
        out = ""
        for i, piece in enumerate(pieces):
            if i >= limit:
                return out, "length", None, limit
            out += piece
            for s in p["stop"]:
                at = out.find(s)
                if at >= 0:
                    keep = out[: at + len(s)] if body.get("include_stop_str_in_output") else \
                        out[:at]
                    return keep, "stop", s, i + 1
        n_tok = len(pieces)
        if eos and n_tok < limit:
            return out, "stop", None, n_tok + 1  # the EOS token counts, its text does not
        return out, "length", None, min(n_tok, limit)

    def _context_error(self, prompt_tokens: int, max_tokens: int) -> Response | None:
        """vLLM 0.32's length checks: ``max_tokens`` above the context, or a prompt longer
        than the context, is a 400; otherwise ``max_tokens`` is clamped to the room left
        (see :meth:`_room`) and the completion ends with ``length`` there."""
        if max_tokens > self.max_model_len:
            return self._error(
                400, f"max_tokens={max_tokens} cannot be greater than max_model_len="
                f"{self.max_model_len}. Please request fewer output tokens. "
                f"(parameter=max_tokens, value={max_tokens})", param="max_tokens")
        if prompt_tokens > self.max_model_len:
            return self._error(
                400, f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, your prompt contains {prompt_tokens} input tokens, which exceeds "
                "this limit even without any output tokens. Please reduce the length of the "
                f"input prompt. (parameter=input_tokens, value={prompt_tokens})",
                param="input_tokens")
        return None

    def _room(self, prompt: str, p: dict[str, Any]) -> dict[str, Any]:
        """``p`` with ``max_tokens`` clamped to what the context leaves after ``prompt``."""
        room = self.max_model_len - len(tokenize(prompt))
        return {**p, "max_tokens": min(p["max_tokens"], room)}

    async def _cost(self, prompt_tokens: int, gen_tokens: list[int]) -> None:
        delay = self.latency + self.per_prompt_token * prompt_tokens + self.per_token * max(
            gen_tokens, default=0)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _completions(self, body: dict[str, Any]) -> Any:
        allowed = OPENAI_COMPLETION_FIELDS | (frozenset() if self.strict_openai
                                              else VLLM_SAMPLING_EXTRAS)
        if err := self._check_fields(body, allowed):
            return err
        if body.get("prompt") is None:
            return self._error(400, "At least one of `prompt` or `prompt_embeds` must be set.")
        if err := self._check_model(body):
            return err
        p, err = self._sampling(body)
        if err:
            return err
        if body.get("stream"):
            return await self._stream(body, p)
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        if not all(isinstance(x, str) for x in prompts):
            return self._error(400, "fake server: token-id prompts are not emulated")
        k = p["logprobs"]
        if k is not None and not self.strict_openai and k > self.max_logprobs:
            return self._error(400, f"Requested sample logprobs of {k}, which is greater than "
                               f"max allowed: {self.max_logprobs}")
        echo = bool(body.get("echo"))
        choices, gen_tokens, prompt_tokens = [], [], 0
        for j, prompt in enumerate(prompts):
            n_prompt = len(tokenize(prompt))
            if err := self._context_error(n_prompt, p["max_tokens"]):
                return err
            prompt_tokens += n_prompt
            for i in range(min(p["n"], self.max_n or p["n"])):
                text, finish, stop_reason, n_gen = self._generate(
                    prompt, self._room(prompt, p), body, i)
                gen_tokens.append(n_gen)
                choice: dict[str, Any] = {"index": j * p["n"] + i,
                                          "text": prompt + text if echo else text,
                                          "logprobs": None, "finish_reason": finish}
                if not self.strict_openai:
                    choice.update({"stop_reason": stop_reason, "token_ids": None,
                                   "prompt_token_ids": None})
                if k is not None:
                    choice["logprobs"] = self._logprobs(prompt, text, n_gen, echo, body)
                if not self.strict_openai:
                    choice["prompt_logprobs"] = (self._prompt_logprobs(prompt)
                                                 if (echo and k is not None)
                                                 or body.get("prompt_logprobs") is not None
                                                 else None)
                choices.append(choice)
        await self._cost(prompt_tokens, gen_tokens)
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens,
                                 "total_tokens": prompt_tokens + sum(gen_tokens),
                                 "completion_tokens": sum(gen_tokens)}
        out: dict[str, Any] = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                               "created": int(time.time()), "model": self.model,
                               "choices": choices, "usage": usage}
        if self.strict_openai:
            out["system_fingerprint"] = "fp_fake"
        else:
            usage["prompt_tokens_details"] = None
            out.update({"service_tier": None, "system_fingerprint": None,
                        "kv_transfer_params": None})
        return out

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

        def event(text: str, finish: str | None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None,
                                      "finish_reason": finish}
            if not self.strict_openai:
                choice["stop_reason"] = stop_reason if finish is not None else None
            return b"data: " + json.dumps({**head, "choices": [choice], "usage": None}
                                          ).encode() + b"\n\n"

        pieces = tokenize(text)
        if self.strict_openai or not pieces:
            out = [event(piece, None) for piece in pieces] + [event("", finish)]
        else:  # vLLM: the last token's event carries the finish
            out = [event(piece, None) for piece in pieces[:-1]] + [event(pieces[-1], finish)]
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
                     "total_tokens": n_prompt + n_gen}
            out.append(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode()
                       + b"\n\n")
        out.append(b"data: [DONE]\n\n")

        async def chunks():
            for chunk in out:
                yield chunk
                await asyncio.sleep(0)  # one event at a time, as tokens are decoded

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def _extras_tokenize(self, body: dict[str, Any]) -> Any:
        return {"tokens": self.vocab.encode(str(body.get("input", "")))}

    async def _extras_count(self, body: dict[str, Any]) -> Any:
        return {"count": len(self.vocab.encode(str(body.get("input", ""))))}

    def _scored(self, text: str) -> list[tuple[str, float | None]]:
        """(piece, log p(piece | text before it)) for each token of ``text``; None first."""
        out: list[tuple[str, float | None]] = []
        at = 0
        for piece in tokenize(text):
            out.append((piece, self.token_logprob(text[:at], piece) if out else None))
            at += len(piece)
        return out

    def _logprobs(self, prompt: str, text: str, n_gen: int, echo: bool,
                  body: dict[str, Any]) -> dict[str, Any]:
        """The legacy completions ``logprobs`` object, as vLLM's _create_completion_logprobs."""
        entries = self._scored(prompt) if echo else []
        at = len(prompt)
        for piece in tokenize(text):
            entries.append((piece, self.token_logprob(prompt[:at], piece)))
            at += len(piece)
        if n_gen > len(tokenize(text)):  # the EOS token: counted, its text not shown
            entries.append(("", self.token_logprob(prompt + text, "<|im_end|>")))
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        tokens, offsets, lps, tops = [], [], [], []
        offset = 0
        for piece, lp in entries:
            token = f"token_id:{self.vocab.encode(piece)[0] if piece else SPECIAL['<|im_end|>']}" \
                if as_ids else piece
            tokens.append(token)
            offsets.append(offset)
            offset += len(token)
            lps.append(None if lp is None else max(lp, -9999.0))
            tops.append(None if lp is None else {token: max(lp, -9999.0)})
        return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens,
                "top_logprobs": tops}

    def _prompt_logprobs(self, prompt: str) -> list[Any]:
        out: list[Any] = []
        for piece, lp in self._scored(prompt):
            out.append(None if lp is None else {str(self.vocab.encode(piece)[0]): {
                "logprob": lp, "rank": 1, "decoded_token": piece}})
        return out

    async def _chat(self, body: dict[str, Any]) -> Any:
        allowed = OPENAI_CHAT_FIELDS | (frozenset() if self.strict_openai
                                        else VLLM_SAMPLING_EXTRAS)
        if err := self._check_fields(body, allowed):
            return err
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "messages: Field required")
        if err := self._check_model(body):
            return err
        add_gen = body.get("add_generation_prompt", True)
        cont = body.get("continue_final_message", False)
        if add_gen and cont and not self.strict_openai:
            return self._error(400, "Cannot set both `continue_final_message` and "
                               "`add_generation_prompt` to True.")
        if self.strict_openai:
            add_gen, cont = True, False
        if body.get("top_logprobs") and not body.get("logprobs"):
            return self._error(400, "when using `top_logprobs`, `logprobs` must be set to true.")
        top = int(body.get("top_logprobs") or 0)
        if top > self.max_logprobs:
            return self._error(400, f"Requested sample logprobs of {top}, which is greater "
                               f"than max allowed: {self.max_logprobs}")
        if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
            body = {**body, "max_tokens": body["max_completion_tokens"]}
        p, err = self._sampling(body)
        if err:
            return err
        prompt = chatml(messages, add_generation_prompt=add_gen, continue_final_message=cont)
        n_prompt = len(tokenize(prompt))
        if err := self._context_error(n_prompt, p["max_tokens"]):
            return err
        choices, gen_tokens = [], []
        for i in range(p["n"]):
            logprobs = None
            if body.get("logprobs") and self.judge is not None:
                py = min(max(self.judge(prompt), 1e-6), 1 - 1e-6)
                word = "yes" if py >= 0.5 else "no"
                text, finish, stop_reason, n_gen = word, "length", None, 1
                alts = [("yes", py), ("no", 1 - py)] + [(f"tok{k}", 1e-9) for k in range(30)]
                alts = sorted(alts, key=lambda a: -a[1])[: max(top, 1)]
                logprobs = {"content": [{
                    "token": word, "logprob": float(np.log(py if word == "yes" else 1 - py)),
                    "bytes": list(word.encode()),
                    "top_logprobs": [{"token": t, "logprob": float(np.log(q)),
                                      "bytes": list(t.encode())} for t, q in alts]}]}
            else:
                text, finish, stop_reason, n_gen = self._generate(
                    prompt, self._room(prompt, p), body, i)
            gen_tokens.append(n_gen)
            choice: dict[str, Any] = {"index": i, "message": {"role": "assistant",
                                                              "content": text},
                                      "logprobs": logprobs, "finish_reason": finish}
            if not self.strict_openai:
                choice["message"].update({"reasoning_content": None, "tool_calls": []})
                choice["stop_reason"] = stop_reason
            choices.append(choice)
        await self._cost(n_prompt, gen_tokens)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": n_prompt, "total_tokens": n_prompt + sum(gen_tokens),
                          "completion_tokens": sum(gen_tokens)}}

    async def _tokenize(self, body: dict[str, Any]) -> Any:
        if err := self._check_model(body):
            return err
        if "messages" in body:
            add_gen = body.get("add_generation_prompt", True)
            cont = body.get("continue_final_message", False)
            if add_gen and cont:
                return self._error(400, "Cannot set both `continue_final_message` and "
                                   "`add_generation_prompt` to True.")
            text = chatml(body["messages"], add_generation_prompt=add_gen,
                          continue_final_message=cont)
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        else:
            return self._error(400, "prompt: Field required")
        tokens = self.vocab.encode(text)
        return {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens,
                "token_strs": None}

    async def _detokenize(self, body: dict[str, Any]) -> Any:
        if err := self._check_model(body):
            return err
        try:
            return {"prompt": self.vocab.decode(list(body["tokens"]))}
        except (KeyError, TypeError) as e:
            return self._error(400, f"tokens: invalid token ids ({e})")

    # -- pooling ------------------------------------------------------------------------------

    def _rows(self, text: str) -> Any:
        probs = []
        start = 0
        while (at := text.find(self.step_tag, start)) >= 0:
            probs.append(self.prm(text[:at]))
            start = at + len(self.step_tag)
        rows = [[1 - q, q] if self.positive_index == 1 else [q, 1 - q] for q in probs]
        v = self.pooling_variant
        if v == "flat":
            return [x for r in rows for x in r]
        if v == "base64":
            return base64.b64encode(np.asarray(rows, dtype="<f4").tobytes()).decode()
        if v == "logits":
            return [[0.0, float(np.log(r[1] / r[0]))] for r in rows]
        if v == "all":
            return [[0.5, 0.5] for _ in tokenize(text)]
        if v == "embed":  # a *ForCausalLM under --runner pooling without --convert classify
            rng = np.random.default_rng(zlib.crc32(text.encode()))
            vec = rng.normal(size=64)
            return [float(x) for x in vec / np.linalg.norm(vec)]
        return rows

    async def _pooling(self, body: dict[str, Any]) -> Any:
        if err := self._check_model(body):
            return err
        if "normalize" in body:
            return self._error(400, "Parameter `normalize` was removed; use `use_activation` "
                               "instead.")
        task = body.get("task")
        if task is not None and task != "token_classify":
            return self._error(400, f"Unsupported task: {task!r} Supported tasks: "
                               "('token_classify',)")
        if "messages" in body:
            add_gen = body.get("add_generation_prompt", False)
            cont = body.get("continue_final_message", False)
            if add_gen and cont:
                return self._error(400, "Cannot set both `continue_final_message` and "
                                   "`add_generation_prompt` to True.")
            texts = [chatml(body["messages"], add_generation_prompt=add_gen,
                            continue_final_message=cont)]
        elif "input" in body:
            inp = body["input"]
            texts = [inp] if isinstance(inp, str) else list(inp)
            if not texts or not all(isinstance(t, str) for t in texts):
                return self._error(400, "input: Input should be a valid string or list of "
                                   "strings")
        else:
            return self._error(400, "input: Field required")
        n_tokens = sum(len(tokenize(t)) for t in texts)
        await self._cost(n_tokens, [])
        if err := self._context_error(max(len(tokenize(t)) for t in texts), 0):
            return err
        return {"id": f"pooling-{uuid.uuid4().hex}", "object": "list",
                "created": int(time.time()), "model": self.model,
                "data": [{"index": i, "object": "pooling", "data": self._rows(t)}
                         for i, t in enumerate(texts)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens,
                          "completion_tokens": 0, "prompt_tokens_details": None,
                          "completion_tokens_details": None}}


class _FaultLayer:
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

        replayed = False

        async def replay() -> dict[str, Any]:
            # the body once, then the connection's own messages (a streaming response
            # listens for the client's http.disconnect)
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

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


def main() -> None:
    """Serve the fake in its own process (benchmarks): prints the port, runs until killed."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Qwen/Qwen2.5-Math-1.5B-Instruct")
    ap.add_argument("--runner", default="generate", choices=["generate", "pooling"])
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--per-token", type=float, default=0.0)
    ap.add_argument("--per-prompt-token", type=float, default=0.0)
    args = ap.parse_args()
    fake = FakeVLLM(model=args.model, runner=args.runner, latency=args.latency,
                    per_token=args.per_token, per_prompt_token=args.per_prompt_token).start()
    print(fake.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
