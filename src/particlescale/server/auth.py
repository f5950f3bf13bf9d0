"""Optional bearer-key authentication of the ``/v1`` routes.

With no keys configured every request is served. Otherwise a request needs
``Authorization: Bearer <key>``: without one it gets 401 (and ``WWW-Authenticate: Bearer``),
with a key that matches none it gets 403. Keys are compared as SHA-256 digests with
:func:`hmac.compare_digest` against *every* configured key, so neither the position of the
first differing byte nor which key matched shows in the response time.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from particlescale.server.errors import APIError, send_error


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyCheck:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = [_digest(k) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Raise 401/403 unless ``authorization`` carries an accepted key."""
        if not self._digests:
            return
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="missing_api_key", kind="auth",
                           headers={"WWW-Authenticate": "Bearer"})
        given = _digest(token)
        ok = False
        for d in self._digests:
            ok |= hmac.compare_digest(given, d)
        if not ok:
            raise APIError(403, "invalid API key", type="permission_error",
                           code="invalid_api_key", kind="auth")


class BearerAuth:
    """ASGI middleware applying :class:`KeyCheck` to paths under ``prefix`` *before* the body
    is read: an unauthenticated client cannot make the server parse (or buffer) its body."""

    def __init__(self, app: ASGIApp, keys: KeyCheck, prefix: str = "/v1/", on_reject=None) -> None:
        self.app = app
        self.keys = keys
        self.prefix = prefix
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys.enabled and scope["path"].startswith(self.prefix):
            headers = dict(scope.get("headers") or [])
            raw = headers.get(b"authorization")
            try:
                self.keys.check(raw.decode("latin-1") if raw is not None else None)
            except APIError as err:
                if self.on_reject:
                    self.on_reject(err)
                await send_error(send, err)
                return
        await self.app(scope, receive, send)
