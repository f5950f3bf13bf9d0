"""Algorithms over the Generator / RewardModel protocols, and the method registry.

``METHODS`` maps a method name to its configuration model and its runner. Names: ``pf``,
``pg``, ``pt`` (the paper's methods) and the baselines ``greedy``, ``self-consistency``,
``best-of-n``, ``weighted-best-of-n``, ``beam``, ``dvts``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from particlescale.algorithms.baselines import (
    run_best_of_n,
    run_greedy,
    run_self_consistency,
    run_weighted_best_of_n,
)
from particlescale.algorithms.beam import run_beam, run_dvts
from particlescale.algorithms.config import (
    BaseConfig,
    BeamConfig,
    ConfigError,
    DVTSConfig,
    GreedyConfig,
    PFConfig,
    PGConfig,
    PTConfig,
    SamplingConfig,
    SelfConsistencyConfig,
    WeightedBestOfNConfig,
    parse_config,
)
from particlescale.algorithms.smc_methods import run_pf, run_pg, run_pt


@dataclass(frozen=True)
class Method:
    name: str
    config: type[BaseConfig]
    run: Callable[..., Awaitable[None]]
    summary: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("pf", PFConfig, run_pf, "particle filtering (the paper's method)"),
        Method("pg", PGConfig, run_pg, "particle Gibbs: T conditional SMC sweeps, budget N*T"),
        Method("pt", PTConfig, run_pt, "parallel tempering over particle-Gibbs chains"),
        Method("greedy", GreedyConfig, run_greedy, "one greedy (temperature 0) solution"),
        Method("self-consistency", SelfConsistencyConfig, run_self_consistency,
               "N samples, majority vote"),
        Method("best-of-n", SamplingConfig, run_best_of_n,
               "N samples, highest reward"),
        Method("weighted-best-of-n", WeightedBestOfNConfig, run_weighted_best_of_n,
               "N samples, largest reward sum per answer"),
        Method("beam", BeamConfig, run_beam, "beam search with a PRM (beam width M)"),
        Method("dvts", DVTSConfig, run_dvts, "diverse verifier tree search (N/M subtrees)"),
    ]
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"method: unknown {name!r}; choose one of {', '.join(METHODS)}"
        ) from None


def make_config(method: str, options: dict[str, Any]) -> BaseConfig:
    """Validate ``options`` for ``method`` (before any model call)."""
    return parse_config(get_method(method).config, method, options)


__all__ = ["METHODS", "ConfigError", "Method", "get_method", "make_config"]
