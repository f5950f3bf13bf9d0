"""Request-size and concurrency limits.

:class:`BodyLimit` is ASGI middleware: a ``Content-Length`` above the limit is answered 413
before the body is read; a chunked body is counted as it arrives and stops with 413 as soon
as it crosses the limit (the handler never sees it).

:class:`RunSlots` counts runs in flight. A request that finds every slot taken gets 429 at
once (with ``Retry-After``) rather than queueing behind runs that may take minutes: a client
or a load balancer can then retry elsewhere.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from particlescale.server.errors import APIError, send_error


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes (limits.max_body_bytes)",
                    code="body_too_large", kind="too_large")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, on_reject=None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if self.on_reject:
                        self.on_reject(scope)
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, counted, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        if self.on_reject:
            self.on_reject(scope)
        await send_error(send, too_large(self.max_bytes), close=True)


class RunSlots:
    """At most ``limit`` runs at once; :meth:`acquire` raises 429 instead of waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def acquire(self) -> None:
        if self.active >= self.limit:
            raise APIError(429, f"server busy: {self.limit} runs in flight (limits."
                                "max_concurrent); retry shortly", type="rate_limit_error",
                           code="too_many_runs", kind="overloaded", headers={"Retry-After": "1"})
        self.active += 1

    def release(self) -> None:
        self.active -= 1
