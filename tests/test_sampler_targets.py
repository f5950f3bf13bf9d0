"""Each sampler is the sampler it claims to be, and each check here fails on a broken variant.

Every check is a function returning what is wrong (an empty list when nothing is); the
correct code must give nothing, and each deliberately broken variant ("mutant", patched in
with monkeypatch and kept as a parametrised case) must be caught:

- adaptive tempering with incremental weights: the conditional ESS of each step's tempering
  increment sits at ``ess_target`` while beta < beta_max, every run ends at beta_max, and the
  weighted population estimates E_pi[f] (mean over 16 seeds within 4 standard errors);
- the paper's weights: each trace step's log-weights are log softmax(logit(r_t)/tau) of the
  *current* aggregated reward, also after a step that did not resample;
- incremental weights carried without resampling equal the product of the reward ratios;
- parallel-tempering swaps leave pi_tau1 ⊗ pi_tau2 invariant and accept at the exact rate;
- particle Gibbs sweeps (with ESS-triggered resampling too) leave pi invariant, and the
  pooled answer distribution of a pg run estimates E_pi[f].
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

import particlescale.algorithms.pf as pf_module
import particlescale.algorithms.smc_methods as smc_methods
from particlescale import ConfigError, Problem, solve
from particlescale.aggregation import aggregate
from particlescale.algorithms.common import IdSource, potential
from particlescale.algorithms.config import PGConfig
from particlescale.algorithms.pf import next_beta, sweep
from particlescale.algorithms.smc_methods import _draw_reference, swap_references
from particlescale.smc import ess, normalize
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward, enumerate_paths
from particlescale.types import Trace

from invariance import (
    EOS,
    HORIZON,
    abc,
    as_particle,
    chi_square_p,
    parity_reward,
    sticky,
    sticky_session,
    target,
)

SEEDS = 16


def sharp(prefix: tuple[str, ...]) -> float:
    """A reward from 0.01 to 0.99 that changes a lot from step to step."""
    a = sum(s == "A" for s in prefix)
    b = sum(s == "B" for s in prefix)
    base = 0.05 + 0.3 * a - 0.15 * b + (0.4 if prefix[-1] == "C" else 0.0)
    return float(min(0.99, max(0.01, base)))


def count_a(text: str) -> float:
    return float(text.count("A"))


def exact_mean(dist, reward, f=count_a) -> float:
    """E_pi[f] for pi(x) ∝ p(x) r(x), by enumeration."""
    paths = enumerate_paths(dist, HORIZON, EOS)
    w = np.array([p * reward(x) for x, p in paths])
    return float(np.dot(w, [f("".join(x)) for x, _ in paths]) / w.sum())


def mean_within_4_se(estimates: list[float], exact: float) -> bool:
    e = np.asarray(estimates)
    return abs(e.mean() - exact) < 4 * e.std(ddof=1) / math.sqrt(e.size)


# -- adaptive tempering (issue 21, item 1) -------------------------------------------------


def old_next_beta(cfg, t, lw, raw, prev_phi, beta_prev, done):
    """The broken ladder: bisect on [0, beta_max] assuming ESS/N = 1 at beta = 0."""
    beta_max = 1.0 / cfg.softmax_temperature
    n = len(raw)
    if ess(lw + beta_max * raw - prev_phi) / n >= cfg.ess_target:
        return beta_max
    lo, hi = 0.0, beta_max
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ess(lw + mid * raw - prev_phi) / n >= cfg.ess_target else (lo, mid)
    return lo


def never_final(cfg, t, lw, raw, prev_phi, beta_prev, done):
    """A ladder that does not step to beta_max when the run ends."""
    return next_beta(cfg, t, lw, raw, prev_phi, beta_prev, False)


TEMPERING_MUTANTS = {"bisection from 0": old_next_beta, "no final step": never_final}


def tempering_defects(ess_target: float = 0.98, n: int = 1000) -> list[str]:
    defects: list[str] = []
    estimates, tempered_steps = [], 0
    for seed in range(SEEDS):
        res = solve("q", generator=ScriptedGenerator(abc, horizon=HORIZON, eos_steps=EOS),
                    reward=ScriptedReward(sharp), method="pf", budget=n, seed=seed,
                    weights="incremental", tempering="adaptive", ess_target=ess_target,
                    max_steps=10)
        betas, cess = res.info["betas"], res.info["cess"]
        if betas[-1] != 1.0:
            defects.append(f"seed {seed}: final beta {betas[-1]:.3f}, not 1")
        for t, (b, c) in enumerate(zip(betas[:-1], cess[:-1], strict=True)):
            if b < 1.0:
                tempered_steps += 1
                if abs(c - ess_target) > 1e-3:
                    defects.append(f"seed {seed} step {t + 1}: CESS/N {c:.3f} at beta {b:.3f}")
        estimates.append(sum(c.weight * count_a(c.text) for c in res.candidates))
    if tempered_steps == 0:
        defects.append("no step was tempered: the check is vacuous")
    if not mean_within_4_se(estimates, exact_mean(abc, sharp)):
        defects.append(f"E[f] {np.mean(estimates):.3f} vs exact {exact_mean(abc, sharp):.3f}")
    return defects


def test_adaptive_tempering_keeps_cess_ends_at_beta_max_and_is_exact() -> None:
    assert tempering_defects() == []


@pytest.mark.parametrize("mutant", list(TEMPERING_MUTANTS))
def test_adaptive_tempering_check_catches(mutant: str, monkeypatch) -> None:
    monkeypatch.setattr(pf_module, "next_beta", TEMPERING_MUTANTS[mutant])
    assert tempering_defects() != []


def test_tempered_runs_end_at_the_target_temperature() -> None:
    """Linear annealing that has not finished when every particle is done still ends at
    softmax_temperature, with paper and incremental weights."""
    for weights in ("paper", "incremental"):
        res = solve("q", generator=ScriptedGenerator(abc, horizon=HORIZON, eos_steps=EOS),
                    reward=ScriptedReward(sharp), method="pf", budget=16, seed=0,
                    weights=weights, tempering="linear", temperature_start=8.0,
                    anneal_steps=30, softmax_temperature=2.0)
        assert res.info["betas"][-1] == 0.5
        assert res.trace.steps[-1].temperature == pytest.approx(2.0)
        assert res.info["betas"][0] == pytest.approx(1 / 8)


# -- the paper's weights (items 4 and 8) -----------------------------------------------------


def paper_weight_defects(**options) -> list[str]:
    """Trace log-weights against log softmax(logit(current aggregated reward) / tau)."""
    tau = options.get("softmax_temperature", 1.0)
    res = solve("q", generator=ScriptedGenerator(sticky, horizon=HORIZON, eos_steps=EOS),
                reward=ScriptedReward(parity_reward), method="pf", budget=32, seed=3,
                max_steps=10, **options)
    defects = []
    for s in res.trace.steps:
        scores = np.array([nd.score for nd in s.nodes])
        expected = np.log(normalize(potential(scores, "logit") / tau))
        got = np.array([nd.log_weight for nd in s.nodes])
        if not np.allclose(got, expected, atol=1e-9):
            defects.append(f"step {s.t}: max error {np.abs(got - expected).max():.3g}")
    if "ess_threshold" in options and all(s.resampled for s in res.trace.steps[:-1]):
        defects.append("every step resampled: the skipped-step case was not exercised")
    return defects


PAPER_OPTIONS = [{}, {"softmax_temperature": 2.0}, {"ess_threshold": 0.5}]


@pytest.mark.parametrize("options", PAPER_OPTIONS)
def test_paper_weights_are_softmax_of_the_current_logit(options: dict) -> None:
    assert paper_weight_defects(**options) == []


def _previous_step(rewards, aggregation):
    return aggregate(rewards[:-1] if len(rewards) > 1 else rewards, aggregation)


PAPER_MUTANTS = {
    "log r": ("potential", lambda score, transform: np.log(np.asarray(score, dtype=float))),
    "raw r": ("potential", lambda score, transform: np.asarray(score, dtype=float)),
    "previous step's r": ("aggregate", _previous_step),
}


@pytest.mark.parametrize("mutant", list(PAPER_MUTANTS))
def test_paper_weight_check_catches(mutant: str, monkeypatch) -> None:
    name, fn = PAPER_MUTANTS[mutant]
    monkeypatch.setattr(pf_module, name, fn)
    assert paper_weight_defects() != []


# -- incremental weights without resampling (item 6) -------------------------------------------


def carried_weight_defects() -> list[str]:
    """With ess_threshold=0 nothing resamples, so each particle's log-weight is the sum of
    its log reward ratios log r_t - log r_{t-1}: its current log score (up to a constant)."""
    res = solve("q", generator=ScriptedGenerator(sticky, horizon=HORIZON, eos_steps=EOS),
                reward=ScriptedReward(parity_reward), method="pf", budget=16, seed=5,
                weights="incremental", ess_threshold=0.0, max_steps=10)
    defects = []
    if any(s.resampled for s in res.trace.steps):
        defects.append("a step resampled at ess_threshold=0")
    for s in res.trace.steps:
        ratios = np.array([
            sum(math.log(aggregate(nd_r[: k + 1], "last")) - (
                math.log(aggregate(nd_r[:k], "last")) if k else 0.0) for k in range(len(nd_r)))
            for nd_r in (rewards_of(res, nd.id) for nd in s.nodes)])
        got = np.array([nd.log_weight for nd in s.nodes])
        if not np.allclose(got, np.log(normalize(ratios)), atol=1e-9):
            defects.append(f"step {s.t}: carried weights are not the cumulative ratios")
    return defects


def rewards_of(res, node_id: int) -> list[float]:
    """The per-step rewards along a trace node's line (its ancestors' rewards, then its own)."""
    nodes = {nd.id: nd for s in res.trace.steps for nd in s.nodes}
    line = []
    cur = nodes.get(node_id)
    while cur is not None:
        line.append(cur)
        cur = nodes.get(cur.parent) if cur.parent is not None else None
    # a finished particle is copied (a new node, same steps) at each later step: skip copies
    return [nd.reward for nd in reversed(line)
            if nd.parent not in nodes or not nodes[nd.parent].finished]


def test_incremental_weights_persist_without_resampling() -> None:
    assert carried_weight_defects() == []


def test_carried_weight_check_catches_dropped_weights(monkeypatch) -> None:
    monkeypatch.setattr(pf_module, "step_log_weights",
                        lambda cfg, beta, lw, raw, prev_phi: beta * raw - prev_phi)
    assert carried_weight_defects() != []


# -- parallel tempering swaps (items 2 and 7) ---------------------------------------------------


TAUS = [1.0, 3.0]
DRAWS = 4000


def swap_defects(draws: int = DRAWS, seed: int = 0) -> list[str]:
    """References drawn exactly from pi_tau1 ⊗ pi_tau2, one round of swaps: both chains must
    still be distributed as their targets, and swaps accepted at the exact rate."""
    paths, pi1 = target(sticky, 1 / TAUS[0])
    _, pi2 = target(sticky, 1 / TAUS[1])
    index = {x: i for i, x in enumerate(paths)}
    rng = np.random.default_rng(seed)
    c1, c2 = np.zeros(len(paths)), np.zeros(len(paths))
    accepted = 0
    for _ in range(draws):
        refs = [as_particle(paths[int(rng.choice(len(paths), p=pi1))]),
                as_particle(paths[int(rng.choice(len(paths), p=pi2))])]
        (_, ok), = swap_references(refs, TAUS, "last", "log", rng, 0)
        accepted += ok
        c1[index[tuple(refs[0].texts())]] += 1
        c2[index[tuple(refs[1].texts())]] += 1
    phi = np.array([math.log(parity_reward(x)) for x in paths])
    ratio = (1 / TAUS[0] - 1 / TAUS[1]) * (phi[None, :] - phi[:, None])  # [x1, x2]
    rate = float((pi1[:, None] * pi2[None, :] * np.minimum(1.0, np.exp(ratio))).sum())
    defects = []
    for name, c, pi in (("chain 1", c1, pi1), ("chain 2", c2, pi2)):
        if (p := chi_square_p(c, pi)) < 1e-3:
            defects.append(f"{name}: chi-square p = {p:.2g}")
    se = math.sqrt(rate * (1 - rate) / draws)
    if abs(accepted / draws - rate) > 4 * se:
        defects.append(f"acceptance {accepted / draws:.3f} vs exact {rate:.3f}")
    return defects


def test_swaps_leave_the_tempered_targets_invariant() -> None:
    assert swap_defects() == []


SWAP_MUTANTS = {
    "sign flipped": lambda bi, bj, pi, pj: -(bi - bj) * (pj - pi),
    "never swaps": lambda bi, bj, pi, pj: -math.inf,
    "always swaps": lambda bi, bj, pi, pj: 0.0,
}


@pytest.mark.parametrize("mutant", list(SWAP_MUTANTS))
def test_swap_check_catches(mutant: str, monkeypatch) -> None:
    monkeypatch.setattr(smc_methods, "swap_log_ratio", SWAP_MUTANTS[mutant])
    assert swap_defects() != []


async def _pt_iteration_histograms(draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One full PT iteration (a conditional sweep per chain, then a swap) from exact draws."""
    paths, pi1 = target(sticky, 1 / TAUS[0])
    _, pi2 = target(sticky, 1 / TAUS[1])
    index = {x: i for i, x in enumerate(paths)}
    rng, session, usage, rew = sticky_session(seed)
    cfg = PGConfig(weights="incremental", max_steps=10)
    counts = [np.zeros(len(paths)), np.zeros(len(paths))]
    for _ in range(draws):
        refs = [as_particle(paths[int(rng.choice(len(paths), p=pi))]) for pi in (pi1, pi2)]
        for c, tau in enumerate(TAUS):
            s = await sweep(Problem("q"), session, rew, cfg, "last", rng, usage,
                            Trace("pt", {}, {}), IdSource(), 3, reference=refs[c],
                            softmax_temperature=tau)
            refs[c] = _draw_reference(s, rng)
        swap_references(refs, TAUS, "last", "log", rng, 0)
        for c in range(2):
            counts[c][index[tuple(refs[c].texts())]] += 1
    await session.aclose()
    return counts[0], counts[1]


