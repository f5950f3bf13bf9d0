"""The server's models: building them from the configuration, probing them for ``/ready``,
closing them at shutdown.

Every request shares these objects (the embedded engine batches all running problems into
one decode per token; an HTTP generator shares one connection pool and concurrency limit per
upstream server). Nothing here is per request.

``/ready`` asks each backend in turn: an object with a ``ready()`` method (sync or async) is
asked directly; otherwise every ``http(s)://`` URL in its spec is probed with
``GET <server>/health`` then ``GET <url>/models`` (2 s each): a reply below 500 counts as
reachable. Embedded backends are ready once built. What it reports names the failed request's
path and error class, never an upstream address or credentials.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from particlescale.protocols import Generator, RewardModel
from particlescale.server.config import ServerConfig
from particlescale.server.errors import public_message

PROBE_TIMEOUT = 2.0
_URL = re.compile(r"https?://[^\s,+*]+")


@dataclass
class Backends:
    """The generators (by model id) and the reward model the server runs with."""

    generators: dict[str, Generator]
    reward: RewardModel
    specs: dict[str, str] = field(default_factory=dict)
    """Spec string per backend name (``generator:<id>``, ``reward``), for readiness probes."""
    owned: bool = False
    """Closed by the server at shutdown (True when :func:`build_backends` made them; objects
    a caller builds and hands in stay the caller's to close)."""


def build_backends(config: ServerConfig) -> Backends:
    """Build every configured generator and the reward (may load a model: seconds). The reward
    spec is checked against the generators first, before any model loads."""
    from particlescale.backends.registry import make_generator
    from particlescale.rewards.checks import check_reward_spec
    from particlescale.rewards.registry import make_reward

    reward_spec = config.reward_spec()
    check_reward_spec(reward_spec, [g.spec for g in config.generators], flag="reward")
    generators: dict[str, Generator] = {}
    specs: dict[str, str] = {}
    for g in config.generators:
        api_key = os.environ.get(g.api_key_env) if g.api_key_env else None
        generators[g.model_id] = make_generator(g.spec, model=g.model, api_key=api_key,
                                                **g.options)
        specs[f"generator:{g.model_id}"] = g.spec
    reward = make_reward(reward_spec, next(iter(generators.values())))
    specs["reward"] = reward_spec
    return Backends(generators, reward, specs, owned=True)


async def _close(obj: Any) -> None:
    for name in ("aclose", "close"):
        fn = getattr(obj, name, None)
        if callable(fn):
            out = fn()
            if inspect.isawaitable(out):
                await out
            return


async def close_backends(b: Backends) -> None:
    if not b.owned:
        return
    seen: set[int] = set()
    for obj in [*b.generators.values(), b.reward]:
        if id(obj) not in seen:
            seen.add(id(obj))
            await _close(obj)


def upstream_addresses(specs: Iterable[str]) -> tuple[str, ...]:
    """The addresses of the URLs in ``specs``, kept from clients: every ``host:port``, and the
    bare host when it cannot be an ordinary word (an IP address, a dotted name, localhost)."""
    out: set[str] = set()
    for spec in specs:
        for url in _URL.findall(spec):
            try:
                parts = urlsplit(url)
                names = {parts.netloc.rpartition("@")[2], parts.hostname or ""}
            except ValueError:
                continue
            out.update(n for n in names if "." in n or ":" in n or n == "localhost")
    return tuple(sorted(out))


async def _probe_url(client: httpx.AsyncClient, url: str) -> str | None:
    """None when the server at ``url`` answers, else why not (path and error class only)."""
    try:
        parts = urlsplit(url)
        root = f"{parts.scheme}://{parts.netloc}"
    except ValueError:
        return "the URL is not valid"
    why = "no answer"
    for target, path in ((f"{root}/health", "/health"),
                         (f"{url.rstrip('/')}/models", f"{parts.path.rstrip('/')}/models")):
        try:
            r = await client.get(target)
        except (httpx.HTTPError, ValueError) as e:  # ValueError: httpx refuses the URL
            why = f"{type(e).__name__} on GET {path}"
            continue
        if r.status_code < 500:
            return None
        why = f"HTTP {r.status_code} on GET {path}"
    return why


async def _probe(obj: Any, spec: str, client: httpx.AsyncClient,
                 hide: tuple[str, ...]) -> dict[str, Any]:
    ready = getattr(obj, "ready", None)
    if callable(ready):
        try:
            out = ready()
            if inspect.isawaitable(out):
                out = await out
            return {"ready": out is not False}
        except Exception as e:
            return {"ready": False, "error": public_message(f"{type(e).__name__}: {e}", hide)}
    urls = _URL.findall(spec)
    if not urls:
        return {"ready": True}
    errors = [e for e in await asyncio.gather(*(_probe_url(client, u) for u in urls)) if e]
    out: dict[str, Any] = {"ready": not errors}
    if errors:
        out["error"] = "; ".join(errors)
    return out


async def readiness(b: Backends) -> dict[str, dict[str, Any]]:
    """Per backend: ``{"ready": bool, "error": ...}`` (upstream URLs are not shown)."""
    objs: dict[str, Any] = {f"generator:{k}": g for k, g in b.generators.items()}
    objs["reward"] = b.reward
    hide = upstream_addresses(b.specs.values())
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
        results = await asyncio.gather(*(
            _probe(obj, b.specs.get(name, getattr(obj, "name", name)), client, hide)
            for name, obj in objs.items()))
    return dict(zip(objs, results, strict=True))
