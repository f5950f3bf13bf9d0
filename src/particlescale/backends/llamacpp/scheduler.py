"""The engine thread's work lists, and the protocol every job follows.

A caller's request becomes a :class:`Message` on the engine's inbox. A message that holds
slots over several ticks is a :class:`Job`, and it lives through these calls, all on the
engine thread::

    job.start(sched)                 taken from the inbox: ask for slots with
                                     sched.want(job, part), or use parked ones at once
    job.admit(sched, slot, part)     a slot for what ``part`` waited for: queue tokens to
                                     decode into it with sched.add_run(...)
    job.on_rows(sched, run, rows)    teacher forcing: logits rows of a run's tokens
    job.on_row(sched, run, row)      the logits row of a run's last token
    job.on_token(sched, child, ...)  a token sampled for one of the job's children
    sched.finish(job, result)        done: the caller's future gets the result

``part`` is the job's own label for what a wait or a run serves (a parent's index, a child,
a prompt's index...); the scheduler only hands it back. If anything goes wrong, or the
caller cancels, :meth:`Scheduler.abort` drops the job and frees every slot it holds.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any

import numpy as np

from particlescale.backends.llamacpp.native import EngineStats
from particlescale.backends.llamacpp.sampling import Sampler
from particlescale.backends.llamacpp.slots import Slot, SlotPool
from particlescale.backends.llamacpp.tokens import Vocab

if TYPE_CHECKING:
    from particlescale.backends.llamacpp.extend import Child, SessionState


class Message:
    """Something for the engine thread to do: :meth:`start` runs there when the message is
    taken from the inbox; ``future`` gets the result."""

    def __init__(self) -> None:
        self.future: Future = Future()

    def start(self, sched: Scheduler) -> None:
        raise NotImplementedError

    def done(self, value: Any) -> bool:
        try:
            self.future.set_result(value)
            return True
        except InvalidStateError:  # cancelled by the caller
            return False


class Job(Message):
    """A message that holds slots until it completes (see the module docstring).
    ``prompt_tokens`` counts the tokens it decoded that were not generated."""

    def __init__(self, state: SessionState | None) -> None:
        super().__init__()
        self.state = state
        self.aborted = False
        self.prompt_tokens = 0

    def fail(self, err: BaseException) -> None:
        self.aborted = True
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(err)

    def admit(self, sched: Scheduler, slot: Slot, part: Any) -> None:
        raise NotImplementedError

    def on_row(self, sched: Scheduler, run: Run, row: int) -> None:
        raise NotImplementedError

    def on_rows(self, sched: Scheduler, run: Run, rows: list[int]) -> None:
        raise NotImplementedError

    def owns(self, owner: Any) -> bool:
        """Whether a slot held by ``owner`` belongs to this job (freed if it aborts)."""
        return owner is self

    def drop(self, pool: SlotPool) -> None:
        """The job is aborted: free what it parked (its owned slots are already free)."""


class Run:
    """Tokens to decode into a slot for ``job``; the row of the last one goes to
    ``job.on_row``. A teacher-forcing run (``forced``) wants a logits row for each of its
    last ``rows`` tokens: every tick that decodes some of them hands their rows to
    ``job.on_rows``, in order, before ``on_row``."""

    __slots__ = ("forced", "job", "part", "pending", "rows", "slot")

    def __init__(self, slot: Slot, pending: list[int], job: Job, part: Any, rows: int,
                 forced: bool) -> None:
        self.slot = slot
        self.pending = pending
        self.job = job
        self.part = part
        self.rows = rows
        self.forced = forced


class Scheduler:
    """What the engine thread has to do: jobs in progress, waits for a slot (first come,
    first served), runs for the next tick, and children whose next token is to be sampled
    (the rows of the last decode are in ``row_logits`` / ``row_features`` meanwhile)."""

    def __init__(self, pool: SlotPool, vocab: Vocab, stats: EngineStats) -> None:
        self.pool = pool
        self.vocab = vocab
        self.stats = stats
        self.sampler = Sampler(vocab.n_vocab)
        self.jobs: list[Job] = []
        self.waiting: deque[tuple[Job, Any]] = deque()
        self.runs: list[Run] = []
        self.samples: list[tuple[Child, np.ndarray, np.ndarray | None]] = []
        self.row_logits: list[np.ndarray] = []
        self.row_features: list[np.ndarray | None] | None = None

    # -- called by jobs

    def want(self, job: Job, part: Any) -> None:
        """Queue ``job.admit(sched, slot, part)`` for when a slot is free."""
        self.waiting.append((job, part))

    def add_run(self, slot: Slot, pending: list[int], job: Job, part: Any, *, rows: int = 1,
                forced: bool = False) -> Run:
        run = Run(slot, pending, job, part, rows, forced)
        self.runs.append(run)
        return run

    def sample_later(self, child: Child, logits: np.ndarray, feature: np.ndarray | None
                     ) -> None:
        """Sample ``child``'s next token from ``logits`` (in order, before the next tick)."""
        self.samples.append((child, logits, feature))

    def row_feature(self, row: int) -> np.ndarray | None:
        return self.row_features[row] if self.row_features is not None else None

    def finish(self, job: Job, value: Any) -> bool:
        """The job is complete; False if its caller gave up waiting."""
        self.jobs.remove(job)
        return job.done(value)

    # -- called by the engine loop

    def take(self, msg: Message) -> None:
        if isinstance(msg, Job):
            self.jobs.append(msg)
        msg.start(self)

    def admit(self) -> None:
        """Give free (or evicted) slots to waiting jobs, in order, while there are any."""
        while self.waiting:
            job, part = self.waiting[0]
            if job.aborted:
                self.waiting.popleft()
                continue
            s = self.pool.alloc(job)
            if s is None:
                return
            self.waiting.popleft()
            job.admit(self, s, part)

    def sample(self) -> None:
        """Sample one token for every child whose logits arrived (fixed order: each child's
        own RNG is drawn once per token, so a seed reproduces its tokens)."""
        samples = self.samples
        while samples:
            batch, self.samples = samples, []
            for child, logits, feature in batch:
                if child.job.aborted:
                    continue
                p = child.params
                u = child.rng.random()
                token, lp = self.sampler.sample(logits, p.temperature, p.top_p, u)
                self.stats.sampled_tokens += 1
                child.job.on_token(self, child, token, lp, feature)
            samples = self.samples

    def abort(self, job: Job, err: BaseException | None) -> None:
        """Drop a job: free every slot it holds (running or parked results)."""
        job.aborted = True
        if err is not None:
            job.fail(err)
        self.runs = [r for r in self.runs if r.job is not job]
        self.waiting = deque(w for w in self.waiting if w[0] is not job)
        self.pool.free_where(job.owns)
        job.drop(self.pool)
        if job in self.jobs:
            self.jobs.remove(job)

    def reap_cancelled(self) -> None:
        for job in [j for j in self.jobs if j.future.cancelled()]:
            self.abort(job, None)

    def fail_all(self, err: BaseException) -> None:
        for job in list(self.jobs):
            self.abort(job, err)
        self.runs.clear()
        self.waiting.clear()
