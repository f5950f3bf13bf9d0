"""Scoring jobs (next-token log-probabilities, teacher-forced continuations) and the small
messages (release handles, wait for the engine).

A scoring request carries K prompts. When they share a long common prefix that the cache
does not hold yet, the prefix is decoded once into a slot and cached first; then every
prompt is started from the longest cached prefix (``SlotPool.start_from_cache``: a KV copy
cut to the common part), only its own tail is decoded, and the decoded prompt joins the
cache, so that the next request (the judge asked about step t+1 after step t) decodes only
what is new. Cache entries are parked slots, the first evicted when anything needs a slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from particlescale.backends.llamacpp.sampling import log_normalizers, proposal_logprob
from particlescale.backends.llamacpp.scheduler import Job, Message, Run
from particlescale.backends.llamacpp.slots import SHARE_MIN, SeqHandle, Slot
from particlescale.protocols import SamplingParams

if TYPE_CHECKING:
    from particlescale.backends.llamacpp.scheduler import Scheduler

SHARED = -1  # the part of a scoring job that decodes the prompts' common prefix


class Release(Message):
    """Free the slots these handles have parked (those being extended are kept)."""

    def __init__(self, handles: Sequence[SeqHandle]) -> None:
        super().__init__()
        self.handles = handles

    def start(self, sched: Scheduler) -> None:
        sched.pool.release(self.handles)


class Sync(Message):
    """Answers once every message sent before it has been handled."""

    def start(self, sched: Scheduler) -> None:
        self.done(None)


class _PromptsJob(Job):
    """K prompts decoded from the cache; part ``k`` is prompt k, part ``SHARED`` their
    common prefix. Subclasses say what to decode and what to do with the rows."""

    def __init__(self, prompts: list[list[int]]) -> None:
        super().__init__(None)
        self.prompts = prompts
        self.remaining = len(prompts)
        self.prefix: list[int] = []

    def start(self, sched: Scheduler) -> None:
        """Queue every prompt, after decoding (and caching) their common prefix once when
        it is long and not cached yet."""
        prompts = self.prompts
        lcp = 0
        if len(prompts) > 1:
            shortest = min(len(p) for p in prompts) - 1
            first = prompts[0]
            while lcp < shortest and all(p[lcp] == first[lcp] for p in prompts):
                lcp += 1
        self.prefix = prompts[0][:lcp]
        if lcp < SHARE_MIN or lcp - sched.pool.best_cached(self.prefix)[1] < SHARE_MIN:
            self._want_all(sched)
        else:
            sched.want(self, SHARED)

    def _want_all(self, sched: Scheduler) -> None:
        for k in range(len(self.prompts)):
            sched.want(self, k)

    def admit(self, sched: Scheduler, slot: Slot, part: Any) -> None:
        if part == SHARED:
            sched.add_run(slot, sched.pool.start_from_cache(slot, self.prefix), self, SHARED)
        else:
            self.admit_prompt(sched, slot, part)

    def on_row(self, sched: Scheduler, run: Run, row: int) -> None:
        if run.part == SHARED:
            sched.pool.cache_prefix(run.slot, self.prefix)
            self._want_all(sched)
        else:
            self.prompt_done(sched, run, row)

    def admit_prompt(self, sched: Scheduler, slot: Slot, k: int) -> None:
        raise NotImplementedError

    def prompt_done(self, sched: Scheduler, run: Run, row: int) -> None:
        raise NotImplementedError

    def _one_done(self, sched: Scheduler, out: np.ndarray) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            sched.finish(self, out)


class ScoreJob(_PromptsJob):
    """``log p(token | prompt)`` at temperature 1 for each prompt and each of ``token_ids``."""

    def __init__(self, prompts: list[list[int]], token_ids: list[int]) -> None:
        super().__init__(prompts)
        self.token_ids = np.asarray(token_ids, dtype=np.int64)
        self.out = np.full((len(prompts), len(token_ids)), np.nan)

    def admit_prompt(self, sched: Scheduler, slot: Slot, k: int) -> None:
        sched.add_run(slot, sched.pool.start_from_cache(slot, self.prompts[k]), self, k)

    def prompt_done(self, sched: Scheduler, run: Run, row: int) -> None:
        k = run.part
        lg = sched.row_logits[row]
        lz = log_normalizers(lg[None, :])[0]
        self.out[k] = lg[self.token_ids].astype(np.float64) - lz
        sched.pool.cache_prefix(run.slot, self.prompts[k])
        self._one_done(sched, self.out)


class ContinuationJob(_PromptsJob):
    """Teacher-forced log-probabilities of ``targets[k]`` after ``contexts[k]`` (see
    ``LlamaEngine.continuation_logprobs``): a forced run per context whose last rows are
    the logits that predict each target token (and, with ``eos``, the end)."""

    def __init__(self, contexts: list[list[int]], targets: list[list[int]], eos: bool,
                 params: SamplingParams, eog: np.ndarray) -> None:
        super().__init__(contexts)
        self.targets = targets
        self.eos = eos
        self.params = params
        self.eog = eog
        self.out = np.zeros(len(contexts))
        self.next_row = [0] * len(contexts)  # row j of context k predicts targets[k][j]
        self.sums = [0.0] * len(contexts)

    def _decoded(self, k: int) -> list[int]:
        """What gets decoded for context k: the target's last token only to predict the end."""
        target = self.targets[k]
        return self.prompts[k] + (target if self.eos else target[:-1])

    def admit_prompt(self, sched: Scheduler, slot: Slot, k: int) -> None:
        context = self.prompts[k]
        n_rows = len(self.targets[k]) + self.eos
        pending = sched.pool.start_from_cache(slot, context) + self._decoded(k)[len(context):]
        self.prompt_tokens += len(pending)
        if n_rows == 0:  # nothing to score: log 1
            sched.pool.free(slot)
            self._one_done(sched, self.out)
            return
        sched.add_run(slot, pending, self, k, rows=n_rows, forced=True)

    def on_rows(self, sched: Scheduler, run: Run, rows: list[int]) -> None:
        k = run.part
        target, p = self.targets[k], self.params
        for r in rows:
            j = self.next_row[k]
            want = self.eog if j == len(target) else target[j]
            self.sums[k] += proposal_logprob(sched.row_logits[r], want, p.temperature, p.top_p)
            self.next_row[k] = j + 1

    def prompt_done(self, sched: Scheduler, run: Run, row: int) -> None:
        k = run.part
        self.out[k] = self.sums[k]
        sched.pool.cache_prefix(run.slot, self._decoded(k))
        self._one_done(sched, self.out)
