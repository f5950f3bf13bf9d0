"""Log-weight arithmetic. Weights live as log-weights; probabilities appear only here.

NaN log-weights are treated as -inf (a particle with no mass). If every particle has zero
mass the normalised weights are uniform: the population carries no information to prefer one
particle, and resampling must still return valid indices.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _clean(log_weights: ArrayLike) -> NDArray[np.float64]:
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.size == 0:
        raise ValueError("log_weights: need at least one particle")
    lw = np.where(np.isnan(lw), -np.inf, lw)
    if np.any(lw == np.inf):
        raise ValueError("log_weights: +inf is not a valid log-weight")
    return lw


def logsumexp(log_weights: ArrayLike) -> float:
    """log(sum(exp(lw))) computed stably; -inf when every weight is zero."""
    lw = _clean(log_weights)
    m = lw.max()
    if m == -np.inf:
        return -np.inf
    return float(m + np.log(np.sum(np.exp(lw - m))))


def log_mean_exp(log_weights: ArrayLike) -> float:
    """log of the mean weight: the SMC estimate of the log normalising-constant increment."""
    lw = _clean(log_weights)
    return logsumexp(lw) - float(np.log(lw.size))


def normalize(log_weights: ArrayLike) -> NDArray[np.float64]:
    """Normalised probabilities from log-weights (uniform when all weights are zero)."""
    lw = _clean(log_weights)
    m = lw.max()
    if m == -np.inf:
        return np.full(lw.size, 1.0 / lw.size)
    w = np.exp(lw - m)
    return w / w.sum()


def log_normalize(log_weights: ArrayLike) -> NDArray[np.float64]:
    """Log of the normalised weights (a particle with no mass gets log 1e-300, not -inf, so
    sums and differences of them stay finite)."""
    return np.log(np.maximum(normalize(log_weights), 1e-300))


def ess(log_weights: ArrayLike) -> float:
    """Effective sample size 1 / sum(w_i^2) of the normalised weights, in [1, N]."""
    w = normalize(log_weights)
    return float(1.0 / np.sum(w * w))
