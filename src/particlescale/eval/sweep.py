"""Sweeps: every (problem, method, budget, seed) of an evaluation, resumable and crash-safe.

::

    plan    = problems x methods x budgets x seeds      (greedy: budget 1 only)
    done    = latest rows of DIR/results.jsonl without an error
    for task in plan - done, `concurrency` at a time, over one shared generator and reward:
        result = asolve(problem, method, budget, seed)      # an exception is recorded, not raised
        (its sharing methods replay result's samples: eval.shared)
        grade every distinct candidate answer (math-verify pool / exact numbers)
        append one row per method to results.jsonl (flush + fsync), its trace if --traces

The sampling baselines (self-consistency, best-of-n, weighted-best-of-n) share one sample set
per (problem, seed, budget) when their settings other than the selector are equal: one task
draws it (a scored method if any of them needs scores), the others replay it through their
own code (:mod:`particlescale.eval.shared`), so every row is exactly what its method gives on
those samples and the sweep samples once instead of three times.

With ``reuse_samples``, those baselines run only at the largest budget; each smaller budget K
is computed from the first K samples of a seeded permutation of the samples of the method's
largest-budget row (nested subsets, as search-and-learn does with ``completions[:n]``).

Usage accounting. A row's ``usage`` is what its method costs on its own at its budget, which
is what reports compare: a replayed row counts the shared samples' LM calls and tokens (and
the drawing run's generation seconds in its wall time) but only its own reward calls; a
subset row's generated tokens are exact (the subset's own), its prompt tokens, calls and wall
time are prorated by K/N. What the sweep really generated is ``new_tokens``: the drawing row's
generated tokens, 0 for every row that reused samples. Such rows say where their samples come
from: ``samples_from`` (the method whose row drew them) and ``reused_from`` (that row's budget);
a row that drew its own has both None. The sum of ``new_tokens`` is the sweep's generation.

Resume: a drawing row is written together with the rows replaying it; if a crash leaves the
drawing row without them, each missing one runs on its own on resume (new samples).

The same :func:`run_task` and :class:`SweepState` drive the local asyncio executor here and the
Ray executor (:mod:`particlescale.eval.ray_executor`), so results and resume are identical.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from particlescale.algorithms.selection import select_answer
from particlescale.answers import normalize_answer
from particlescale.api import asolve
from particlescale.errors import ConfigError
from particlescale.eval.datasets import Dataset
from particlescale.eval.grading import DEFAULT_TIMEOUT_S, Grade, Grader
from particlescale.eval.plan import Member, Task, plan, planned_keys
from particlescale.eval.shared import Recording, Replay
from particlescale.eval.specs import REUSABLE, MethodSpec, parse_method
from particlescale.eval.store import (
    RESULTS,
    ResultWriter,
    key_of,
    load_rows,
    lock_out,
    prepare_dir,
    row_key,
)
from particlescale.protocols import Generator, RewardModel
from particlescale.types import Candidate
from particlescale.wiring import Setup, Wired

TRACES = "traces"


@dataclass
class SweepConfig:
    """Everything a sweep needs; validated before any model is built."""

    dataset: Dataset
    methods: list[MethodSpec]
    budgets: list[int]
    seeds: list[int]
    out: Path
    setup: Setup = field(default_factory=Setup)
    options: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 1
    force: bool = False
    reuse_samples: bool = False
    traces: bool = False
    grader_workers: int = 2
    grading_timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: must be >= 1, got {self.concurrency}")
        if not self.methods:
            raise ConfigError("methods: empty; pass e.g. --methods pf,best-of-n")
        if not self.dataset.problems:
            raise ConfigError("dataset: no problems selected; check --ids/--limit/--sample")
        if self.grader_workers < 1:
            raise ConfigError(f"grading-workers: must be >= 1, got {self.grader_workers}")
        if not 0 < self.grading_timeout_s < float("inf"):
            raise ConfigError(f"grading-timeout: must be a number of seconds > 0, got "
                              f"{self.grading_timeout_s}")
        self.setup.check()
        # Validate each variant together with the common options (they apply to every method).
        self.methods = [parse_method(m.label, self.options) for m in self.methods]

    def hashed(self) -> dict[str, Any]:
        """What changes results; budgets, seeds, methods and the problem selection do not
        (adding them extends a sweep)."""
        # "backend": the key of the setup since before it had that name (hashes stay the same)
        return {"dataset": self.dataset.describe(), "backend": self.setup.describe(),
                "options": self.options, "reuse_samples": self.reuse_samples}

    def describe(self) -> dict[str, Any]:
        return {**self.hashed(), "methods": [m.label for m in self.methods],
                "budgets": self.budgets, "seeds": self.seeds,
                "problems": len(self.dataset.problems)}


# ---------------------------------------------------------------------------------------------
# Running one task (local or on a Ray worker)


async def run_task(task: Task, generator: Generator, reward: RewardModel) -> dict[str, Any]:
    """Run ``task``; never raises for a failing problem: the outcome carries the error.
    With ``task.shares`` the samples are recorded and each sharing method replays them; their
    outcomes are under ``outcome["shared"][label]``."""
    if not task.shares:
        return await _solve(task, task.name, task.options, generator, reward)
    recording = Recording(generator)
    outcome = await _solve(task, task.name, task.options, recording, reward)
    shared = {}
    for m in task.shares:
        if outcome["error"]:
            shared[m.method] = {"error": outcome["error"], "wall_time": 0.0}
            continue
        o = await _solve(task, m.name, m.options, Replay(recording, m.method), reward)
        if not o["error"]:  # the generation it did not have to wait for
            o["usage"]["wall_time"] += recording.seconds
        shared[m.method] = o
    outcome["shared"] = shared
    return outcome


async def _solve(task: Task, name: str, options: dict[str, Any], generator: Generator,
                 reward: RewardModel) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result = await asolve(task.problem, generator=generator, reward=reward, method=name,
                              budget=task.budget, seed=task.seed, **options)
    except Exception as e:  # one failing problem must not stop the sweep
        return {"error": f"{type(e).__name__}: {e}", "wall_time": time.perf_counter() - start}
    return {
        "error": None,
        "answer": result.answer,
        "text": result.text,
        "candidates": [_candidate_dict(c) for c in result.candidates],
        "usage": result.usage.to_dict(),
        "info": result.info,
        "trace": result.trace.to_dict() if task.trace else None,
    }


def _candidate_dict(c: Candidate) -> dict[str, Any]:
    # Texts and per-step rewards live in the trace; a results row stays small.
    return {"answer": c.answer, "weight": c.weight, "score": _finite(c.score),
            "copies": c.copies, "tokens": c.tokens, "steps": c.steps}


def _finite(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


# ---------------------------------------------------------------------------------------------
# Derived rows (--reuse-samples)


def derive_subset(row: dict[str, Any], k: int, selector: str, weighting: str,
                  problem_id: str, seed: int) -> dict[str, Any]:
    """The row budget ``k`` would have had, from the first ``k`` of a seeded permutation of
    ``row``'s samples (candidates expanded by their copies)."""
    samples = [c for c in row["candidates"] for _ in range(int(c.get("copies", 1)))]
    n = len(samples)
    rng = np.random.default_rng([seed, zlib.crc32(problem_id.encode())])
    order = rng.permutation(n)[:k]
    chosen: dict[int, int] = {}
    for i in order:
        chosen[id(samples[int(i)])] = chosen.get(id(samples[int(i)]), 0) + 1
    by_id = {id(c): c for c in row["candidates"]}
    picked = [(by_id[i], copies) for i, copies in chosen.items()]
    if weighting == "uniform":
        raw = np.array([copies for _, copies in picked], dtype=np.float64)
    else:
        raw = np.array([copies * max(c["score"] or 0.0, 1e-12) for c, copies in picked])
    w = raw / raw.sum() if raw.sum() > 0 else np.full(len(picked), 1 / max(len(picked), 1))
    cands = [Candidate(text="", answer=c["answer"], weight=float(wi), score=c["score"] or 0.0,
                       steps=c["steps"], tokens=c["tokens"], copies=copies)
             for (c, copies), wi in zip(picked, w, strict=True)]
    answer = select_answer(cands, selector)
    frac = k / max(n, 1)
    usage = {key: (v * frac if isinstance(v, float) else round(v * frac))
             for key, v in row["usage"].items()}
    usage["generated_tokens"] = int(sum(c.tokens * c.copies for c in cands))
    out_cands = [{**{kk: vv for kk, vv in c.items() if kk not in ("weight", "copies")},
                  "weight": cd.weight, "copies": cd.copies}
                 for (c, _), cd in zip(picked, cands, strict=True)]
    out_cands.sort(key=lambda c: -c["weight"])
    return {**row, "budget": k, "answer": answer, "text": None, "candidates": out_cands,
            "usage": usage, "reused_from": row["budget"], "trace": None, "info": {},
            "correct": _lookup_correct(out_cands, answer)}


