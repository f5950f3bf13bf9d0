"""The public entry point: ``solve`` / ``asolve``."""

from __future__ import annotations

import asyncio
from typing import Any

from particlescale.algorithms import ConfigError, get_method, make_config
from particlescale.algorithms.runner import run
from particlescale.protocols import Generator, RewardModel
from particlescale.types import Problem, Result

MAX_BUDGET = 4096


def _check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ConfigError(f"budget: must be an integer number of particles, got {budget!r}")
    if budget < 1:
        raise ConfigError(f"budget: must be >= 1 (the number of particles), got {budget}")
    if budget > MAX_BUDGET:
        raise ConfigError(f"budget: {budget} is larger than the maximum {MAX_BUDGET}")
    return budget


async def asolve(
    question: str | Problem,
    *,
    generator: Generator,
    reward: RewardModel,
    method: str = "pf",
    budget: int = 8,
    seed: int | None = None,
    progress: Any = None,
    **options: Any,
) -> Result:
    """Solve one problem with ``method`` at ``budget`` particles.

    ``options`` are the method's configuration (see ``particlescale.algorithms.config``); an
    unknown method or option, or a bad value, raises :class:`ConfigError` before any model call.
    ``progress``, if given, is called with a dict after every step (band, step, ess, live...).
    """
    m = get_method(method)
    cfg = make_config(method, options)
    budget = _check_budget(budget)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed: must be a non-negative integer or None, got {seed!r}")
    problem = question if isinstance(question, Problem) else Problem(question=question)
    return await run(method, m.run, cfg, problem, generator, reward, budget, seed, progress)


def solve(question: str | Problem, **kwargs: Any) -> Result:
    """Synchronous twin of :func:`asolve` (runs its own event loop)."""
    return asyncio.run(asolve(question, **kwargs))
