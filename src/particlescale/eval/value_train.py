"""``particlescale train-prm``: sample solutions, label step prefixes, fit a value head.

Pipeline (OVM-style outcome supervision, Yu et al. 2023)::

    for each of K training problems (seeded sample of the dataset):
        sample S solutions with the batched engine, each going on at its own pace (no step
        barrier), recording the hidden state at the last token of every step
        (Step.features, same decode as generation)
        label every prefix of a solution with that solution's outcome (final answer correct)
        store them in OUT.samples/<problem>.npz        (resumable: done problems are skipped)
    fit a logistic (or MLP) head on the prefixes, validated on held-out *problems*
    choose the regularisation by cross-validation split by problem, refit on all problems
    save the head with the model's sha256 and the training metadata

Optional Monte-Carlo labels (Math-Shepherd, Wang et al. 2024) replace the outcome label of a
prefix by the fraction of R rollouts from it that end correct (``mc_rollouts``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from particlescale.algorithms.common import IdSource, complete
from particlescale.answers import extract_answer
from particlescale.errors import ConfigError
from particlescale.protocols import Generator, SamplingParams
from particlescale.rewards.value_head import ValueHead, fit_head
from particlescale.types import Particle, Problem, Step, Usage


@dataclass
class SampleSet:
    """The labelled prefixes of one problem's sampled solutions."""

    problem_id: str
    features: np.ndarray  # (prefixes, dim)
    labels: np.ndarray  # (prefixes,) outcome or Monte-Carlo label in [0, 1]
    outcome: np.ndarray  # (prefixes,) outcome label of the solution the prefix belongs to
    solution: np.ndarray  # (prefixes,) index of the solution within the problem
    step: np.ndarray  # (prefixes,) 1-based step index
    tokens: int
    # Per solution: its steps (text, finish, log-prob, tokens) and extracted answer, so that
    # other rewards can be scored on the same samples later without generating again.
    # Empty for shards written before this field existed.
    solutions: list[dict[str, Any]] = field(default_factory=list)
    mc_rollouts: int = 0  # > 0: ``labels`` are Monte-Carlo labels from that many rollouts

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        sols = np.frombuffer(json.dumps(self.solutions).encode(), dtype=np.uint8)
        np.savez_compressed(tmp, features=self.features.astype(np.float16), labels=self.labels,
                            outcome=self.outcome, solution=self.solution, step=self.step,
                            tokens=np.array(self.tokens), solutions=sols,
                            mc_rollouts=np.array(self.mc_rollouts))
        tmp.replace(path)  # atomic: a killed run never leaves a torn shard

    @staticmethod
    def load(path: Path, problem_id: str) -> SampleSet:
        z = np.load(path, allow_pickle=False)
        sols = json.loads(bytes(z["solutions"]).decode()) if "solutions" in z.files else []
        mc = int(z["mc_rollouts"]) if "mc_rollouts" in z.files else 0
        return SampleSet(problem_id, z["features"].astype(np.float64), z["labels"],
                         z["outcome"], z["solution"], z["step"], int(z["tokens"]), sols, mc)

    def last_steps(self) -> np.ndarray:
        """Mask of the prefixes that are a whole solution (its last step)."""
        nxt = np.append(self.solution[1:], -1)
        return nxt != self.solution

    def particles(self) -> list[Particle]:
        """The sampled solutions again (steps with their hidden states)."""
        return [Particle(id=j, steps=tuple(self.solution_steps(j)), finished=True)
                for j in range(len(self.solutions))]

    @property
    def n_solutions(self) -> int:
        """How many solutions the prefixes come from."""
        return int(self.solution.max()) + 1 if len(self.solution) else len(self.solutions)

    def extended(self, more: SampleSet) -> SampleSet:
        """These solutions followed by ``more``'s (of the same problem, same labelling).
        A shard written before solutions kept their text keeps none after it either: its
        records could not be matched to their solutions' indices."""
        if more.mc_rollouts != self.mc_rollouts:
            raise ValueError("labels: cannot join Monte-Carlo and outcome-labelled solutions")
        base = self.n_solutions
        return SampleSet(
            self.problem_id,
            np.concatenate([self.features, more.features]) if len(self.labels)
            else more.features,
            np.concatenate([self.labels, more.labels]),
            np.concatenate([self.outcome, more.outcome]),
            np.concatenate([self.solution, more.solution + base]),
            np.concatenate([self.step, more.step]),
            self.tokens + more.tokens,
            [*self.solutions, *more.solutions] if self.solutions else [],
            self.mc_rollouts,
        )

    def first(self, n: int) -> SampleSet:
        """Only the first ``n`` solutions (all of them if there are no more)."""
        if n >= self.n_solutions:
            return self
        keep = self.solution < n
        recs = self.solutions[:n]
        tokens = (sum(sum(r["tokens"]) for r in recs) if recs
                  else round(self.tokens * keep.mean()))  # no records: pro rata
        return replace(self, features=self.features[keep], labels=self.labels[keep],
                       outcome=self.outcome[keep], solution=self.solution[keep],
                       step=self.step[keep], tokens=tokens, solutions=recs)

    def with_mc_labels(self, labels: Sequence[Sequence[float]], rollouts: int) -> SampleSet:
        flat = np.array([x for per in labels for x in per], dtype=np.float64)
        if flat.shape != self.labels.shape:
            raise ValueError(f"labels: {flat.shape[0]} for {self.labels.shape[0]} prefixes")
        return replace(self, labels=flat, mc_rollouts=rollouts)

    def solution_steps(self, j: int) -> list[Step]:
        """Solution ``j`` as Steps, with the hidden states of its prefixes."""
        rows = np.flatnonzero(self.solution == j)
        rec = self.solutions[j]
        return [Step(text=t, finish=f, logprob=lp, tokens=n, features=self.features[r])
                for t, f, lp, n, r in zip(rec["steps"], rec["finish"], rec["logprob"],
                                          rec["tokens"], rows, strict=True)]


def is_correct(gold: str, text: str) -> bool:
    """Numeric grading of a GSM8K-style answer (the training sets here are numeric)."""
    from particlescale.quick_grading import grade_numeric

    g = grade_numeric(gold, extract_answer(text), lenient=True)
    return bool(g and g.correct)


async def sample_problem(
    generator: Generator,
    problem: Problem,
    samples: int,
    params: SamplingParams,
    seed: int,
    max_steps: int,
    usage: Usage,
    *,
    barrier: bool = False,
) -> list[Particle]:
    """S complete solutions of one problem, each step carrying its hidden state."""
    session = generator.session(problem, params, np.random.default_rng(seed), usage)
    ids = IdSource()
    try:
        (out,) = await complete(session, [Particle(id=ids())], samples, ids, max_steps,
                                barrier=barrier)
        return out
    finally:
        await session.aclose()


async def mc_labels(
    generator: Generator,
    problem: Problem,
    solutions: Sequence[Particle],
    rollouts: int,
    params: SamplingParams,
    seed: int,
    max_steps: int,
    usage: Usage,
) -> list[list[float]]:
    """Math-Shepherd's Monte-Carlo step labels (Wang et al., 2024): for every prefix of every
    solution, the fraction of ``rollouts`` completions from it whose answer is correct. A
    solution's last step is labelled with its own outcome (nothing is left to roll out).
    Costs ``rollouts`` completions per non-final step: many times the sampling itself."""
    gold = problem.answer or ""
    labels = [[float(is_correct(gold, p.text))] * len(p.steps) for p in solutions]
    prefixes, where = [], []
    ids = IdSource()
    for j, p in enumerate(solutions):
        for i in range(len(p.steps) - 1):
            # steps without their handles: those belong to the sampling session
            prefixes.append(Particle(id=ids(), steps=tuple(replace(st, handle=None)
                                                           for st in p.steps[: i + 1])))
            where.append((j, i))
    if not prefixes or rollouts < 1:
        return labels
    session = generator.session(problem, params, np.random.default_rng(seed), usage)
    try:
        runs = await complete(session, prefixes, rollouts, ids, max_steps)
    finally:
        await session.aclose()
    for (j, i), kids in zip(where, runs, strict=True):
        labels[j][i] = float(np.mean([is_correct(gold, c.text) for c in kids]))
    return labels


