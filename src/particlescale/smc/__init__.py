"""Pure-numpy sequential Monte Carlo machinery: log-weights, ESS and resampling schemes."""

from particlescale.smc import resampling
from particlescale.smc.weights import ess, log_mean_exp, logsumexp, normalize

__all__ = ["ess", "log_mean_exp", "logsumexp", "normalize", "resampling"]
