"""How a particle's per-step rewards become one prefix score.

Rewards are stored per step (``rewards[i]`` scores the prefix ``steps[:i+1]``). The
algorithms (to weight and rank particles), ``Combined`` (to merge rewards with different
defaults) and the benchmarks all turn that list into one score with :func:`aggregate`, so
they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from particlescale.errors import ConfigError

EPS = 1e-6  # rewards are clipped into [EPS, 1 - EPS] so that logit/log stay finite

AGGREGATIONS = ("last", "min", "prod", "mean", "model")


def aggregate(rewards: Sequence[float], aggregation: str) -> float:
    """One score from per-step rewards: ``last`` (or ``model``, whose rewards are already
    prefix scores), ``min``, ``prod`` or ``mean``; 0.5 (no evidence) for no steps."""
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"aggregation: unknown {aggregation!r}; choose "
                          + ", ".join(AGGREGATIONS))
    if len(rewards) == 0:
        return 0.5
    r = np.clip(np.asarray(rewards, dtype=np.float64), EPS, 1 - EPS)
    if aggregation in ("last", "model"):
        return float(r[-1])
    if aggregation == "min":
        return float(r.min())
    if aggregation == "prod":
        return float(np.exp(np.log(r).sum()))
    return float(r.mean())
