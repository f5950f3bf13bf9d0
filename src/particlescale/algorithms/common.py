"""Pieces shared by the algorithms: scoring and aggregation, potentials, rollouts,
candidates and trace records.

Rewards are stored per step on each particle (``Particle.rewards[i]`` scores the prefix
``steps[:i+1]``); an aggregation turns them into one score, and a transform turns the score
into a log-potential (``logit`` as in the paper's softmax over logits, or ``log``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from particlescale.aggregation import EPS, aggregate
from particlescale.answers import extract_answer, has_boxed
from particlescale.protocols import GenerationSession, RewardModel
from particlescale.smc import log_normalize, normalize
from particlescale.types import (
    STEP_SEPARATOR,
    Candidate,
    Particle,
    Problem,
    Step,
    Trace,
    TraceNode,
    TraceStep,
    Usage,
)


def aggregation_for(reward: RewardModel, aggregation: str | None) -> str:
    """The aggregation to use: the configured one, else the reward model's own default."""
    if aggregation is not None:
        return aggregation
    return str(getattr(reward, "default_aggregation", "last"))


def potential(score: float | np.ndarray, transform: str) -> np.ndarray:
    """Log-potential of an aggregated reward: logit(r) (paper) or log(r)."""
    r = np.clip(np.asarray(score, dtype=np.float64), EPS, 1 - EPS)
    if transform == "logit":
        return np.log(r) - np.log1p(-r)
    return np.log(r)


def merged_step(steps: Sequence[Step]) -> Step:
    """The whole prefix as one step, for ``model`` aggregation (the PRM sees it as one step)."""
    return Step(text=STEP_SEPARATOR.join(s.text for s in steps).strip(),
                tokens=sum(s.tokens for s in steps), finish=steps[-1].finish,
                features=steps[-1].features)


async def score_particles(
    problem: Problem,
    reward: RewardModel,
    particles: Sequence[Particle],
    aggregation: str,
    usage: Usage,
) -> None:
    """Fill in the rewards of every step a particle has not been scored for, in one call."""
    todo = [p for p in particles if len(p.rewards) < len(p.steps)]
    if not todo:
        return
    if aggregation == "model":
        # One trajectory per missing prefix, each being the whole prefix as a single step.
        jobs = [(p, k) for p in todo for k in range(len(p.rewards) + 1, len(p.steps) + 1)]
        values = await reward.score(problem, [[merged_step(p.steps[:k])] for p, k in jobs], usage)
        for (p, _k), v in zip(jobs, values, strict=True):
            p.rewards = (*p.rewards, float(v[-1]))
        return
    values = await reward.score(problem, [p.steps for p in todo], usage)
    for p, v in zip(todo, values, strict=True):
        if len(v) != len(p.steps):
            raise RuntimeError(
                f"reward {getattr(reward, 'name', reward)!r} returned {len(v)} scores for a "
                f"trajectory of {len(p.steps)} steps"
            )
        p.rewards = tuple(float(x) for x in v)


def is_final(step: Step, n_steps: int, max_steps: int) -> bool:
    """The paper's stopping rule: EOS, a step containing \\boxed, or the step cap."""
    return step.finish == "eos" or has_boxed(step.text) or n_steps >= max_steps


class IdSource:
    """Particle ids, unique within a run (the trace's node ids)."""

    def __init__(self) -> None:
        self._next = itertools.count()

    def __call__(self) -> int:
        return next(self._next)


async def extend(
    session: GenerationSession,
    parents: Sequence[Particle],
    children: Sequence[int],
    ids: IdSource,
    max_steps: int,
) -> list[Particle]:
    """Extend each parent by ``children[i]`` sampled steps; returns the children in order."""
    pairs = [(p, c) for p, c in zip(parents, children, strict=True) if c > 0]
    if not pairs:
        return []
    steps = await session.extend([p for p, _ in pairs], [c for _, c in pairs])
    out: list[Particle] = []
    for (parent, count), new in zip(pairs, steps, strict=True):
        if len(new) != count:
            raise RuntimeError(f"generator returned {len(new)} steps for {count} children")
        for step in new:
            n = len(parent.steps) + 1
            out.append(
                Particle(
                    id=ids(),
                    steps=(*parent.steps, step),
                    rewards=parent.rewards,
                    finished=is_final(step, n, max_steps),
                    parent=parent.id,
                )
            )
    return out