def _lookup_correct(cands: list[dict[str, Any]], answer: str | None) -> bool:
    return any(c.get("correct") for c in cands if c["answer"] == answer) if answer else False


# ---------------------------------------------------------------------------------------------
# Progress


class ProgressSink(Protocol):
    def start(self, total: int, done: int, correct: int) -> None: ...

    def advance(self, rows: int, correct: int, tokens: int) -> None: ...

    def stop(self) -> None: ...


@dataclass
class SweepSummary:
    out: Path
    planned: int
    skipped: int
    ran: int = 0
    shared: int = 0  # rows that replayed another method's samples
    derived: int = 0
    errors: int = 0
    dropped_torn_line: bool = False
    error_examples: list[str] = field(default_factory=list)


def trace_name(problem_id: str, method: str, budget: int, seed: int) -> str:
    """A file-name-safe, collision-free stem for a task's trace."""
    raw = f"{problem_id}__{method}__b{budget}__s{seed}"
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", raw).strip("_")[:120]
    if slug != raw:
        slug += "-" + hashlib.sha1(raw.encode()).hexdigest()[:8]
    return slug


class SweepState:
    """The driver side of a sweep: which tasks remain, grading, writing rows and traces.

    Only the driver writes ``results.jsonl``; executors hand it outcomes via :meth:`finish`.
    """

    def __init__(self, cfg: SweepConfig, progress: ProgressSink | None = None):
        self.cfg = cfg
        self.progress = progress
        self.tasks = plan(cfg)
        self.lock = lock_out(cfg.out)  # one writer per directory (released in close)
        try:
            self.config_hash = prepare_dir(cfg.out, cfg.hashed(), force=cfg.force)
            loaded = load_rows(cfg.out / RESULTS, repair=True)
        except BaseException:
            self.lock.release()
            raise
        self.latest = loaded.latest()
        keys = planned_keys(self.tasks)
        self.done = {k for k in keys if k in self.latest and not self.latest[k].get("error")}
        self.total = len(keys)
        self.summary = SweepSummary(cfg.out, planned=self.total, skipped=len(self.done),
                                    dropped_torn_line=loaded.dropped_torn_line)
        self.specs = {m.label: m for m in cfg.methods}
        self.grader: Grader | None = None
        self.writer = ResultWriter(cfg.out / RESULTS)
        if cfg.traces:
            (cfg.out / TRACES).mkdir(exist_ok=True)

    # which work remains -------------------------------------------------------------------

    def pending(self) -> list[Task]:
        """Tasks to run, and (side effect) derived rows whose source row is already done."""
        todo = []
        for t in self.tasks:
            pid = t.problem.id
            for m in t.members():
                key = row_key(pid, m.method, t.budget, t.seed)
                missing = [b for b in t.derive
                           if row_key(pid, m.method, b, t.seed) not in self.done]
                if key in self.done and missing:
                    self._write_derived(m, pid, t.seed, self.latest[key], missing)
            shares = tuple(m for m in t.shares
                           if row_key(pid, m.method, t.budget, t.seed) not in self.done)
            if t.key not in self.done:
                todo.append(dataclasses.replace(t, shares=shares))
            else:  # the drawing row was written without these (a crash): they run on their own
                todo.extend(dataclasses.replace(t, method=m.method, name=m.name,
                                                options=m.options, shares=())
                            for m in shares)
        return todo

    def start_progress(self) -> None:
        if self.progress is not None:
            correct = sum(bool(self.latest[k].get("correct")) for k in self.done)
            self.progress.start(self.total, len(self.done), correct)

    # results ------------------------------------------------------------------------------

    async def finish(self, task: Task, outcome: dict[str, Any]) -> None:
        """Grade an outcome (and those of the methods sharing its samples), write their traces
        and rows, then their derived rows."""
        members = task.members()
        outcomes = [outcome, *(outcome["shared"][m.method] for m in task.shares)]
        rows = []
        for i, (m, o) in enumerate(zip(members, outcomes, strict=True)):
            row = await self._row(task, m, o)
            if i > 0 and not row["error"]:
                row.update(samples_from=task.method, reused_from=task.budget, new_tokens=0)
            if o.get("trace") is not None:
                name = trace_name(task.problem.id, m.method, task.budget, task.seed)
                path = self.cfg.out / TRACES / f"{name}.json"
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(o["trace"], default=str))
                tmp.replace(path)
                row["trace"] = f"{TRACES}/{name}.json"
            rows.append(row)
        for row in rows:  # one after the other, no await in between: a crash rarely splits them
            self._append(row)
        self.summary.ran += 1
        self.summary.shared += len(rows) - 1
        if task.derive:
            for m, row in zip(members, rows, strict=True):
                self._write_derived(m, task.problem.id, task.seed, row, list(task.derive))

    async def _row(self, task: Task, m: Member, outcome: dict[str, Any]) -> dict[str, Any]:
        gold = task.problem.answer
        base = {
            "problem_id": task.problem.id, "method": m.method, "method_name": m.name,
            "budget": task.budget, "seed": task.seed, "gold": gold,
            "config_hash": self.config_hash, "reused_from": None, "samples_from": None,
            "trace": None,
        }
        if outcome.get("error"):
            return {**base, "answer": None, "correct": False, "grade": None, "text": None,
                    "candidates": [], "usage": {"wall_time": outcome.get("wall_time", 0.0)},
                    "new_tokens": 0, "info": {}, "error": outcome["error"],
                    "time": time.time()}
        grades = await self._grade_answers(gold, [c["answer"] for c in outcome["candidates"]]
                                           + [outcome["answer"]])
        cands = [{**c, "correct": _verdict(grades, c["answer"]).correct}
                 for c in outcome["candidates"]]
        g = _verdict(grades, outcome["answer"])
        return {**base, "answer": outcome["answer"], "correct": g.correct, "grade": g.how,
                "grade_error": g.error, "text": outcome.get("text"), "candidates": cands,
                "usage": outcome["usage"],
                "new_tokens": int(outcome["usage"].get("generated_tokens", 0)),
                "info": outcome.get("info") or {}, "error": None, "time": time.time()}

    async def _grade_answers(self, gold: str | None, answers: list[str | None]
                             ) -> dict[str | None, Grade]:
        """One verdict per distinct (normalised) answer."""
        if self.grader is None:
            self.grader = Grader(self.cfg.grader_workers, self.cfg.grading_timeout_s)
        mode = self.cfg.dataset.grading
        distinct: dict[str | None, str | None] = {}
        for a in answers:
            distinct.setdefault(normalize_answer(a), a)
        futures = {k: asyncio.wrap_future(self.grader.submit(gold, a, mode))
                   for k, a in distinct.items()}
        return {k: await f for k, f in futures.items()}

    def _write_derived(self, m: Member, problem_id: str, seed: int, source: dict[str, Any],
                       budgets: list[int]) -> None:
        spec = self.specs[m.method]
        selector = spec.config.selector if spec.config is not None else "argmax"
        for b in sorted(budgets):
            if source.get("error"):
                row = {**source, "budget": b, "reused_from": source["budget"], "time": time.time()}
            else:
                row = derive_subset(source, b, selector, REUSABLE[m.name], problem_id, seed)
                row.update(samples_from=source.get("samples_from") or source["method"],
                           new_tokens=0, time=time.time())
            self._append(row)
            self.summary.derived += 1

    def _append(self, row: dict[str, Any]) -> None:
        self.writer.append(row)
        key = key_of(row)
        self.latest[key] = row
        if not row.get("error"):
            self.done.add(key)
        if row.get("error"):
            self.summary.errors += 1
            if len(self.summary.error_examples) < 5:
                self.summary.error_examples.append(f"{row['problem_id']} {row['method']} "
                                                   f"b={row['budget']}: {row['error']}")
        if self.progress is not None:
            self.progress.advance(1, int(bool(row.get("correct"))), int(row.get("new_tokens", 0)))

    def close(self) -> None:
        self.writer.close()
        self.lock.release()
        if self.grader is not None:
            self.grader.close()
            self.grader = None
        if self.progress is not None:
            self.progress.stop()


