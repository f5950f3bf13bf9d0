"""Choosing the inverse temperature beta of each SMC step adaptively.

A tempered sweep targets gamma_t(x_{1:t}) = p(x_{1:t}) exp(beta_t * phi_t(x_{1:t})) at step t
and must end at beta_T = beta_max (the run's softmax temperature), whatever the ladder did on
the way. With incremental weights the step-t weight factor splits in two::

    exp(beta_t*phi_t - beta_{t-1}*phi_{t-1})
        = exp(beta_{t-1} * (phi_t - phi_{t-1}))      the potential's change, old temperature
        * exp((beta_t - beta_{t-1}) * phi_t)         the tempering increment

Only the second factor depends on beta_t. Adaptive tempering picks the largest beta_t in
[beta_{t-1}, beta_max] whose tempering increment keeps the *conditional* ESS (Zhou, Johansen &
Aston, 2016, "Towards automatic model comparison: an adaptive sequential Monte Carlo
approach") at a target fraction::

    CESS(beta) = (sum_i W_i u_i)^2 / sum_i W_i u_i^2,   u_i = exp((beta - beta_{t-1}) phi_t^i)

with W the normalised weights *before* the increment (carried weights times the potential's
change). CESS is 1 at beta = beta_{t-1} and decreases in beta (it is the ESS of an exponential
tilt of W), so bisection finds the crossing. Searching from beta = 0 instead, as if the
weights were uniform there, is wrong once earlier potentials are non-zero: the ladder then
wanders below beta_{t-1} and the run ends at a random beta.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from particlescale.smc.weights import normalize


def conditional_ess(log_weights: ArrayLike, log_increments: ArrayLike) -> float:
    """CESS/N in (0, 1]: how much of the population the increments keep, given the weights."""
    w = normalize(log_weights)
    inc = np.asarray(log_increments, dtype=np.float64).reshape(-1)
    if inc.shape != w.shape:
        raise ValueError(f"log_increments: {inc.size} values for {w.size} weights")
    inc = np.where(np.isnan(inc), -np.inf, inc)
    mass = w > 0
    finite = np.isfinite(inc) & mass
    if not finite.any():
        return 0.0
    u = np.exp(inc - inc[finite].max())
    u = np.where(mass, u, 0.0)
    num = float(np.dot(w, u)) ** 2
    den = float(np.dot(w, u * u))
    return num / den if den > 0 else 0.0


def adaptive_beta(
    log_weights: ArrayLike,
    phi: ArrayLike,
    beta_prev: float,
    beta_max: float,
    target: float,
    *,
    iterations: int = 50,
) -> float:
    """The largest beta in [beta_prev, beta_max] with CESS of exp((beta - beta_prev) * phi)
    under ``log_weights`` at least ``target`` (beta_max when it already is)."""
    if not 0 < target <= 1:
        raise ValueError(f"target: CESS fraction must be in (0, 1], got {target}")
    if beta_prev >= beta_max:
        return float(beta_max)
    phi = np.asarray(phi, dtype=np.float64)

    def cess(beta: float) -> float:
        return conditional_ess(log_weights, (beta - beta_prev) * phi)

    if cess(beta_max) >= target:
        return float(beta_max)
    lo, hi = float(beta_prev), float(beta_max)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if cess(mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo
