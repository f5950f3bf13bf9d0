"""HTTP errors in the OpenAI error format, and the map from failures to status codes.

Every error response has the body OpenAI clients parse::

    {"error": {"message": "budget: 0 is out of range; ...", "type": "invalid_request_error",
               "param": "budget", "code": "budget_out_of_range"}}

=======  ==================================================================  =======================
status   when                                                                type / code
=======  ==================================================================  =======================
400      body is not JSON, a field is missing or has the wrong type, an      invalid_request_error
         unknown field, an unsupported value (``n`` > 1, tools, logprobs),
         an unknown ``method`` or method option
401      keys are configured and the request has no ``Bearer`` key           authentication_error /
                                                                             missing_api_key
403      the key matches no configured key                                   permission_error /
                                                                             invalid_api_key
404      ``model`` is no generator id, preset or ``<method>-<budget>``       model_not_found
413      the body is larger than ``limits.max_body_bytes``                   body_too_large
422      ``budget`` outside ``1..limits.max_budget``                         budget_out_of_range
429      ``limits.max_concurrent`` runs in flight (``Retry-After: 1``)       rate_limit_error /
                                                                             too_many_runs
502      the generator or reward server failed (connection refused or        upstream_error /
         dropped, HTTP error, malformed reply)                               upstream_<kind>
504      the upstream timed out, or the run exceeded                         timeout_error
         ``limits.request_timeout``
500      a bug: the message names the exception; the server keeps serving    server_error
=======  ==================================================================  =======================
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from fastapi.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import Send

from particlescale.backends.http import redact_url
from particlescale.errors import BackendError, ConfigError, ParticlescaleError

_URL_ROOT = re.compile(r"https?://[^/\s]+")


def public_message(text: str, hide: Iterable[str] = ()) -> str:
    """``text`` as a client may see it: no URL roots (scheme, credentials, host, port), no
    query values, and none of the upstream addresses in ``hide`` (``host:port`` or ``host``,
    each as a whole word)."""
    text = _URL_ROOT.sub("", redact_url(text))
    for h in sorted({h for h in hide if h}, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.-]){re.escape(h)}(?![\w-]|\.\w)", "<upstream>", text)
    return text


class SafeJSONResponse(JSONResponse):
    """A JSON response that cannot fail to encode: UTF-8 when it can, ``\\uXXXX`` escapes
    when the content holds a lone surrogate (which UTF-8 cannot carry)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False,
                              separators=(",", ":")).encode("ascii")


class APIError(HTTPException):
    """An error response. Subclasses HTTPException so FastAPI re-raises it unchanged when it
    happens while the body is being read (the body-size limit)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, kind: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.kind = kind or code or type
        """The ``kind`` label of the errors metric."""

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


async def send_error(send: Send, err: APIError, *, close: bool = False) -> None:
    """Send ``err`` as a whole JSON response from ASGI middleware (outside FastAPI)."""
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    if close:  # the unread request body would otherwise be taken for the next request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code, kind="bad_request")


def from_exception(exc: BaseException, hide: Iterable[str] = ()) -> APIError:
    """The response for an exception raised while a run was in progress. ``hide``: the
    upstream addresses (``host:port``, ``host``) that must not reach a client."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BackendError):
        status = f" (HTTP {exc.status})" if exc.status else ""
        # Clients see the upstream's path and message but not its address (the log has it,
        # without credentials).
        message = f"upstream {exc.kind} error{status}: {public_message(str(exc), hide)}"
        if exc.kind == "timeout":
            return APIError(504, message, type="timeout_error", code="upstream_timeout")
        return APIError(502, message, type="upstream_error", code=f"upstream_{exc.kind}")
    if isinstance(exc, TimeoutError):
        return APIError(504, "the run did not finish within limits.request_timeout; ask for a "
                             "smaller budget or raise the server's limit",
                        type="timeout_error", code="request_timeout")
    if isinstance(exc, ConfigError):
        return bad_request(public_message(str(exc), hide), code="invalid_option")
    if isinstance(exc, ParticlescaleError):
        return APIError(500, public_message(str(exc), hide), type="server_error",
                        code=type(exc).__name__, kind="internal")
    return APIError(500, f"internal error ({type(exc).__name__}); see the server log",
                    type="server_error", code="internal_error", kind="internal")