def label_solutions(problem: Problem, solutions: Sequence[Particle]) -> SampleSet:
    """Every prefix labelled with its solution's outcome (``outcome`` and ``labels``)."""
    if problem.answer is None:
        raise ConfigError(f"dataset: problem {problem.id!r} has no gold answer; train-prm needs "
                          "a dataset with gold answers (map the answer field)")
    feats, labels, sol, step = [], [], [], []
    records: list[dict[str, Any]] = []
    tokens = 0
    for j, p in enumerate(solutions):
        ok = float(is_correct(problem.answer, p.text))
        tokens += sum(s.tokens for s in p.steps)
        records.append({"answer": extract_answer(p.text), "correct": bool(ok),
                        "steps": [s.text for s in p.steps],
                        "finish": [s.finish for s in p.steps],
                        "logprob": [s.logprob for s in p.steps],
                        "tokens": [s.tokens for s in p.steps]})
        for i, s in enumerate(p.steps):
            if s.features is None:
                raise ConfigError("generator: steps carry no hidden states; create the "
                                  "embedded generator with embeddings=True")
            feats.append(np.asarray(s.features, dtype=np.float64))
            labels.append(ok)
            sol.append(j)
            step.append(i + 1)
    x = np.stack(feats) if feats else np.zeros((0, 0))
    y = np.array(labels)
    return SampleSet(problem.id, x, y, y.copy(), np.array(sol), np.array(step), tokens, records)


def _shard(out: Path, problem_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in problem_id)
    return out / f"{safe}.npz"


async def collect(
    generator: Generator,
    problems: Sequence[Problem],
    samples: int,
    out: Path,
    *,
    seed: int = 0,
    params: SamplingParams | None = None,
    max_steps: int = 40,
    concurrency: int = 4,
    on_done: Callable[[SampleSet, bool], None] | None = None,
    deadline: float | None = None,
    mc_rollouts: int = 0,
) -> list[SampleSet]:
    """Sample and label every problem, writing one shard per problem as soon as it is done;
    problems whose shard exists are loaded, not re-sampled (resume). A shard with fewer than
    ``samples`` solutions is topped up (:func:`top_up`); one with more keeps them all.

    ``deadline`` (a ``time.monotonic()`` value): no problem *starts* sampling after it (those
    already sampling finish, so no work is thrown away); the problems not sampled are left
    out of the result, and a later call with the same arguments samples them (resume).

    ``mc_rollouts`` > 0: label prefixes with Monte-Carlo labels (``mc_labels``) instead of
    the outcome, also for shards already there that have none yet (if they keep their
    solutions); those are rewritten with them.
    """
    out.mkdir(parents=True, exist_ok=True)
    params = params or SamplingParams()
    sem = asyncio.Semaphore(concurrency)
    results: dict[str, SampleSet] = {}

    async def one(k: int, problem: Problem) -> None:
        path = _shard(out, problem.id)
        # Each problem's seed depends on its index only: resumed or time-boxed runs draw
        # the same solutions for the same problem.
        pseed = seed * 100_003 + k
        s: SampleSet | None = SampleSet.load(path, problem.id) if path.exists() else None
        short = s is not None and s.n_solutions < samples
        if s is not None and not short and (s.mc_rollouts >= mc_rollouts or not s.solutions):
            results[problem.id] = s
            if on_done:
                on_done(s, True)
            return
        async with sem:
            if deadline is not None and time.monotonic() >= deadline:
                if s is not None:  # keeps what it has; a later call tops it up / adds labels
                    results[problem.id] = s
                return
            fresh = s is None
            if s is None:
                sols = await sample_problem(generator, problem, samples, params, pseed,
                                            max_steps, Usage())
                s = label_solutions(problem, sols)
                s.save(path)
            elif short:
                s = await top_up(generator, problem, s, samples, params, (seed, k),
                                 max_steps)
                s.save(path)
            if mc_rollouts > s.mc_rollouts and s.solutions:
                mc = await mc_labels(generator, problem, s.particles(), mc_rollouts, params,
                                     pseed + 1, max_steps, Usage())
                s = s.with_mc_labels(mc, mc_rollouts)
                s.save(path)
        results[problem.id] = s
        if on_done:
            on_done(s, not fresh and not short)

    await asyncio.gather(*(one(k, p) for k, p in enumerate(problems)))
    return [results[p.id] for p in problems if p.id in results]


