"""Resampling schemes: unbiasedness, the variance bounds that distinguish them, degenerate
weights. Tolerances come from the multinomial variance n*w*(1-w), the largest of the four."""

from __future__ import annotations

import numpy as np
import pytest

from particlescale.smc import ess, log_mean_exp, normalize, resampling

SCHEMES = ["multinomial", "systematic", "stratified", "residual"]
W = np.array([0.31, 0.02, 0.17, 0.005, 0.255, 0.12, 0.12])
N = 20
REPS = 4000


def counts(idx: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(idx, minlength=size)


@pytest.mark.parametrize("name", SCHEMES)
def test_mean_offspring_equals_n_w(name: str) -> None:
    fn = resampling.get(name)
    rng = np.random.default_rng(123)
    total = np.zeros(W.size)
    for _ in range(REPS):
        idx = fn(W, rng, N)
        assert idx.shape == (N,) and idx.min() >= 0 and idx.max() < W.size
        total += counts(idx, W.size)
    mean = total / REPS
    se = np.sqrt(N * W * (1 - W) / REPS)
    assert np.all(np.abs(mean - N * W) < 5 * se + 1e-9), (mean, N * W)


def test_systematic_within_floor_ceil() -> None:
    rng = np.random.default_rng(0)
    for _ in range(REPS):
        c = counts(resampling.systematic(W, rng, N), W.size)
        assert np.all(c >= np.floor(N * W)) and np.all(c <= np.ceil(N * W))


def test_multinomial_breaks_floor_ceil_bound() -> None:
    """The bound above is a real property: multinomial resampling violates it."""
    rng = np.random.default_rng(0)
    violations = 0
    for _ in range(200):
        c = counts(resampling.multinomial(W, rng, N), W.size)
        violations += int(np.any(c < np.floor(N * W)) or np.any(c > np.ceil(N * W)))
    assert violations > 50


def test_stratified_within_two() -> None:
    rng = np.random.default_rng(1)
    for _ in range(REPS):
        c = counts(resampling.stratified(W, rng, N), W.size)
        assert np.all(np.abs(c - N * W) < 2)


def test_residual_keeps_floor_copies() -> None:
    rng = np.random.default_rng(2)
    for _ in range(REPS):
        c = counts(resampling.residual(W, rng, N), W.size)
        assert np.all(c >= np.floor(N * W))


@pytest.mark.parametrize("name", SCHEMES)
def test_degenerate_weights(name: str) -> None:
    fn = resampling.get(name)
    rng = np.random.default_rng(5)
    one = normalize([-np.inf, 0.0, -np.inf, -np.inf])
    assert np.all(fn(one, rng, 9) == 1)
    equal = normalize(np.zeros(6))
    idx = fn(equal, rng, 6)
    assert idx.size == 6 and not np.any(np.isnan(idx))
    if name in ("systematic", "residual", "stratified"):
        assert sorted(idx.tolist()) == list(range(6))
    all_zero = normalize([-np.inf, -np.inf, -np.inf])
    assert np.allclose(all_zero, 1 / 3)
    assert fn(all_zero, rng, 3).size == 3
    with_nan = normalize([np.nan, 0.0, 0.0])
    assert with_nan[0] == 0 and np.allclose(with_nan[1:], 0.5)


def test_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="systematic"):
        resampling.get("bogus")


def test_ess_and_log_mean_exp() -> None:
    assert ess(np.zeros(8)) == pytest.approx(8)
    assert ess([0.0, -np.inf, -np.inf]) == pytest.approx(1)
    assert ess([np.log(0.5), np.log(0.25), np.log(0.25)]) == pytest.approx(1 / 0.375)
    assert log_mean_exp(np.log([1.0, 3.0])) == pytest.approx(np.log(2.0))
    big = np.array([1000.0, 1000.0])
    assert np.isfinite(normalize(big)).all() and ess(big) == pytest.approx(2)
