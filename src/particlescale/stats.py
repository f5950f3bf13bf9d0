"""Statistics of the reports and benchmarks: one copy of each, checked against exact values.

- :func:`wilson`: the 95% Wilson score interval of a proportion k/n,
  ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``, z = 1.96.
- :func:`auc`: ROC AUC as the Mann-Whitney statistic, the chance that a positive scores above
  a negative (ties count one half), from average ranks: ``(R₊ - n₊(n₊+1)/2) / (n₊·n₋)``.
- :func:`per_problem_aucs`, :func:`within_problem_auc`: the AUC among the candidates of
  *one* problem (what weighting the particles of a problem needs), averaged over problems
  that have both outcomes.
- Bootstrap intervals (percentile method, seeded ``numpy`` Generator passed in):
  :func:`bootstrap_mean` resamples values, :func:`paired_bootstrap` the per-problem
  differences of two methods on the same problems, :func:`grouped_auc_interval` whole
  problems (the candidates of one problem are not independent) and
  :func:`within_problem_interval` the per-problem AUCs.

Pure ``numpy``; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054
DRAWS = 1000


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k/n`` (95% for the default z); (0, 1) for
    n = 0."""
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # runs of equal values share the mean of the ranks they span
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2
    return ranks


def auc(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of scores ``p`` for 0/1 labels ``y`` (ties count one half); NaN when only one
    class is present."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"auc: labels and scores must be 1-D of one length, got {y.shape} "
                         f"and {p.shape}")
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    r = _ranks(p)
    return float((r[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def per_problem_aucs(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """AUC of each problem (``groups`` labels the rows) that has both outcomes, in the
    order of ``np.unique(groups)``; problems with one outcome are left out."""
    y, p, groups = np.asarray(y), np.asarray(p), np.asarray(groups)
    aucs = np.array([auc(y[groups == g], p[groups == g]) for g in np.unique(groups)])
    return aucs[~np.isnan(aucs)]


def within_problem_auc(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """Mean AUC over the problems that have both outcomes (how well the score ranks the
    candidates *of one problem*), and how many such problems there are (NaN, 0 if none)."""
    aucs = per_problem_aucs(y, p, groups)
    return (float(np.mean(aucs)) if len(aucs) else float("nan")), len(aucs)


def _percentiles(boot: Sequence[float] | np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level: must be in (0, 1), got {level}")
    tail = 50 * (1 - level)
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_mean(x: Sequence[float] | np.ndarray, rng: np.random.Generator,
                   draws: int = DRAWS, level: float = 0.95) -> tuple[float, float, float]:
    """The mean of ``x`` and a percentile bootstrap interval: ``draws`` resamples of
    ``len(x)`` values with replacement (drawn as one ``draws × len(x)`` index array)."""
    x = np.asarray(x, dtype=np.float64)
    if not len(x):
        raise ValueError("bootstrap_mean: no values")
    boot = x[rng.integers(0, len(x), (draws, len(x)))].mean(axis=1)
    return (float(x.mean()), *_percentiles(boot, level))


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                     rng: np.random.Generator, draws: int = 4000,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same problems (e.g. 0/1 verdicts of two methods) and its
    paired bootstrap interval: problems are resampled, each keeping both of its values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: a and b must pair up, got {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, rng, draws, level)


def grouped_auc_interval(y: np.ndarray, p: np.ndarray, groups: np.ndarray,
                         rng: np.random.Generator, draws: int = DRAWS,
                         level: float = 0.95) -> tuple[float, float, float]:
    """Pooled AUC and a bootstrap interval that resamples whole problems (the rows of one
    problem are not independent); resamples with a single class are skipped (NaN bounds if
    every one is)."""
    y, p, groups = np.asarray(y), np.asarray(p), np.asarray(groups)
    uniq = np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in uniq}
    boot = []
    for _ in range(draws):
        pick = np.concatenate([rows[g] for g in rng.choice(uniq, size=len(uniq))])
        a = auc(y[pick], p[pick])
        if not np.isnan(a):
            boot.append(a)
    lo, hi = _percentiles(boot, level) if boot else (math.nan, math.nan)
    return auc(y, p), lo, hi


def within_problem_interval(y: np.ndarray, p: np.ndarray, groups: np.ndarray,
                            rng: np.random.Generator, draws: int = DRAWS,
                            level: float = 0.95) -> tuple[float, float, float, int]:
    """Within-problem AUC (mean over problems with both outcomes), a bootstrap interval
    over those problems, and how many there are; ``(nan, nan, nan, 0)`` when none has both."""
    per = per_problem_aucs(y, p, groups)
    if not len(per):
        return math.nan, math.nan, math.nan, 0
    mean, lo, hi = bootstrap_mean(per, rng, draws, level)
    return mean, lo, hi, len(per)
