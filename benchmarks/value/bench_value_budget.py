"""pf with the value reward against majority vote, best-of-N and weighted best-of-N up to a
budget of 16, on GSM8K test problems, with one compact record per problem kept in the repo.

Why a second value bench: at budget 16 each problem costs ~3.3 minutes of a 2-core CPU (16
independent solutions for the baselines plus one pf run with 16 particles), so 100 problems
take longer than one working session, and ``bench_value``'s shards (hidden states, ~1 MB per
problem) do not outlive the machine they were sampled on. This bench keeps only what the
figures need, one JSON line per finished problem in ``--record`` (committed under
``benchmarks/results/``): each of the S solutions' answer, correctness and rewards (value
last / min / mean, arithmetic check, log-prob) and pf's answer under each selector. A run
appends the problems not yet recorded (``--minutes`` bounds it; no problem starts after
it), then rebuilds the table from the whole record, so the measurement grows across
sessions and any figure can be recomputed from the file.

Each problem's seeds depend on its index in the seeded selection only: the solutions and the
pf run of problem k are the same whichever session draws them. pf's final population and the
baselines' stored samples are read by the same library selectors
(``algorithms.selection``): majority vote by ``vote``, best-of-N by ``argmax`` and weighted
best-of-N by ``weighted-vote`` of the value scores.

Usage: python -m benchmarks.value.bench_value_budget [--problems 100] [--budget 16] [--minutes M]
       [--record benchmarks/results/value-budget-gsm8k.jsonl] [--head PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from benchmarks.common import RESULTS, cell, gsm8k, paired_text, write_section
from benchmarks.record import add_record_args, grow_record, read_record
from benchmarks.value.bench_value import score_rows
from particlescale import asolve
from particlescale.algorithms.selection import SELECTORS, select_answer, select_from
from particlescale.answers import normalize_answer
from particlescale.backends.llamacpp import LlamaCppGenerator
from particlescale.eval.value_train import is_correct, label_solutions, sample_problem
from particlescale.protocols import SamplingParams
from particlescale.rewards.value import ValueReward, packaged_head
from particlescale.rewards.value_head import ValueHead
from particlescale.types import Problem, Usage

MODEL = "qwen2.5-0.5b"
RECORD = RESULTS / "value-budget-gsm8k.jsonl"


def config_key(head: ValueHead, args: argparse.Namespace) -> dict:
    """What must match for two records to be counted together."""
    return {"model": MODEL, "head": head.metadata.get("created"), "budget": args.budget,
            "aggregation": args.aggregation, "seed": args.seed, "max_steps": args.max_steps,
            "max_step_tokens": args.max_step_tokens, "temperature": 0.8}


async def solve_one(gen: LlamaCppGenerator, reward: ValueReward, q: Problem, k: int,
                    args: argparse.Namespace) -> dict:
    """S independent solutions scored by every reward, then one pf run at budget S."""
    params = SamplingParams(max_step_tokens=args.max_step_tokens)
    t = time.perf_counter()
    pseed = args.seed * 100_003 + k  # as ``collect`` seeds problem k
    sols = await sample_problem(gen, q, args.budget, params, pseed, args.max_steps, Usage())
    sample_s = time.perf_counter() - t
    # the same per-solution scores as bench_value's reward table (one scorer for both)
    rows, _ = await score_rows([label_solutions(q, sols)], {"value": reward.head})
    samples = [{"answer": r["answer"], "correct": r["correct"],
                "tokens": sum(st.tokens for st in p.steps),
                "steps": len(p.steps),
                **{f"value_{a}": round(r[f"value:{a}"], 6) for a in ("last", "min", "mean")},
                "arith": round(r["arith"], 6), "logprob": round(r["logprob"], 6)}
               for r, p in zip(rows, sols, strict=True)]
    t = time.perf_counter()
    res = await asolve(q, generator=gen, reward=reward, method="pf", budget=args.budget,
                       seed=k, max_steps=args.max_steps, max_step_tokens=args.max_step_tokens)
    answers = {sel: select_answer(res.candidates, sel) for sel in SELECTORS}
    kinds = {normalize_answer(c.answer) for c in res.candidates if c.answer is not None}
    return {"samples": samples,
            "pf": {"answers": answers,
                   "correct": {s: int(is_correct(q.answer or "", a or ""))
                               for s, a in answers.items()},
                   "population_answers": len(kinds), "tokens": res.usage.generated_tokens,
                   "seconds": round(time.perf_counter() - t, 1)},
            "sample_seconds": round(sample_s, 1)}


async def extend(args: argparse.Namespace, problems: list[Problem], head: ValueHead,
                 key: dict, done: dict[str, dict]) -> None:
    """Append a line for each problem not yet recorded, until ``--minutes`` run out."""
    if args.minutes <= 0 or all(q.id in done for q in problems):
        return
    # every problem in flight holds up to S sequences of a prompt plus ≤12×160 tokens
    gen = LlamaCppGenerator(MODEL, embeddings=True, n_ctx=32768,
                            n_seq_max=max(16, args.budget * args.concurrency))
    reward = ValueReward(head, aggregation=args.aggregation)
    try:
        await grow_record(args.record, key, problems, done,
                          lambda q, k: solve_one(gen, reward, q, k, args),
                          minutes=args.minutes, concurrency=args.concurrency)
    finally:
        gen.close()


def distinct(samples: list[dict]) -> int:
    """How many different answers a problem's solutions reached."""
    return len({normalize_answer(x["answer"]) for x in samples if x["answer"] is not None})


