"""A prefix cache for step scores, so that a step is scored once, not once per later step.

Algorithms call ``reward.score`` with whole trajectories, every step, again and again: at step
``t`` of particle filtering each particle's prefix ``x_{1:t}`` is re-sent although
``x_{1:t-1}`` was scored at step ``t-1`` (and resampled copies share it). Keying step scores
by ``(reward, problem, texts of the prefix)`` makes the cost linear in the number of steps:
only the prefixes never seen before are computed, and identical prefixes in one batch (the
copies of a resampled particle) are computed once.

Keys use the problem's id *and* question: two problems with the default id ``problem`` never
share scores. The cache is an LRU bounded by ``max_entries``; keys hold references to the
steps' own strings, so a long prefix costs one tuple of pointers, not a copy of its text.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from particlescale.types import Problem, Step

Job = tuple[tuple[str, ...], Sequence[Step]]
"""A prefix to score: its step texts and its steps (``steps[-1]`` is the step being scored)."""


class PrefixCache:
    """Step scores keyed by (namespace, problem id, question, prefix texts)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()

    def _get(self, key: tuple[Any, ...]) -> float | None:
        v = self._data.get(key)
        if v is not None:
            self._data.move_to_end(key)
        return v

    def _put(self, key: tuple[Any, ...], value: float) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def _plan(
        self, namespace: str, problem: Problem, trajectories: Sequence[Sequence[Step]]
    ) -> tuple[list[list[float | None]], dict[tuple[Any, ...], Job]]:
        out: list[list[float | None]] = []
        missing: dict[tuple[Any, ...], Job] = {}
        for traj in trajectories:
            texts = tuple(s.text for s in traj)
            row: list[float | None] = []
            for i in range(len(traj)):
                key = (namespace, problem.id, problem.question, texts[: i + 1])
                v = self._get(key)
                if v is None:
                    if key not in missing:
                        missing[key] = (texts[: i + 1], traj[: i + 1])
                        self.misses += 1
                else:
                    self.hits += 1
                row.append(v)
            out.append(row)
        return out, missing

    def _finish(
        self,
        namespace: str,
        problem: Problem,
        trajectories: Sequence[Sequence[Step]],
        out: list[list[float | None]],
        missing: dict[tuple[Any, ...], Job],
        values: Sequence[float],
    ) -> list[list[float]]:
        if len(values) != len(missing):
            raise RuntimeError(f"scorer returned {len(values)} values for {len(missing)} prefixes")
        fresh = dict(zip(missing, (float(v) for v in values), strict=True))
        for key, v in fresh.items():
            self._put(key, v)
        result: list[list[float]] = []
        for traj, row in zip(trajectories, out, strict=True):
            texts = tuple(s.text for s in traj)
            full: list[float] = []
            for i, v in enumerate(row):
                if v is None:
                    v = fresh[(namespace, problem.id, problem.question, texts[: i + 1])]
                full.append(v)
            result.append(full)
        return result

    async def score(
        self,
        namespace: str,
        problem: Problem,
        trajectories: Sequence[Sequence[Step]],
        compute: Callable[[list[Job]], Awaitable[Sequence[float]]],
    ) -> list[list[float]]:
        """Per-step scores of every trajectory; ``compute`` gets only the unseen prefixes."""
        out, missing = self._plan(namespace, problem, trajectories)
        values = await compute(list(missing.values())) if missing else []
        return self._finish(namespace, problem, trajectories, out, missing, values)

    def score_sync(
        self,
        namespace: str,
        problem: Problem,
        trajectories: Sequence[Sequence[Step]],
        compute: Callable[[list[Job]], Sequence[float]],
    ) -> list[list[float]]:
        """:meth:`score` with a synchronous ``compute`` (model-free rewards)."""
        out, missing = self._plan(namespace, problem, trajectories)
        values = compute(list(missing.values())) if missing else []
        return self._finish(namespace, problem, trajectories, out, missing, values)
