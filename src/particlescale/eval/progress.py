"""The sweep's progress bar (rich): done/total, accuracy so far, generated tokens/s, ETA.

Accuracy counts every finished row of the plan, including rows found on resume; tokens/s counts
only what this process generated (resumed and derived rows cost nothing now).
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    """A :class:`~particlescale.eval.sweep.ProgressSink` drawing one bar on stderr."""

    def __init__(self, description: str = "eval", console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.description = description
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = None
        self.done = 0
        self.correct = 0
        self.tokens = 0
        self._t0 = time.perf_counter()

    def start(self, total: int, done: int, correct: int) -> None:
        self.done, self.correct = done, correct
        self._t0 = time.perf_counter()
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=total, completed=done,
                                             acc=self._acc(), tps="-")

    def advance(self, rows: int, correct: int, tokens: int) -> None:
        self.done += rows
        self.correct += correct
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        if self._task is not None:
            self._progress.update(self._task, advance=rows, acc=self._acc(),
                                  tps=f"{self.tokens / elapsed:.1f}")

    def stop(self) -> None:
        self._progress.stop()

    def _acc(self) -> str:
        return f"{100 * self.correct / self.done:.1f}%" if self.done else "-"
