"""particlescale.stats against exact values: AUC against brute-force pair counting, Wilson
intervals against published values, bootstrap intervals by their coverage on seeded data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from particlescale.stats import (
    auc,
    bootstrap_mean,
    grouped_auc_interval,
    paired_bootstrap,
    per_problem_aucs,
    wilson,
    within_problem_auc,
    within_problem_interval,
)


def pair_count_auc(y: np.ndarray, p: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties one half, over every pair."""
    pos, neg = p[y == 1], p[y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(20))
def test_auc_is_the_pair_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes
    p = rng.integers(0, 5, n).astype(float)  # few distinct values: many ties
    assert auc(y, p) == pytest.approx(pair_count_auc(y, p), abs=1e-12)


def test_auc_exact_small_cases() -> None:
    assert auc([0, 1], [0.1, 0.9]) == 1.0
    assert auc([1, 0], [0.1, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # 2 positives x 2 negatives: (0.8 > 0.3, 0.8 > 0.6, 0.4 > 0.3, 0.4 < 0.6) -> 3/4
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.3, 0.6]) == 0.75


def test_auc_is_nan_with_one_class_and_rejects_bad_shapes() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="one length"):
        auc([0, 1, 1], [0.1, 0.2])


def test_per_problem_and_within_problem_auc() -> None:
    y = np.array([1, 0, 1, 1, 0, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.5, 0.4, 0.2, 0.3, 0.6, 0.7])
    g = np.array(["a", "a", "b", "b", "c", "d", "d", "d"])
    # a: perfect (1.0); b: one class (left out); c: one class; d: the positive below both
    # negatives (0.0)
    assert per_problem_aucs(y, p, g).tolist() == [1.0, 0.0]
    assert within_problem_auc(y, p, g) == (0.5, 2)
    mean, n = within_problem_auc(y[:2] * 0, p[:2], g[:2])
    assert math.isnan(mean) and n == 0


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_published_values(k: int, n: int, lo: float, hi: float) -> None:
    a, b = wilson(k, n)
    assert a == pytest.approx(lo, abs=1e-4)
    assert b == pytest.approx(hi, abs=1e-4)


def test_wilson_edges() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    # k = 0: the upper bound is z²/(n + z²) in closed form
    z2 = 1.959963984540054 ** 2
    assert wilson(0, 10)[1] == pytest.approx(z2 / (10 + z2), abs=1e-12)
    a, b = wilson(10, 10)
    assert b == pytest.approx(1.0, abs=1e-12) and a == pytest.approx(10 / (10 + z2), abs=1e-12)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson(11, 10)


def test_bootstrap_mean_covers_the_true_mean() -> None:
    """Seeded coverage check: 95% intervals of the mean of 100 Bernoulli(0.3) draws contain
    0.3 in about 95% of 300 data sets (binomial sd of the rate: 1.3 points)."""
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(300):
        x = (rng.random(100) < 0.3).astype(float)
        mean, lo, hi = bootstrap_mean(x, rng, draws=400)
        assert lo <= mean <= hi
        hits += lo <= 0.3 <= hi
    assert 0.90 <= hits / 300 <= 0.99


def test_bootstrap_is_seeded_and_checks_input() -> None:
    x = np.arange(10.0)
    assert bootstrap_mean(x, np.random.default_rng(1)) == bootstrap_mean(
        x, np.random.default_rng(1))
    with pytest.raises(ValueError, match="no values"):
        bootstrap_mean([], np.random.default_rng(0))
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean(x, np.random.default_rng(0), level=95)


def test_paired_bootstrap() -> None:
    a = np.array([1, 1, 0, 1, 0, 1, 1, 1])
    assert paired_bootstrap(a, a, np.random.default_rng(0)) == (0.0, 0.0, 0.0)
    b = np.zeros(8)
    mean, lo, hi = paired_bootstrap(a, b, np.random.default_rng(0))
    assert mean == 0.75 and 0 < lo <= mean <= hi <= 1
    # pairing: b = a shifted by one problem is no longer a zero difference
    assert paired_bootstrap(a, np.roll(a, 1), np.random.default_rng(0))[1] < 0
    with pytest.raises(ValueError, match="pair up"):
        paired_bootstrap(a, a[:3], np.random.default_rng(0))


def test_grouped_interval_resamples_whole_problems() -> None:
    """Copying every row of a problem k times changes neither the AUC nor a bootstrap over
    whole problems; a bootstrap over rows would narrow with the copies."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 4)
    y = rng.integers(0, 2, len(groups))
    p = rng.random(len(groups)) + 0.3 * y
    once = grouped_auc_interval(y, p, groups, np.random.default_rng(0), draws=300)
    thrice = grouped_auc_interval(np.repeat(y, 3), np.repeat(p, 3), np.repeat(groups, 3),
                                  np.random.default_rng(0), draws=300)
    assert once == pytest.approx(thrice, abs=1e-12)
    point, lo, hi = once
    assert point == pytest.approx(pair_count_auc(y, p), abs=1e-12)
    assert lo < point < hi


def test_within_problem_interval() -> None:
    y = np.array([1, 0, 1, 0, 0, 1])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.6])
    g = np.array([0, 0, 1, 1, 2, 2])
    mean, lo, hi, n = within_problem_interval(y, p, g, np.random.default_rng(0), draws=200)
    assert n == 3 and mean == pytest.approx(2 / 3)
    assert 0.0 <= lo <= mean <= hi <= 1.0
    none = within_problem_interval(np.ones(4), p[:4], g[:4], np.random.default_rng(0))
    assert none[3] == 0 and all(math.isnan(v) for v in none[:3])
