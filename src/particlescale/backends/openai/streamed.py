"""Steps read from a stream: the client, not the server, finds where a step ends.

Used by the ``stream`` and ``regenerate`` boundaries (``boundary.py`` says why and when each
is exact). One stream per child, ``n=1``, no stop strings: ``finish_reason="stop"`` can only
be the end of the sequence, and the delimiter is found in the text with the embedded
engine's rules (:mod:`particlescale.backends.steptext`: a delimiter with only whitespace
before it does not end a step). The stream is closed as soon as the step has ended, which
tells the server to stop generating.

``regenerate``: the prompt stops *before* the parent's last delimiter, where the tokens are
those the model wrote, and the model writes the delimiter again; a stream that does not start
with the delimiter is dropped and asked again with a fresh seed. Accepted streams are exact
draws of the continuation given the text with its delimiter (rejection sampling; the expected
number of streams is 1 / P(delimiter | text), and a dropped one costs a token or two). After
:data:`MAX_ATTEMPTS` streams (one for greedy decoding) the step is read after the delimiter
instead, and the session says so (``info["step_boundary"]["gave_up"]``).

llama_cpp.server's streams report no usage: ``generated_tokens`` counts streamed pieces (one
per token there), ``prompt_tokens`` the prefix (counted once with ``/extras/tokenize/count``)
plus the parent's step tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from particlescale.backends.http import HttpEndpoint, gather_or_cancel
from particlescale.backends.openai import wire
from particlescale.backends.steptext import StepText
from particlescale.errors import BackendError
from particlescale.protocols import SamplingParams
from particlescale.types import Particle, Step, Usage

if TYPE_CHECKING:
    from particlescale.backends.openai.generator import OpenAISession

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 64  # regenerate: streams per child before giving up on the delimiter


@dataclass
class Streamed:
    """One streamed attempt: its step (None: dropped, it did not start with the delimiter)
    and what it cost."""

    step: Step | None
    pieces: int
    prompt_tokens: int
    completion_tokens: int


async def read_step(events: AsyncIterator[Any], delimiter: str, cap: int, *,
                    head: str | None) -> Streamed:
    """Read one step from a stream of completion events.

    ``head``: the text the completion must start with (``regenerate``: the delimiter), which
    belongs to the previous step; the step's own text starts after it. Returns as soon as the
    step has ended (delimiter found, ``cap`` pieces, or the server's ``finish_reason``); the
    caller closes the stream. A stream that ends without a ``finish_reason`` was cut off
    (llama_cpp.server interrupts a stream when another request waits): :class:`Interrupted`.
    A step's last event may carry both text and the finish (vLLM's do): a delimiter in that
    text still ends the step as a ``step``.
    """
    text = StepText(delimiter)
    want = head.encode("utf-8") if head else b""
    got = b""
    pieces = tokens = prompt_tokens = completion_tokens = 0
    async for event in events:
        piece, finish, p, c = wire.parse_stream_event(event)
        prompt_tokens, completion_tokens = max(prompt_tokens, p), max(completion_tokens, c)
        raw = piece.encode("utf-8")
        pieces += bool(raw)
        if want:
            got += raw
            n = min(len(got), len(want))
            if got[:n] != want[:n] or (len(got) < len(want) and finish is not None):
                return Streamed(None, pieces, prompt_tokens, completion_tokens)
            if len(got) < len(want):
                continue
            raw, want = got[len(want):], b""  # bytes past the delimiter: this step's start
        elif raw:
            tokens += 1
        at = text.add(raw) if raw else -1
        if at >= 0:
            return Streamed(Step(text=text.split(at)[0], tokens=tokens, finish="step"),
                            pieces, prompt_tokens, completion_tokens)
        if finish is not None or tokens >= cap:
            reason = "eos" if finish == "stop" else "length"
            return Streamed(Step(text=text.cut(final=True)[0], tokens=tokens, finish=reason),
                            pieces, prompt_tokens, completion_tokens)
    raise Interrupted


class Interrupted(Exception):
    """A stream ended without a ``finish_reason``: the server cut it off
    (``python -m llama_cpp.server`` does when another request waits for the model)."""


async def stream_step(ep: HttpEndpoint, path: str, body: Callable[[int, int], dict[str, Any]],
                      seed: int, params: SamplingParams, *, regen: bool,
                      serial: asyncio.Lock | None, usage: Usage,
                      prompt_tokens: int) -> tuple[Step, bool]:
    """One child's step, read from streams of ``body(seed, max_tokens)`` posted to ``path``,
    and whether ``regenerate`` gave up on the delimiter.

    ``regen``: the prompt stops before the parent's last delimiter; a stream that does not
    start with it is dropped and asked again with a seed derived from ``seed`` (at most
    :data:`MAX_ATTEMPTS` streams, one for greedy decoding; then the step is read after the
    delimiter instead, with a warning). ``serial``: held around each stream (servers that
    interrupt a stream when another request arrives). An interrupted stream is asked again
    with the same seed, up to the endpoint's ``retries``. Every stream counts in ``usage``
    (``prompt_tokens``: the count to add when the stream reports none).
    """
    delim, cap = params.delimiter, params.max_step_tokens
    tries = (1 if params.temperature == 0 else MAX_ATTEMPTS) if regen else 1
    attempt = interrupted = 0
    while True:
        s = seed if attempt == 0 else int(
            np.random.SeedSequence([seed, attempt]).generate_state(1)[0] % (2**31 - 1))
        head = delim if attempt < tries and regen else None
        extra = len(delim.encode("utf-8")) if head else 0
        payload = body(s, cap + extra)
        if regen and head is None:  # fallback: resume after the delimiter
            payload["prompt"] += delim
        async with serial or contextlib.nullcontext():
            try:
                async with contextlib.aclosing(ep.events(path, payload)) as events:
                    got = await read_step(events, delim, cap, head=head)
            except Interrupted:
                interrupted += 1
                if interrupted > ep.retries:
                    raise BackendError(f"POST {path}: the server cut off {interrupted} streams "
                                       "(python -m llama_cpp.server does so when another "
                                       "request waits; start it with --interrupt_requests "
                                       "False)", kind="connect") from None
                continue
        usage.lm_calls += 1
        usage.prompt_tokens += got.prompt_tokens or prompt_tokens
        usage.generated_tokens += max(got.pieces, got.completion_tokens)
        if got.step is not None:
            return got.step, regen and head is None
        attempt += 1
        if attempt == tries:
            log.warning("boundary='regenerate': the model did not write the delimiter again "
                        "in %d streams; this step is read after the delimiter instead", tries)


async def children(session: OpenAISession, kind: wire.ServerKind, boundary: str,
                   parent: Particle, k: int, seed: int) -> list[Step]:
    """``k`` steps after ``parent`` in ``session``, one stream each (child j: seed + j)."""
    if k <= 0:
        return []
    p, model, replica = session.params, session.gen.model, session.replica
    assert model is not None
    prompt = session._prompt(parent)
    regen = boundary == "regenerate" and bool(parent.steps) and parent.steps[-1].finish == "step"
    if regen:  # stop before the parent's last delimiter: the model writes it again
        prompt = prompt[: len(prompt) - len(p.delimiter)]
    serial = replica.serial_lock() if kind == "llama-cpp-python" else None
    # A stream closed at its step's end reports no usage: prompt tokens are the prefix's and
    # those of the parent's steps (as counted when they were read).
    estimate = (session._prefix_tokens or 0) + sum(s.tokens for s in parent.steps)
    got = await gather_or_cancel(stream_step(
        replica.endpoint, replica.api + "/completions",
        lambda s, cap: wire.stream_body(kind, model, prompt, p, s, cap), seed + j, p,
        regen=regen, serial=serial, usage=session.usage, prompt_tokens=estimate)
        for j in range(1 if p.temperature == 0 else k))
    gave_up = sum(g for _, g in got)
    if gave_up and session.step_boundary is not None:
        info = session.step_boundary
        info["gave_up"] = info.get("gave_up", 0) + gave_up
        info["exact"] = False
        info["why"] += (f"; but {info['gave_up']} steps were read after the delimiter (the "
                        f"model did not write it again in {MAX_ATTEMPTS} streams)")
    steps = [s for s, _ in got]
    return [steps[0]] * k if p.temperature == 0 else steps


async def count_prefix(session: OpenAISession, kind: wire.ServerKind) -> int:
    """Tokens of the session's rendered prefix, from the server's tokeniser (0 without one)."""
    assert session._prefix is not None
    if kind == "vllm":
        return len(await session.gen.tokenize(session.replica, session._prefix))
    if kind != "llama-cpp-python":
        return 0
    out = await session.replica.endpoint.post("/extras/tokenize/count", {
        "model": session.gen.model, "input": session._prefix})
    return int(out.get("count") or 0)
