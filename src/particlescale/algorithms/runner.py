"""Running one method on one problem: the session lifecycle, usage, wall time and the Result.

Every method is ``async def run_x(ctx, cfg, progress) -> Outcome``: it reads the context and
returns its candidates and info; the runner opens the generation session, always closes it
(freeing backend state even when a run fails or is cancelled) and assembles the
:class:`Result`, whose info starts with what the method samples (``target``, ``exact``) and
says how the generator resumed steps (``step_boundary``, where the session tells).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from particlescale.algorithms.common import aggregation_for
from particlescale.algorithms.config import BaseConfig
from particlescale.algorithms.selection import select_answer
from particlescale.algorithms.targets import describe
from particlescale.protocols import GenerationSession, Generator, RewardModel
from particlescale.types import Candidate, Problem, Result, Stopwatch, Trace, Usage


@dataclass
class RunContext:
    problem: Problem
    generator: Generator
    reward: RewardModel
    session: GenerationSession
    rng: np.random.Generator
    budget: int
    aggregation: str
    usage: Usage
    trace: Trace


@dataclass
class Outcome:
    """What a method returns: the final candidates and method-specific facts for info."""

    candidates: list[Candidate]
    info: dict[str, Any] = field(default_factory=dict)


async def run(
    method: str,
    fn: Any,
    cfg: BaseConfig,
    problem: Problem,
    generator: Generator,
    reward: RewardModel,
    budget: int,
    seed: int | None,
    progress: Any = None,
) -> Result:
    rng = np.random.default_rng(seed)
    usage = Usage()
    clock = Stopwatch()
    aggregation = aggregation_for(reward, cfg.aggregation)
    config = {"method": method, "budget": budget, "seed": seed, **cfg.model_dump(),
              "aggregation": aggregation, "generator": getattr(generator, "name", "?"),
              "reward": getattr(reward, "name", "?")}
    trace = Trace(method=method,
                  problem={"id": problem.id, "question": problem.question,
                           "answer": problem.answer},
                  config=config)
    session = generator.session(problem, cfg.sampling(), rng, usage)
    ctx = RunContext(problem, generator, reward, session, rng, budget, aggregation, usage, trace)
    try:
        outcome: Outcome = await fn(ctx, cfg, progress)
    finally:
        await session.aclose()
        usage.wall_time = clock.elapsed()
    info = {**describe(method, cfg), **outcome.info}
    boundary = getattr(session, "step_boundary", None)  # how steps were resumed (backends)
    if boundary is not None:
        info["step_boundary"] = dict(boundary)
    return Result(
        answer=select_answer(outcome.candidates, cfg.selector),
        candidates=outcome.candidates,
        usage=usage,
        trace=trace,
        method=method,
        budget=budget,
        seed=seed,
        info=info,
    )