async def top_up(
    generator: Generator,
    problem: Problem,
    s: SampleSet,
    samples: int,
    params: SamplingParams,
    key: tuple[int, int],
    max_steps: int,
) -> SampleSet:
    """``s`` with more solutions sampled until it has ``samples``, labelled as ``s`` is
    (Monte-Carlo labels with its rollouts if it has them). Their seed depends on the run's
    seed, the problem's index and how many solutions the shard had (``key`` + that count),
    so topping a shard up from 8 to 16 is reproducible, though not the 16 that a fresh run
    would draw."""
    have = s.n_solutions
    tseed = int(np.random.SeedSequence([*key, have]).generate_state(1)[0])
    sols = await sample_problem(generator, problem, samples - have, params, tseed,
                                max_steps, Usage())
    more = label_solutions(problem, sols)
    if s.mc_rollouts:
        mc = await mc_labels(generator, problem, more.particles(), s.mc_rollouts, params,
                             tseed + 1, max_steps, Usage())
        more = more.with_mc_labels(mc, s.mc_rollouts)
    return s.extended(more)


def fit_from_sets(
    sets: Sequence[SampleSet],
    *,
    kind: str = "logistic",
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
) -> tuple[ValueHead, dict[str, float]]:
    sets = [s for s in sets if len(s.labels)]
    if not sets:
        raise ConfigError("training data: no labelled prefixes were produced")
    x = np.concatenate([s.features for s in sets])
    y = np.concatenate([s.labels for s in sets])
    groups = np.concatenate([[s.problem_id] * len(s.labels) for s in sets])
    # the final head learns from each solution's last step, labelled with its outcome
    last = np.concatenate([s.last_steps() for s in sets])
    return fit_head(x, y, groups, kind=kind, seed=seed, metadata=metadata, final=last)


def write_head(head: ValueHead, path: Path, info: dict[str, Any]) -> None:
    head.metadata.update(info)
    head.metadata["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.parent.mkdir(parents=True, exist_ok=True)
    head.save(path)
    path.with_suffix(".json").write_text(json.dumps(head.metadata, indent=2, default=str))


class SamplingClock:
    """Sampling seconds summed over every run that wrote shards into ``work``, kept in
    ``work/sampling.json`` and updated as each shard lands (a killed run keeps its record).
    None once shards exist that no record accounts for (written by an older version)."""

    def __init__(self, work: Path) -> None:
        self.path = work / "sampling.json"
        work.mkdir(parents=True, exist_ok=True)
        rec = (json.loads(self.path.read_text()) if self.path.exists()
               else {"seconds": 0.0, "shards": 0})
        if len(list(work.glob("*.npz"))) > rec["shards"]:
            rec["seconds"] = None
        self.base, self.shards = rec["seconds"], rec["shards"]
        self.new = 0
        self.start = time.perf_counter()
        self.save()

    @property
    def seconds(self) -> float | None:
        if self.base is None:
            return None
        if self.new == 0:  # a run that only fits (or samples nothing) costs no sampling time
            return round(self.base, 1)
        return round(self.base + time.perf_counter() - self.start, 1)

    def shard_done(self) -> None:
        self.shards += 1
        self.new += 1
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps({"seconds": self.seconds, "shards": self.shards}))
