"""Generation: extending particles by one step (or to the end), and closing a session.

An extend gets N parents and ``children[i]`` seeds for parent i. For each parent it gets the
parent's logits, then forks::

    parent still parked in its slot    decode its pending token there (the last one sampled)
    parent evicted, or given as text   rebuild it in a new slot: the prompt (copied from the
                                       session's root when that is resident) + its tokens
    the empty parent (the prompt)      fork the session's root, reading the prompt first if
                                       it is not resident (its logits are kept)
    then, fork                         every child but the last gets a copy of the parent's
                                       KV sequence (the last takes the parent's slot), and
                                       each child samples its first token from the parent's
                                       logits with its own RNG stream

A child then decodes one token per tick until its step ends (the delimiter, an
end-of-generation token, or ``max_step_tokens``); it parks in its slot under a new
:class:`SeqHandle`, its last token still pending. A child that found no slot at the fork is
rebuilt from its tokens when one frees up. Under ``extend_to_end`` a child whose step ends
goes straight on with its next step in the same slot until the stop rule says it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from particlescale.backends.llamacpp.scheduler import Job, Message, Run
from particlescale.backends.llamacpp.slots import SeqHandle, Slot, SlotPool
from particlescale.backends.steptext import StepText
from particlescale.errors import BackendError
from particlescale.protocols import SamplingParams
from particlescale.types import FinishReason, Step

if TYPE_CHECKING:
    from particlescale.backends.llamacpp.scheduler import Scheduler


@dataclass
class SessionState:
    """Engine-side state of one generation session (one problem)."""

    prompt: tuple[int, ...]
    root: SeqHandle | None = None
    root_logits: np.ndarray | None = None
    root_features: np.ndarray | None = None
    prompt_decoded: int = 0  # tokens decoded that this session did not generate
    decoded: int = 0  # every token decoded for this session

    def root_ready(self) -> bool:
        """Whether the prompt is parked, whole, with its logits: children fork from it."""
        r = self.root
        return (r is not None and r.resident and r.slot is not None and not r.slot.busy
                and self.root_logits is not None and r.slot.n_past == len(self.prompt))


@dataclass
class ParentSpec:
    """One parent of an extend: its handle if usable, else the tokens to rebuild it from."""

    children: int
    seeds: Sequence[int]
    handle: SeqHandle | None = None
    tokens: tuple[int, ...] = ()
    carry: bytes = b""
    root: bool = False  # the empty prefix: fork from the session's prompt


# ``extend_to_end``'s stopping rule: (parent index, the step just ended, how many steps this
# child has generated so far, counting that one) -> whether the child's solution is over.
StopRule = Callable[[int, Step, int], bool]


@dataclass
class ExtendOutcome:
    """``steps[i][j]``: child j of parent i, a Step (``extend``) or the list of Steps up to
    the end of its solution (``extend_to_end``)."""

    steps: list[list[Any]]
    prompt_tokens: int
    generated_tokens: int


class Child:
    """One child being generated: its step text, tokens and RNG stream."""

    __slots__ = ("base", "done", "feature", "finish", "job", "logprob", "params", "pos", "rng",
                 "slot", "text", "tokens")

    def __init__(self, job: ExtendJob, pos: tuple[int, int], base: tuple[int, ...],
                 carry: bytes, seed: int) -> None:
        self.job = job
        self.pos = pos
        self.base = base
        self.params = job.params
        self.rng = np.random.default_rng(int(seed))
        self.text = StepText(job.params.delimiter, carry)
        self.tokens: list[int] = []
        self.logprob = 0.0
        self.slot: Slot | None = None
        self.finish: FinishReason | None = None
        self.feature: np.ndarray | None = None
        self.done: list[Step] = []  # steps already ended, under extend_to_end


class _Root:
    """The part of an extend that reads the session's prompt for parent ``i``."""

    __slots__ = ("handle", "i")

    def __init__(self, i: int) -> None:
        self.i = i
        self.handle: SeqHandle | None = None