def test_one_pt_iteration_leaves_both_chains_invariant() -> None:
    _, pi1 = target(sticky, 1 / TAUS[0])
    _, pi2 = target(sticky, 1 / TAUS[1])
    c1, c2 = asyncio.run(_pt_iteration_histograms(3000, 7))
    assert chi_square_p(c1, pi1) > 1e-3 and chi_square_p(c2, pi2) > 1e-3


def test_pt_labels_its_swaps_and_refuses_metropolis_without_targets() -> None:
    gen = ScriptedGenerator(sticky, horizon=HORIZON, eos_steps=EOS)
    paper = solve("q", generator=gen, reward=ScriptedReward(parity_reward), method="pt",
                  budget=16, seed=0, chains=2)
    assert paper.info["swaps"] == "heuristic" and paper.info["exact"] is False
    assert paper.info["target"].startswith("heuristic")
    inc = solve("q", generator=ScriptedGenerator(sticky, horizon=HORIZON, eos_steps=EOS),
                reward=ScriptedReward(parity_reward), method="pt", budget=16, seed=0,
                chains=2, weights="incremental")
    assert inc.info["swaps"] == "metropolis" and inc.info["exact"] is True
    for bad in ({}, {"weights": "incremental", "tempering": "linear"}):
        with pytest.raises(ConfigError, match="swaps='metropolis' needs weights='incremental'"):
            solve("q", generator=gen, reward=ScriptedReward(parity_reward), method="pt",
                  budget=16, swaps="metropolis", **bad)


