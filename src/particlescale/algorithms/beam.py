"""Beam search and diverse verifier tree search (DVTS), as in HF search-and-learn.

Beam search with budget N and beam width M::

    expand the root N times
    loop: score the new steps; finished beams leave the search
          keep the N/M best live beams (by aggregated reward); expand each M times
    until no beam is live or N beams have finished

DVTS splits the budget into N/M independent subtrees; each expands its single live node M
times per step and keeps the best child (greedy per subtree), so subtrees stay diverse.
The answer is the best-scoring finished solution (selector ``argmax``) unless configured.
"""

from __future__ import annotations

import numpy as np

from particlescale.algorithms.common import (
    IdSource,
    aggregate,
    candidates_from,
    extend,
    score_particles,
    trace_step,
)
from particlescale.algorithms.config import BeamConfig
from particlescale.algorithms.pf import Progress
from particlescale.algorithms.runner import RunContext
from particlescale.types import Particle


def _log_scores(ctx: RunContext, particles: list[Particle]) -> np.ndarray:
    s = np.array([aggregate(p.rewards, ctx.aggregation) for p in particles], dtype=np.float64)
    return np.log(np.clip(s, 1e-12, None))


async def run_beam(ctx: RunContext, cfg: BeamConfig, progress: Progress | None = None) -> None:
    n = ctx.budget
    m = min(cfg.beam_width, n)
    keep = max(1, n // m)
    ids = IdSource()
    frontier = await extend(ctx.session, [Particle(id=ids())], [n], ids, cfg.max_steps)
    completed: list[Particle] = []
    t = 1
    while True:
        await score_particles(ctx.problem, ctx.reward, frontier, ctx.aggregation, ctx.usage)
        trace_step(ctx.trace, "beam", t, frontier, _log_scores(ctx, frontier), ctx.aggregation)
        completed += [p for p in frontier if p.finished]
        ctx.session.release([p for p in frontier if p.finished])
        live = [p for p in frontier if not p.finished]
        if progress is not None:
            progress({"band": "beam", "step": t, "n": n, "ess": None, "resampled": False,
                      "live": len(live), "finished": len(completed)})
        if not live or len(completed) >= n:
            ctx.session.release(live)
            completed += [p for p in live if len(completed) < n]
            break
        order = np.argsort(-_log_scores(ctx, live), kind="stable")
        kept = [live[i] for i in order[:keep]]
        ctx.session.release([live[i] for i in order[keep:]])
        frontier = await extend(ctx.session, kept, [m] * len(kept), ids, cfg.max_steps)
        t += 1
    ctx.candidates = candidates_from(completed, _log_scores(ctx, completed), ctx.aggregation)


async def run_dvts(ctx: RunContext, cfg: BeamConfig, progress: Progress | None = None) -> None:
    m = min(cfg.beam_width, ctx.budget)
    subtrees = max(1, ctx.budget // m)
    ids = IdSource()
    root = Particle(id=ids())
    heads: list[Particle | None] = [root] * subtrees
    finals: list[Particle | None] = [None] * subtrees
    t = 0
    while any(h is not None for h in heads):
        t += 1
        active = [i for i, h in enumerate(heads) if h is not None]
        parents = [heads[i] for i in active]
        children = await extend(ctx.session, parents, [m] * len(active), ids, cfg.max_steps)
        await score_particles(ctx.problem, ctx.reward, children, ctx.aggregation, ctx.usage)
        for j, i in enumerate(active):
            group = children[j * m:(j + 1) * m]
            trace_step(ctx.trace, f"subtree {i + 1}", t, group, _log_scores(ctx, group),
                       ctx.aggregation)
            best = group[int(np.argmax(_log_scores(ctx, group)))]
            ctx.session.release([c for c in group if c is not best or c.finished])
            if best.finished:
                finals[i], heads[i] = best, None
            else:
                heads[i] = best
        if progress is not None:
            progress({"band": "dvts", "step": t, "n": ctx.budget, "ess": None,
                      "resampled": False, "live": sum(h is not None for h in heads),
                      "finished": sum(f is not None for f in finals)})
    done = [f for f in finals if f is not None]
    ctx.candidates = candidates_from(done, _log_scores(ctx, done), ctx.aggregation)
