"""Grading answers against gold: numeric equality first, then ``math-verify`` in worker processes.

1. **Numbers.** When both sides read as plain numbers (``025``, ``27.0``, ``1,000``,
   ``10,\\!080``, ``\\$18``, ``-3.5``, ``50\\%``) they are compared exactly as fractions:
   AIME's ``"025"`` equals ``25``, AMC's ``27.0`` equals ``27``, GSM8K's ``1,000`` equals
   ``1000``. A comma counts as a thousands separator only in the strict ``d,ddd`` pattern, so
   MATH lists such as ``1,-2`` are not read as numbers. This path needs no process pool.
2. **math-verify** (HF): ``verify(parse(gold), parse(prediction))`` — gold parsed first, as
   its docs require (``verify`` is not symmetric). Both sides are wrapped in ``\\boxed{}`` so
   the parser reads exactly the answer string. It handles intervals, sets, tuples, matrices,
   ``\\frac{\\pi}{2}`` vs ``\\pi/2``, degrees, ``\\text{}`` answers, base subscripts.

math-verify's own timeouts use ``signal.alarm``, which only works in a process's main thread,
so it runs in a pool of *spawned* worker processes (each task runs in a worker's main thread)
and we add our own wall-clock deadline per answer: a worker that passes it is killed with the
whole pool, which is rebuilt, and the answer is graded wrong with ``error="timeout"``.

``Grader.submit`` returns a ``concurrent.futures.Future`` (wrap it with ``asyncio.wrap_future``
in async code); a dispatcher thread keeps at most ``workers`` answers in flight so that each
deadline measures work, not queueing.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from particlescale.quick_grading import (  # noqa: F401  (re-exported: the harness's graders)
    Grade,
    grade_numeric,
    grade_text,
    parse_number,
)
from particlescale.quick_grading import quick_grade as _quick_grade

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_WORKERS = 2


# ---------------------------------------------------------------------------------------------
# math-verify (runs inside worker processes)


def _math_verify(gold: str, pred: str, timeout_s: int) -> tuple[bool, str | None]:
    from math_verify import parse, verify

    try:
        g = parse("\\boxed{" + gold + "}", parsing_timeout=timeout_s)
        p = parse("\\boxed{" + pred + "}", parsing_timeout=timeout_s)
        if not g:
            return False, f"math-verify could not parse the gold answer {gold!r}"
        if not p:
            return False, None
        return bool(verify(g, p, timeout_seconds=timeout_s)), None
    except Exception as e:  # a sympy failure on one answer must not stop a sweep
        return False, f"{type(e).__name__}: {e}"


def _warm() -> bool:
    import math_verify  # noqa: F401  (import sympy & friends once per worker)

    return True


# ---------------------------------------------------------------------------------------------
# The grader


@dataclass
class _Job:
    gold: str
    pred: str
    future: cf.Future
    deadline: float = 0.0
    handle: Any = None


class Grader:
    """Grades (gold, prediction) pairs; numbers inline, the rest in a spawned process pool.

    ``mode="numeric"`` (integer-answer sets: AIME, AMC, GSM8K) also reads numbers followed by
    unit words (``18 \\text{ dollars}``); either mode falls back to math-verify when a side is
    not a plain number (``\\frac{50}{2}`` is a fine AIME answer). Use as a context manager or
    call ``close``.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                 verify_fn: Callable[[str, str, int], tuple[bool, str | None]] | None = None,
                 shortcuts: bool = True):
        if workers < 1:
            raise ValueError("workers: must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s: must be > 0")
        # ``verify_fn`` must be a module-level function (it is pickled to spawned workers);
        # tests pass a slow one to exercise the deadline.
        self._verify_fn = verify_fn or _math_verify
        # shortcuts=False sends every pair to math-verify (benchmarks, cross-checks).
        self.shortcuts = shortcuts
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self._pool: Any = None
        self._queue: collections.deque[_Job] = collections.deque()
        self._running: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.restarts = 0

    # public API ------------------------------------------------------------------------------

    def grade(self, gold: str | None, pred: str | None, mode: str = "math") -> Grade:
        return self.submit(gold, pred, mode).result()

    def grade_many(self, pairs: list[tuple[str | None, str | None]],
                   mode: str = "math") -> list[Grade]:
        futures = [self.submit(g, p, mode) for g, p in pairs]
        return [f.result() for f in futures]

    def submit(self, gold: str | None, pred: str | None, mode: str = "math") -> cf.Future:
        """Grade ``pred`` against ``gold``; the future's result is a :class:`Grade`."""
        if mode not in ("math", "numeric"):
            raise ValueError(f"mode: unknown {mode!r}; choose math or numeric")
        fut: cf.Future = cf.Future()
        quick = _quick_grade(gold, pred, lenient=mode == "numeric")
        if quick is not None and (self.shortcuts or quick.how in ("empty", "error")):
            fut.set_result(quick)
            return fut
        with self._cond:
            if self._closed:
                raise RuntimeError("grader is closed")
            self._queue.append(_Job(str(gold), str(pred), fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._dispatch, name="grader",
                                                 daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return fut

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # dispatcher -------------------------------------------------------------------------------

    def _start_pool(self) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs threads / llama.cpp
        self._pool = ctx.Pool(self.workers)
        # Import math_verify in every worker before deadlines start counting.
        warm = [self._pool.apply_async(_warm) for _ in range(self.workers)]
        for w in warm:
            w.get(timeout=120)

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._running and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for job in [*self._running, *self._queue]:
                        if not job.future.done():
                            job.future.set_result(Grade(False, "error", "grader closed"))
                    return
            if self._pool is None:
                try:
                    self._start_pool()
                except Exception as e:  # pool cannot start: fail every waiting job
                    self._fail_all(f"grading pool failed to start: {e}")
                    continue
            self._fill()
            self._reap()

    def _fill(self) -> None:
        with self._cond:
            while self._queue and len(self._running) < self.workers:
                job = self._queue.popleft()
                job.deadline = time.monotonic() + self.timeout_s
                job.handle = self._pool.apply_async(
                    self._verify_fn, (job.gold, job.pred, max(1, int(self.timeout_s))),
                    callback=lambda _r: self._wake(), error_callback=lambda _e: self._wake())
                self._running.append(job)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _reap(self) -> None:
        with self._cond:
            done = [j for j in self._running if j.handle.ready()]
            if not done:
                soonest = min((j.deadline for j in self._running), default=None)
                if soonest is not None:
                    self._cond.wait(max(0.0, min(soonest - time.monotonic(), 0.5)))
                done = [j for j in self._running if j.handle.ready()]
            for job in done:
                self._running.remove(job)
        for job in done:
            try:
                ok, err = job.handle.get()
                job.future.set_result(Grade(ok, "math-verify" if err is None else "error", err))
            except Exception as e:
                job.future.set_result(Grade(False, "error", f"{type(e).__name__}: {e}"))
        now = time.monotonic()
        expired = [j for j in self._running if now > j.deadline]
        if expired:
            # A stuck worker cannot be interrupted from outside: kill the pool, fail the
            # expired answers, and re-queue the innocent ones that were running beside them.
            with self._cond:
                innocent = [j for j in self._running if j not in expired]
                self._running.clear()
                self._queue.extendleft(reversed(innocent))
            self._pool.terminate()
            self._pool.join()
            self._pool = None
            self.restarts += 1
            for job in expired:
                job.future.set_result(Grade(False, "timeout",
                                            f"grading took more than {self.timeout_s:g}s"))

    def _fail_all(self, msg: str) -> None:
        with self._cond:
            jobs = [*self._running, *self._queue]
            self._running.clear()
            self._queue.clear()
        for job in jobs:
            job.future.set_result(Grade(False, "error", msg))
