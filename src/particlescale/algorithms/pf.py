"""Particle filtering (Puri et al., 2025, Algorithm 1) and the conditional SMC sweep that
particle Gibbs and parallel tempering build on.

State-space view: the partial solution x_{1:t} is the state, the LM is the transition kernel,
the reward r(x_{1:t}) is the potential. One sweep::

    x^i_1 ~ LM(. | prompt)                      for the N free slots
    loop t = 1, 2, ...:
        r^i_t  = PRM(x^i_{1:t}), aggregated     (finished particles keep their reward)
        phi^i_t = beta_t * transform(r^i_t)     transform = logit (paper) or log
        paper weights:       log w^i = phi^i_t          (the current reward alone, even
                                                     after a step that did not resample)
        incremental weights: log w^i += phi^i_t - phi^i_{t-1}   (target  p(x) r(x)^beta)
        beta_t: constant, linear or adaptive (``next_beta``); beta_max at the last step
        stop when every particle is finished (EOS, \\boxed, or max_steps)
        if ESS/N < threshold (1.0 = always): a^i ~ resample(w)  else a^i = i
        x^i_{t+1} ~ LM(. | x^{a^i}_{1:t})  for live ancestors; finished ancestors are copied
    answer = selector over the final weighted population (paper: highest weight)

Conditional SMC (particle Gibbs): slot N-1 holds the reference trajectory, truncated to t
steps, weighted with its reward *at step t*; it is never resampled away nor extended past
its own steps, while the other slots may fork from it.

Ancestor sampling (PGAS; Lindsten, Jordan & Schön, 2014; ``ancestor_sampling=True``, needs
incremental weights and a constant beta): whenever the sweep resamples at step t, the
reference x' also draws its ancestor instead of keeping its own line::

    P(a = i)  ∝  w^i_t * q(x'_{t+1:T} | x^i_{1:t}) * exp(beta*phi(x^i_{1:t} + x'_{t+1:T})
                                                      - beta*phi(x^i_{1:t}))
    x'  <-  x^a_{1:t} + x'_{t+1:T}        (per-step rewards rescored from step t+1 on)

i.e. w^i_t * gamma_T(spliced) / gamma_t(x^i_{1:t}) with gamma_t = q(x_{1:t}) exp(beta*phi_t),
q being the generator's proposal (the LM at the sampling temperature and top-p: the weights
never correct for it, so it is the q of the target). Candidates: while the reference has
steps left, the live particles (all of exactly t steps) and the reference's own prefix; a
finished particle cannot be continued, so its weight is 0. Once the reference has ended
(x'_{t+1:T} empty), a live particle cannot stop without a step (weight 0) and every finished
particle, of whatever length, is a candidate with weight w^i_t (the ratio is 1). At steps
where the sweep does not resample (ESS above the threshold) nobody changes ancestor, the
reference included. Cost per resampling step: one ``continuation_logprob`` call scoring the
reference's remaining steps after each live prefix, one reward call for the spliced paths.

Resampled children of one parent are generated together (``extend(parent, k)``), so a
backend shares the parent's prefix (KV cache, prefix cache) across its children.
The log normalising-constant estimate ``log_z`` is exact in expectation (unbiased Z) with
incremental weights; with paper weights it is reported but has no such meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from particlescale.algorithms.common import (
    IdSource,
    aggregate,
    copy_particle,
    extend,
    potential,
    score_particles,
    trace_step,
)
from particlescale.algorithms.config import PFConfig
from particlescale.errors import ConfigError
from particlescale.protocols import ContinuationScorer, GenerationSession, Progress, RewardModel
from particlescale.smc import ess, log_normalize, logsumexp, normalize
from particlescale.smc import resampling as resampling_schemes
from particlescale.smc.tempering import adaptive_beta, conditional_ess
from particlescale.types import Particle, Problem, Trace, Usage


@dataclass
class Sweep:
    """The final population of one (conditional) SMC sweep."""

    particles: list[Particle]
    log_weights: np.ndarray
    log_z: float
    resamplings: int
    steps: int
    ancestor_moves: int = 0  # times ancestor sampling re-attached the reference elsewhere
    betas: list[float] = field(default_factory=list)  # inverse softmax temperature per step
    cess: list[float] = field(default_factory=list)  # incremental weights: CESS/N per step


def strip_handles(p: Particle) -> Particle:
    """A copy whose steps carry no backend handle (they may have been released or reused)."""
    return replace(p, steps=tuple(replace(s, handle=None) for s in p.steps))


def reference_at(ref: Particle, t: int, ids: IdSource, parent: int | None) -> Particle:
    """The reference trajectory truncated to ``t`` steps, with its own per-step rewards."""
    k = min(t, len(ref.steps))
    return Particle(
        id=ids(),
        steps=ref.steps[:k],
        rewards=ref.rewards[:k],
        finished=k >= len(ref.steps),
        parent=parent,
    )


def next_beta(cfg: PFConfig, t: int, lw: np.ndarray, raw: np.ndarray, prev_phi: np.ndarray,
              beta_prev: float, done: bool) -> float:
    """Inverse softmax temperature of step t: fixed, linearly annealed or adaptive, and always
    beta_max = 1/softmax_temperature at the last step, so that a run's final weights (and
    log Z) refer to its stated target whatever the ladder did on the way.

    Adaptive with incremental weights: the largest beta in [beta_{t-1}, beta_max] whose
    tempering increment keeps the conditional ESS at ``ess_target`` (see
    :mod:`particlescale.smc.tempering`). Adaptive with paper weights (which forget the past):
    the largest beta in [0, beta_max] with ESS(beta * phi_t)/N >= ``ess_target``.
    """
    beta_max = 1.0 / cfg.softmax_temperature
    if cfg.tempering == "none" or done:
        return beta_max
    if cfg.tempering == "linear":
        frac = min(1.0, (t - 1) / max(1, cfg.anneal_steps - 1))
        tau = cfg.temperature_start + frac * (cfg.softmax_temperature - cfg.temperature_start)
        return 1.0 / tau
    if cfg.weights == "paper":
        return adaptive_beta(np.zeros_like(raw), raw, 0.0, beta_max, cfg.ess_target)
    base = lw + beta_prev * raw - prev_phi  # new weights at the old temperature
    return adaptive_beta(base, raw, beta_prev, beta_max, cfg.ess_target)


def step_log_weights(cfg: PFConfig, beta: float, lw: np.ndarray, raw: np.ndarray,
                     prev_phi: np.ndarray) -> np.ndarray:
    """Paper weights: beta * phi_t (the current reward alone; carried weights are dropped even
    when the previous step did not resample). Incremental: lw + beta_t*phi_t - beta_{t-1}*phi_{t-1}.
    """
    if cfg.weights == "paper":
        return beta * raw
    return lw + beta * raw - prev_phi


async def sweep(
    problem: Problem,
    session: GenerationSession,
    reward: RewardModel,
    cfg: PFConfig,
    aggregation: str,
    rng: np.random.Generator,
    usage: Usage,
    trace: Trace,
    ids: IdSource,
    n: int,
    *,
    band: str = "pf",
    reference: Particle | None = None,
    softmax_temperature: float | None = None,
    progress: Progress | None = None,
    ancestor_sampling: bool = False,
) -> Sweep:
    """One SMC sweep of ``n`` particles; with ``reference``, a conditional SMC sweep (with
    ``ancestor_sampling``, PGAS: the reference redraws its ancestor at each resampling)."""
    if softmax_temperature is not None:
        cfg = cfg.model_copy(update={"softmax_temperature": softmax_temperature})
    if ancestor_sampling and (cfg.weights != "incremental" or cfg.tempering != "none"):
        raise ConfigError("ancestor_sampling: needs weights='incremental' and tempering='none'")
    ancestor_sampling = ancestor_sampling and reference is not None
    moves = 0
    if reference is not None:
        reference = strip_handles(reference)
    n_free = n - 1 if reference is not None else n
    resample = resampling_schemes.get(cfg.resampling)
    transform = cfg.potential_transform()

    root = Particle(id=ids())
    population = await extend(session, [root], [n_free], ids, cfg.max_steps)
    ref_node: Particle | None = None
    if reference is not None:
        ref_node = reference_at(reference, 1, ids, root.id)
        population.append(ref_node)
    session.release([p for p in population if p.finished])

    lw = np.zeros(n)  # incremental log-weights, reset by resampling
    prev_phi = np.zeros(n)  # beta_{t-1} * transform(r_{t-1}) of each particle's ancestor line
    log_z = 0.0
    beta_prev = 0.0  # the first step's target is p(x_1) exp(beta_1 phi_1): from beta_0 = 0
    betas: list[float] = []
    cess: list[float] = []  # conditional ESS/N of each step's tempering increment
    resamplings = 0
    t = 1
    while True:
        await score_particles(problem, reward, population, aggregation, usage)
        raw = potential(np.array([aggregate(p.rewards, aggregation) for p in population]),
                        transform)

        done = all(p.finished for p in population)
        beta = next_beta(cfg, t, lw, raw, prev_phi, beta_prev, done)
        new_lw = step_log_weights(cfg, beta, lw, raw, prev_phi)
        if cfg.weights == "incremental":
            log_prev = log_normalize(lw)
            log_z += logsumexp(log_prev + (new_lw - lw))
            cess.append(conditional_ess(lw + beta_prev * raw - prev_phi,
                                        (beta - beta_prev) * raw))
        betas.append(beta)
        lw, prev_phi, beta_prev = new_lw, beta * raw, beta
        current_ess = ess(lw)
        do_resample = not done and (cfg.ess_threshold >= 1.0
                                    or current_ess / n < cfg.ess_threshold)
        trace_step(trace, band, t, population, lw, aggregation, ess=current_ess,
                   resampled=do_resample, temperature=1.0 / beta if beta > 0 else float("inf"),
                   reference=ref_node.id if ref_node is not None else None)
        if progress is not None:
            progress({"band": band, "step": t, "ess": current_ess, "n": n,
                      "live": sum(not p.finished for p in population),
                      "finished": sum(p.finished for p in population), "resampled": do_resample})
        if done:
            break

        if do_resample:
            ancestors = resample(normalize(lw), rng, n_free)
            resamplings += 1
        else:
            ancestors = np.arange(n_free)
        ref_ancestor = None
        if ancestor_sampling and do_resample:
            assert reference is not None and ref_node is not None
            ref_ancestor, reference = await sample_reference_ancestor(
                problem, session, reward, aggregation, usage, transform, beta, population,
                lw, prev_phi, reference, t, rng)
            if ref_ancestor != len(population) - 1:
                moves += 1
                trace.events.append({"kind": "ancestor", "band": band, "t": t,
                                     "reference": population[ref_ancestor].id})
        population, lw, prev_phi, ref_node = await _propagate(
            session, population, lw, prev_phi, ancestors, do_resample, ids, cfg.max_steps,
            reference, ref_node, t, ref_ancestor,
        )
        t += 1

    session.release(population)
    return Sweep(particles=population, log_weights=lw, log_z=log_z, resamplings=resamplings,
                 steps=t, ancestor_moves=moves, betas=betas, cess=cess)


async def require_continuation_scorer(session: GenerationSession, generator_name: str) -> None:
    """Fail before any generation when ancestor sampling cannot run on this session."""
    if not isinstance(session, ContinuationScorer):
        raise ConfigError(
            f"ancestor_sampling: generator {generator_name!r} cannot score continuations (its "
            "session has no continuation_logprob); use ancestor_sampling=false or a backend "
            "that can: llamacpp, openai with a vLLM server")
    await session.continuation_logprob([], [])  # the session's own checks (server kind...)


async def sample_reference_ancestor(
    problem: Problem,
    session: GenerationSession,
    reward: RewardModel,
    aggregation: str,
    usage: Usage,
    transform: str,
    beta: float,
    population: list[Particle],
    lw: np.ndarray,
    prev_phi: np.ndarray,
    reference: Particle,
    t: int,
    rng: np.random.Generator,
) -> tuple[int, Particle]:
    """Draw the reference's ancestor at step ``t`` (see the module docstring).

    ``population[-1]`` is the reference truncated to ``t`` steps; ``lw`` are the step-t
    log-weights and ``prev_phi`` the step-t log-potentials ``beta * phi(x^i_{1:t})``. Returns
    the ancestor's index and the (possibly spliced, rescored) reference.
    """
    n = len(population)
    own = n - 1
    rest = reference.steps[t:]
    log_as = np.full(n, -np.inf)
    spliced: dict[int, Particle] = {}
    if not rest:
        # The reference has ended: a spliced path x^i_{1:t} + (nothing) exists only for a
        # finished x^i, and its target ratio gamma_T / gamma_t is 1.
        for i, p in enumerate(population):
            if p.finished:
                log_as[i] = lw[i]
    else:
        live = [i for i, p in enumerate(population) if not p.finished]
        if own not in live or any(len(population[i].steps) != t for i in live):
            raise RuntimeError("ancestor sampling: live particles must all have t steps")
        logq = await session.continuation_logprob(  # type: ignore[attr-defined]
            [population[i] for i in live], rest)
        if len(logq) != len(live):
            raise RuntimeError(f"continuation_logprob returned {len(logq)} values for "
                               f"{len(live)} prefixes")
        for i in live:
            if i != own:
                p = strip_handles(population[i])
                spliced[i] = Particle(id=reference.id, steps=(*p.steps, *rest),
                                      rewards=p.rewards, finished=True)
        await score_particles(problem, reward, list(spliced.values()), aggregation, usage)
        spliced[own] = reference
        final = np.array([aggregate(spliced[i].rewards, aggregation) for i in live])
        phi_final = beta * potential(final, transform)
        log_as[live] = lw[live] + np.asarray(logq, dtype=np.float64) + phi_final \
            - prev_phi[live]
    log_as = np.where(np.isnan(log_as), -np.inf, log_as)
    if not np.isfinite(log_as).any():  # nothing can carry it (cannot happen exactly)
        return own, reference
    a = int(rng.choice(n, p=normalize(log_as)))
    if a == own:
        return own, reference
    new_ref = spliced[a] if rest else replace(strip_handles(population[a]), id=reference.id)
    return a, replace(new_ref, parent=None)


async def _propagate(
    session: GenerationSession,
    population: list[Particle],
    lw: np.ndarray,
    prev_phi: np.ndarray,
    ancestors: np.ndarray,
    resampled: bool,
    ids: IdSource,
    max_steps: int,
    reference: Particle | None,
    ref_node: Particle | None,
    t: int,
    ref_ancestor: int | None = None,
) -> tuple[list[Particle], np.ndarray, np.ndarray, Particle | None]:
    """Move to step t+1: extend live ancestors (children of one parent together), copy
    finished ones, free the sequences of live particles nobody descends from. The reference
    descends from its own slot, or from ``ref_ancestor`` when ancestor sampling chose one."""
    counts = np.bincount(ancestors, minlength=len(population))
    live_parents = [i for i in range(len(population))
                    if counts[i] > 0 and not population[i].finished]
    children = await extend(session, [population[i] for i in live_parents],
                            [int(counts[i]) for i in live_parents], ids, max_steps)
    dropped = [p for i, p in enumerate(population) if counts[i] == 0 and not p.finished]
    if ref_node is not None and not ref_node.finished:
        dropped = [p for p in dropped if p.id != ref_node.id]
    session.release(dropped)

    by_parent: dict[int, list[Particle]] = {}
    it = iter(children)
    for i in live_parents:
        by_parent[i] = [next(it) for _ in range(int(counts[i]))]
    next_pop: list[Particle] = []
    for a in ancestors:
        parent = population[int(a)]
        next_pop.append(copy_particle(parent, ids) if parent.finished else by_parent[int(a)].pop())
    session.release([c for c in children if c.finished])
    next_lw = np.zeros(len(ancestors)) if resampled else lw[ancestors]
    next_phi = prev_phi[ancestors]

    new_ref = None
    if reference is not None and ref_node is not None:
        ref_idx = len(population) - 1 if ref_ancestor is None else ref_ancestor
        new_ref = reference_at(reference, t + 1, ids, population[ref_idx].id)
        next_pop.append(new_ref)
        next_lw = np.append(next_lw, 0.0 if resampled else lw[ref_idx])
        next_phi = np.append(next_phi, prev_phi[ref_idx])
    return next_pop, next_lw, next_phi, new_ref
