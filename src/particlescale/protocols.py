"""The two protocols every algorithm is written against: a Generator and a RewardModel.

Algorithms never import a backend. A backend implements :class:`Generator` (the language
model: the transition kernel of the state-space model) or :class:`RewardModel` (the process
reward model: the potential). Tests drive algorithms with small scripted implementations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from particlescale.types import Particle, Problem, Step, Usage

Progress = Callable[[dict[str, Any]], None]
"""A method's progress callback: one dict per step (band, step, n, live, finished, ess...)."""


@dataclass(frozen=True)
class SamplingParams:
    """How the language model samples one step. Defaults follow the paper (T=0.8, top-p 1.0,
    steps delimited by a blank line). ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.8
    top_p: float = 1.0
    max_step_tokens: int = 512
    delimiter: str = "\n\n"

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature: must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p: must be in (0, 1]")
        if self.max_step_tokens < 1:
            raise ValueError("max_step_tokens: must be >= 1")
        if not self.delimiter:
            raise ValueError("delimiter: must be a non-empty string such as '\\n\\n'")


@runtime_checkable
class GenerationSession(Protocol):
    """Per-problem generation state (rendered prompt, KV sequences, replica choice).

    ``extend(parents, children)`` returns, for each parent ``i``, ``children[i]`` new steps,
    each sampled from the model given the problem prompt and the parent's steps. It consumes
    the parents' handles (a parent's KV sequence may be moved into its children); a parent
    with ``handle is None`` is re-read from its text. ``release`` frees the handles of
    particles that will never be extended again. Usage (LM calls, prompt and generated tokens)
    is added to the ``usage`` the session was opened with.
    """

    async def extend(
        self, parents: Sequence[Particle], children: Sequence[int]
    ) -> list[list[Step]]:
        ...

    def release(self, particles: Iterable[Particle]) -> None:
        ...

    async def aclose(self) -> None:
        ...


@runtime_checkable
class ContinuationScorer(Protocol):
    """An optional capability of a :class:`GenerationSession` (particle Gibbs with ancestor
    sampling needs it; nothing else does).

    ``continuation_logprob(prefixes, continuation)`` returns, for each prefix particle, the
    log-probability that the session's own proposal (the LM at the session's temperature and
    top-p: the distribution ``extend`` samples from) writes the steps of ``continuation``
    after the problem prompt and that prefix's steps, in the text layout ``extend`` uses
    (steps joined by the delimiter; a last step with ``finish="eos"`` includes the end of
    sequence; ``-inf`` where the proposal cannot write it). It must not consume or release
    the prefixes' handles. Called with no prefixes it returns ``[]`` and raises
    :class:`~particlescale.errors.ConfigError` if this session cannot score (e.g. the
    server behind it offers no prompt log-probabilities): algorithms call it so before any
    generation. Usage (calls, prompt tokens) is added to the session's ``usage``.
    """

    async def continuation_logprob(
        self, prefixes: Sequence[Particle], continuation: Sequence[Step]
    ) -> list[float]:
        ...


@runtime_checkable
class Generator(Protocol):
    """The language-model side: opens a :class:`GenerationSession` per problem."""

    name: str

    def session(
        self, problem: Problem, params: SamplingParams, rng: np.random.Generator, usage: Usage
    ) -> GenerationSession:
        ...


@runtime_checkable
class RewardModel(Protocol):
    """A process reward model: a probability in (0, 1) per step of each trajectory.

    ``score`` returns ``len(traj)`` values for each trajectory, value ``i`` being the reward of
    the prefix ``traj[:i+1]``. Implementations cache by prefix so that a step is scored once
    however many later steps follow it. PRM calls and tokens are added to ``usage``.
    """

    name: str

    async def score(
        self, problem: Problem, trajectories: Sequence[Sequence[Step]], usage: Usage
    ) -> list[list[float]]:
        ...
