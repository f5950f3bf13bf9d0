"""``/ready``: probing the server's generators and reward (built by
:func:`particlescale.wiring.wire`; every request shares them).

Each part is asked in turn: an object with a ``ready()`` method (sync or async) is asked
directly; otherwise every ``http(s)://`` URL in its spec is probed with ``GET <server>/health``
then ``GET <url>/models`` (2 s each): a reply below 500 counts as reachable. Embedded models are
ready once built. What it reports names the failed request's path and error class, never an
upstream address or credentials.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

from particlescale.server.errors import public_message
from particlescale.wiring import Wired

PROBE_TIMEOUT = 2.0
_URL = re.compile(r"https?://[^\s,+*]+")


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


async def readiness(b: Wired) -> dict[str, dict[str, Any]]:
    """Per part (``generator:<id>``, ``reward``): ``{"ready": bool, "error": ...}`` (upstream
    URLs are not shown)."""
    objs: dict[str, Any] = {f"generator:{k}": g for k, g in b.generators.items()}
    objs["reward"] = b.reward
    hide = upstream_addresses(b.specs.values())
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
        results = await asyncio.gather(*(
            _probe(obj, b.specs.get(name, getattr(obj, "name", name)), client, hide)
            for name, obj in objs.items()))
    return dict(zip(objs, results, strict=True))
