"""``logprob``: the generator's own confidence as a reward, at no extra model cost.

The generator reports, for each step it samples, ``Step.logprob``: the sum of the log-probabilities
of the step's ``Step.tokens`` tokens. The reward of a prefix is the geometric mean token
probability of the whole prefix::

    r(x_{1:t}) = exp( sum_{i<=t} logprob_i / sum_{i<=t} tokens_i )

which lies in (0, 1]; it is clipped into (0, 1). It is a prefix score (``default_aggregation``
``last``). On GSM8K with the default generator it predicts a correct final answer a little
(AUC ~0.67, see BENCHMARKS.md); multiplied with ``arith`` it does better than either alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from particlescale.errors import ConfigError
from particlescale.types import Problem, Step, Usage

EPS = 1e-6


class LogprobReward:
    """exp(mean log-probability per generated token of the prefix)."""

    name = "logprob"
    default_aggregation = "last"

    async def score(
        self, problem: Problem, trajectories: Sequence[Sequence[Step]], usage: Usage
    ) -> list[list[float]]:
        # O(steps) per trajectory with running sums: no cache needed, no model call.
        out: list[list[float]] = []
        for traj in trajectories:
            total, tokens, row = 0.0, 0, []
            for step in traj:
                if step.logprob is None:
                    raise ConfigError(
                        "reward 'logprob': the generator did not report step log-probabilities "
                        "(Step.logprob is None); use the embedded llamacpp generator or a server "
                        "that returns logprobs, or choose another reward such as 'arith'"
                    )
                total += float(step.logprob)
                tokens += step.tokens
                value = math.exp(total / tokens) if tokens else 0.5
                row.append(min(max(value, EPS), 1 - EPS))
            out.append(row)
        return out