# -- particle Gibbs (items 3 and 5) ---------------------------------------------------------


async def _pg_histogram(n: int, seed: int, draws: int, **options) -> np.ndarray:
    paths, pi = target(sticky, 1.0)
    index = {x: i for i, x in enumerate(paths)}
    rng, session, usage, rew = sticky_session(seed)
    cfg = PGConfig(weights="incremental", max_steps=10, **options)
    counts = np.zeros(len(paths))
    for _ in range(draws):
        x0 = paths[int(rng.choice(len(paths), p=pi))]
        s = await sweep(Problem("q"), session, rew, cfg, "last", rng, usage,
                        Trace("pg", {}, {}), IdSource(), n, reference=as_particle(x0))
        counts[index[tuple(_draw_reference(s, rng).texts())]] += 1
    await session.aclose()
    return counts


@pytest.mark.parametrize(("n", "options"), [(3, {}), (4, {"ess_threshold": 0.5}),
                                            (3, {"ess_threshold": 0.9})])
def test_conditional_sweep_leaves_the_target_invariant(n: int, options: dict) -> None:
    _, pi = target(sticky, 1.0)
    counts = asyncio.run(_pg_histogram(n, 0, 4000, **options))
    assert chi_square_p(counts, pi) > 1e-3


def test_conditional_sweep_check_catches_dropped_carried_weights(monkeypatch) -> None:
    """Power: forgetting the weights carried over a step that did not resample breaks the
    invariance, and the same chi-square test sees it."""
    monkeypatch.setattr(pf_module, "step_log_weights",
                        lambda cfg, beta, lw, raw, prev_phi: beta * raw - prev_phi)
    _, pi = target(sticky, 1.0)
    counts = asyncio.run(_pg_histogram(4, 0, 4000, ess_threshold=0.5))
    assert chi_square_p(counts, pi) < 1e-6