class ExtendJob(Job):
    """``extend`` (``until`` None) and ``extend_to_end``. Parts: a parent's index (its
    rebuild, or the decode of its pending token), a :class:`_Root` (the prompt), a
    :class:`Child` (its rebuild, or the decode of its last token)."""

    def __init__(self, state: SessionState, specs: list[ParentSpec],
                 params: SamplingParams, until: StopRule | None = None) -> None:
        super().__init__(state)
        self.state: SessionState = state
        self.specs = specs
        self.params = params
        self.until = until
        self.results: list[list[Any]] = [[None] * s.children for s in specs]
        self.remaining = sum(s.children for s in specs)
        self.generated = 0
        self.handles: list[SeqHandle] = []

    def start(self, sched: Scheduler) -> None:
        state = self.state
        for i, spec in enumerate(self.specs):
            h = spec.handle
            if spec.children == 0:  # dropped: its slot is free for the others at once
                if h is not None and h.resident and h.slot is not None and not h.slot.busy:
                    sched.pool.free(h.slot)
                continue
            if spec.root or (not spec.tokens and (h is None or not h.tokens)):  # the prompt
                if state.root_ready():
                    assert state.root is not None and state.root.slot is not None
                    assert state.root_logits is not None
                    s = state.root.slot
                    s.busy = True
                    self._fork(sched, i, s, keep=True, logits=state.root_logits,
                               feature=state.root_features)
                else:
                    sched.want(self, _Root(i))
            elif h is not None and h.slot is not None and h.slot.owner is h and not h.slot.busy:
                # parked: take its slot and decode its pending token there
                s = h.slot
                s.owner, s.busy = self, True
                h.slot = None
                pending = list((state.prompt + h.tokens)[s.n_past:])
                if not pending:  # cannot happen: the last sampled token is always pending
                    raise RuntimeError("resident parent without a pending token")
                sched.add_run(s, pending, self, i)
            else:  # evicted, or given as tokens: rebuilt in a new slot
                sched.want(self, i)
        if self.remaining == 0:
            self._complete(sched)

    def admit(self, sched: Scheduler, slot: Slot, part: Any) -> None:
        state = self.state
        if isinstance(part, _Root):
            sched.pool.free_parked([state.root] if state.root is not None else [])
            part.handle = state.root = SeqHandle(state, ())
            state.root_logits = None
            self.prompt_tokens += len(state.prompt)
            sched.add_run(slot, list(state.prompt), self, part)
        elif isinstance(part, Child):  # a deferred child: rebuild its sequence, then go on
            slot.owner = part
            part.slot = slot
            self._prefill(sched, slot, list(part.base) + part.tokens, part)
        else:  # an evicted parent, or one given as tokens: rebuild it
            spec = self.specs[part]
            toks = list(spec.handle.tokens if spec.handle is not None else spec.tokens)
            self._prefill(sched, slot, toks, part)

    def _prefill(self, sched: Scheduler, slot: Slot, tokens: list[int], part: Any) -> None:
        """Decode ``tokens`` after the prompt: the session's root copied when it is ready,
        else the prompt re-read too (counted as prompt tokens, as are ``tokens`` but the
        last, which was sampled)."""
        state = self.state
        if state.root_ready():
            assert state.root is not None and state.root.slot is not None
            sched.pool.copy(state.root.slot, slot)
            state.root.slot.last_used = sched.pool.now
            pending = list(tokens)
        else:
            pending = list(state.prompt) + list(tokens)
        sched.add_run(slot, pending, self, part)
        self.prompt_tokens += len(pending) - 1

    def on_row(self, sched: Scheduler, run: Run, row: int) -> None:
        part = run.part
        if isinstance(part, Child):
            sched.sample_later(part, sched.row_logits[row], sched.row_feature(row))
        elif isinstance(part, _Root):
            state = self.state
            old = state.root
            if old is not part.handle:  # a concurrent extend rebuilt the root meanwhile
                sched.pool.free_parked([old] if old is not None else [])
                state.root = part.handle
            state.root_logits = sched.row_logits[row].copy()
            state.root_features = sched.row_feature(row)
            self._fork(sched, part.i, run.slot, keep=True, logits=state.root_logits,
                       feature=state.root_features)
        else:
            self._fork(sched, part, run.slot, keep=False, logits=sched.row_logits[row],
                       feature=sched.row_feature(row))

    def _fork(self, sched: Scheduler, i: int, slot: Slot, *, keep: bool, logits: np.ndarray,
              feature: np.ndarray | None) -> None:
        """Parent i's logits are ready: make its children, copy its KV, queue their first
        tokens. ``keep``: the slot is the session's root, parked again afterwards."""
        spec = self.specs[i]
        base = spec.tokens if spec.handle is None else spec.handle.tokens
        carry = spec.carry if spec.handle is None else spec.handle.carry
        if spec.root:
            base, carry = (), b""
        kids = [Child(self, (i, j), base, carry, spec.seeds[j]) for j in range(spec.children)]
        n_copies = len(kids) if keep else len(kids) - 1
        for child in kids[:n_copies]:
            target = sched.pool.alloc(child)
            if target is None:
                sched.stats.deferred += 1
                continue
            sched.pool.copy(slot, target)
            child.slot = target
        if keep:
            assert self.state.root is not None
            sched.pool.park(slot, self.state.root)
        else:
            slot.owner = kids[-1]
            kids[-1].slot = slot
        for child in kids:
            sched.sample_later(child, logits, feature)

    def on_token(self, sched: Scheduler, child: Child, token: int, logprob: float,
                 feature: np.ndarray | None) -> None:
        """Accept a sampled token; finish the step or schedule the token's decode."""
        child.tokens.append(token)
        child.logprob += logprob
        self.generated += 1
        if feature is not None:
            child.feature = feature
        p = child.params
        carry = b""
        if sched.vocab.is_eog(token):
            child.finish = "eos"
            text, _ = child.text.cut(final=True)
        else:
            at = child.text.add(sched.vocab.piece(token))
            if at >= 0:
                child.finish = "step"
                text, carry = child.text.split(at)
            elif len(child.tokens) >= p.max_step_tokens:
                child.finish = "length"
                text, carry = child.text.cut(final=False)
            else:
                self._continue(sched, child, token)
                return
        if self.until is not None and child.finish != "eos":
            step = Step(text=text, tokens=len(child.tokens), finish=child.finish,
                        logprob=float(child.logprob), features=child.feature)
            if not self.until(child.pos[0], step, len(child.done) + 1):
                # Not over: keep the step, start the next one on the same sequence (the token
                # that ended this step is decoded next, exactly as if the step had not ended).
                child.done.append(step)
                child.base = child.base + tuple(child.tokens)
                child.tokens, child.logprob, child.feature = [], 0.0, None
                child.finish = None
                child.text = StepText(p.delimiter, carry)
                self._continue(sched, child, token)
                return
        self._finish_child(sched, child, text, carry)

    def _continue(self, sched: Scheduler, child: Child, token: int) -> None:
        if child.slot is not None:
            sched.add_run(child.slot, [token], self, child)
        else:
            sched.want(self, child)

    def _finish_child(self, sched: Scheduler, child: Child, text: str, carry: bytes) -> None:
        handle = SeqHandle(self.state, child.base + tuple(child.tokens), carry)
        if child.slot is not None:
            sched.pool.park(child.slot, handle)
        self.handles.append(handle)
        step = Step(text=text, tokens=len(child.tokens), finish=child.finish or "step",
                    logprob=float(child.logprob), handle=handle, features=child.feature)
        i, j = child.pos
        self.results[i][j] = step if self.until is None else [*child.done, step]
        self.remaining -= 1
        if self.remaining == 0:
            self._complete(sched)

    def _complete(self, sched: Scheduler) -> None:
        self.state.prompt_decoded += self.prompt_tokens
        out = ExtendOutcome(steps=[list(r) for r in self.results],
                            prompt_tokens=self.prompt_tokens, generated_tokens=self.generated)
        if not sched.finish(self, out):  # the caller gave up: nobody will ever release these
            sched.pool.free_parked(self.handles)

    def owns(self, owner: Any) -> bool:
        return owner is self or (isinstance(owner, Child) and owner.job is self)

    def drop(self, pool: SlotPool) -> None:
        pool.free_parked(self.handles)


class CloseSession(Message):
    """Abort the session's jobs and free its root and parked particles."""

    def __init__(self, state: SessionState) -> None:
        super().__init__()
        self.state = state

    def start(self, sched: Scheduler) -> None:
        state = self.state
        for job in [j for j in sched.jobs if j.state is state]:
            sched.abort(job, BackendError("the session was closed", kind="protocol"))
        sched.pool.free_where(lambda o: isinstance(o, SeqHandle) and o.owner is state)
        state.root, state.root_logits, state.root_features = None, None, None
        self.done(None)
