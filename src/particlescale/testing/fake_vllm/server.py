"""The fake vLLM server: lifecycle, routes, parameter checks, completions and chat (see
the package docstring for what it reproduces)."""

from __future__ import annotations

import asyncio
import json
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
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from particlescale.testing.fake_vllm.scoring import ScoringRoutes
from particlescale.testing.fake_vllm.wire import (
    INT64,
    OPENAI_CHAT_FIELDS,
    OPENAI_COMPLETION_FIELDS,
    VLLM_SAMPLING_EXTRAS,
    Fault,
    FaultLayer,
    Record,
    Vocab,
    chatml,
    default_lm,
    default_prm,
    default_token_logprob,
    tokenize,
)


@dataclass
class FakeVLLM(ScoringRoutes):
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
            if self.runner == "pooling":
                handlers = {"/pooling": self._pooling, "/tokenize": self._tokenize,
                            "/detokenize": self._detokenize}
        for path, fn in handlers.items():
            routes.append(Route(path, self._wrap(path, fn), methods=["POST"]))

        async def not_found(request: Request, exc: Exception) -> Response:
            return JSONResponse({"detail": "Not Found"}, status_code=404)

        return FaultLayer(self, Starlette(routes=routes, exception_handlers={404: not_found}))

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
        if body.get("stream"):
            return self._error(400, "fake server: stream=true is not emulated")
        p, err = self._sampling(body)
        if err:
            return err
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
