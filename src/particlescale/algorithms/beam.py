"""Beam search and diverse verifier tree search (DVTS), as in HF search-and-learn.

Both follow ``src/sal/search/beam_search.py`` (``_beam_search``) and
``src/sal/search/diverse_verifier_tree_search.py`` (``_dvts``) of huggingface/search-and-learn,
with the options of its beam-search recipes (``filter_duplicates: true``; ``sort_completed``
left at its default, false). Budget N, beam width M; a beam's score is its aggregated reward.

Beam search (``run_beam``)::

    N beams each sample a first step
    loop: score the new steps; every beam that finished joins `completed` (in list order)
          stop when no beam is live
          filter_duplicates: drop a live beam whose text equals an earlier live beam's
          keep the N/M best live beams (fewer if fewer are live), in list order
          refill to N: the kept list repeated, cut at N, each entry sampling one step
          (K kept beams: the first N mod K get N//K + 1 children, the others N//K;
          K = N/M gives M each; the new list is ordered as HF's repeated list)
    result: the first N of `completed` (sort_completed: the N best, ties in finishing
            order); beams with the same text are one candidate whose copies all count

So, as in HF, the search runs until no beam is live (not until N have finished), every
round samples N steps whatever the number of live beams, and the result always holds N
solutions (the last round's N beams all finished; HF's refill of fewer than N finished beams
cannot happen here, nor in HF). Among equal scores the kept beams are the later ones in list
order (HF takes the last N/M of an ascending ``np.argsort``, which numpy sorts stably for up
to 16 beams).

DVTS (``run_dvts``): N/M independent subtrees; each live subtree samples M children of its
current node, all are scored, and the best child (the first of equal scores, ``np.argmax``)
becomes the node; a subtree ends when that child is finished. Its result is *all M
children of its last expansion* (HF: ``previous_text + next_texts[i]`` for each i), so the
run returns N leaves in all, including siblings that had not finished (a partial solution,
whose answer is read like any other); each leaf is weighted by its own score, which is what
``weighted-vote`` and ``vote`` then count.

The answer is the best-scoring leaf (selector ``argmax``, HF's ``pred``) unless configured.

Deliberate differences from HF, each because the project uses one rule for every method:

- A solution is finished on EOS, on a step containing ``\\boxed``, or at the step cap
  ``max_steps`` (the paper's rule, as in PF). HF's beam search ends a beam on EOS, an empty
  step or a step cut by ``max_tokens`` (2048, about a whole solution), its DVTS on EOS, an
  empty step or ``boxed{``; and HF's last iteration (``num_iterations``, 40) generates to EOS
  in one call, where here the 40th step ends at the delimiter like any other.
- HF's ``lookahead`` (0 by default) is not implemented.
- DVTS with N not a multiple of M: HF refuses; here floor(N/M) subtrees return M*floor(N/M)
  leaves. M larger than N is cut to N (one subtree, or one kept beam).
- Weights: a candidate's weight is proportional to its aggregated score under the run's
  aggregation; HF's weighted vote sums the *last-step* score whatever ``agg_strategy`` is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from particlescale.algorithms.common import (
    IdSource,
    aggregate,
    candidates_from,
    extend,
    score_particles,
    trace_step,
)
from particlescale.algorithms.config import BeamConfig, DVTSConfig
from particlescale.algorithms.runner import Outcome, RunContext
from particlescale.protocols import Progress
from particlescale.types import Particle


def _scores(ctx: RunContext, particles: Sequence[Particle]) -> np.ndarray:
    return np.array([aggregate(p.rewards, ctx.aggregation) for p in particles],
                    dtype=np.float64)


def _log(scores: np.ndarray) -> np.ndarray:
    return np.log(np.clip(scores, 1e-12, None))


def refill_counts(kept: int, n: int) -> list[int]:
    """Children per kept beam when the kept list is repeated and cut at ``n`` (HF's refill)."""
    return [n // kept + (1 if j < n % kept else 0) for j in range(kept)]


def _interleave(groups: list[list[Particle]]) -> list[Particle]:
    """Children in the order of HF's repeated list: every kept beam's first child, then every
    kept beam's second child, and so on."""
    out: list[Particle] = []
    for r in range(max((len(g) for g in groups), default=0)):
        out += [g[r] for g in groups if r < len(g)]
    return out


def _unique(particles: list[Particle]) -> tuple[list[Particle], list[Particle]]:
    """(first beam of each distinct text in order, the later repeats)."""
    seen: set[str] = set()
    keep, drop = [], []
    for p in particles:
        (drop if p.text in seen else keep).append(p)
        seen.add(p.text)
    return keep, drop


async def run_beam(ctx: RunContext, cfg: BeamConfig, progress: Progress | None = None) -> Outcome:
    n = ctx.budget
    m = min(cfg.beam_width, n)
    keep = max(1, n // m)
    ids = IdSource()
    frontier = await extend(ctx.session, [Particle(id=ids())], [n], ids, cfg.max_steps)
    completed: list[Particle] = []
    t = 1
    while True:
        await score_particles(ctx.problem, ctx.reward, frontier, ctx.aggregation, ctx.usage)
        trace_step(ctx.trace, "beam", t, frontier, _log(_scores(ctx, frontier)),
                   ctx.aggregation)
        completed += [p for p in frontier if p.finished]
        ctx.session.release([p for p in frontier if p.finished])
        live = [p for p in frontier if not p.finished]
        if progress is not None:
            progress({"band": "beam", "step": t, "n": n, "ess": None, "resampled": False,
                      "live": len(live), "finished": len(completed)})
        if not live:
            break
        if cfg.filter_duplicates:
            live, repeats = _unique(live)
            ctx.session.release(repeats)
        top = set(np.argsort(_scores(ctx, live), kind="stable")[-keep:].tolist())
        kept = [p for i, p in enumerate(live) if i in top]
        ctx.session.release([p for i, p in enumerate(live) if i not in top])
        counts = refill_counts(len(kept), n)
        children = await extend(ctx.session, kept, counts, ids, cfg.max_steps)
        groups, start = [], 0
        for c in counts:
            groups.append(children[start:start + c])
            start += c
        frontier = _interleave(groups)
        t += 1
    finished = len(completed)
    if cfg.sort_completed:
        completed = sorted(completed, key=lambda p: aggregate(p.rewards, ctx.aggregation),
                           reverse=True)
    # Every round holds N beams and the search ends with a round in which all finished, so
    # at least N have finished: HF's refill of `completed` up to N never has work to do.
    result = completed[:n]
    return Outcome(candidates_from(result, _log(_scores(ctx, result)), ctx.aggregation),
                   {"finished_beams": finished})


async def run_dvts(ctx: RunContext, cfg: DVTSConfig, progress: Progress | None = None) -> Outcome:
    m = min(cfg.beam_width, ctx.budget)
    subtrees = max(1, ctx.budget // m)
    ids = IdSource()
    root = Particle(id=ids())
    heads: list[Particle | None] = [root] * subtrees
    leaves: list[list[Particle]] = [[] for _ in range(subtrees)]
    t = 0
    while any(h is not None for h in heads):
        t += 1
        active = [i for i, h in enumerate(heads) if h is not None]
        parents = [heads[i] for i in active]
        children = await extend(ctx.session, parents, [m] * len(active), ids, cfg.max_steps)
        await score_particles(ctx.problem, ctx.reward, children, ctx.aggregation, ctx.usage)
        for j, i in enumerate(active):
            group = children[j * m:(j + 1) * m]
            scores = _scores(ctx, group)
            trace_step(ctx.trace, f"subtree {i + 1}", t, group, _log(scores), ctx.aggregation)
            best = group[int(np.argmax(scores))]
            leaves[i] = group
            ctx.session.release([c for c in group if c is not best or c.finished])
            heads[i] = None if best.finished else best
        if progress is not None:
            progress({"band": "dvts", "step": t, "n": ctx.budget, "ess": None,
                      "resampled": False, "live": sum(h is not None for h in heads),
                      "finished": sum(h is None for h in heads)})
    result = [p for group in leaves for p in group]
    return Outcome(candidates_from(result, _log(_scores(ctx, result)), ctx.aggregation),
                   {"leaves": len(result),
                    "unfinished_leaves": sum(not p.finished for p in result)})
