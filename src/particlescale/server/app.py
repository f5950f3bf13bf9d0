"""The FastAPI application: routes, error handlers, middleware.

Routes: ``POST /v1/chat/completions`` and ``GET /v1/models`` (bearer keys when configured),
``GET /health`` (liveness), ``GET /ready`` (backends reachable; 503 otherwise; with keys
configured, the per-backend details only for a request with a key), ``GET /metrics``
(Prometheus). Error statuses are listed in :mod:`particlescale.server.errors`; an exception
no handler expected is a 500 JSON error on a connection that stays open (the traceback goes to
the log), never a reset.

``create_app(config)`` builds the configured generators and reward at startup
(:func:`particlescale.wiring.wire`) and closes them at shutdown; ``create_app(config,
wired=Wired(...))`` serves objects the caller built (tests, benchmarks, one engine shared with
other code) and leaves closing them to the caller.
"""

from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from particlescale import __version__
from particlescale.algorithms import METHODS
from particlescale.server import responses
from particlescale.server.auth import BearerAuth, KeyCheck
from particlescale.server.config import ServerConfig
from particlescale.server.errors import APIError, SafeJSONResponse
from particlescale.server.limits import BodyLimit, RunSlots
from particlescale.server.metrics import Metrics
from particlescale.server.readiness import readiness
from particlescale.server.runs import ClientGone, Lease, ServerState, log, run_plain, run_stream
from particlescale.server.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    ModelList,
)
from particlescale.server.translate import run_spec
from particlescale.wiring import Wired

ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/health", "/ready", "/metrics")
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429, 500,
                                                       502, 504)}
_UNION_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}