@pytest.mark.parametrize("method", ["pg", "pt"])
@pytest.mark.parametrize("scheme", ["systematic", "stratified", "residual"])
def test_pg_refuses_unproven_resampling_schemes(method: str, scheme: str) -> None:
    gen = ScriptedGenerator(sticky, horizon=HORIZON, eos_steps=EOS)
    with pytest.raises(ConfigError, match=f"resampling='{scheme}' is not supported"):
        solve("q", generator=gen, reward=ScriptedReward(parity_reward), method=method,
              budget=8, resampling=scheme)
    assert gen.calls == []


def test_pg_answer_pool_estimates_the_target() -> None:
    """pg's candidates pool every sweep's normalised population with weight 1/T (a
    Rao-Blackwellised MCMC average); their weighted mean of f estimates E_pi[f]."""
    exact = exact_mean(sticky, parity_reward)
    estimates = []
    for seed in range(SEEDS):
        res = solve("q", generator=ScriptedGenerator(sticky, horizon=HORIZON, eos_steps=EOS),
                    reward=ScriptedReward(parity_reward), method="pg", budget=400,
                    iterations=40, seed=seed, weights="incremental", max_steps=10)
        assert res.info["exact"] is True
        estimates.append(sum(c.weight * count_a(c.text) for c in res.candidates))
    assert mean_within_4_se(estimates, exact), (np.mean(estimates), exact)


