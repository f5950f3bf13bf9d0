"""The paper's baselines over the same protocols.

- ``greedy``: one solution at temperature 0.
- ``self-consistency``: N sampled solutions, majority vote on normalised answers
  (Wang et al., 2023).
- ``best-of-n``: N sampled solutions, the one with the highest last-step reward.
- ``weighted-best-of-n``: N sampled solutions, the answer with the largest *sum* of rewards
  over the solutions that give it (weighted majority).
Solutions are generated step by step (the same step delimiter and stopping rule as PF) and
scored once at the end; the reward model's prefix cache keeps that linear in the steps.
"""

from __future__ import annotations

import numpy as np

from particlescale.algorithms.common import (
    IdSource,
    aggregate,
    candidates_from,
    complete,
    extend,
    rollout,
    score_particles,
    trace_step,
)
from particlescale.algorithms.config import BaseConfig
from particlescale.algorithms.runner import Outcome, RunContext
from particlescale.protocols import Progress
from particlescale.types import Particle


async def _sample(ctx: RunContext, cfg: BaseConfig, n: int, progress: Progress | None,
                  band: str) -> list[Particle]:
    """n independent solutions. Independent samples need no step barrier: a session with
    ``extend_to_end`` (the embedded engine) samples them in one job that never holds the batch
    at a step end; others go step by step (``rollout``), reporting progress after each."""
    ids = IdSource()
    root = Particle(id=ids())

    def on_step(t: int, population: list[Particle]) -> None:
        if progress is not None:
            progress({"band": band, "step": t, "n": n, "ess": None, "resampled": False,
                      "live": sum(not p.finished for p in population),
                      "finished": sum(p.finished for p in population)})

    if hasattr(ctx.session, "extend_to_end"):
        (done,) = await complete(ctx.session, [root], n, ids, cfg.max_steps)
        on_step(max(len(p.steps) for p in done), done)
        return done
    first = await extend(ctx.session, [root], [n], ids, cfg.max_steps)
    ctx.session.release([p for p in first if p.finished])
    on_step(1, first)
    return await rollout(ctx.session, first, ids, cfg.max_steps,
                         on_step=lambda t, pop: on_step(t + 1, pop))


def _record(ctx: RunContext, particles: list[Particle], lw: np.ndarray) -> None:
    # The genealogy of independent samples: one node per sample per step.
    longest = max(len(p.steps) for p in particles)
    prev = {i: None for i in range(len(particles))}
    for t in range(1, longest + 1):
        nodes = []
        for i, p in enumerate(particles):
            k = min(t, len(p.steps))
            nodes.append(Particle(id=p.id * 10_000 + t, steps=p.steps[:k], rewards=p.rewards[:k],
                                  finished=k == len(p.steps), parent=prev[i]))
            prev[i] = nodes[-1].id
        trace_step(ctx.trace, "samples", t, nodes, lw if t == longest else np.zeros(len(nodes)),
                   ctx.aggregation)


async def run_greedy(ctx: RunContext, cfg: BaseConfig, progress: Progress | None = None) -> Outcome:
    particles = await _sample(ctx, cfg, 1, progress, "greedy")
    await score_particles(ctx.problem, ctx.reward, particles, ctx.aggregation, ctx.usage)
    _record(ctx, particles, np.zeros(1))
    return Outcome(candidates_from(particles, np.zeros(1), ctx.aggregation), {})


async def run_self_consistency(ctx: RunContext, cfg: BaseConfig,
                               progress: Progress | None = None) -> Outcome:
    """Majority vote needs no reward: solutions are not scored."""
    particles = await _sample(ctx, cfg, ctx.budget, progress, "samples")
    lw = np.zeros(len(particles))
    _record(ctx, particles, lw)
    return Outcome(candidates_from(particles, lw, ctx.aggregation), {})


async def _scored(ctx: RunContext, cfg: BaseConfig, progress: Progress | None) -> tuple[
        list[Particle], np.ndarray]:
    particles = await _sample(ctx, cfg, ctx.budget, progress, "samples")
    await score_particles(ctx.problem, ctx.reward, particles, ctx.aggregation, ctx.usage)
    scores = np.array([aggregate(p.rewards, ctx.aggregation) for p in particles])
    return particles, scores


async def run_best_of_n(ctx: RunContext, cfg: BaseConfig,
                        progress: Progress | None = None) -> Outcome:
    """Weight = the score itself, so argmax picks the highest-reward solution."""
    particles, scores = await _scored(ctx, cfg, progress)
    lw = np.log(np.clip(scores, 1e-12, None))
    _record(ctx, particles, lw)
    return Outcome(candidates_from(particles, lw, ctx.aggregation), {})


async def run_weighted_best_of_n(ctx: RunContext, cfg: BaseConfig,
                                 progress: Progress | None = None) -> Outcome:
    """Weight proportional to the reward; weighted vote sums rewards per answer."""
    particles, scores = await _scored(ctx, cfg, progress)
    lw = np.log(np.clip(scores, 1e-12, None))
    _record(ctx, particles, lw)
    return Outcome(candidates_from(particles, lw, ctx.aggregation), {})
