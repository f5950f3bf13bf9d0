"""Sharding a sweep over a Ray cluster (``particlescale eval --executor ray``; extra ``ray``).

::

    driver:  state = SweepState(cfg)            # validates, loads results.jsonl, plans
             W actors, each builds its own generator + reward from cfg.setup (strings only)
             W x concurrency lanes:  task -> actor.run(task) -> state.finish(task, outcome)
    actor:   outcome = run_task(task, its generator, its reward)     # same code as local

Only the driver grades and writes ``results.jsonl`` (append + fsync per row), so resume,
``--force``, derived rows and traces behave exactly as with the local executor; a killed driver
loses only the tasks in flight. HTTP backends (``openai:URL``) are shared services every actor
talks to; an embedded ``llamacpp`` generator is loaded once per actor.

Without ``--ray-address`` a local Ray instance is started (and stopped afterwards); a Ray that
is already initialised in this process (as in the tests) is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

from particlescale.errors import ConfigError, ParticlescaleError
from particlescale.eval.sweep import (
    ProgressSink,
    SweepConfig,
    SweepState,
    SweepSummary,
    Task,
    run_task,
)
from particlescale.wiring import PLUGIN, Setup, Wired


class EvalWorker:
    """A Ray actor: one generator and reward, many tasks (``max_concurrency`` at a time)."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.wired: Wired | None = None
        self._lock: asyncio.Lock | None = None

    async def ready(self) -> str:
        """Build the generator and reward now: a bad model fails the sweep before any task."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.wired is None:
                self.wired = self.setup.wire()
        return f"{os.uname().nodename}:{os.getpid()}"

    async def run(self, task: Task) -> dict[str, Any]:
        await self.ready()
        assert self.wired is not None
        return await run_task(task, self.wired.generator, self.wired.reward)

    async def close(self) -> None:
        if self.wired is not None:
            await self.wired.aclose()
            self.wired = None


def absolute_plugins(spec: Setup) -> Setup:
    """Plugin file paths made absolute: Ray workers do not run in the driver's cwd."""

    def fix(s: str | None) -> str | None:
        if s is None or not s.startswith(PLUGIN):
            return s
        target, _, attr = s[len(PLUGIN):].rpartition(":")
        if target.endswith(".py"):
            return f"{PLUGIN}{Path(target).expanduser().resolve()}:{attr}"
        return s

    return dataclasses.replace(spec, generator=fix(spec.generator) or spec.generator,
                               reward=fix(spec.reward))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor: 'ray' needs the ray extra: pip install "
                          "'particlescale[ray]'") from None
    return ray


async def arun_sweep_ray(
    cfg: SweepConfig,
    *,
    address: str | None = None,
    workers: int | None = None,
    progress: ProgressSink | None = None,
) -> SweepSummary:
    ray = _import_ray()
    if workers is not None and workers < 1:
        raise ConfigError(f"ray-workers: must be >= 1, got {workers}")
    state = SweepState(cfg, progress)  # all validation and resume before Ray starts
    started = False
    actors: list[Any] = []
    try:
        todo = state.pending()
        state.start_progress()
        if not todo:
            return state.summary
        if not ray.is_initialized():
            env = {"PYTHONPATH": os.pathsep.join(
                p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)}
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": env})
            except Exception as e:
                raise ParticlescaleError(f"ray-address: cannot start or join Ray at "
                                         f"{address or 'a new local instance'} ({e})") from None
            started = True
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        n = min(n, len(todo))
        actor_cls = ray.remote(num_cpus=1)(EvalWorker)
        setup = absolute_plugins(cfg.setup)
        actors = [actor_cls.options(max_concurrency=cfg.concurrency).remote(setup)
                  for _ in range(n)]
        try:
            await asyncio.gather(*(a.ready.remote() for a in actors))
        except Exception as e:
            raise ParticlescaleError(f"ray: a worker could not build its generator and reward: "
                                     f"{_cause(e)}") from None
        queue: asyncio.Queue[Task] = asyncio.Queue()
        for t in todo:
            queue.put_nowait(t)
        dead: list[str] = []

        async def lane(actor: Any) -> None:
            while True:
                try:
                    task = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    outcome = await actor.run.remote(task)
                except ray.exceptions.RayActorError as e:
                    # The worker died: leave the task for another lane (or for resume).
                    queue.put_nowait(task)
                    dead.append(_cause(e))
                    return
                await state.finish(task, outcome)

        await asyncio.gather(*(lane(a) for a in actors for _ in range(cfg.concurrency)))
        if not queue.empty():
            raise ParticlescaleError(
                f"ray: every worker died with {queue.qsize()} tasks left "
                f"({dead[0] if dead else '?'}); "
                "the finished results are saved: re-run the same command to resume"
            )
        return state.summary
    finally:
        for a in actors:
            with contextlib.suppress(Exception):  # a dead actor has nothing left to close
                await a.close.remote()
        if started:
            ray.shutdown()
        state.close()


def _cause(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def run_sweep_ray(cfg: SweepConfig, **kwargs: Any) -> SweepSummary:
    """Synchronous twin of :func:`arun_sweep_ray`."""
    return asyncio.run(arun_sweep_ray(cfg, **kwargs))
