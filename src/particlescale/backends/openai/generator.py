"""A generator over any OpenAI-compatible server: vLLM, SGLang, llama.cpp's llama-server,
``python -m llama_cpp.server``, or the OpenAI API.

One step of a population is as few requests as the wire allows::

    prefix = chat_template(system, question)          # once per problem (see templates.py)
    for each parent i, concurrently:                  # one request per parent, not per child
        POST /v1/completions {prompt: prefix + parent's steps, n: children[i],
                              stop: [delimiter], seed: from the session's rng, ...}
        child step = choice text (+ the delimiter when it stopped there)
        finish     = step | eos | length               (finish_reason + stop_reason)

All requests to one server share one concurrency limit (``max_concurrency``), however many
problems are solved at once; with several ``base_urls`` (replicas) the requests of one problem
stay on one replica (a stable hash of the problem) so the server's prefix cache sees the
shared prompt again. A request that fails after its retries raises
:class:`particlescale.errors.BackendError`: the problem fails, never silently, and problems
running beside it go on.

Where a step ends and how the next one resumes (``boundary``: ``stop`` as above, ``stream``,
``regenerate``, or ``auto``, which probes the server's tokeniser) is ``boundary.py``'s
business; each session reports its choice and whether it is exact in
``info["step_boundary"]``.

There is no KV handle to move between steps (the server's prefix cache plays that part):
steps carry ``handle=None``; ``release``/``aclose`` only keep counts.

Continuation scoring (particle Gibbs with ancestor sampling) needs a vLLM server in
completions mode: one ``/v1/completions`` request with ``echo`` and ``logprobs`` scores every
prefix + continuation text, and vLLM's ``/tokenize`` tells where the continuation's tokens
start (the first token where prefix + continuation and prefix alone tokenise differently).
A continuation that ends the solution is followed by the chat template's end-of-turn token
(found once by tokenising a two-message chat with and without ``continue_final_message``),
so the scored probability includes stopping there; the model's other end tokens, if any, are
not added. vLLM computes these log-probabilities from the raw logits, so they are the
proposal's only at ``temperature=1`` and ``top_p=1``; other settings, other servers
(SGLang, llama-server, ``python -m llama_cpp.server``, whose echo log-probabilities are one
token off for models without a BOS token, the OpenAI API) and chat mode are refused with a
:class:`ConfigError` before any generation.

``mode="chat"`` sends ``/v1/chat/completions`` instead, with the steps so far as a final
assistant message to continue (vLLM's ``continue_final_message``; SGLang likewise): the server
renders the template on every request. Use it for servers that offer no completions route.
The OpenAI API has no way to continue an assistant message, so chat mode there answers afresh
after the steps so far rather than continuing them.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from particlescale.backends.http import HttpEndpoint, gather_or_cancel, split_base_url
from particlescale.backends.openai import boundary as boundaries
from particlescale.backends.openai import streamed, templates, wire
from particlescale.errors import BackendError, ConfigError
from particlescale.prompts import DEFAULT_SYSTEM_PROMPT
from particlescale.protocols import SamplingParams
from particlescale.types import Particle, Problem, Step, Usage

MODES = ("completions", "chat")
PREFIX_CACHE_SIZE = 4096


@dataclass
class _Replica:
    endpoint: HttpEndpoint
    api: str  # path prefix of the OpenAI routes on this server, normally "/v1"
    kind: wire.ServerKind | None = None
    lock: asyncio.Lock | None = None
    lock_loop: asyncio.AbstractEventLoop | None = None
    serial: asyncio.Lock | None = None  # streams to a one-request-at-a-time server
    serial_loop: asyncio.AbstractEventLoop | None = None

    def serial_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self.serial is None or self.serial_loop is not loop:  # a lock serves one loop
            self.serial, self.serial_loop = asyncio.Lock(), loop
        return self.serial


class OpenAIGenerator:
    """Generator for OpenAI-compatible servers.

    ``base_urls``: one URL or several replicas (``http://host:8000/v1``; ``/v1`` optional).
    ``model``: the served model name (``None``: the first model the server lists).
    ``server_kind``: ``vllm``, ``sglang``, ``llamacpp``, ``llama-cpp-python``, ``openai`` or
    ``auto`` (probe ``/v1/models``; decides which extra parameters the server is sent, see
    ``wire.py``).
    ``mode``: ``completions`` (prompt rendered once, steps appended as text) or ``chat``.
    ``template``: ``auto``, ``server``, ``hf``, ``qwen``, ``llama3`` (see ``templates.py``).
    ``system_prompt``: default for problems without their own (the paper's math prompt).
    ``max_n_per_request``: split a parent's children over several requests of at most this
    many (llama-server caps ``n_cmpl`` at its ``--parallel``).
    ``timeout`` (seconds per request), ``retries`` and ``retry_timeouts``: the retry policy of
    :class:`~particlescale.backends.http.HttpEndpoint` (a generation request that timed out is
    not sent again unless ``retry_timeouts``).
    ``boundary``: how a step's end is found and the next step resumed: ``auto`` (probe the
    server's tokeniser), ``stop``, ``stream`` or ``regenerate`` (``boundary.py``).
    """

    def __init__(
        self,
        base_urls: str | Sequence[str],
        model: str | None = None,
        *,
        api_key: str | None = None,
        server_kind: str = "auto",
        mode: str = "completions",
        template: str = "auto",
        system_prompt: str | None = None,
        max_concurrency: int = 64,
        timeout: float = 120.0,
        retries: int = 4,
        max_n_per_request: int | None = None,
        retry_timeouts: bool = False,
        boundary: str = "auto",
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ConfigError("base_urls: give at least one server URL, e.g. "
                              "http://localhost:8000/v1")
        if server_kind not in wire.SERVER_KINDS:
            raise ConfigError(f"server_kind: unknown {server_kind!r}; choose one of "
                              f"{', '.join(wire.SERVER_KINDS)}")
        if mode not in MODES:
            raise ConfigError(f"mode: unknown {mode!r}; choose 'completions' or 'chat'")
        if template not in ("auto", "server", "hf", *templates.BUILTIN):
            raise ConfigError(f"template: unknown {template!r}; choose auto, server, hf, "
                              f"{', '.join(templates.BUILTIN)}")
        if max_n_per_request is not None and max_n_per_request < 1:
            raise ConfigError("max_n_per_request: must be >= 1 or None")
        if boundary not in boundaries.BOUNDARIES:
            raise ConfigError(f"boundary: unknown {boundary!r}; choose one of "
                              f"{', '.join(boundaries.BOUNDARIES)}")
        if boundary in ("stream", "regenerate") and mode != "completions":
            raise ConfigError(f"boundary: {boundary!r} streams /v1/completions; use it with "
                              "mode='completions', or boundary='stop' or 'auto' in chat mode")
        self.boundary = boundary
        self._boundaries: dict[tuple[int, str], dict[str, Any]] = {}
        self.model = model
        self.mode = mode
        self.template = template
        self.system_prompt = system_prompt
        self.server_kind = server_kind
        self.max_n_per_request = max_n_per_request
        self.replicas: list[_Replica] = []
        for url in urls:
            root, api = split_base_url(url)
            endpoint = HttpEndpoint(root, api_key=api_key, timeout=timeout, retries=retries,
                                    max_concurrency=max_concurrency,
                                    retry_timeouts=retry_timeouts)
            kind = None if server_kind == "auto" else server_kind
            self.replicas.append(_Replica(endpoint, api[len(root):], kind))  # type: ignore[arg-type]
        self._prefixes: dict[tuple[int, str, str], str] = {}
        self._end_of_turn: dict[int, tuple[int, str]] = {}
        self._local_template: templates.Template | None = None
        self.sessions_opened = 0
        self.released = 0

    @property
    def name(self) -> str:
        return f"openai:{self.model or '?'}"

    def replica_index(self, problem: Problem) -> int:
        """The replica serving ``problem``: a stable hash, so one problem stays on one server."""
        key = f"{problem.id}\x00{problem.question}".encode()
        return zlib.crc32(key) % len(self.replicas)

    def session(self, problem: Problem, params: SamplingParams, rng: np.random.Generator,
                usage: Usage) -> OpenAISession:
        self.sessions_opened += 1
        return OpenAISession(self, problem, params, rng, usage,
                             self.replicas[self.replica_index(problem)])

    async def aclose(self) -> None:
        for r in self.replicas:
            await r.endpoint.aclose()

    # -- server discovery -------------------------------------------------------------------

    async def _prepare(self, replica: _Replica) -> wire.ServerKind:
        """Probe ``/v1/models`` once per replica for the kind and, if unset, the model."""
        if replica.kind is not None and self.model is not None:
            return replica.kind
        loop = asyncio.get_running_loop()
        if replica.lock is None or replica.lock_loop is not loop:  # a lock serves one loop
            replica.lock, replica.lock_loop = asyncio.Lock(), loop
        async with replica.lock:
            if replica.kind is None or self.model is None:
                listing = await replica.endpoint.get(replica.api + "/models")
                try:
                    first = listing["data"][0]
                except (KeyError, IndexError, TypeError) as e:
                    raise BackendError(f"{replica.endpoint.base_url}{replica.api}/models lists "
                                       f"no model: {str(listing)[:200]}",
                                       kind="protocol") from e
                if not isinstance(first, dict):
                    raise wire.malformed("/models", listing, "data[0] is not an object")
                if self.model is None:
                    self.model = wire.get_text(first, "id", "/models")
                if replica.kind is None:
                    replica.kind = wire.kind_from_owner(str(first.get("owned_by", "")))
        assert replica.kind is not None
        return replica.kind

    async def prefix(self, replica: _Replica, system: str, question: str) -> str:
        """The rendered chat prefix (generation prompt included), cached per problem."""
        key = (self.replicas.index(replica), system, question)
        if key in self._prefixes:
            return self._prefixes[key]
        kind = await self._prepare(replica)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        text = await self._render(replica, kind, messages)
        if len(self._prefixes) >= PREFIX_CACHE_SIZE:  # bounded: evict the oldest problem
            self._prefixes.pop(next(iter(self._prefixes)))
        self._prefixes[key] = text
        return text

    async def boundary_for(self, replica: _Replica, kind: wire.ServerKind,
                           delimiter: str) -> dict[str, Any]:
        """``{"mode", "exact", "why"}`` for this replica's sessions: the ``boundary`` option,
        or what ``auto`` picks, judged on the server's tokeniser (probed once per replica and
        delimiter; see ``boundary.py``)."""
        if self.boundary in ("stream", "regenerate") and kind in boundaries.STOP_ONLY:
            raise ConfigError(f"boundary: {self.boundary!r} streams /v1/completions, but "
                              f"{boundaries.STOP_ONLY[kind]}: use boundary='stop' or 'auto'")
        key = (self.replicas.index(replica), delimiter)
        if key not in self._boundaries:
            tok = None
            if self.mode == "completions":
                tok = await boundaries.probe(replica.endpoint, kind, self.model, delimiter)
            self._boundaries[key] = boundaries.choose(self.boundary, kind,
                                                      self.mode == "chat", tok)
        return self._boundaries[key]

    async def tokenize(self, replica: _Replica, text: str) -> list[int]:
        """Token ids of ``text`` on a vLLM server (no special tokens added)."""
        out = await replica.endpoint.post("/tokenize", {
            "model": self.model, "prompt": text, "add_special_tokens": False})
        return wire.get_token_ids(out, "tokens", "/tokenize")

    async def end_of_turn(self, replica: _Replica) -> tuple[int, str]:
        """The chat template's end-of-turn token (id, text) on a vLLM server: the token that
        follows an assistant message when the turn is closed."""
        key = self.replicas.index(replica)
        if key not in self._end_of_turn:
            messages = [{"role": "user", "content": "1 + 1?"},
                        {"role": "assistant", "content": "2"}]
            ids = []
            for cont in (False, True):
                out = await replica.endpoint.post("/tokenize", {
                    "model": self.model, "messages": messages, "add_generation_prompt": False,
                    "continue_final_message": cont, "add_special_tokens": False})
                ids.append(wire.get_token_ids(out, "tokens", "/tokenize"))
            closed, open_ = ids
            if len(closed) <= len(open_) or closed[: len(open_)] != open_:
                raise BackendError("cannot find the chat template's end-of-turn token (the "
                                   "closed assistant turn does not extend the open one)",
                                   kind="protocol")
            detok = await replica.endpoint.post("/detokenize", {
                "model": self.model, "tokens": [closed[len(open_)]]})
            self._end_of_turn[key] = (closed[len(open_)],
                                      wire.get_text(detok, "prompt", "/detokenize"))
        return self._end_of_turn[key]

    async def _render(self, replica: _Replica, kind: wire.ServerKind,
                      messages: list[dict[str, str]]) -> str:
        use_server = self.template == "server" or (
            self.template == "auto" and kind in ("vllm", "llamacpp"))
        if use_server:
            if kind == "vllm":
                tok = await replica.endpoint.post("/tokenize", {
                    "model": self.model, "messages": messages, "add_generation_prompt": True,
                    "add_special_tokens": False})
                detok = await replica.endpoint.post("/detokenize", {
                    "model": self.model, "tokens": wire.get_token_ids(tok, "tokens",
                                                                      "/tokenize")})
                return wire.get_text(detok, "prompt", "/detokenize")
            if kind == "llamacpp":
                out = await replica.endpoint.post("/apply-template", {"messages": messages})
                return wire.get_text(out, "prompt", "/apply-template")
            raise ConfigError(f"template: 'server' needs a vLLM or llama.cpp server, this one "
                              f"is {kind!r}; pick template='auto', 'hf', 'qwen' or 'llama3'")
        if self._local_template is None:
            assert self.model is not None
            self._local_template = templates.local_template(self.model, self.template)
        return self._local_template(messages)


def _no_route_hint(e: BackendError, route: str) -> BackendError:
    """A 404 that is not about the model name means the server has no such route: say so (a
    vLLM started with ``--runner pooling`` serves ``/pooling``, not completions)."""
    if e.status != 404 or "model" in str(e).lower().replace("/models", ""):
        return e
    return BackendError(f"{e}; the server has no {route} route: is it a generation server? "
                        "(a vLLM started with --runner pooling only serves /pooling; point "
                        "--generator at the one serving the language model)",
                        kind=e.kind, status=e.status)


@dataclass
class OpenAISession:
    """The generation state of one problem: its prefix, replica, seeds and usage."""

    gen: OpenAIGenerator
    problem: Problem
    params: SamplingParams
    rng: np.random.Generator
    usage: Usage
    replica: _Replica
    released: int = 0
    closed: bool = False
    _prefix: str | None = field(default=None, repr=False)
    _prefix_tokens: int | None = field(default=None, repr=False)
    step_boundary: dict[str, Any] | None = None  # boundary.py; the runner puts it in info

    @property
    def system(self) -> str:
        return self.problem.system_prompt or self.gen.system_prompt or DEFAULT_SYSTEM_PROMPT

    async def extend(self, parents: Sequence[Particle],
                     children: Sequence[int]) -> list[list[Step]]:
        if self.closed:
            raise RuntimeError("extend() on a closed session")
        if len(parents) != len(children):
            raise ValueError("parents and children must have the same length")
        kind = await self.gen._prepare(self.replica)
        if self.gen.mode == "completions" and self._prefix is None:
            self._prefix = await self.gen.prefix(self.replica, self.system, self.problem.question)
        chosen = await self.gen.boundary_for(self.replica, kind, self.params.delimiter)
        if self.step_boundary is None:
            self.step_boundary = dict(chosen)
        boundary = chosen["mode"]
        if boundary != "stop" and self._prefix_tokens is None:
            self._prefix_tokens = await streamed.count_prefix(self, kind)
        # Seeds are drawn before any request starts, so they do not depend on scheduling.
        seeds = [int(s) for s in self.rng.integers(0, 2**31 - 1, size=len(parents))]
        if boundary == "stop":
            jobs = [self._children(kind, p, int(k), seed)
                    for p, k, seed in zip(parents, children, seeds, strict=True)]
        else:
            jobs = [streamed.children(self, kind, boundary, p, int(k), seed)
                    for p, k, seed in zip(parents, children, seeds, strict=True)]
        return await gather_or_cancel(jobs)

    async def _children(self, kind: wire.ServerKind, parent: Particle, k: int,
                        seed: int) -> list[Step]:
        if k <= 0:
            return []
        greedy = self.params.temperature == 0
        want = 1 if greedy else k
        cap = self.gen.max_n_per_request or want
        samples: list[wire.Sample] = []
        while len(samples) < want:
            n = min(cap, want - len(samples))
            got = await self._request(kind, parent, n, seed)
            if not got:
                raise BackendError("the server answered with no completion choices",
                                   kind="protocol")
            samples.extend(got[:n])
            seed += 1  # servers that ignore n get the missing samples with fresh seeds
        # A step's text stops before the delimiter (as the embedded engine's does); the prompt
        # puts the delimiter back when the step is re-read (``_continuation``).
        steps = [Step(text=s.text, tokens=s.tokens or 0, finish=s.finish) for s in samples]
        return [steps[0]] * k if greedy else steps

    async def _request(self, kind: wire.ServerKind, parent: Particle, n: int,
                       seed: int) -> list[wire.Sample]:
        gen, ep, model = self.gen, self.replica.endpoint, self.gen.model
        assert model is not None
        if gen.mode == "chat":
            messages = [{"role": "system", "content": self.system},
                        {"role": "user", "content": self.problem.question}]
            if parent.steps:
                messages.append({"role": "assistant", "content": self._continuation(parent)})
            body = wire.chat_body(kind, model, messages, n, self.params, seed)
            parsed = wire.parse_openai(kind, await ep.post(self.replica.api + "/chat/completions",
                                                           body), chat=True)
        elif kind == "llamacpp":
            body = wire.llamacpp_body(self._prompt(parent), n, self.params, seed)
            parsed = wire.parse_llamacpp(await ep.post("/completion", body))
        else:
            body = wire.completion_body(kind, model, self._prompt(parent), n, self.params, seed)
            try:
                answer = await ep.post(self.replica.api + "/completions", body)
            except BackendError as e:
                raise _no_route_hint(e, "/completions") from e
            parsed = wire.parse_openai(kind, answer, chat=False)
        self.usage.lm_calls += 1
        self.usage.prompt_tokens += parsed.prompt_tokens
        self.usage.generated_tokens += parsed.completion_tokens
        return parsed.samples

    def _prompt(self, parent: Particle) -> str:
        assert self._prefix is not None
        return self._prefix + self._continuation(parent)

    def _continuation(self, parent: Particle) -> str:
        """The parent's text exactly as the model wrote it: each step and its delimiter."""
        delim = self.params.delimiter
        return "".join(s.text + (delim if s.finish == "step" else "") for s in parent.steps)

    def _check_scoring(self, kind: wire.ServerKind) -> None:
        name = self.gen.name
        if kind != "vllm":
            raise ConfigError(
                f"ancestor_sampling: generator {name!r} cannot score continuations: that needs "
                f"vLLM's prompt log-probabilities (/v1/completions with echo and logprobs, and "
                f"/tokenize), and this server is {kind!r} (python -m llama_cpp.server and the "
                "OpenAI API report 'openai'); use ancestor_sampling=false, a vLLM server, or "
                "the llamacpp backend")
        if self.gen.mode != "completions":
            raise ConfigError(f"ancestor_sampling: generator {name!r} scores continuations "
                              "with /v1/completions; create it with mode='completions'")
        p = self.params
        if p.temperature != 1.0 or p.top_p != 1.0:
            raise ConfigError(
                f"ancestor_sampling: generator {name!r} scores continuations with vLLM's "
                f"prompt log-probabilities, which are the model's own distribution "
                f"(temperature 1, top_p 1), but this run samples at temperature="
                f"{p.temperature:g}, top_p={p.top_p:g}; set temperature=1 and top_p=1, or use "
                "the llamacpp backend (it scores at any temperature)")

    async def continuation_logprob(self, prefixes: Sequence[Particle],
                                   continuation: Sequence[Step]) -> list[float]:
        """log p(continuation | prompt + prefix) for each prefix, from vLLM's echoed prompt
        log-probabilities (see the module docstring), in the text layout of ``extend``."""
        kind = await self.gen._prepare(self.replica)
        self._check_scoring(kind)
        if not prefixes:
            return []
        if self._prefix is None:
            self._prefix = await self.gen.prefix(self.replica, self.system, self.problem.question)
        suffix = self._continuation(Particle(id=-1, steps=tuple(continuation)))
        end = None
        if continuation and continuation[-1].finish == "eos":
            end, end_text = await self.gen.end_of_turn(self.replica)
            suffix += end_text
        prompts = [self._prompt(p) for p in prefixes]
        fulls = list(dict.fromkeys(p + suffix for p in prompts))
        texts = list(dict.fromkeys([*prompts, *fulls]))
        ids = dict(zip(texts, await gather_or_cancel(
            self.gen.tokenize(self.replica, t) for t in texts), strict=True))
        model = self.gen.model
        assert model is not None
        answer = await self.replica.endpoint.post(self.replica.api + "/completions",
                                                  wire.echo_body(model, fulls))
        rows, prompt_tokens = wire.parse_echo(answer, len(fulls))
        self.usage.lm_calls += 1
        self.usage.prompt_tokens += prompt_tokens
        scored = dict(zip(fulls, rows, strict=True))
        out = []
        for prompt in prompts:
            full = prompt + suffix
            own, both, lps = ids[prompt], ids[full], scored[full]
            start = next((i for i, (a, b) in enumerate(zip(own, both, strict=False)) if a != b),
                         min(len(own), len(both)))
            if end is not None and (not both or both[-1] != end):
                raise BackendError("the end-of-turn token was not read back as one token at "
                                   "the end of the scored prompt", kind="protocol")
            values = lps[start:len(both)]
            if start == 0 or len(lps) < len(both) or any(v is None for v in values):
                raise BackendError(f"echo answer has no log-probability for some of the "
                                   f"{len(both) - start} continuation tokens", kind="protocol")
            out.append(float(sum(values)))  # type: ignore[arg-type]
        return out

    def release(self, particles: Iterable[Particle]) -> None:
        # No server-side state to free: the server's prefix cache manages itself.
        n = sum(1 for _ in particles)
        self.released += n
        self.gen.released += n

    async def aclose(self) -> None:
        self.closed = True