# -- what users are told --------------------------------------------------------------------


def test_methods_command_says_what_each_method_samples(capsys, monkeypatch) -> None:
    import sys

    from particlescale.cli import main

    monkeypatch.setattr(sys, "argv", ["particlescale", "methods"])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert (e.value.code or 0) == 0
    first_table = out.split("options (default")[0]
    rows = {line.split("│")[1].strip(): line for line in first_table.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    assert "heuristic" in rows["pf"] and "weights=incremental" in rows["pf"]
    assert "exact" in rows["self-consistency"] and "never" in rows["beam"]


@pytest.mark.parametrize(("method", "options", "exact"), [
    ("pf", {}, False), ("pf", {"weights": "incremental", "tempering": "adaptive"}, True),
    ("pg", {"weights": "incremental"}, True), ("pg", {}, False),
    ("pg", {"weights": "incremental", "tempering": "linear"}, False),
    ("beam", {}, False), ("best-of-n", {}, True),
])
def test_every_result_says_whether_it_is_exact(method: str, options: dict, exact: bool) -> None:
    res = solve("q", generator=ScriptedGenerator(sticky, horizon=HORIZON, eos_steps=EOS),
                reward=ScriptedReward(parity_reward), method=method, budget=8, seed=0,
                **options)
    assert res.info["exact"] is exact and isinstance(res.info["target"], str)
