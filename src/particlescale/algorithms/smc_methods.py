"""The Monte Carlo methods: particle filtering, particle Gibbs and parallel tempering.

Particle Gibbs (Puri et al., 2025, Algorithm 2) runs T conditional SMC sweeps of N particles
(budget N*T). After each sweep a reference trajectory is drawn from the final weights; the next
sweep keeps it in one slot, where it competes at step t with its reward at step t. With
incremental weights, a constant temperature and multinomial resampling each sweep leaves
pi(x) ∝ p(x) exp(phi(x)/tau) invariant, so the references form an MCMC chain on pi; with the
paper's weights (the default) there is no pi, and the method is the paper's heuristic
(``algorithms.targets`` says which, in every Result's info). The answer pool averages every
sweep's normalised population with weight 1/T.

Parallel tempering runs M particle-Gibbs chains whose softmax temperatures tau_1 < ... < tau_M
form a geometric ladder. After each iteration neighbouring chains propose to swap references
with the Metropolis ratio of the tempered targets p(x) exp(phi(x) / tau):

    A = min(1, exp((1/tau_i - 1/tau_j) * (phi(x_j) - phi(x_i))))

(the LM probability p(x) cancels). That is a Metropolis move only when each chain has that
target (incremental weights, tempering='none'; ``swaps='metropolis'``); otherwise the same
rule is the paper's heuristic (``swaps='heuristic'``). Budget = M*N*T; the answer comes from
the tau_1 chain.

With ``ancestor_sampling=True`` every conditional sweep of either method is a PGAS sweep
(``pf.sample_reference_ancestor``); the generator's session must be able to score
continuations, which is checked before any generation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from particlescale.algorithms.common import IdSource, aggregate, candidates_from, potential
from particlescale.algorithms.config import PFConfig, PGConfig, PTConfig
from particlescale.algorithms.pf import Sweep, require_continuation_scorer, sweep
from particlescale.algorithms.runner import Outcome, RunContext
from particlescale.protocols import Progress
from particlescale.smc import log_normalize, normalize
from particlescale.types import Candidate, Particle


async def run_pf(ctx: RunContext, cfg: PFConfig, progress: Progress | None = None) -> Outcome:
    result = await sweep(ctx.problem, ctx.session, ctx.reward, cfg, ctx.aggregation, ctx.rng,
                         ctx.usage, ctx.trace, IdSource(), ctx.budget, progress=progress)
    info: dict[str, Any] = {"log_z": result.log_z, "resamplings": result.resamplings,
                            "steps": result.steps}
    if cfg.tempering != "none":
        info["betas"] = result.betas
        if cfg.weights == "incremental":
            info["cess"] = result.cess
    return Outcome(candidates_from(result.particles, result.log_weights, ctx.aggregation), info)


def _draw_reference(s: Sweep, rng: np.random.Generator) -> Particle:
    w = normalize(s.log_weights)
    return s.particles[int(rng.choice(len(w), p=w))]


def _pool(sweeps: list[Sweep], aggregation: str) -> list[Candidate]:
    """Candidates of several sweeps, each sweep's weights scaled by 1/len(sweeps)."""
    particles = [p for s in sweeps for p in s.particles]
    lw = np.concatenate([log_normalize(s.log_weights) for s in sweeps])
    return candidates_from(particles, lw, aggregation)


