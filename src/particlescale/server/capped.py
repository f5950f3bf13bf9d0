"""A generator wrapper that applies a request's ``max_tokens`` and ``stop`` to every particle,
and records why each particle stopped (the response's ``finish_reason``).

``max_tokens`` is a hard cap on the tokens generated for one particle. The wrapped session is
opened with a step cap ``c = min(max_step_tokens, max(1, max_tokens // 4))``; after each step a
particle that has used ``u`` tokens is stopped when another full step could cross the cap
(``u + c > max_tokens``). By induction ``u <= max_tokens`` always holds, and a particle stopped
by the cap has used more than ``max_tokens - c >= 3/4 max_tokens``. (A step cap of
``max_tokens`` itself would let one long step use the whole budget, so a request with
``max_tokens=300`` would get single-step particles: no filtering at all.) A step longer than
``c`` continues in the next step, as any step cut by ``max_step_tokens`` does. A particle
stopped by the cap ends with ``finish_reason = "length"``, as does one stopped by the
method's ``max_steps``.

``stop`` sequences are matched inside each new step: the step is cut just before the first
match and ends its particle (``finish_reason = "stop"``). A match that straddles two steps
is not seen (the delimiter between steps is not searched either); steps end at the delimiter
(``"\\n\\n"``), so a straddling match needs a step cut by the token cap. The cut step's
backend handle (KV state that holds the text after the cut) is released at once and the step
carries no handle.

Particles are marked finished by returning their last step with ``finish = "eos"``, the
signal every algorithm already honours; the real reason is kept in :attr:`CapState.reasons`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from particlescale.answers import has_boxed
from particlescale.protocols import GenerationSession, Generator, SamplingParams
from particlescale.types import Particle, Problem, Step, Usage

CAP_FRACTION = 4
"""The step cap under ``max_tokens`` is at most ``max_tokens // CAP_FRACTION``."""


@dataclass
class CapState:
    """What the wrapper observed: the finish reason of every particle text it stopped."""

    reasons: dict[str, str] = field(default_factory=dict)

    def finish_reason(self, text: str | None) -> str:
        return self.reasons.get(text or "", "stop")


@dataclass
class CappedGenerator:
    inner: Generator
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    max_steps: int | None = None
    state: CapState = field(default_factory=CapState)

    @property
    def name(self) -> str:
        return self.inner.name

    def session(self, problem: Problem, params: SamplingParams, rng: np.random.Generator,
                usage: Usage) -> CappedSession:
        if self.max_tokens is not None:
            cap = max(1, self.max_tokens // CAP_FRACTION)
            if params.max_step_tokens > cap:
                params = replace(params, max_step_tokens=cap)
        inner = self.inner.session(problem, params, rng, usage)
        return CappedSession(inner, self, params.max_step_tokens)


@dataclass
class CappedSession:
    inner: GenerationSession
    gen: CappedGenerator
    step_cap: int

    async def extend(self, parents: Sequence[Particle],
                     children: Sequence[int]) -> list[list[Step]]:
        out = await self.inner.extend(parents, children)
        return [[self._apply(parent, step) for step in steps]
                for parent, steps in zip(parents, out, strict=True)]

    def _apply(self, parent: Particle, step: Step) -> Step:
        gen = self.gen
        hits = [at for at in (step.text.find(s) for s in gen.stop) if at >= 0]
        if hits:
            self.inner.release([Particle(id=-1, steps=(step,))])
            new = replace(step, text=step.text[: min(hits)], finish="eos", handle=None)
            gen.state.reasons[_text_with(parent, new)] = "stop"
            return new
        if step.finish == "eos" or has_boxed(step.text):
            return step
        used = sum(s.tokens for s in parent.steps) + step.tokens
        text = _text_with(parent, step)
        if gen.max_tokens is not None and used + self.step_cap > gen.max_tokens:
            gen.state.reasons[text] = "length"
            return replace(step, finish="eos")
        if gen.max_steps is not None and len(parent.steps) + 1 >= gen.max_steps:
            gen.state.reasons[text] = "length"
        return step

    def release(self, particles: Iterable[Particle]) -> None:
        self.inner.release(particles)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _text_with(parent: Particle, step: Step) -> str:
    """The text the child of ``parent`` with ``step`` will have (its ``Particle.text``)."""
    return Particle(id=-1, steps=(*parent.steps, step)).text
