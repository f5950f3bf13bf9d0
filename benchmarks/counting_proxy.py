"""A small HTTP proxy between a client library and an inference server that counts what the
client asked for, the same way for every library (bench_its_hub.py puts one in front of
llama-server or vLLM for ours and for its_hub).

Every request is forwarded unchanged (method, path, query, body, headers but the hop-by-hop
ones) and its answer returned unchanged. A POST to a generation route (``/completion``,
``/completions``, ``/v1/completions``, ``/chat/completions``, ``/v1/chat/completions``) is a
*generation request*; its prompt and generated tokens are read from the server's own usage
fields (OpenAI-style ``usage.prompt_tokens`` / ``usage.completion_tokens``, or llama-server's
native ``tokens_evaluated`` / ``tokens_predicted``, per item when ``n_cmpl`` answers a list), so
neither library's own bookkeeping is trusted. Other requests (``/v1/models``, ``/tokenize``,
``/apply-template``) are counted apart. Streaming answers are not parsed (neither library
streams here).

    with CountingProxy("http://127.0.0.1:8080") as proxy:
        ...  # point the client at proxy.url
        counts = proxy.take()  # the counts since the last take(), and reset
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from aiohttp import web

GENERATION_ROUTES = ("/completion", "/completions", "/v1/completions", "/chat/completions",
                     "/v1/chat/completions")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length",
              "content-encoding"}


@dataclass
class Counts:
    """What went through the proxy: generation requests and their tokens, other requests,
    answers with a status other than 200, and the longest single prompt (tokens)."""

    gen_requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    max_prompt_tokens: int = 0
    other_requests: int = 0
    errors: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def usage_of(body: Any) -> tuple[int, int]:
    """(prompt tokens, generated tokens) of a generation answer, from the server's usage
    fields; (0, 0) when it has none. A llama-server ``n_cmpl`` list evaluates its prompt once
    (the largest ``tokens_evaluated``) and sums ``tokens_predicted``."""
    if isinstance(body, dict) and isinstance(body.get("usage"), dict):
        u = body["usage"]
        return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    items = body if isinstance(body, list) else [body]
    items = [it for it in items if isinstance(it, dict)]
    prompt = max((int(it.get("tokens_evaluated") or 0) for it in items), default=0)
    return prompt, sum(int(it.get("tokens_predicted") or 0) for it in items)


class CountingProxy:
    """The proxy, served from its own thread and event loop on 127.0.0.1 (``url``)."""

    def __init__(self, upstream: str, *, port: int = 0, timeout_s: float = 3600.0) -> None:
        if not upstream.startswith(("http://", "https://")):
            raise ValueError(f"upstream: {upstream!r} is not an http(s) URL; pass the server's "
                             "root, e.g. http://127.0.0.1:8080")
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.timeout_s = timeout_s
        self.counts = Counts()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def take(self) -> Counts:
        """The counts so far, and start again from zero."""
        with self._lock:
            out, self.counts = self.counts, Counts()
        return out

    def _add(self, path: str, status: int, body: bytes) -> None:
        prompt = generated = 0
        gen = path.rstrip("/") in GENERATION_ROUTES
        if gen and status == 200:
            # not JSON (a stream): counted as a request, tokens unknown
            with contextlib.suppress(ValueError):
                prompt, generated = usage_of(json.loads(body))
        with self._lock:
            c = self.counts
            c.errors += status != 200
            if gen:
                c.gen_requests += 1
                c.prompt_tokens += prompt
                c.generated_tokens += generated
                c.max_prompt_tokens = max(c.max_prompt_tokens, prompt)
            else:
                c.other_requests += 1

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        data = await request.read()
        try:
            async with self._session.request(request.method, self.upstream + request.path_qs,
                                             data=data or None, headers=headers) as r:
                body = await r.read()
                status = r.status
                out_headers = {k: v for k, v in r.headers.items()
                               if k.lower() not in HOP_BY_HOP}
        except (aiohttp.ClientError, TimeoutError) as e:
            self._add(request.path, 502, b"")
            return web.Response(status=502, text=f"proxy: upstream {self.upstream} failed: {e}")
        self._add(request.path, status, body)
        return web.Response(status=status, body=body, headers=out_headers)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=0))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._session.close()
            await runner.cleanup()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    def start(self) -> CountingProxy:
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._run, name="counting-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"counting proxy did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
