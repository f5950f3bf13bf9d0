"""Independent samples with and without a step barrier (``train-prm``'s and bench_value's
sampling): S solutions per problem for P GSM8K train problems, with ``rollout`` (every step
of every solution ends before the next starts) and with ``extend_to_end`` (each solution goes
on as soon as its step ends). Alternated twice; reports wall time, decode calls and tokens
per decode call (how full the batches are).

Usage: python -m benchmarks.bench_sampling [--problems 2] [--samples 8] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.common import write_section
from particlescale.backends.llamacpp import LlamaCppGenerator
from particlescale.eval.datasets import Selection, load_dataset
from particlescale.eval.value_train import sample_problem
from particlescale.protocols import SamplingParams
from particlescale.types import Usage

MODEL = "qwen2.5-0.5b"


async def one_pass(gen: LlamaCppGenerator, problems, args, barrier: bool) -> dict[str, float]:
    stats = gen.engine.stats
    calls0, t0 = stats.decode_calls, time.perf_counter()
    usage = Usage()
    sem = asyncio.Semaphore(args.concurrency)

    async def one(k: int, p) -> None:
        async with sem:
            await sample_problem(gen, p, args.samples, SamplingParams(max_step_tokens=160),
                                 k, args.max_steps, usage, barrier=barrier)

    await asyncio.gather(*(one(k, p) for k, p in enumerate(problems)))
    return {"seconds": time.perf_counter() - t0, "calls": stats.decode_calls - calls0,
            "tokens": usage.generated_tokens}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=77)
    args = ap.parse_args()
    problems = load_dataset("gsm8k-train",
                            selection=Selection(sample=args.problems, seed=args.seed)).problems
    gen = LlamaCppGenerator(MODEL, embeddings=True, n_seq_max=max(16, 8 * args.concurrency))
    res: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    try:
        await one_pass(gen, problems[:1], args, barrier=False)  # warm-up (weights paged in)
        for barrier in (True, False, True, False):
            r = await one_pass(gen, problems, args, barrier)
            res[barrier].append(r)
            print("barrier" if barrier else "to-end", r, flush=True)
    finally:
        gen.close()

    def row(name: str, rs: list[dict[str, float]]) -> str:
        s = sum(r["seconds"] for r in rs)
        c = sum(r["calls"] for r in rs)
        t = sum(r["tokens"] for r in rs)
        return (f"| {name} | {s / len(rs):.1f} s | {t / s:.1f} | {c / len(rs):.0f} | "
                f"{t / c:.2f} |")

    def rate(rs: list[dict[str, float]]) -> float:
        return sum(r["tokens"] for r in rs) / sum(r["seconds"] for r in rs)

    body = "\n".join([
        f"{args.problems} GSM8K train problems × {args.samples} solutions by `{MODEL}` "
        f"(≤{args.max_steps} steps of ≤160 tokens, hidden states on, {args.concurrency} "
        "problem(s) at a time), each way twice, alternated; the samples differ between the "
        "two ways (different seed streams), so tokens per second is the fair figure.", "",
        "| sampling | wall per pass | tokens/s | decode calls per pass | tokens per decode |",
        "|---|---|---|---|---|",
        row("step barrier (`rollout`)", res[True]),
        row("no barrier (`extend_to_end`)", res[False]), "",
        f"No barrier vs barrier: **{rate(res[False]) / rate(res[True]):.2f}x** tokens per "
        "second."])
    print(body)
    write_section("sampling", "## Independent sampling without a step barrier\n\n" + body)


if __name__ == "__main__":
    asyncio.run(main())