def _verdict(grades: dict[str | None, Grade], answer: str | None) -> Grade:
    return grades[normalize_answer(answer)]


# ---------------------------------------------------------------------------------------------
# The local executor


async def arun_sweep(
    cfg: SweepConfig,
    *,
    generator: Generator | None = None,
    reward: RewardModel | None = None,
    progress: ProgressSink | None = None,
    on_task_done: Callable[[Task], None] | None = None,
) -> SweepSummary:
    """Run what remains of a sweep in this process (``cfg.concurrency`` tasks in flight over one
    shared generator and reward), built from ``cfg.setup`` unless given."""
    state = SweepState(cfg, progress)
    try:
        todo = state.pending()
        state.start_progress()
        if not todo:
            return state.summary
        if generator is None:
            wired = cfg.setup.wire()
        elif reward is None:
            raise ConfigError("reward: pass a reward model together with the generator")
        else:
            wired = Wired(generator, reward)  # the caller's: not closed here
        queue: asyncio.Queue[Task] = asyncio.Queue()
        for t in todo:
            queue.put_nowait(t)

        async def worker() -> None:
            while True:
                try:
                    task = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcome = await run_task(task, wired.generator, wired.reward)
                await state.finish(task, outcome)
                if on_task_done is not None:
                    on_task_done(task)

        async with wired:
            await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, len(todo)))))
        return state.summary
    finally:
        state.close()


def run_sweep(cfg: SweepConfig, **kwargs: Any) -> SweepSummary:
    """Synchronous twin of :func:`arun_sweep`."""
    return asyncio.run(arun_sweep(cfg, **kwargs))


def replace_config(cfg: SweepConfig, **changes: Any) -> SweepConfig:
    return dataclasses.replace(cfg, **changes)