class RequestMetrics:
    """ASGI middleware: count requests by endpoint and status, and time them to the last byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class CatchAll:
    """ASGI middleware just outside the routes: an exception that escaped every handler is
    logged with its traceback and answered as a 500 JSON error, and the connection is kept
    (Starlette's outermost handler would re-raise it, and the server would drop the
    connection, failing the client's next request on it too)."""

    def __init__(self, app: ASGIApp, on_error: Any = None) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise  # half a response is out; nothing sensible can follow it
            log.error("unexpected error on %s %s", scope.get("method"), scope.get("path"),
                      exc_info=exc)
            if self.on_error is not None:
                self.on_error()
            response = SafeJSONResponse(internal_error(exc).body(), status_code=500)
            await response(scope, receive, send)


def internal_error(exc: BaseException) -> APIError:
    return APIError(500, f"internal error ({type(exc).__name__}); see the server log",
                    type="server_error", code="internal_error", kind="internal")


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = []
    for x in loc[1:] if loc and loc[0] in ("body", "header") else loc:
        if isinstance(x, str) and (x in _UNION_TAGS or "[" in x):
            break  # pydantic names union members by type; the field is what the client sent
        parts.append(str(x))
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    """400 with the first offending field named (OpenAI's ``param``)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first["type"] == "json_invalid":
        why = (first.get("ctx") or {}).get("error", "")
        return APIError(400, f"request body is not valid JSON ({why}); send a JSON object",
                        code="invalid_json", kind="bad_request")
    param = _param(tuple(first["loc"]))
    if param is None:
        return APIError(400, "request body: must be a JSON object with 'messages' (and "
                             "'Content-Type: application/json')", code="invalid_body",
                        kind="bad_request")
    msgs: list[str] = []
    for e in errors:
        if _param(tuple(e["loc"])) == param:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown field (this server rejects fields it would otherwise ignore)"
            if msg not in msgs:
                msgs.append(msg)
    return APIError(400, f"{param}: {'; or '.join(msgs)}", param=param, code="invalid_value",
                    kind="bad_request")


def create_app(config: ServerConfig | None = None, *, wired: Wired | None = None) -> FastAPI:
    """The server app. ``wired``: the generators (by model id) and reward to serve, closed at
    shutdown only when they are its own (``owned``: built by ``wire()``); default: built from
    ``config`` at start-up."""
    config = config or ServerConfig()
    metrics = Metrics()
    keys = KeyCheck(config.keys())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        w = wired if wired is not None else config.wire()
        app.state.ps = ServerState(config, w, metrics, RunSlots(config.limits.max_concurrent))
        async with w:  # closes only what wire() built
            yield

    app = FastAPI(title="particlescale", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible chat completions that scale inference-time "
                              "compute with particle filtering and friends.")

    def state(request: Request) -> ServerState:
        return request.app.state.ps

    # Keys are checked by BearerAuth before the body is read; this only puts the scheme in the
    # OpenAPI schema, and only when the server has keys (the schema describes this server).
    auth = [Security(HTTPBearer(auto_error=False))] if keys.enabled else []

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.errors.labels(exc.kind).inc()
        return SafeJSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), code=f"http_{exc.status_code}",
                       kind="bad_request", headers=exc.headers)
        return await api_error(request, err)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await api_error(request, validation_error(exc))

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return await api_error(request, internal_error(exc))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, internal)
    app.add_middleware(CatchAll, on_error=lambda: metrics.errors.labels("internal").inc())
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_body_bytes,
                       on_reject=lambda scope: metrics.errors.labels("too_large").inc())
    app.add_middleware(BearerAuth, keys=keys,
                       on_reject=lambda err: metrics.errors.labels(err.kind).inc())
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Liveness: the process serves requests."""
        return {"status": "ok", "active_runs": state(request).slots.active}

    @app.get("/ready", responses={503: {"description": "a backend is unreachable"}})
    async def ready(request: Request) -> JSONResponse:
        """Readiness: every generator and the reward backend answers. With API keys
        configured, per-backend details are shown only to a request with a valid key."""
        checks = await readiness(state(request).wired)
        ok = all(c["ready"] for c in checks.values())
        body: dict[str, Any] = {"status": "ready" if ok else "unavailable"}
        try:
            keys.check(request.headers.get("authorization"))
            body["backends"] = checks
        except APIError:
            pass  # readiness probes need no key; what is behind the server does
        return SafeJSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList, dependencies=auth,
             responses={k: _ERRORS[k] for k in (401, 403)})
    async def models(request: Request) -> dict[str, Any]:
        """The generators, then the presets (method + budget) clients can name as ``model``."""
        created = int(time.time())
        data: list[dict[str, Any]] = [
            {"id": g.model_id, "object": "model", "created": created, "owned_by": "particlescale",
             "scaling": {"kind": "generator", "method": config.method, "budget": config.budget}}
            for g in config.generators]
        default = config.generators[0].model_id
        data += [{"id": name, "object": "model", "created": created,
                  "owned_by": "particlescale",
                  "scaling": {"kind": "preset", "method": p.method, "budget": p.budget,
                              "generator": p.generator or default}}
                 for name, p in config.preset_table().items()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", dependencies=auth,
              response_model=ChatCompletion, responses={
                  200: {"content": {"text/event-stream": {}},
                        "description": "A completion, or an SSE stream with stream=true"},
                  **_ERRORS})
    async def chat_completions(
        body: ChatCompletionRequest,
        request: Request,
        # Documented here; read (with the body fields they stand for) in translate.run_spec.
        x_scaling_budget: Annotated[int | None, Header(description="Budget (particles).")] = None,
        x_scaling_method: Annotated[str | None, Header(description="Scaling method.")] = None,
        x_scaling_seed: Annotated[int | None, Header(ge=0, description="Seed of the run.")
                                  ] = None,
    ) -> Any:
        """Solve the last user message with the scaling method; OpenAI-compatible."""
        st = state(request)
        spec = run_spec(config, body, request.headers, f"chatcmpl-{uuid.uuid4().hex}")
        lease = Lease(st)  # 429 when full
        if spec.stream:
            return StreamingResponse(
                run_stream(st, spec, lease), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                background=BackgroundTask(lease.release))
        try:
            result, caps = await run_plain(st, spec, request)
        except ClientGone:
            return Response(status_code=499)
        finally:
            lease.release()
        return SafeJSONResponse(responses.completion(result, spec, caps, int(time.time())))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            # What pydantic cannot know: this server's budget limit and method names.
            props = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
            op = schema["paths"]["/v1/chat/completions"]["post"]
            headers = {p["name"]: p["schema"] for p in op["parameters"]}
            for budget in (props["budget"], headers["x-scaling-budget"]):
                budget["anyOf"][0].update(minimum=1, maximum=config.limits.max_budget)
            for method in (props["method"], headers["x-scaling-method"]):
                method["anyOf"][0]["enum"] = list(METHODS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
