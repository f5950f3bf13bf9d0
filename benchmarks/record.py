"""A benchmark measurement that grows across sessions: one JSON line per finished problem in
a file committed under ``benchmarks/results/``.

Scratch data does not outlive the machine it was made on, and some measurements need more
CPU hours than one session has, so the slow benches keep only what their figures need, one
line per problem, tagged with the settings (``config``) it was measured under. A run appends
the problems not yet recorded under its settings until its time is up, then the table is
rebuilt from the whole file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.progress import Progress

from particlescale.types import Problem


def add_record_args(ap: argparse.ArgumentParser, record: Path) -> None:
    """The options every record-growing bench shares: where the record is, which problems
    (bench_value's seeded GSM8K selection), the head, the sampling limits and the time."""
    ap.add_argument("--record", type=Path, default=record)
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234, help="problem selection and sampling")
    ap.add_argument("--head", type=Path, default=None, help="default: the packaged head")
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--max-step-tokens", type=int, default=160)
    ap.add_argument("--concurrency", type=int, default=2, help="problems at once")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="time for new problems (0: only rebuild the table from the record)")


def read_record(path: Path, key: dict) -> tuple[dict[str, dict], int]:
    """Recorded problems under ``key`` (by id), and how many lines were under another key."""
    done, other = {}, 0
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["config"] == key:
                done[r["problem"]] = r
            else:
                other += 1
    return done, other


async def grow_record(
    path: Path,
    key: dict,
    problems: list[Problem],
    done: dict[str, dict],
    solve: Callable[[Problem, int], Awaitable[dict[str, Any]]],
    *,
    minutes: float,
    concurrency: int,
) -> None:
    """Append ``solve(problem, index)``'s line for each problem not in ``done``, at most
    ``concurrency`` at a time; no problem starts after ``minutes``. A problem that fails is
    reported and left for a later run; the others go on."""
    todo = [(k, q) for k, q in enumerate(problems) if q.id not in done]
    if not todo or minutes <= 0:
        return
    deadline = time.monotonic() + 60 * minutes
    sem = asyncio.Semaphore(concurrency)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Progress() as bar:
        task = bar.add_task("problems", total=len(problems), completed=len(done))

        async def one(k: int, q: Problem) -> None:
            async with sem:
                if time.monotonic() >= deadline:
                    return
                try:
                    line = await solve(q, k)
                except Exception as e:  # keep the others; a re-run retries this one
                    bar.console.print(f"problem {q.id}: {type(e).__name__}: {e}")
                    return
                rec = {"config": key, "problem": q.id, "index": k, **line}
                with path.open("a") as f:  # one line per finished problem (resume)
                    f.write(json.dumps(rec) + "\n")
                done[q.id] = rec
                bar.advance(task)

        await asyncio.gather(*(one(k, q) for k, q in todo))