def report(done: dict[str, dict], golds: dict[str, str], args: argparse.Namespace,
           head: ValueHead, other: int) -> str:
    recs = list(done.values())
    n, s, agg = len(recs), args.budget, args.aggregation
    budgets = [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= s]
    value = f"value_{agg}"
    hits: dict[str, dict[int, np.ndarray]] = {}
    for name in ("majority vote", f"best-of-N (value, {agg})", f"weighted BoN (value, {agg})"):
        hits[name] = {}
    for b in budgets:
        rows = {name: [] for name in hits}
        for r in recs:
            ans = [x["answer"] for x in r["samples"][:b]]
            w = [x[value] for x in r["samples"][:b]]
            gold = golds[r["problem"]]
            for name, sel, ws in (("majority vote", "vote", [1.0] * b),
                                  (f"best-of-N (value, {agg})", "argmax", w),
                                  (f"weighted BoN (value, {agg})", "weighted-vote", w)):
                rows[name].append(is_correct(gold, select_from(ans, ws, sel) or ""))
        for name, xs in rows.items():
            hits[name][b] = np.array(xs, dtype=int)
    pf = {sel: np.array([r["pf"]["correct"][sel] for r in recs]) for sel in SELECTORS}
    one = np.mean([x["correct"] for r in recs for x in r["samples"]])
    oracle = sum(any(x["correct"] for x in r["samples"]) for r in recs)
    tokens = sum(x["tokens"] for r in recs for x in r["samples"])
    sample_s = sum(r["sample_seconds"] for r in recs)
    pf_tokens = sum(r["pf"]["tokens"] for r in recs)
    pf_s = sum(r["pf"]["seconds"] for r in recs)
    lines = [f"GSM8K test: {n} of the {args.problems} problems of `bench_value`'s seeded "
             f"selection (seed {args.seed}) so far, each with {s} independent solutions by "
             f"`{MODEL}` (T=0.8, ≤{args.max_steps} steps of ≤{args.max_step_tokens} tokens; "
             f"{tokens} tokens in {sample_s:.0f} s) and one pf run with {s} particles and the "
             f"packaged value head ({agg} over steps; {pf_tokens} tokens in {pf_s:.0f} s). "
             f"Record: `{args.record.as_posix().split('benchmarks/', 1)[-1]}` "
             "(one line per problem; the table is rebuilt from it)."
             + (f" {other} recorded lines under other settings are not counted." if other else ""),
             "", f"One sample: {one:.1%}; oracle pass@{s}: {cell(oracle, n)}.", "",
             "| method | " + " | ".join(f"N={b}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for name, per in hits.items():
        lines.append(f"| {name} | " + " | ".join(cell(int(per[b].sum()), n) for b in budgets)
                     + " |")
    for sel in SELECTORS:
        lines.append(f"| pf (value, {agg}; {sel}) | " + " | ".join(
            "not run" for _ in budgets[:-1]) + f" | {cell(int(pf[sel].sum()), n)} |")
    rng = np.random.default_rng(0)
    maj = hits["majority vote"][s]
    lines += ["", f"pf minus majority@{s} on the same problems (95% paired bootstrap over "
              "problems): " + "; ".join(f"{sel} {paired_text(pf[sel], maj, rng)}"
                                         for sel in SELECTORS)
              + f"; weighted BoN@{s} "
              f"{paired_text(hits[f'weighted BoN (value, {agg})'][s], maj, rng)}.",
              "", f"Distinct answers in pf's final population: "
              f"{np.mean([r['pf']['population_answers'] for r in recs]):.2f} against "
              f"{np.mean([distinct(r['samples']) for r in recs]):.2f} among {s} independent "
              "samples."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    add_record_args(ap, RECORD)
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--aggregation", default="min", choices=("last", "min", "mean"))
    args = ap.parse_args()
    if args.budget < 1:
        raise SystemExit("--budget: must be at least 1")
    head = ValueHead.load(args.head or packaged_head(MODEL))
    problems = gsm8k(args.problems, args.seed)
    golds = {q.id: q.answer or "" for q in problems}
    key = config_key(head, args)
    done, other = read_record(args.record, key)
    done = {p: r for p, r in done.items() if p in golds}
    asyncio.run(extend(args, problems, head, key, done))
    if not done:
        raise SystemExit(f"--record: no problem recorded under these settings in {args.record}; "
                         "run with --minutes M to sample some")
    body = report(done, golds, args, head, other)
    print(body)
    write_section("value-budget", "## Value head: accuracy vs budget up to 16 "
                  "(bench_value_budget.py)\n\n" + body)


if __name__ == "__main__":
    main()
