"""Scripted generators and rewards for testing algorithms against exact answers.

``ScriptedGenerator`` samples each step from a known distribution over a tiny alphabet that
depends on the prefix, so that every trajectory's probability can be enumerated. It also
checks the handle discipline of the protocol: it hands out a fresh handle per step, fails if
an algorithm extends from a released or consumed handle, and reports leaks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from particlescale.protocols import SamplingParams
from particlescale.types import Particle, Problem, Step, Usage

Dist = Callable[[tuple[str, ...]], dict[str, float]]


@dataclass
class Handle:
    key: int
    live: bool = True


@dataclass
class ScriptedSession:
    gen: ScriptedGenerator
    params: SamplingParams
    rng: np.random.Generator
    usage: Usage
    handles: dict[int, Handle] = field(default_factory=dict)
    counter: itertools.count = field(default_factory=itertools.count)

    async def extend(
        self, parents: Sequence[Particle], children: Sequence[int]
    ) -> list[list[Step]]:
        self.gen.calls.append([int(c) for c in children])
        out = []
        for parent, k in zip(parents, children, strict=True):
            assert not parent.finished, "a finished particle was extended"
            h = parent.handle
            if isinstance(h, Handle):
                assert h.live, "extended a particle whose handle was released or consumed"
                h.live = False
                self.handles.pop(h.key, None)
            prefix = tuple(s.text for s in parent.steps)
            dist = self.gen.dist(prefix)
            names = list(dist)
            p = np.array([dist[x] for x in names], dtype=np.float64)
            steps = []
            for _ in range(k):
                if self.params.temperature == 0:
                    choice = names[int(np.argmax(p))]
                else:
                    choice = names[int(self.rng.choice(len(names), p=p / p.sum()))]
                key = next(self.counter)
                handle = Handle(key)
                self.handles[key] = handle
                eos = len(prefix) + 1 >= self.gen.horizon or choice in self.gen.eos_steps
                steps.append(Step(text=choice, tokens=1, finish="eos" if eos else "step",
                                  handle=handle))
            out.append(steps)
        self.usage.lm_calls += len(parents)
        self.usage.generated_tokens += sum(children)
        return out

    async def continuation_logprob(self, prefixes: Sequence[Particle],
                                   continuation: Sequence[Step]) -> list[float]:
        """Exact log-probability of the continuation's steps after each prefix under the
        script (greedy: 0 or -inf); -inf where the script cannot produce it, e.g. after a
        finished prefix or past the horizon. Handles are left alone."""
        self.gen.scored_continuations += len(prefixes)
        cont = tuple(s.text for s in continuation)
        out = []
        for parent in prefixes:
            path = tuple(s.text for s in parent.steps)
            total = 0.0
            for step in cont:
                if path and (len(path) >= self.gen.horizon or path[-1] in self.gen.eos_steps):
                    total = -np.inf  # the prefix had already ended
                    break
                dist = self.gen.dist(path)
                q = dist.get(step, 0.0) / sum(dist.values())
                if self.params.temperature == 0:
                    q = float(step == max(dist, key=lambda x: dist[x]))
                total += float(np.log(q)) if q > 0 else -np.inf
                path = (*path, step)
            out.append(total)
        return out

    def release(self, particles: Iterable[Particle]) -> None:
        for p in particles:
            h = p.handle
            if isinstance(h, Handle):
                h.live = False
                self.handles.pop(h.key, None)

    async def aclose(self) -> None:
        self.gen.leaked.append(len(self.handles))
        self.handles.clear()


@dataclass
class ScriptedGenerator:
    dist: Dist
    horizon: int = 3
    eos_steps: frozenset[str] = frozenset()
    name: str = "scripted"
    calls: list[list[int]] = field(default_factory=list)
    leaked: list[int] = field(default_factory=list)
    scored_continuations: int = 0

    def session(self, problem: Problem, params: SamplingParams, rng: np.random.Generator,
                usage: Usage) -> ScriptedSession:
        return ScriptedSession(self, params, rng, usage)


@dataclass
class ScriptedReward:
    """Reward of a prefix given by a function of the step texts; counts calls."""

    fn: Callable[[tuple[str, ...]], float]
    name: str = "scripted-reward"
    default_aggregation: str = "last"
    scored: list[tuple[str, ...]] = field(default_factory=list)

    async def score(self, problem: Problem, trajectories: Sequence[Sequence[Step]],
                    usage: Usage) -> list[list[float]]:
        usage.prm_calls += 1
        out = []
        for traj in trajectories:
            texts = tuple(s.text for s in traj)
            vals = []
            for i in range(len(texts)):
                self.scored.append(texts[: i + 1])
                vals.append(self.fn(texts[: i + 1]))
            out.append(vals)
        return out


def enumerate_paths(dist: Dist, horizon: int, eos_steps: frozenset[str] = frozenset()):
    """Every trajectory with its probability under the scripted generator."""
    paths = [((), 1.0)]
    done = []
    while paths:
        nxt = []
        for prefix, p in paths:
            d = dist(prefix)
            z = sum(d.values())
            for step, q in d.items():
                path = (*prefix, step)
                if len(path) >= horizon or step in eos_steps:
                    done.append((path, p * q / z))
                else:
                    nxt.append((path, p * q / z))
        paths = nxt
    return done
