"""Pure-numpy sequential Monte Carlo machinery: log-weights, ESS and resampling schemes."""

from particlescale.smc import resampling
from particlescale.smc.weights import ess, log_mean_exp, log_normalize, logsumexp, normalize

__all__ = ["ess", "log_mean_exp", "log_normalize", "logsumexp", "normalize", "resampling"]