def split_budget(budget: int, iterations: int) -> tuple[int, int]:
    """(particles N, iterations T) with N*T <= budget, T <= iterations and N >= 2 when the
    budget allows (a conditional sweep of one particle is just the reference)."""
    t = max(1, min(iterations, budget // 2 if budget >= 2 else 1))
    return max(1, budget // t), t


async def run_pg(ctx: RunContext, cfg: PGConfig, progress: Progress | None = None) -> Outcome:
    n, iterations = split_budget(ctx.budget, cfg.iterations)
    if cfg.ancestor_sampling:
        await require_continuation_scorer(ctx.session, getattr(ctx.generator, "name", "?"))
    ids = IdSource()
    sweeps: list[Sweep] = []
    reference: Particle | None = None
    for it in range(iterations):
        ref = reference if n > 1 else None
        s = await sweep(ctx.problem, ctx.session, ctx.reward, cfg, ctx.aggregation, ctx.rng,
                        ctx.usage, ctx.trace, ids, n, band=f"iteration {it + 1}",
                        reference=ref, progress=progress,
                        ancestor_sampling=cfg.ancestor_sampling)
        sweeps.append(s)
        reference = _draw_reference(s, ctx.rng)
    info: dict[str, Any] = {"particles": n, "iterations": iterations,
                            "log_z": [s.log_z for s in sweeps]}
    if cfg.ancestor_sampling:
        info["ancestor_moves"] = [s.ancestor_moves for s in sweeps]
    return Outcome(_pool(sweeps, ctx.aggregation), info)


def temperature_ladder(cfg: PTConfig) -> list[float]:
    if cfg.chains == 1:
        return [cfg.softmax_temperature]
    return [float(x) for x in np.geomspace(cfg.softmax_temperature, cfg.max_temperature,
                                           cfg.chains)]


def swap_log_ratio(beta_i: float, beta_j: float, phi_i: float, phi_j: float) -> float:
    """log Metropolis ratio of exchanging x_i and x_j between pi_i ∝ p e^{beta_i phi} and
    pi_j ∝ p e^{beta_j phi}: pi_i(x_j) pi_j(x_i) / (pi_i(x_i) pi_j(x_j)); p cancels."""
    return (beta_i - beta_j) * (phi_j - phi_i)


def swap_references(refs: list[Particle | None], taus: list[float], aggregation: str,
                    transform: str, rng: np.random.Generator,
                    parity: int) -> list[tuple[int, bool]]:
    """Propose to swap the references of chains (i, i+1) for i = parity, parity+2, ...;
    swaps the accepted ones in place and returns (i, accepted) per proposal."""
    out = []
    for i in range(parity, len(refs) - 1, 2):
        a, b = refs[i], refs[i + 1]
        assert a is not None and b is not None
        phi_a = float(potential(aggregate(a.rewards, aggregation), transform))
        phi_b = float(potential(aggregate(b.rewards, aggregation), transform))
        log_ratio = swap_log_ratio(1 / taus[i], 1 / taus[i + 1], phi_a, phi_b)
        ok = bool(np.log(rng.random()) < min(0.0, log_ratio))
        if ok:
            refs[i], refs[i + 1] = b, a
        out.append((i, ok))
    return out


async def run_pt(ctx: RunContext, cfg: PTConfig, progress: Progress | None = None) -> Outcome:
    m = cfg.chains
    per_chain = max(1, ctx.budget // m)
    n, iterations = split_budget(per_chain, cfg.iterations)
    taus = temperature_ladder(cfg)
    transform = cfg.potential_transform()
    if cfg.ancestor_sampling:
        await require_continuation_scorer(ctx.session, getattr(ctx.generator, "name", "?"))
    ids = IdSource()
    refs: list[Particle | None] = [None] * m
    moves = 0
    target_sweeps: list[Sweep] = []
    proposed = np.zeros(max(1, m - 1), dtype=int)
    accepted = np.zeros(max(1, m - 1), dtype=int)
    for it in range(iterations):
        for c in range(m):
            s = await sweep(ctx.problem, ctx.session, ctx.reward, cfg, ctx.aggregation, ctx.rng,
                            ctx.usage, ctx.trace, ids, n, band=f"chain {c + 1} iteration {it + 1}",
                            reference=refs[c] if n > 1 else None, softmax_temperature=taus[c],
                            progress=progress, ancestor_sampling=cfg.ancestor_sampling)
            refs[c] = _draw_reference(s, ctx.rng)
            moves += s.ancestor_moves
            if c == 0:
                target_sweeps.append(s)
        # Swap neighbours; alternate even/odd pairs between iterations (deterministic sweep).
        for i, ok in swap_references(refs, taus, ctx.aggregation, transform, ctx.rng, it % 2):
            proposed[i] += 1
            if ok:
                accepted[i] += 1
                ctx.trace.events.append({"kind": "swap", "iteration": it + 1, "chains": [i, i + 1]})
    rates = [float(a / p) if p else None for a, p in zip(accepted, proposed, strict=True)]
    info: dict[str, Any] = {"particles": n, "iterations": iterations, "chains": m,
                            "temperatures": taus, "swaps": cfg.swap_kind(),
                            "swap_acceptance": rates[: m - 1],
                            "swaps_proposed": proposed[: m - 1].tolist()}
    if cfg.ancestor_sampling:
        info["ancestor_moves"] = moves
    return Outcome(_pool(target_sweeps, ctx.aggregation), info)
