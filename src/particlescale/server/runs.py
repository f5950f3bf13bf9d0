"""Executing one request's run: a task per request, no lock, cancelled when the client leaves.

Each request gets its own :class:`~particlescale.server.capped.CappedGenerator` around the
shared generator and its own progress queue; the shared engine interleaves the runs. A run
is an :class:`asyncio.Task`::

    plain:   wait for (run task, client-disconnect watcher), first to finish wins
             disconnect -> run.cancel()
    stream:  the response generator drains the progress queue; when the client leaves,
             Starlette cancels the generator, whose ``finally`` cancels the run

Cancelling the run raises ``CancelledError`` inside the algorithm; its ``finally`` closes the
generation session, which frees the run's KV sequences (or in-flight HTTP requests).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from particlescale.api import asolve
from particlescale.backends.http import redact_url
from particlescale.server import responses
from particlescale.server.capped import CappedGenerator, CapState
from particlescale.server.config import ServerConfig
from particlescale.server.errors import APIError, from_exception
from particlescale.server.limits import RunSlots
from particlescale.server.metrics import Metrics
from particlescale.server.readiness import upstream_addresses
from particlescale.server.translate import RunSpec
from particlescale.types import Result
from particlescale.wiring import Wired

log = logging.getLogger("particlescale.server")


class RedactURLs(logging.Filter):
    """Takes credentials and query values out of every URL in a record (message and
    traceback) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_url(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact_url(text.rstrip("\n"))
        return True


if not any(isinstance(f, RedactURLs) for f in log.filters):
    log.addFilter(RedactURLs())


class ClientGone(Exception):
    """The client disconnected before its run finished (the run was cancelled)."""


@dataclass
class ServerState:
    config: ServerConfig
    wired: Wired
    metrics: Metrics
    slots: RunSlots
    hide: tuple[str, ...] = field(default=())
    """Upstream addresses (``host:port``, ``host``) that never reach a client."""

    def __post_init__(self) -> None:
        if not self.hide:
            specs = [*self.wired.specs.values(), *(g.spec for g in self.config.generators),
                     self.config.reward or ""]
            self.hide = upstream_addresses(specs)


class Lease:
    """One run slot, released exactly once (by whichever of several cleanups runs first)."""

    def __init__(self, state: ServerState) -> None:
        state.slots.acquire()
        state.metrics.active.inc()
        self._state: ServerState | None = state

    def release(self) -> None:
        if self._state is not None:
            self._state.slots.release()
            self._state.metrics.active.dec()
            self._state = None


async def execute(state: ServerState, spec: RunSpec,
                  progress: Callable[[dict[str, Any]], None] | None = None,
                  ) -> tuple[Result, CapState]:
    """Run ``spec`` under the request timeout; record tokens and run counts."""
    gen = CappedGenerator(state.wired.generators[spec.generator], spec.max_tokens, spec.stop,
                          spec.max_steps)
    async with asyncio.timeout(state.config.limits.request_timeout):
        result = await asolve(spec.problem, generator=gen, reward=state.wired.reward,
                              method=spec.method, budget=spec.budget, seed=spec.seed,
                              progress=progress, **spec.options)
    state.metrics.observe_usage(result.usage)
    state.metrics.runs.labels(spec.method).inc()
    return result, gen.state


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel(task: asyncio.Task) -> None:
    """Cancel ``task`` and wait until its cleanup (closing the session) is over. If the caller
    is itself cancelled meanwhile, the cancellation propagates; the task still finishes its
    cleanup on its own."""
    task.cancel()
    await asyncio.shield(asyncio.gather(task, return_exceptions=True))


def _log_failure(err: APIError, exc: BaseException) -> None:
    if err.status_code >= 500 and err.type == "server_error":
        log.error("run failed", exc_info=exc)
    else:
        log.warning("run failed (%d): %s", err.status_code, exc)


async def run_plain(state: ServerState, spec: RunSpec, request: Request) -> tuple[Result, CapState]:
    """Run to completion; raise :class:`ClientGone` if the client leaves first."""
    run = asyncio.create_task(execute(state, spec))
    watcher = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({run, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        run.cancel()
        raise
    finally:
        watcher.cancel()
    if not run.done():
        state.metrics.errors.labels("cancelled").inc()
        await _cancel(run)
        raise ClientGone
    exc = run.exception()
    if exc is not None:
        err = from_exception(exc, state.hide)
        _log_failure(err, exc)
        raise err from exc
    return run.result()


async def run_stream(state: ServerState, spec: RunSpec, lease: Lease) -> AsyncIterator[str]:
    """The SSE body of a streaming request (see :mod:`particlescale.server.responses`)."""
    created = int(time.time())
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    start = time.perf_counter()

    def progress(event: dict[str, Any]) -> None:
        queue.put_nowait({**event, "elapsed": round(time.perf_counter() - start, 3)})

    run = asyncio.create_task(execute(state, spec, progress))
    run.add_done_callback(lambda _: queue.put_nowait(None))
    finished = False
    try:
        yield responses.sse(responses.chunk(spec, created, {"role": "assistant", "content": ""}))
        while (event := await queue.get()) is not None:
            yield responses.sse(responses.chunk(
                spec, created, {}, scaling={"progress": responses.jsonable(event)}))
        finished = True
        exc = run.exception()
        if exc is not None:
            err = from_exception(exc, state.hide)
            _log_failure(err, exc)
            state.metrics.errors.labels(err.kind).inc()
            yield responses.sse(err.body())
            yield responses.sse("[DONE]")
            return
        result, caps = run.result()
        yield responses.sse(responses.chunk(spec, created, {"content": result.text or ""}))
        yield responses.sse(responses.chunk(
            spec, created, {}, caps.finish_reason(result.text),
            scaling=responses.scaling(result, spec, caps)))
        if spec.include_usage:
            yield responses.sse(responses.usage_chunk(result, spec, created))
        yield responses.sse("[DONE]")
    finally:
        if not finished and not run.done():
            state.metrics.errors.labels("cancelled").inc()
        lease.release()
        if not run.done():
            await _cancel(run)
