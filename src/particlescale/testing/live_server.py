"""Run the particlescale server for real (uvicorn on 127.0.0.1, a free port, its own thread)
for the server tests and benchmark, plus a slow wrapper around the scripted generator for
tests that need a run to last (concurrency limits, disconnects) without a model."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn

from particlescale.protocols import GenerationSession, Generator, SamplingParams
from particlescale.server import ServerConfig, create_app
from particlescale.types import Particle, Problem, Step, Usage
from particlescale.wiring import Wired


class LiveServer:
    """``create_app(config, wired=...)`` served by uvicorn in a background thread."""

    def __init__(self, config: ServerConfig, wired: Wired) -> None:
        self.app = create_app(config, wired=wired)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it. Without it, a server handed a pre-bound socket answers
        # each small request ~40 ms late here (Nagle's algorithm meets delayed ACKs); uvicorn
        # binding its own port (``particlescale serve``) does not have the problem.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning",
                                                     lifespan="on", loop="asyncio"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 300
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Any:
        return self.app.state.ps

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class SlowSession:
    inner: GenerationSession
    delay: float
    log: list[str]

    async def extend(self, parents: Sequence[Particle],
                     children: Sequence[int]) -> list[list[Step]]:
        await asyncio.sleep(self.delay)
        return await self.inner.extend(parents, children)

    def release(self, particles: Iterable[Particle]) -> None:
        self.inner.release(particles)

    async def aclose(self) -> None:
        self.log.append("closed")
        await self.inner.aclose()


@dataclass
class SlowGenerator:
    """Sleeps ``delay`` seconds before every extend; records session opens and closes."""

    inner: Generator
    delay: float = 0.05
    name: str = "slow-scripted"
    log: list[str] = field(default_factory=list)

    def session(self, problem: Problem, params: SamplingParams, rng: np.random.Generator,
                usage: Usage) -> SlowSession:
        self.log.append("opened")
        return SlowSession(self.inner.session(problem, params, rng, usage), self.delay, self.log)
