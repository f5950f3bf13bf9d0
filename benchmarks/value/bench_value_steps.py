"""Step-level quality of the value head: how well each per-step score ranks partial solutions
by their Monte-Carlo step labels (Math-Shepherd, Wang et al. 2024), on GSM8K test problems.

Labelling every prefix of every solution costs R completions per step (24-48 minutes per
problem on a 2-core CPU with 8 solutions and R=4), so ``bench_value`` could label only two
problems. This bench labels a seeded sample of prefixes instead, over many problems: per
problem S solutions (default 4) are drawn, from each up to P of its non-final steps
(default 2, chosen at random) are rolled out R times (default 4) to the end, and the prefix's
label is how many of those completions reach the gold answer. Ranking quality is measured
against the hard label (good if any completion is correct, Math-Shepherd's "hard
estimation") and the soft one (at least half correct).

Scores compared at each labelled prefix: the value head at that step and its minimum over
the steps so far (what pf weights by), the arithmetic check at that step and its mean so
far, the prefix's per-token log-prob, and, as a reference, the outcome of the solution the
prefix belongs to (the label the head was trained on: its AUC against the MC label is how
much the training labels themselves agree with step quality).

One JSON line per problem is appended to ``--record`` (committed under
``benchmarks/results/``), so the measurement grows across sessions (see ``record.py``).

Usage: python -m benchmarks.value.bench_value_steps [--problems 100] [--samples 4]
       [--prefixes 2] [--rollouts 4] [--minutes M] [--head PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import replace

import numpy as np

from benchmarks.common import RESULTS, auc_interval, gsm8k, within_interval, write_section
from benchmarks.record import add_record_args, grow_record, read_record
from particlescale.algorithms.common import IdSource
from particlescale.backends.llamacpp import LlamaCppGenerator
from particlescale.eval.value_train import complete, is_correct, sample_problem
from particlescale.protocols import SamplingParams
from particlescale.rewards.arith import ArithReward
from particlescale.rewards.value import packaged_head
from particlescale.rewards.value_head import ValueHead
from particlescale.stats import auc
from particlescale.types import Particle, Problem, Usage

MODEL = "qwen2.5-0.5b"
RECORD = RESULTS / "value-steps-gsm8k.jsonl"
SCORES = {  # record field -> row label in the table
    "value": "value head at the step",
    "value_min": "value head, min so far (pf's weight)",
    "arith": "arithmetic check at the step",
    "arith_mean": "arithmetic check, mean so far",
    "logprob": "log-prob per token so far",
    "outcome": "outcome of its own solution (training label)",
}


def config_key(head: ValueHead, args: argparse.Namespace) -> dict:
    """What must match for two records to be counted together."""
    return {"model": MODEL, "head": head.metadata.get("created"), "samples": args.samples,
            "prefixes": args.prefixes, "rollouts": args.rollouts, "seed": args.seed,
            "max_steps": args.max_steps, "max_step_tokens": args.max_step_tokens,
            "temperature": 0.8}


def choose_prefixes(lengths: list[int], per_solution: int, rng: np.random.Generator
                    ) -> list[tuple[int, int]]:
    """(solution, step count) of the prefixes to label: up to ``per_solution`` distinct
    non-final steps of each solution, at random (a one-step solution has none)."""
    out = []
    for j, n in enumerate(lengths):
        k = min(per_solution, n - 1)
        if k > 0:
            out += [(j, int(i) + 1) for i in sorted(rng.choice(n - 1, size=k, replace=False))]
    return out


async def label_one(gen: LlamaCppGenerator, head: ValueHead, q: Problem, k: int,
                    args: argparse.Namespace) -> dict:
    params = SamplingParams(max_step_tokens=args.max_step_tokens)
    pseed = args.seed * 100_003 + k  # as ``collect`` seeds problem k
    usage = Usage()
    t = time.perf_counter()
    sols = await sample_problem(gen, q, args.samples, params, pseed, args.max_steps, usage)
    sample_s = time.perf_counter() - t
    gold = q.answer or ""
    outcome = [int(is_correct(gold, p.text)) for p in sols]
    arith = await ArithReward().score(q, [list(p.steps) for p in sols], Usage())
    chosen = choose_prefixes([len(p.steps) for p in sols], args.prefixes,
                             np.random.default_rng(pseed))
    ids = IdSource()
    # the prefixes without their engine handles: those belonged to the sampling session
    prefixes = [Particle(id=ids(), steps=tuple(replace(st, handle=None)
                                               for st in sols[j].steps[:n]))
                for j, n in chosen]
    t = time.perf_counter()
    session = gen.session(q, params, np.random.default_rng(pseed + 1), usage)
    try:
        runs = await complete(session, prefixes, args.rollouts, ids, args.max_steps)
    finally:
        await session.aclose()
    rollout_s = time.perf_counter() - t
    rows = []
    for (j, n), kids in zip(chosen, runs, strict=True):
        steps = sols[j].steps[:n]
        v = head.predict(np.stack([np.asarray(s.features, dtype=np.float64) for s in steps]))
        toks = sum(s.tokens for s in steps)
        lp = sum(s.logprob or 0.0 for s in steps) / max(1, toks)
        rows.append({"solution": j, "step": n, "steps": len(sols[j].steps),
                     "correct_rollouts": sum(is_correct(gold, c.text) for c in kids),
                     "value": round(float(v[-1]), 6), "value_min": round(float(v.min()), 6),
                     "arith": round(float(arith[j][n - 1]), 6),
                     "arith_mean": round(float(np.mean(arith[j][:n])), 6),
                     "logprob": round(math.exp(lp), 6), "outcome": outcome[j]})
    return {"outcomes": outcome, "prefixes": rows, "tokens": usage.generated_tokens,
            "sample_seconds": round(sample_s, 1), "rollout_seconds": round(rollout_s, 1)}


def report(done: dict[str, dict], args: argparse.Namespace, other: int) -> str:
    recs = list(done.values())
    rows = [(r["problem"], x) for r in recs for x in r["prefixes"]]
    groups = np.array([g for g, _ in rows])
    good = np.array([int(x["correct_rollouts"] > 0) for _, x in rows])
    soft = np.array([int(2 * x["correct_rollouts"] >= args.rollouts) for _, x in rows])
    rng = np.random.default_rng(0)
    secs = sum(r["sample_seconds"] + r["rollout_seconds"] for r in recs)
    tokens = sum(r["tokens"] for r in recs)
    outcome = np.array([x["outcome"] for _, x in rows])
    lines = [f"GSM8K test: {len(recs)} of the {args.problems} problems of `bench_value`'s "
             f"seeded selection (seed {args.seed}); per problem {args.samples} solutions by "
             f"`{MODEL}` (T=0.8, ≤{args.max_steps} steps of ≤{args.max_step_tokens} tokens) "
             f"and up to {args.prefixes} random non-final prefixes of each rolled out "
             f"{args.rollouts} times to the end: {len(rows)} labelled prefixes, {good.mean():.0%} "
             f"good by the hard label (any completion correct), {soft.mean():.0%} by the soft "
             f"one (at least half correct); {tokens} tokens in {secs:.0f} s. Record: "
             f"`{args.record.as_posix().split('benchmarks/', 1)[-1]}` (one line per problem)."
             + (f" {other} recorded lines under other settings are not counted." if other else ""),
             "", f"The outcome label disagrees with the hard MC label on "
             f"{np.mean(outcome != good):.0%} of prefixes (correct solution, yet no completion "
             f"of its prefix correct: {np.mean((outcome == 1) & (good == 0)):.0%}; wrong "
             f"solution from a prefix that can still succeed: "
             f"{np.mean((outcome == 0) & (good == 1)):.0%}).", "",
             "| per-step score | AUC vs hard label (95%, problems resampled) "
             "| within-problem (95%) | AUC vs soft label |", "|---|---|---|---|"]
    for field, name in SCORES.items():
        p = np.array([float(x[field]) for _, x in rows])
        lines.append(f"| {name} | {auc_interval(good, p, groups, rng)} "
                     f"| {within_interval(good, p, groups, rng)} "
                     f"| {auc(soft, p):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    add_record_args(ap, RECORD)
    ap.add_argument("--samples", type=int, default=4, help="solutions per problem")
    ap.add_argument("--prefixes", type=int, default=2, help="labelled prefixes per solution")
    ap.add_argument("--rollouts", type=int, default=4, help="completions per labelled prefix")
    args = ap.parse_args()
    for name in ("samples", "prefixes", "rollouts"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name}: must be at least 1")
    head = ValueHead.load(args.head or packaged_head(MODEL))
    problems = gsm8k(args.problems, args.seed)
    key = config_key(head, args)
    done, other = read_record(args.record, key)
    ids = {q.id for q in problems}
    done = {p: r for p, r in done.items() if p in ids}
    if args.minutes > 0 and len(done) < len(problems):
        # a problem in flight holds its S samples, then S·P·R rollouts of prompt + ≤12×160
        gen = LlamaCppGenerator(MODEL, embeddings=True, n_ctx=65536, n_seq_max=min(
            256, max(16, args.samples * args.prefixes * args.rollouts * args.concurrency)))
        try:
            asyncio.run(grow_record(args.record, key, problems, done,
                                    lambda q, k: label_one(gen, head, q, k, args),
                                    minutes=args.minutes, concurrency=args.concurrency))
        finally:
            gen.close()
    if not done:
        msg = (f"--record: no problem recorded under these settings in {args.record}; "
               "run with --minutes M to label some")
        if args.minutes > 0:  # asked to label and nothing finished: a failure
            raise SystemExit(msg)
        print(msg)  # a report-only call (make bench) before any labelling: nothing to show
        return
    body = report(done, args, other)
    print(body)
    write_section("value-steps", "## Value head: step-level quality on Monte-Carlo labels "
                  "(bench_value_steps.py)\n\n" + body)


if __name__ == "__main__":
    main()
