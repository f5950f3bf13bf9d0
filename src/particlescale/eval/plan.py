"""The plan of a sweep: which tasks run, which methods share a task's samples, which rows are
derived from which (see :mod:`particlescale.eval.sweep`).

::

    groups = sampled baselines with equal settings but the selector -> one drawer + replayers
    tasks  = budgets x methods (replayers ride along with their drawer) x seeds x problems
             (--reuse-samples: sampled baselines only at the largest budget, the smaller ones
             derived; budget-free methods once, at budget 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from particlescale.eval.specs import MethodSpec
from particlescale.eval.store import row_key
from particlescale.types import Problem

if TYPE_CHECKING:
    from particlescale.eval.sweep import SweepConfig


@dataclass(frozen=True)
class Member:
    """A method of a task: the one that runs it, or one replaying its samples."""

    method: str  # the label: "best-of-n(temperature=0.5)"
    name: str  # the registry name: "best-of-n"
    options: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Task:
    """One unit of work (picklable: it travels to Ray workers)."""

    problem: Problem
    method: str  # the label: "pf(ess_threshold=0.5)"
    name: str  # the registry name: "pf"
    options: dict[str, Any] = field(hash=False)
    budget: int
    seed: int
    derive: tuple[int, ...] = ()  # smaller budgets to compute from each member's samples
    trace: bool = False
    shares: tuple[Member, ...] = ()  # methods that replay this task's samples (eval.shared)

    @property
    def key(self) -> str:
        return row_key(self.problem.id, self.method, self.budget, self.seed)

    def members(self) -> list[Member]:
        return [Member(self.method, self.name, self.options), *self.shares]


def sample_groups(methods: list[MethodSpec]) -> dict[str, list[MethodSpec]]:
    """Drawing method label -> the specs that replay its samples. A group is the specs with
    one :attr:`MethodSpec.sample_key`; its first scored spec draws (else its first spec)."""
    by_key: dict[str, list[MethodSpec]] = {}
    for m in methods:
        if m.sample_key is not None:
            by_key.setdefault(m.sample_key, []).append(m)
    groups = {}
    for group in by_key.values():
        drawer = next((m for m in group if m.needs_scores), group[0])
        groups[drawer.label] = [m for m in group if m is not drawer]
    return groups


def plan(cfg: SweepConfig) -> list[Task]:
    """Every task of the sweep, small budgets first (the whole curve fills in early)."""
    tasks = []
    top = max(cfg.budgets)
    groups = sample_groups(cfg.methods)
    replaying = {m.label for group in groups.values() for m in group}
    for budget in cfg.budgets:
        for spec in cfg.methods:
            if spec.label in replaying:
                continue  # planned with the method that draws its samples
            options = {**cfg.options, **spec.options}
            shares = tuple(Member(m.label, m.name, {**cfg.options, **m.options})
                           for m in groups.get(spec.label, ()))
            if spec.budget_free and budget != cfg.budgets[0]:
                continue
            b = 1 if spec.budget_free else budget
            derive: tuple[int, ...] = ()
            if cfg.reuse_samples and spec.reusable:
                if b != top:
                    continue  # computed from the top budget's samples
                derive = tuple(x for x in cfg.budgets if x < top)
            for seed in cfg.seeds:
                for p in cfg.dataset.problems:
                    tasks.append(Task(p, spec.label, spec.name, options, b, seed, derive,
                                      cfg.traces, shares))
    return tasks


def planned_keys(tasks: list[Task]) -> list[str]:
    keys = []
    for t in tasks:
        for m in t.members():
            keys.append(row_key(t.problem.id, m.method, t.budget, t.seed))
            keys.extend(row_key(t.problem.id, m.method, b, t.seed) for b in t.derive)
    return keys
