"""The vocabulary of particlescale: problems, steps, particles, usage and results.

A *particle* is a partial (or finished) solution: a list of reasoning steps with the reward
the process reward model gave each step and a log-weight. Particles hold only light data
(text, token counts, scores); heavy state such as a KV cache lives in the backend and is
referred to by an opaque ``handle`` on the particle's last step.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

FinishReason = Literal["step", "eos", "length"]
"""Why a step ended: ``step`` at the step delimiter, ``eos`` at end-of-sequence / end-of-turn,
``length`` at the per-step token cap."""


@dataclass(frozen=True)
class Problem:
    """One question to solve. ``answer`` is the gold answer when known (evaluation only).

    ``reference`` is a worked solution (GSM8K's, with ``<<expr=value>>`` annotations) when
    the dataset has one: privileged, like ``answer``. Only instruments read it (the
    ``reference`` reward); generators see ``question`` and ``system_prompt`` only, and it is
    kept out of ``repr`` so that logs do not carry it."""

    question: str
    id: str = "problem"
    answer: str | None = None
    system_prompt: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reference: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("question: must be a non-empty string; pass the problem text to solve")


STEP_SEPARATOR = "\n\n"
"""How the steps of a particle are joined into its text (``Particle.text``, answers, the
server's message content); generators re-insert their own delimiter when they re-read a prefix."""


@dataclass(frozen=True)
class Step:
    """One reasoning step produced by a generator.

    ``handle`` is the backend's opaque state for the prefix that ends with this step (for the
    llama.cpp engine, a KV sequence). A generator *consumes* the handles of the parents it
    extends; the algorithm releases the handles of particles it drops. A parent whose handle is
    ``None`` must still be extendable from its text (the backend re-reads it).
    ``features`` optionally carries the generator's hidden state at the step's last token.
    """

    text: str
    tokens: int = 0
    finish: FinishReason = "step"
    logprob: float | None = None
    handle: Any = field(default=None, compare=False, repr=False)
    features: np.ndarray | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "finish": self.finish,
                "logprob": self.logprob}


@dataclass
class Particle:
    """A partial or finished solution. ``rewards[i]`` is the reward of the prefix
    ``steps[:i+1]``. Its weight lives with the population (an array of log-weights beside the
    list of particles), since it is only meaningful relative to the others."""

    id: int
    steps: tuple[Step, ...] = ()
    rewards: tuple[float, ...] = ()
    finished: bool = False
    parent: int | None = None

    @property
    def handle(self) -> Any:
        return self.steps[-1].handle if self.steps else None

    @property
    def text(self) -> str:
        """The solution as text: its steps separated by a blank line (a step's text never
        holds the delimiter it ended at, whatever the generator's delimiter was)."""
        return STEP_SEPARATOR.join(s.text for s in self.steps)

    def texts(self) -> list[str]:
        return [s.text for s in self.steps]


@dataclass
class Usage:
    """Real compute spent by a run, next to its nominal budget."""

    lm_calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prm_calls: int = 0
    prm_tokens: int = 0
    wall_time: float = 0.0

    def add(self, other: Usage) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    """A finished (or force-stopped) solution offered by a run, with its normalised weight."""

    text: str
    answer: str | None
    weight: float
    score: float
    steps: int
    tokens: int
    rewards: tuple[float, ...] = ()
    copies: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rewards"] = list(self.rewards)
        return d


@dataclass
class TraceNode:
    """One particle at one step, as the genealogy viewer draws it."""

    id: int
    parent: int | None
    text: str
    reward: float | None
    score: float | None
    log_weight: float
    finished: bool
    answer: str | None = None
    reference: bool = False


@dataclass
class TraceStep:
    """The population after one step of one band (a PG iteration, a PT chain, a DVTS subtree)."""

    band: str
    t: int
    nodes: list[TraceNode]
    ess: float | None = None
    resampled: bool = False
    temperature: float | None = None


@dataclass
class Trace:
    method: str
    problem: dict[str, Any]
    config: dict[str, Any]
    steps: list[TraceStep] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, **asdict(self)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Trace:
        steps = [
            TraceStep(**{**s, "nodes": [TraceNode(**n) for n in s["nodes"]]})
            for s in d.get("steps", [])
        ]
        return Trace(method=d["method"], problem=d["problem"], config=d["config"], steps=steps,
                     events=d.get("events", []))


@dataclass
class Result:
    """What every algorithm returns."""

    answer: str | None
    candidates: list[Candidate]
    usage: Usage
    trace: Trace
    method: str
    budget: int
    seed: int | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str | None:
        """The full text of the chosen solution (highest-weight candidate with the answer)."""
        best = None
        for c in self.candidates:
            if c.answer == self.answer and (best is None or c.weight > best.weight):
                best = c
        return best.text if best else None

    def to_dict(self, *, trace: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "answer": self.answer,
            "text": self.text,
            "method": self.method,
            "budget": self.budget,
            "seed": self.seed,
            "candidates": [c.to_dict() for c in self.candidates],
            "usage": self.usage.to_dict(),
            "info": self.info,
        }
        if trace:
            d["trace"] = self.trace.to_dict()
        return d


class Stopwatch:
    """Wall-time measurement for Usage.wall_time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
