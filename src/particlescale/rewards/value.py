"""``value``: a learned process reward from the generator's own hidden states.

Each step's reward is a value head's P(the solution ends correct | prefix) evaluated on the
final-layer hidden state at the step's last token, which the embedded llama.cpp engine
records in ``Step.features`` from the decode that generated the step (no second pass). A
step that ends the solution is scored by the head's final head when it has one
(``ValueHead.predict_final``). The cost is one small matrix product per step. See
:mod:`particlescale.rewards.value_head`.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from particlescale.answers import has_boxed
from particlescale.errors import ConfigError, ModelError
from particlescale.rewards.value_head import ValueHead
from particlescale.types import Problem, Step, Usage

PACKAGED_HEADS = {"qwen2.5-0.5b": "value-qwen2.5-0.5b.npz"}


def packaged_head(model_name: str) -> Path:
    """The head shipped in the package for a known generator model."""
    if model_name not in PACKAGED_HEADS:
        raise ModelError(
            f"value reward: no packaged head for model {model_name!r} (packaged: "
            f"{', '.join(PACKAGED_HEADS)}); train one with `particlescale train-prm --model "
            f"{model_name} ...` and pass --reward value:PATH"
        )
    path = Path(str(resources.files("particlescale") / "data" / PACKAGED_HEADS[model_name]))
    if not path.is_file():
        raise ModelError(f"value reward: packaged head {path.name} is missing from this install")
    return path


def ends_solution(step: Step) -> bool:
    """A step that ends a solution by itself (end of generation or a boxed answer); a step
    cap set by the algorithm is not visible here, and such a step is scored as a prefix."""
    return step.finish == "eos" or has_boxed(step.text)


class ValueReward:
    """Reward = value head on ``Step.features``; needs a generator that records them.

    The default aggregation over a prefix's steps is ``min`` (a solution is as good as its
    weakest step): on 100 GSM8K test problems it ranked one problem's solutions at 0.69 AUC
    against 0.66 for ``last``, with better best-of-8 (30% against 23%) and weighted
    majority (35% against 32%) (BENCHMARKS.md, ``value``). In a product (``value*arith``)
    the value part is aggregated the same way.
    """

    name = "value"
    needs_features = True

    def __init__(self, head: ValueHead, *, aggregation: str = "min") -> None:
        self.head = head
        self.default_aggregation = aggregation

    async def score(self, problem: Problem, trajectories: Sequence[Sequence[Step]],
                    usage: Usage) -> list[list[float]]:
        out: list[list[float]] = []
        for traj in trajectories:
            if not traj:
                out.append([])
                continue
            if any(s.features is None for s in traj):
                raise ConfigError(
                    "reward 'value': the steps carry no hidden states; use the embedded "
                    "llama.cpp generator with features on (LlamaCppGenerator(..., "
                    "embeddings=True); `solve --reward value` does this)"
                )
            x = np.stack([np.asarray(s.features, dtype=np.float64) for s in traj])
            v = self.head.predict(x)
            if ends_solution(traj[-1]):  # a finished solution: the final head judges it
                v[-1] = self.head.predict_final(x[-1:])[0]
            out.append([float(a) for a in v])
        usage.prm_calls += 1
        return out