def copy_particle(p: Particle, ids: IdSource) -> Particle:
    """A resampled copy (a new node in the genealogy) of a particle that is not extended."""
    return replace(p, id=ids(), parent=p.id)


async def rollout(
    session: GenerationSession,
    roots: Sequence[Particle],
    ids: IdSource,
    max_steps: int,
    on_step: object = None,
) -> list[Particle]:
    """Extend every particle to the end (EOS, \\boxed or step cap) without any reward.

    ``on_step(t, particles)`` is called after each step with the whole population.
    """
    population = list(roots)
    t = 0
    while any(not p.finished for p in population):
        t += 1
        live = [p for p in population if not p.finished]
        children = await extend(session, live, [1] * len(live), ids, max_steps)
        it = iter(children)
        population = [p if p.finished else next(it) for p in population]
        session.release([p for p in population if p.finished])
        if callable(on_step):
            on_step(t, population)
    return population


async def complete(
    session: GenerationSession,
    parents: Sequence[Particle],
    k: int,
    ids: IdSource,
    max_steps: int,
    *,
    barrier: bool = False,
) -> list[list[Particle]]:
    """``k`` independent completions of each parent, to the end of the solution.

    With a session that has ``extend_to_end`` (the llama.cpp one) and ``barrier=False``, all
    of them are sampled in one engine job that never holds the batch at a step end
    (independent samples need no step barrier); otherwise with ``rollout``, which ends every
    step of every particle before starting the next.
    """
    to_end = getattr(session, "extend_to_end", None)
    if barrier or to_end is None:
        first = await extend(session, parents, [k] * len(parents), ids, max_steps)
        session.release([p for p in first if p.finished])
        done = await rollout(session, first, ids, max_steps)
        return [done[i * k:(i + 1) * k] for i in range(len(parents))]
    runs = await to_end(list(parents), [k] * len(parents), lambda s, n: is_final(s, n, max_steps))
    out = [[Particle(id=ids(), steps=(*parent.steps, *steps), parent=parent.id, finished=True)
            for steps in kids] for parent, kids in zip(parents, runs, strict=True)]
    session.release([p for kids in out for p in kids])
    return out


def candidates_from(
    particles: Sequence[Particle],
    log_weights: Sequence[float] | np.ndarray,
    aggregation: str,
) -> list[Candidate]:
    """Candidates with normalised weights; identical solutions (resampled copies) are merged."""
    w = normalize(np.asarray(log_weights, dtype=np.float64)) if len(particles) else []
    merged: dict[str, Candidate] = {}
    for p, wi in zip(particles, w, strict=True):
        text = p.text
        if text in merged:
            c = merged[text]
            merged[text] = replace(c, weight=c.weight + float(wi), copies=c.copies + 1)
            continue
        merged[text] = Candidate(
            text=text,
            answer=extract_answer(text),
            weight=float(wi),
            score=aggregate(p.rewards, aggregation) if p.rewards else float("nan"),
            steps=len(p.steps),
            tokens=sum(s.tokens for s in p.steps),
            rewards=tuple(p.rewards),
        )
    return sorted(merged.values(), key=lambda c: -c.weight)


def trace_step(
    trace: Trace,
    band: str,
    t: int,
    particles: Sequence[Particle],
    log_weights: Sequence[float] | np.ndarray,
    aggregation: str,
    *,
    ess: float | None = None,
    resampled: bool = False,
    temperature: float | None = None,
    reference: int | None = None,
) -> None:
    """Record the population after step ``t`` (one node per particle)."""
    lw = np.asarray(log_weights, dtype=np.float64)
    norm = log_normalize(lw) if lw.size else lw
    nodes = []
    for p, log_w in zip(particles, norm, strict=True):
        last = p.steps[-1].text if p.steps else ""
        nodes.append(
            TraceNode(
                id=p.id,
                parent=p.parent,
                text=last,
                reward=p.rewards[-1] if p.rewards else None,
                score=aggregate(p.rewards, aggregation) if p.rewards else None,
                log_weight=float(log_w),
                finished=p.finished,
                answer=extract_answer(p.text) if p.finished else None,
                reference=reference is not None and p.id == reference,
            )
        )
    trace.steps.append(
        TraceStep(band=band, t=t, nodes=nodes, ess=ess, resampled=resampled,
                  temperature=temperature)
    )
