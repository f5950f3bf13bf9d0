"""The one HTTP boundary of the remote backends: retries, backoff, timeouts and error mapping.

Every generator and reward model that talks to a server goes through :class:`HttpEndpoint`,
so the retry policy lives in one place (httpx's transport idea: one method, policy in the
client)::

    for attempt in 0..retries:
        response = POST(url, json, timeout)            # one request, per-request timeout
        2xx                        -> return its JSON
        429, 5xx, connect error,
        dropped connection          -> sleep(backoff(attempt)), try again
        timeout                     -> fail now, unless retry_timeouts (see below)
        other 4xx                  -> fail now, with the server's own message
    all attempts failed            -> BackendError(kind, status)

A request that timed out is not sent again unless ``retry_timeouts``: the server may still be
working on it (a long generation on a busy server), and sending it again adds load exactly
when the server is short of it; a hanging server then costs one ``timeout`` per call, not
``(retries + 1) * timeout``. Connecting has its own shorter limit (``connect_timeout``), and a
request that could not connect is retried.

Credentials in the URL (``http://user:password@host/v1``) are taken out of it and sent as
HTTP basic auth; messages and logs show :func:`redact_url` forms only (no user info, query
values masked).

``backoff(attempt) = uniform(0, min(max_backoff, base * 2**attempt))`` ("full jitter": many
clients that failed together do not retry together); a 429's ``Retry-After`` header, when
present, is honoured instead. Failures surface as :class:`particlescale.errors.BackendError`
with ``kind`` in ``connect``, ``timeout``, ``http``, ``protocol`` and the upstream ``status``.

An endpoint also owns the concurrency limit of its server: one :class:`asyncio.Semaphore`
shared by every session and every call that uses the endpoint, so that "at most 64 requests in
flight to this server" holds across all problems solved at once.

The client is aiohttp, not httpx: with 64 requests in flight httpx 0.28 / httpcore 1.0 spent
about 8 ms of CPU per request here (its pool re-checks every connection for every request),
aiohttp about 0.3 ms — the difference between a step that costs one round trip and one that
costs a second of client CPU. The client session and the semaphore belong to one event loop;
``solve()`` runs a fresh loop per call, so both are made lazily per running loop, and the
session is closed when that loop shuts down its async generators (as ``asyncio.run`` does)
or by :meth:`HttpEndpoint.aclose`.

:meth:`HttpEndpoint.events` streams a server-sent-events answer (``stream: true``): retried
like a request until its first event arrives, never after (events already handed out cannot
be taken back); leaving the ``async for`` early closes the connection, which tells the
server to stop generating.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from particlescale.errors import BackendError, ConfigError

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CONNECT_TIMEOUT = 10.0
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")
_QUERY_VALUE = re.compile(r"([?&][^=&\s#]+=)[^&\s#]*")
_CONNECTION_TIMEOUT = getattr(aiohttp, "ConnectionTimeoutError", ())


def redact_url(text: str) -> str:
    """``text`` with the user info of every URL in it removed and query values masked:
    ``http://admin:pw@host/v1?key=abc`` -> ``http://host/v1?key=***``."""
    return _QUERY_VALUE.sub(r"\1***", _USERINFO.sub(r"\1", text))


def split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its user info, and that user info as an ``Authorization: Basic``
    header value (None if absent)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), auth


def lost_connection(method: str, url: str, e: BaseException, connect_within: float
                    ) -> BackendError:
    """The connection could not be made (in ``connect_within`` s) or dropped: an error that
    says which and what to check."""
    if isinstance(e, _CONNECTION_TIMEOUT):
        return BackendError(f"{method} {url}: cannot connect within {connect_within:g} s "
                            f"({type(e).__name__}); is the server up and the URL right?",
                            kind="connect")
    if isinstance(e, aiohttp.ClientConnectorError):
        return BackendError(f"{method} {url}: cannot connect ({_connect_reason(e)}); is the "
                            "server running and the URL right?", kind="connect")
    return BackendError(f"{method} {url}: connection dropped ({type(e).__name__})",
                        kind="connect")


def _connect_reason(e: aiohttp.ClientConnectorError) -> str:
    """Why a connection failed, without the address (it is in the message already)."""
    os_error = getattr(e, "os_error", None)
    if isinstance(os_error, socket.gaierror):
        return f"host name not resolved: {os_error.strerror}"
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    return type(os_error or e).__name__


