"""The eval sweep's own throughput against the engine's peak (issue 20, "Throughput of the
study itself").

A small sweep of ``eval``'s code (``SweepState`` + ``run_task``, driven by the same queue of
``concurrency`` lanes as ``arun_sweep``): ``qwen2.5-0.5b`` on the first ``--problems`` GSM8K
test problems, the three sampled baselines at ``--budgets`` (one shared sample set, smaller
budgets derived: ``--reuse-samples``), the study's sampling settings (T=0.8, <= 12 steps of
<= 160 tokens) and the ``arith`` reward. For each ``--concurrency``::

    sweep tok/s = generated tokens (sum of the rows' new_tokens) / sweep wall time
    peak        = bench_engine.throughput(engine, k): k sequences decoding 48 tokens together,
                  on the same engine, best of just before and just after the sweep, at
                  k = budget x concurrency (the sweep's live sequences at a step's start)
                  and k = the sweep's mean live sequences per decode (sampled / decode calls)

and where the time goes (exact at concurrency 1, where the parts do not overlap):

    decode    engine.stats.decode_seconds (inside llama_decode: the cores busy)
    reward    seconds inside reward.score
    finish    grading the answers and appending the rows (SweepState.finish)
    other     the rest of the tasks: the engine's sampling and batching, algorithm code,
              asyncio; plus ``cpu %``: this process's CPU time / wall / cores

The step barrier shows as mean live sequences per decode below budget x concurrency: each
step waits for its longest sequence while the finished ones leave their cores idle.

Run it only on an idle machine: it refuses while ``bench_reference_study`` runs (``--force``
to measure anyway; the numbers are then meaningless). About 10 min on 2 cores:

    flock /tmp/ps-cpu.lock .venv/bin/python -m benchmarks.bench_sweep
    # a check of the script without a model (no engine: no peak, no decode figures):
    .venv/bin/python -m benchmarks.bench_sweep --generator py:tests/eval_plugin.py:generator \\
        --reward py:tests/eval_plugin.py:reward --no-write
    # where "other" goes: pip install py-spy, then
    py-spy record -r 50 --idle -o /tmp/sweep.svg -- .venv/bin/python -m benchmarks.bench_sweep \\
        --concurrency 1 --no-write

Writes the ``sweep`` section of BENCHMARKS.md (unless ``--no-write``) and prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_section
from particlescale.eval.datasets import Selection, load_dataset
from particlescale.eval.specs import parse_methods
from particlescale.eval.store import RESULTS, load_rows
from particlescale.eval.sweep import SweepConfig, SweepState, Task, run_task
from particlescale.wiring import Setup

MODEL = "qwen2.5-0.5b"
METHODS = "self-consistency,best-of-n,weighted-best-of-n"
OPTIONS = {"max_steps": 12, "max_step_tokens": 160}  # bench_reference_study's settings


class TimedReward:
    """The reward, with the seconds spent inside ``score`` counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def score(self, problem: Any, trajectories: Any, usage: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await self.inner.score(problem, trajectories, usage)
        finally:
            self.seconds += time.perf_counter() - t0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def sweep(cfg: SweepConfig, generator: Any, reward: TimedReward) -> dict[str, Any]:
    """One sweep in a fresh directory, timed part by part (the lanes of ``arun_sweep``)."""
    state = SweepState(cfg)
    engine = getattr(generator, "engine", None)
    before = dataclasses.replace(engine.stats) if engine is not None else None
    reward.seconds = 0.0
    parts = {"tasks": 0.0, "finish": 0.0}
    queue: asyncio.Queue[Task] = asyncio.Queue()
    for t in state.pending():
        queue.put_nowait(t)

    async def lane() -> None:
        while not queue.empty():
            task = queue.get_nowait()
            t0 = time.perf_counter()
            outcome = await run_task(task, generator, reward)
            t1 = time.perf_counter()
            await state.finish(task, outcome)
            parts["tasks"] += t1 - t0
            parts["finish"] += time.perf_counter() - t1

    c0, t0 = cpu_seconds(), time.perf_counter()
    try:
        await asyncio.gather(*(lane() for _ in range(cfg.concurrency)))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds() - c0
    finally:
        state.close()
    rows = load_rows(cfg.out / RESULTS).rows
    out = {"concurrency": cfg.concurrency, "wall_s": wall, "rows": len(rows),
           "errors": sum(bool(r["error"]) for r in rows),
           "new_tokens": sum(int(r.get("new_tokens", 0)) for r in rows),
           "tasks_s": parts["tasks"], "finish_s": parts["finish"], "reward_s": reward.seconds,
           "cpu_pct": 100 * cpu / wall / (os.cpu_count() or 1)}
    out["tok_s"] = out["new_tokens"] / wall
    if engine is not None:
        after = engine.stats
        calls = after.decode_calls - before.decode_calls
        out.update(decode_s=after.decode_seconds - before.decode_seconds, decode_calls=calls,
                   sampled=after.sampled_tokens - before.sampled_tokens,
                   max_sequences=after.max_sequences_per_decode)
        out["live_per_decode"] = out["sampled"] / max(calls, 1)
    return out


async def peak(engine: Any, ks: list[int]) -> dict[int, float]:
    from benchmarks.bench_engine import throughput

    return {k: await throughput(engine, k) for k in ks}


def busy() -> list[str]:
    p = subprocess.run(["pgrep", "-af", "bench_reference_study"], capture_output=True, text=True)
    return p.stdout.splitlines()


def render(res: dict[str, Any]) -> str:
    a = res["args"]
    lines = [
        "## Throughput of an eval sweep (bench_sweep.py)",
        "",
        f"generator `{a['generator']}` model `{a['model']}` (eval's defaults), reward "
        f"`{a['reward']}`, "
        f"{a['problems']} GSM8K test problems, `{METHODS}` at budgets {a['budgets']} "
        f"(--reuse-samples: one sample set, drawn at the largest budget), options {OPTIONS}, "
        f"seed 0. Load average at the start: {res['load']}.",
        "",
        "| concurrency | wall s | tokens | sweep tok/s | live seqs per decode | peak at "
        "budget x conc. | peak at live seqs | sweep / peak(live) | decode | reward | finish "
        "| other | cpu % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        w = r["wall_s"]
        other = r["tasks_s"] - r.get("decode_s", 0) - r["reward_s"]

        def pct(x: float, w: float = w) -> str:
            return f"{100 * x / w:.0f}%"

        lines.append(
            f"| {r['concurrency']} | {w:.0f} | {r['new_tokens']} | {r['tok_s']:.1f} | "
            f"{r.get('live_per_decode', float('nan')):.1f} | {r.get('peak_full', float('nan')):.1f}"
            f" | {r.get('peak_live', float('nan')):.1f} | "
            f"**{100 * r.get('ratio_live', float('nan')):.0f}%** | {pct(r.get('decode_s', 0))} | "
            f"{pct(r['reward_s'])} | {pct(r['finish_s'])} | {pct(other)} | {r['cpu_pct']:.0f} |")
    lines += ["", "decode / reward / finish / other: shares of the sweep's wall time (at "
              "concurrency > 1 the tasks overlap, so only decode's share is a share of the "
              "wall clock). Target: sweep / peak >= 80%."]
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=6)
    ap.add_argument("--budgets", default="1,2,4,8")
    ap.add_argument("--concurrency", default="1,2", help="comma-separated; one sweep each")
    ap.add_argument("--generator", default="llamacpp")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--reward", default="arith")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--force", action="store_true", help="measure even if the study runs")
    args = ap.parse_args()
    others = busy()
    if others and not args.force:
        sys.exit("error: the machine is busy (" + "; ".join(others)[:200] + "): timings would "
                 "be meaningless; run when it is idle, or pass --force")
    budgets = [int(b) for b in args.budgets.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    ds = load_dataset("gsm8k", selection=Selection(limit=args.problems))
    spec = Setup(generator=args.generator, model=args.model, reward=args.reward)
    wired = spec.wire()
    generator, reward = wired.generator, wired.reward
    timed = TimedReward(reward)
    engine = getattr(generator, "engine", None)
    res: dict[str, Any] = {"args": {**vars(args), "budgets": budgets},
                           "load": Path("/proc/loadavg").read_text().split()[0], "runs": []}
    try:
        for c in concurrency:
            ks = sorted({max(budgets) * c, max(budgets)})
            before = await peak(engine, ks) if engine is not None else {}
            with tempfile.TemporaryDirectory() as tmp:
                cfg = SweepConfig(dataset=ds, methods=parse_methods(METHODS, OPTIONS),
                                  budgets=budgets, seeds=[0], out=Path(tmp) / "out",
                                  setup=spec, options=OPTIONS, concurrency=c,
                                  reuse_samples=True)
                r = await sweep(cfg, generator, timed)
            if engine is not None:
                live = max(1, round(r["live_per_decode"]))
                after = await peak(engine, sorted({*ks, live}))
                best = {k: max(before.get(k, 0.0), after[k]) for k in after}
                r.update(peak=best, peak_full=best[max(budgets) * c], peak_live=best[live])
                r["ratio_live"] = r["tok_s"] / r["peak_live"]
                r["ratio_full"] = r["tok_s"] / r["peak_full"]
            res["runs"].append(r)
            print(json.dumps(r), flush=True)
    finally:
        await wired.aclose()
    text = render(res)
    print(text)
    if not args.no_write and engine is not None:
        write_section("sweep", text)


if __name__ == "__main__":
    asyncio.run(main())
