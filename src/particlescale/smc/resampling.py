"""Resampling schemes as pure functions ``(weights, rng, n) -> ancestor indices``.

``weights`` are normalised probabilities (see :func:`particlescale.smc.normalize`); ``rng`` is
an explicit ``numpy.random.Generator``; the result is ``n`` sorted ancestor indices. Every
scheme is unbiased: the expected number of copies of particle i is ``n * w_i``.

- ``multinomial``: n independent draws (the paper's choice; highest variance).
- ``stratified``: one uniform draw in each of n equal strata of [0, 1).
- ``systematic``: one uniform shift shared by all strata; copies stay within floor/ceil of n*w.
- ``residual``: floor(n*w) copies deterministically, the remainder by multinomial draws.
See Douc, Cappé & Moulines (2005), "Comparison of resampling schemes for particle filtering".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

Resampler = Callable[[ArrayLike, np.random.Generator, int], NDArray[np.int64]]


def _check(weights: ArrayLike, n: int) -> NDArray[np.float64]:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size == 0:
        raise ValueError("weights: need at least one particle")
    if n < 1:
        raise ValueError(f"n: number of draws must be >= 1, got {n}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights: must be finite and non-negative (normalise log-weights first)")
    total = w.sum()
    if total <= 0:
        return np.full(w.size, 1.0 / w.size)
    return w / total


def _inverse_cdf(w: NDArray[np.float64], u: NDArray[np.float64]) -> NDArray[np.int64]:
    """Indices i with cdf[i-1] <= u < cdf[i], for sorted u in [0, 1)."""
    cdf = np.cumsum(w)
    cdf[-1] = 1.0  # guard against round-off leaving the last bin short of 1
    idx = np.searchsorted(cdf, u, side="right")
    return np.minimum(idx, w.size - 1).astype(np.int64)


def multinomial(weights: ArrayLike, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    w = _check(weights, n)
    return np.sort(rng.choice(w.size, size=n, p=w)).astype(np.int64)


def stratified(weights: ArrayLike, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    w = _check(weights, n)
    u = (np.arange(n) + rng.random(n)) / n
    return _inverse_cdf(w, u)


def systematic(weights: ArrayLike, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    w = _check(weights, n)
    u = (np.arange(n) + rng.random()) / n
    return _inverse_cdf(w, u)


def residual(weights: ArrayLike, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    w = _check(weights, n)
    scaled = n * w
    counts = np.floor(scaled).astype(np.int64)
    rest = n - int(counts.sum())
    if rest > 0:
        frac = scaled - counts
        frac_sum = frac.sum()
        p = frac / frac_sum if frac_sum > 0 else np.full(w.size, 1.0 / w.size)
        counts += np.bincount(rng.choice(w.size, size=rest, p=p), minlength=w.size)
    return np.repeat(np.arange(w.size, dtype=np.int64), counts)


SCHEMES: dict[str, Resampler] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "stratified": stratified,
    "residual": residual,
}


def get(name: str) -> Resampler:
    """The scheme called ``name``; an unknown name is an error listing the valid ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"resampling: unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}"
        ) from None
