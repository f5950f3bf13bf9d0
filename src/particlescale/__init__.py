"""particlescale: inference-time scaling of LLMs by particle-based Monte Carlo methods.

    from particlescale import solve
    result = solve("What is 12 * 50?", generator=gen, reward=prm, method="pf", budget=8, seed=0)
"""

from particlescale.algorithms import METHODS, ConfigError
from particlescale.api import asolve, solve
from particlescale.protocols import GenerationSession, Generator, RewardModel, SamplingParams
from particlescale.types import Candidate, Particle, Problem, Result, Step, Trace, Usage

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Candidate",
    "ConfigError",
    "GenerationSession",
    "Generator",
    "Particle",
    "Problem",
    "Result",
    "RewardModel",
    "SamplingParams",
    "Step",
    "Trace",
    "Usage",
    "asolve",
    "solve",
]
