"""One sample set for the sampled baselines of a sweep: record the generator once, replay it.

``self-consistency``, ``best-of-n`` and ``weighted-best-of-n`` draw the same thing (N
independent solutions, step by step) and differ only in how they pick an answer. In a sweep
they share one sample set per (problem, seed, budget, sampling settings, reward aggregation)::

    recorder = Recording(generator)
    main     = asolve(problem, method=drawer, generator=recorder)      # samples for real
    for each other member of the group:
        row  = asolve(problem, method=member, generator=Replay(recorder))   # no LM call

The replay answers every ``extend`` call (and ``extend_to_end``, the barrier-free sampling of
sessions that offer it: the replay offers it exactly when the drawing session did) with the
steps the drawing run got for the same call, after checking the call is the same one (same
parents, same numbers of children): each member
runs its *own* code on the shared samples, so its answer, candidates and tie-breaks are exactly
what it would give on those samples. The reward is called again; reward models cache scores by
prefix, so scoring the same solutions a second time costs a cache lookup.

Usage of a replayed run: the generation usage the drawing run recorded for each call (LM calls,
prompt and generated tokens) is added again, and its wall time gets the drawing run's seconds
of generation, so a row's ``usage`` is what the method costs on its own (the report compares
methods on it). What the sweep really spent is the row's ``new_tokens``: the drawing row's
generated tokens, zero for a row that replayed (see :mod:`particlescale.eval.sweep`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from particlescale.errors import ParticlescaleError
from particlescale.protocols import GenerationSession, Generator, SamplingParams
from particlescale.types import Particle, Problem, Step, Usage

# The Usage fields a generation session adds to (the reward adds the prm_* ones).
GENERATION_USAGE = ("lm_calls", "prompt_tokens", "generated_tokens")


@dataclass
class Call:
    """One call of the drawing run: what was asked, what came back, what it cost."""

    kind: str  # "extend" or "extend_to_end"
    parents: tuple[tuple[str, ...], ...]
    children: tuple[int, ...]
    steps: list[Any]  # extend: list[list[Step]]; extend_to_end: list[list[list[Step]]]
    usage: dict[str, int]
    seconds: float


@dataclass
class SessionRecord:
    problem_id: str
    params: SamplingParams
    to_end: bool  # the session offered extend_to_end
    calls: list[Call] = field(default_factory=list)


def _strip(x: Any) -> Any:
    """Steps without their handles (the backend's state, consumed or released by the drawing
    run), in the same nesting."""
    return replace(x, handle=None) if isinstance(x, Step) else [_strip(y) for y in x]


def _copy(x: Any) -> Any:
    return x if isinstance(x, Step) else [_copy(y) for y in x]


def _signature(parents: Sequence[Particle], children: Sequence[int]
               ) -> tuple[tuple[tuple[str, ...], ...], tuple[int, ...]]:
    return tuple(tuple(s.text for s in p.steps) for p in parents), tuple(int(c) for c in children)


class _RecordingSession:
    def __init__(self, inner: GenerationSession, record: SessionRecord, usage: Usage):
        self.inner, self.record, self.usage = inner, record, usage

    async def extend(self, parents: Sequence[Particle], children: Sequence[int]
                     ) -> list[list[Step]]:
        out = self.inner.extend(parents, children)
        return await self._call("extend", parents, children, out)

    def __getattr__(self, name: str) -> Any:  # offered only when the drawing session had it
        record = self.__dict__.get("record")
        if name == "extend_to_end" and record is not None and record.to_end:
            return self._extend_to_end
        raise AttributeError(name)

    async def _extend_to_end(self, parents: Sequence[Particle], children: Sequence[int],
                             final: Callable[[Step, int], bool]) -> list[list[list[Step]]]:
        inner = self.inner.extend_to_end(parents, children, final)  # type: ignore[attr-defined]
        return await self._call("extend_to_end", parents, children, inner)

    async def _call(self, kind: str, parents: Sequence[Particle], children: Sequence[int],
                    call: Any) -> Any:
        before = {k: getattr(self.usage, k) for k in GENERATION_USAGE}
        t0 = time.perf_counter()
        out = await call
        seconds = time.perf_counter() - t0
        parent_texts, counts = _signature(parents, children)
        self.record.calls.append(Call(
            kind, parent_texts, counts, _strip(out),
            {k: getattr(self.usage, k) - before[k] for k in GENERATION_USAGE}, seconds))
        return out

    def release(self, particles: Iterable[Particle]) -> None:
        self.inner.release(particles)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Recording:
    """A :class:`Generator` that passes everything to ``inner`` and records each session."""

    def __init__(self, inner: Generator):
        self.inner = inner
        self.name = inner.name
        self.sessions: list[SessionRecord] = []

    def session(self, problem: Problem, params: SamplingParams, rng: np.random.Generator,
                usage: Usage) -> GenerationSession:
        inner = self.inner.session(problem, params, rng, usage)
        record = SessionRecord(problem.id, params, hasattr(inner, "extend_to_end"))
        self.sessions.append(record)
        return _RecordingSession(inner, record, usage)

    @property
    def generated_tokens(self) -> int:
        return sum(c.usage["generated_tokens"] for s in self.sessions for c in s.calls)

    @property
    def seconds(self) -> float:
        """Time spent inside the generator (what a replaying run does not spend)."""
        return sum(c.seconds for s in self.sessions for c in s.calls)


class ReplayMismatch(ParticlescaleError):
    """A replaying method asked the generator for something the drawing run did not."""


class _ReplaySession:
    def __init__(self, record: SessionRecord, usage: Usage, method: str):
        self.record, self.usage, self.method = record, usage, method
        self.next = 0

    async def extend(self, parents: Sequence[Particle], children: Sequence[int]
                     ) -> list[list[Step]]:
        return self._replay("extend", parents, children)

    def __getattr__(self, name: str) -> Any:  # offered only when the drawing session had it
        record = self.__dict__.get("record")
        if name == "extend_to_end" and record is not None and record.to_end:
            return self._extend_to_end
        raise AttributeError(name)

    async def _extend_to_end(self, parents: Sequence[Particle], children: Sequence[int],
                             final: Callable[[Step, int], bool]) -> list[list[list[Step]]]:
        return self._replay("extend_to_end", parents, children)

    def _replay(self, kind: str, parents: Sequence[Particle], children: Sequence[int]) -> Any:
        i = self.next
        parent_texts, counts = _signature(parents, children)
        calls = self.record.calls
        if i >= len(calls) or (calls[i].kind, calls[i].parents, calls[i].children) != (
                kind, parent_texts, counts):
            raise ReplayMismatch(
                f"shared samples: {self.method} made generator call {i + 1} differently from "
                f"the run that drew the samples of {self.record.problem_id!r}; methods that "
                "share samples must sample alike (eval.specs.REUSABLE)")
        self.next += 1
        call = calls[i]
        for k, v in call.usage.items():
            setattr(self.usage, k, getattr(self.usage, k) + v)
        return _copy(call.steps)

    def release(self, particles: Iterable[Particle]) -> None:
        pass  # nothing is held

    async def aclose(self) -> None:
        pass


class Replay:
    """A :class:`Generator` answering from a :class:`Recording` (its sessions, in order)."""

    def __init__(self, recording: Recording, method: str):
        self.recording = recording
        self.method = method
        self.name = recording.name
        self._next = 0

    def session(self, problem: Problem, params: SamplingParams, rng: np.random.Generator,
                usage: Usage) -> GenerationSession:
        sessions = self.recording.sessions
        i = self._next
        if i >= len(sessions) or sessions[i].problem_id != problem.id \
                or sessions[i].params != params:
            raise ReplayMismatch(
                f"shared samples: {self.method} opened generation session {i + 1} for "
                f"{problem.id!r} with sampling settings the drawing run did not use")
        self._next += 1
        return _ReplaySession(sessions[i], usage, self.method)

