"""What each method samples, and under which options that claim is exact.

``describe(method, cfg)`` returns the entry every Result carries in ``info['target']`` and
``info['exact']`` and that ``particlescale methods`` prints. "Exact" means: proved against
exact enumeration by a test that fails on a deliberately broken variant (``tests/``:
``test_exactness.py``, ``test_sampler_targets.py``, ``test_ancestor_sampling.py``):

- pf, weights='incremental' (any resampling scheme, ESS threshold, tempering, aggregation):
  SMC for pi(x) ∝ p(x) exp(phi(x)/tau); the weighted final population estimates E_pi[f]
  consistently and exp(log_z) is an unbiased estimate of Z. Tempered runs always end at tau.
- pg, weights='incremental', tempering='none', multinomial resampling (any ESS threshold),
  with or without ancestor sampling: each conditional sweep leaves pi invariant (an MCMC).
- pt: the same chains at tau_1 < ... < tau_M; swaps are Metropolis moves between them.
- The paper's weights (softmax over logit(r_t) of the *current* step) define no target: pf,
  pg and pt with them are the paper's algorithms, labelled heuristic.
- Sampling baselines draw independent solutions from the LM p(x) (at the sampling
  temperature and top-p); beam search and DVTS are searches, with no target.
"""

from __future__ import annotations

from typing import Any

from particlescale.algorithms.config import BaseConfig, PFConfig, PGConfig, PTConfig

EXACT_WHEN = {
    "pf": "weights=incremental (any resampling, ess_threshold, tempering, aggregation)",
    "pg": "weights=incremental, tempering=none (multinomial resampling, any ess_threshold; "
          "with or without ancestor_sampling)",
    "pt": "weights=incremental, tempering=none (then swaps are Metropolis moves)",
    "beam": "never (a search)",
    "dvts": "never (a search)",
}


def _phi(cfg: PFConfig) -> str:
    tau = cfg.softmax_temperature
    scale = "" if tau == 1 else f"/{tau:g}"
    if cfg.potential_transform() == "log":
        return f"p(x)·r(x)^(1{scale})" if scale else "p(x)·r(x)"
    return f"p(x)·exp(logit r(x){scale})"


def describe(method: str, cfg: BaseConfig) -> dict[str, Any]:
    """``{'target': str, 'exact': bool}`` for ``method`` under ``cfg`` (see module doc)."""
    if isinstance(cfg, PTConfig):
        if cfg.has_target():
            return {"target": f"chains at p(x)·exp(phi(x)/tau) for tau in a ladder from "
                              f"{cfg.softmax_temperature:g}; answer from {_phi(cfg)}",
                    "exact": True}
        return {"target": "heuristic: the paper's parallel tempering (paper weights or a "
                          "changing temperature: the chains have no stationary target, swaps "
                          "use the Metropolis formula anyway)", "exact": False}
    if isinstance(cfg, PGConfig):
        if cfg.weights == "incremental" and cfg.tempering == "none":
            return {"target": f"MCMC on {_phi(cfg)} (conditional SMC sweeps)", "exact": True}
        why = ("paper weights define no target" if cfg.weights == "paper"
               else "a temperature ladder inside a conditional sweep is not proven invariant")
        return {"target": f"heuristic: the paper's particle Gibbs ({why})", "exact": False}
    if isinstance(cfg, PFConfig):
        if cfg.weights == "incremental":
            return {"target": f"SMC on {_phi(cfg)}", "exact": True}
        return {"target": "heuristic: the paper's particle filter (weights = softmax of the "
                          "current reward's logit; no target distribution)", "exact": False}
    if method in ("beam", "dvts"):
        return {"target": "search (no target distribution)", "exact": False}
    if method == "greedy":
        return {"target": "the LM's greedy solution", "exact": True}
    return {"target": "independent samples of p(x) (the LM at the sampling temperature)",
            "exact": True}