def server_message(status: int, raw: bytes) -> str:
    """The human message inside an error body, whatever the server's error dialect.

    recent vLLM (about 0.10 on) and llama.cpp: ``{"error": {"message": ...}}``; older vLLM
    and SGLang: ``{"object": "error", "message": ...}``; FastAPI: ``{"detail": ...}``;
    anything else: the first 500 characters of the body.
    """
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text[:500].strip() or f"HTTP {status}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
        if "detail" in body:
            return str(body["detail"])
    return json.dumps(body)[:500]


@dataclass
class _LoopState:
    loop: asyncio.AbstractEventLoop
    session: aiohttp.ClientSession
    semaphore: asyncio.Semaphore
    closer: AsyncGenerator[None, None]


async def _close_at_loop_shutdown(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """An async generator whose finalisation (``loop.shutdown_asyncgens()``) closes
    ``session`` inside its own loop, so a run ended by ``asyncio.run`` leaks nothing."""
    try:
        yield
    finally:
        await session.close()


@dataclass
class HttpEndpoint:
    """One server (``base_url``), with its retry policy and its concurrency limit.

    ``timeout`` is per request (seconds); ``retries`` is the number of extra attempts after the
    first; ``max_concurrency`` bounds the requests in flight to this server across all callers;
    ``retry_timeouts`` sends a request that timed out again (off: see the module docstring).
    """

    base_url: str
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_concurrency: int = 64
    retry_timeouts: bool = False
    connect_timeout: float = CONNECT_TIMEOUT
    jitter: random.Random = field(default_factory=random.Random, repr=False)
    _state: _LoopState | None = field(default=None, init=False, repr=False)
    _auth: str | None = field(default=None, init=False, repr=False)
    requests: int = field(default=0, init=False)
    """Requests sent (attempts included); for tests and benchmarks."""

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(
                ("http://", "https://")):
            raise ConfigError(
                f"base_url: {redact_url(str(self.base_url))!r} is not an http(s) URL; "
                "pass e.g. http://localhost:8000/v1"
            )
        try:
            url, self._auth = split_credentials(self.base_url.rstrip("/"))
        except ValueError as e:  # a port that is no number, an unclosed [IPv6 address
            raise ConfigError(f"base_url: {redact_url(self.base_url)!r} is not a valid URL "
                              f"({e})") from None
        if self._auth is not None and self.api_key:
            raise ConfigError(
                f"base_url: {redact_url(url)!r} carries a user and password and an API key is "
                "set too (api_key, PARTICLESCALE_API_KEY or OPENAI_API_KEY); give one of them")
        self.base_url = url
        if not isinstance(self.timeout, int | float) or not 0 < self.timeout < float("inf"):
            raise ConfigError(f"timeout: must be a number of seconds > 0, got {self.timeout}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries: must be an integer >= 0, got {self.retries}")
        if self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency: must be >= 1, got {self.max_concurrency}")

    async def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop or self._state.session.closed:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            if self._auth is not None:
                headers["Authorization"] = self._auth
            connector = aiohttp.TCPConnector(limit=self.max_concurrency)
            session = aiohttp.ClientSession(
                connector=connector, headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=self.timeout, sock_connect=min(self.timeout, self.connect_timeout)))
            closer = _close_at_loop_shutdown(session)
            await closer.__anext__()
            self._state = _LoopState(loop, session, asyncio.Semaphore(self.max_concurrency),
                                     closer)
        return self._state

    def _lost(self, method: str, url: str, e: BaseException) -> BackendError:
        return lost_connection(method, url, e, min(self.timeout, self.connect_timeout))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return self.jitter.uniform(0.0, min(self.max_backoff, self.backoff * 2**attempt))

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` as JSON to ``base_url + path``; the decoded JSON answer."""
        return await self.request("POST", path, body)

    async def get(self, path: str) -> Any:
        return await self.request("GET", path, None)

    async def request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        state = await self._loop_state()
        url = self.base_url + path
        last: BackendError | None = None
        for attempt in range(self.retries + 1):
            status: int | None = None
            raw = b""
            retry_after: str | None = None
            async with state.semaphore:
                self.requests += 1
                try:
                    async with state.session.request(method, url, json=body) as resp:
                        raw = await resp.read()
                        status = resp.status  # only once the whole body has arrived
                        if status == 429:
                            retry_after = resp.headers.get("Retry-After")
                except _CONNECTION_TIMEOUT as e:  # never connected: nothing was sent
                    last = self._lost(method, url, e)
                except (TimeoutError, aiohttp.ServerTimeoutError) as e:
                    last = BackendError(
                        f"{method} {url}: no answer within {self.timeout:g} s "
                        f"({type(e).__name__}); raise the timeout (--timeout, or timeout= in "
                        "Python) or check the server's load", kind="timeout")
                    if not self.retry_timeouts:
                        raise BackendError(
                            f"{last} (not sent again: the server may still be working on it)",
                            kind="timeout") from None
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                        aiohttp.ClientOSError) as e:  # also ClientConnectorError
                    last = self._lost(method, url, e)
            if status is not None:
                if 200 <= status < 300:
                    try:
                        return json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise BackendError(f"{method} {url}: answer is not JSON ({e}): "
                                           f"{raw[:200]!r}", kind="protocol",
                                           status=status) from e
                last = BackendError(f"{method} {url}: HTTP {status}: "
                                    f"{server_message(status, raw)}", kind="http", status=status)
                if status not in RETRY_STATUSES:
                    raise last
            if attempt < self.retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        assert last is not None
        raise BackendError(f"{last} (gave up after {self.retries + 1} attempts)",
                           kind=last.kind, status=last.status)

    async def events(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        """POST ``body`` and yield the decoded JSON of each server-sent event (``data:``
        lines) until ``data: [DONE]`` or the end of the answer. Use it inside
        ``contextlib.aclosing`` when the loop may stop early: closing the generator drops the
        connection, and the server stops generating."""
        state = await self._loop_state()
        url = self.base_url + path
        last: BackendError | None = None
        for attempt in range(self.retries + 1):
            retry_after: str | None = None
            started = False
            async with state.semaphore:
                self.requests += 1
                try:
                    # the whole answer may take longer than ``timeout``: only a stall may not
                    async with state.session.post(url, json=body, timeout=aiohttp.ClientTimeout(
                            total=None, sock_read=self.timeout,
                            sock_connect=min(self.timeout, self.connect_timeout))) as resp:
                        if resp.status != 200:
                            raw = await resp.read()
                            last = BackendError(f"POST {url}: HTTP {resp.status}: "
                                                f"{server_message(resp.status, raw)}",
                                                kind="http", status=resp.status)
                            if resp.status not in RETRY_STATUSES:
                                raise last
                            retry_after = resp.headers.get("Retry-After")
                        else:
                            try:
                                async for line in resp.content:
                                    data = line.strip()
                                    if not data.startswith(b"data:"):
                                        continue  # comments (": ping"), blank separators
                                    data = data[5:].strip()
                                    if data == b"[DONE]":
                                        break
                                    started = True
                                    yield _event_json(url, data)
                            finally:
                                resp.close()  # early exit: drop the connection
                            return
                except _CONNECTION_TIMEOUT as e:  # never connected: nothing was sent
                    last = self._lost("POST", url, e)
                except (TimeoutError, aiohttp.ServerTimeoutError) as e:
                    last = BackendError(f"POST {url}: stream stalled for {self.timeout:g} s "
                                        f"({type(e).__name__}); raise the timeout (--timeout, "
                                        "or timeout= in Python) or check the server's load",
                                        kind="timeout")
                    if not started and not self.retry_timeouts:
                        raise BackendError(
                            f"{last} (not sent again: the server may still be working on it)",
                            kind="timeout") from None
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                        aiohttp.ClientOSError) as e:  # also ClientConnectorError
                    last = self._lost("POST", url, e)
            if started:  # part of the answer is out: the caller cannot resume it
                assert last is not None
                raise last
            if attempt < self.retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        assert last is not None
        raise BackendError(f"{last} (gave up after {self.retries + 1} attempts)",
                           kind=last.kind, status=last.status)

    async def aclose(self) -> None:
        """Close the connection pool of the current loop (other loops close theirs at exit)."""
        state, self._state = self._state, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.closer.aclose()


async def gather_or_cancel(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run awaitables concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _event_json(url: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BackendError(f"POST {url}: a streamed event is not JSON ({e}): {data[:200]!r}",
                           kind="protocol") from e


def split_base_url(url: str) -> tuple[str, str]:
    """``(root, api)`` for a server URL given with or without ``/v1``.

    OpenAI-style routes live under ``api`` (``.../v1``); vLLM's ``/tokenize``, ``/pooling`` and
    llama.cpp's ``/completion`` live under ``root``.
    """
    url = url.rstrip("/")
    if url.endswith("/v1"):
        return url[: -len("/v1")], url
    return url, url + "/v1"
