"""``combine``: a weighted product of rewards (a product of experts) is itself a reward.

Rewards are probabilities, so they combine in log space::

    log r(x_{1:t}) = sum_j w_j * log agg_j(r_j(x_{1:1}), ..., r_j(x_{1:t}))
    r(x_{1:t})     = clip(exp(log r), 1e-6, 1 - 1e-6)

Each part is first aggregated over the prefix with its *own* default aggregation (``mean``
for ``arith``, ``last`` for ``judge`` and ``logprob``), so that ``Combined`` returns a
*prefix* score per step and its default aggregation is ``last``. Weights must be positive;
with weights summing to 1 the result is a weighted geometric mean, with ``judge+arith``
(weights 1, 1) the plain product. The clip keeps the value a probability strictly inside
(0, 1), as the algorithms' ``logit`` transform needs.

Spec syntax (see :func:`parse_spec`): ``judge+arith``, ``0.5*arith+judge``,
``arith*logprob`` (``+`` and ``*`` between names both mean a product of experts).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from particlescale.aggregation import EPS, aggregate
from particlescale.errors import ConfigError
from particlescale.protocols import RewardModel
from particlescale.types import Problem, Step, Usage


class Combined:
    """``Combined([(w1, r1), (w2, r2)])``: exp(w1 log r1 + w2 log r2), per prefix."""

    default_aggregation = "last"

    def __init__(self, parts: Sequence[tuple[float, RewardModel]], name: str | None = None):
        if not parts:
            raise ConfigError("reward: a combination needs at least one part, e.g. 'judge+arith'")
        for w, r in parts:
            if not (isinstance(w, int | float) and math.isfinite(w) and w > 0):
                raise ConfigError(
                    f"reward: weight {w!r} of {getattr(r, 'name', r)!r} must be a positive number"
                )
        self.parts = [(float(w), r) for w, r in parts]
        self.name = name or "+".join(
            (r.name if w == 1 else f"{w:g}*{r.name}") for w, r in self.parts
        )

    async def score(
        self, problem: Problem, trajectories: Sequence[Sequence[Step]], usage: Usage
    ) -> list[list[float]]:
        # Parts run concurrently: a model-free part costs nothing while a judge decodes.
        results = await asyncio.gather(
            *(r.score(problem, trajectories, usage) for _, r in self.parts)
        )
        out: list[list[float]] = []
        for i, traj in enumerate(trajectories):
            row = []
            for t in range(1, len(traj) + 1):
                log_r = 0.0
                for (w, r), values in zip(self.parts, results, strict=True):
                    agg = str(getattr(r, "default_aggregation", "last"))
                    log_r += w * math.log(aggregate(values[i][:t], agg))
                row.append(min(max(math.exp(log_r), EPS), 1 - EPS))
            out.append(row)
        return out

    def close(self) -> None:
        """Free what the parts hold (an owned judge engine)."""
        for _, r in self.parts:
            close = getattr(r, "close", None)
            if callable(close):
                close()

    async def aclose(self) -> None:
        """Close the parts' connections (served rewards)."""
        for _, r in self.parts:
            aclose = getattr(r, "aclose", None)
            if callable(aclose):
                await aclose()


def parse_spec(spec: str) -> list[tuple[float, str]]:
    """``"0.5*arith+judge:qwen2.5-1.5b"`` -> ``[(0.5, "arith"), (1.0, "judge:qwen2.5-1.5b")]``.

    Terms are separated by ``+``; a term is a product of factors separated by ``*``: numbers
    multiply the term's weight, and every name in the term gets that weight
    (``arith*logprob`` = two experts of weight 1; ``0.5*arith*logprob`` = both at 0.5, i.e.
    the square root of their product). Weights must be positive.
    """
    terms: list[tuple[float, str]] = []
    for raw in spec.split("+"):
        weight, names = 1.0, []
        for factor in (f.strip() for f in raw.split("*")):
            if not factor:
                raise ConfigError(
                    f"reward: cannot read {spec!r}; write terms like 'arith', '0.5*arith+judge'")
            try:
                weight *= float(factor)
            except ValueError:
                names.append(factor)
        if not names:
            raise ConfigError(f"reward: the term {raw.strip()!r} of {spec!r} names no reward")
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"reward: weights in {spec!r} must be positive numbers")
        terms.extend((weight, n) for n in names)
    return terms
