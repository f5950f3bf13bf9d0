"""The value head as a process reward, measured on GSM8K *test* problems (never trained on).

1. Sample S solutions per test problem with the embedded engine (hidden states recorded).
2. Score every solution with each reward: value (last / min / mean over steps), the arithmetic
   check (mean), the generator's log-prob, and products; report outcome AUC pooled and
   within-problem (mean over problems with both outcomes), best-of-S and weighted-majority@S.
3. Accuracy vs budget of `pf` with the value reward against majority vote, best-of-N and
   weighted best-of-N with the same reward (these from subsets of the S samples, as
   search-and-learn does), with 95% Wilson intervals.
4. Cost: wall time of value scoring relative to generation.

Usage: python benchmarks/bench_value.py [--problems 40] [--samples 8] [--budgets 1,2,4,8]
       [--head PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from particlescale import asolve
from particlescale.answers import extract_answer, normalize_answer
from particlescale.backends.llamacpp import LlamaCppGenerator
from particlescale.eval.datasets import Selection, load_dataset
from particlescale.protocols import SamplingParams
from particlescale.rewards.arith import ArithReward
from particlescale.rewards.value import ValueReward, packaged_head
from particlescale.types import Problem, Usage
from particlescale.value.head import ValueHead
from particlescale.value.train import is_correct, sample_problem


def auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    z, p = 1.96, k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def pick(answers: list[str | None], weights: list[float], mode: str) -> str | None:
    if mode == "argmax":
        i = int(np.argmax(weights))
        return answers[i]
    tot: dict[str, float] = defaultdict(float)
    for a, w in zip(answers, weights, strict=True):
        if a is not None:
            tot[normalize_answer(a) or ""] += w if mode == "weighted" else 1.0
    return max(tot, key=tot.get) if tot else None


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--budgets", default="1,2,4,8")
    ap.add_argument("--offset-seed", type=int, default=1234)
    ap.add_argument("--head", default=None)
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--max-step-tokens", type=int, default=160)
    ap.add_argument("--pf-budgets", default="8", help="budgets at which pf itself runs (the "
                    "baselines come from the samples at every --budgets)")
    ap.add_argument("--skip-pf", action="store_true")
    ap.add_argument("--concurrency", type=int, default=2, help="problems sampled at once")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/particlescale-bench/value_rows.json"),
                    help="sampled and scored solutions (re-used when the settings match)")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    pf_budgets = [int(b) for b in args.pf_budgets.split(",")]

    head_path = Path(args.head) if args.head else packaged_head("qwen2.5-0.5b")
    head = ValueHead.load(head_path)
    ds = load_dataset("gsm8k", selection=Selection(sample=args.problems, seed=args.offset_seed))
    gen = LlamaCppGenerator("qwen2.5-0.5b", embeddings=True, n_seq_max=64)
    params = SamplingParams(max_step_tokens=args.max_step_tokens)
    arith = ArithReward()
    value = ValueReward(head)
    rows = []
    gen_time = score_time = 0.0
    t0 = time.perf_counter()

    async def one(k: int, p: Problem) -> None:
        nonlocal gen_time, score_time
        t = time.perf_counter()
        sols = await sample_problem(gen, p, args.samples, params, 7_000 + k, args.max_steps,
                                    Usage())
        gen_time += time.perf_counter() - t
        t = time.perf_counter()
        v = await value.score(p, [s.steps for s in sols], Usage())
        score_time += time.perf_counter() - t
        a = await arith.score(p, [s.steps for s in sols], Usage())
        for s, vs, ar in zip(sols, v, a, strict=True):
            toks = sum(st.tokens for st in s.steps)
            lp = sum(st.logprob or 0.0 for st in s.steps) / max(1, toks)
            rows.append({"problem": p.id, "correct": int(is_correct(p.answer or "", s.text)),
                         "answer": extract_answer(s.text), "value_last": vs[-1],
                         "value_min": min(vs), "value_mean": float(np.mean(vs)),
                         "arith": float(np.mean(ar)), "logprob": math.exp(lp)})

    sem = asyncio.Semaphore(args.concurrency)

    async def guarded(k: int, p: Problem) -> None:
        async with sem:
            await one(k, p)

    key = {"problems": args.problems, "samples": args.samples, "seed": args.offset_seed,
           "head": head_path.name, "head_sha": head.metadata.get("created"),
           "max_steps": args.max_steps, "max_step_tokens": args.max_step_tokens}
    cached = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    if cached.get("key") == key:
        rows, gen_time, score_time = cached["rows"], cached["gen_time"], cached["score_time"]
        sample_wall = cached["sample_wall"]
        print(f"re-using {len(rows)} scored solutions from {args.cache}", flush=True)
    else:
        await asyncio.gather(*(guarded(k, p) for k, p in enumerate(ds.problems)))
        sample_wall = time.perf_counter() - t0
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        args.cache.write_text(json.dumps({"key": key, "rows": rows, "gen_time": gen_time,
                                          "score_time": score_time,
                                          "sample_wall": sample_wall}))

    rewards = {
        "value (last)": lambda r: r["value_last"],
        "value (min)": lambda r: r["value_min"],
        "value (mean)": lambda r: r["value_mean"],
        "arith (mean)": lambda r: r["arith"],
        "log-prob": lambda r: r["logprob"],
        "arith × log-prob": lambda r: r["arith"] * r["logprob"],
        "value (last) × arith": lambda r: r["value_last"] * r["arith"],
    }
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_problem[r["problem"]].append(r)
    n_prob = len(by_problem)
    lines = [f"GSM8K test: {n_prob} problems (seeded sample, seed {args.offset_seed}), "
             f"{args.samples} solutions each by `qwen2.5-0.5b` (T=0.8, ≤{args.max_steps} steps "
             f"of ≤{args.max_step_tokens} tokens), head `{head_path.name}` "
             f"(trained on {head.metadata.get('training', {}).get('problems', '?')} GSM8K "
             "train problems).", ""]
    sc = sum(r["correct"] for r in rows) / len(rows)
    maj = sum(
        is_correct(ds_gold(ds, p), pick([r["answer"] for r in rs], [1.0] * len(rs), "vote") or "")
        for p, rs in by_problem.items()) / n_prob
    oracle = sum(any(r["correct"] for r in rs) for rs in by_problem.values()) / n_prob
    lines += [f"One sample: {sc:.1%}; majority@{args.samples}: {maj:.1%}; "
              f"oracle pass@{args.samples}: {oracle:.1%}.", "",
              f"| reward | AUC pooled | AUC within-problem | best-of-{args.samples} | "
              f"weighted-majority@{args.samples} |", "|---|---|---|---|---|"]
    for name, f in rewards.items():
        pooled = auc([f(r) for r in rows], [r["correct"] for r in rows])
        within = [auc([f(r) for r in rs], [r["correct"] for r in rs]) for rs in
                  by_problem.values()]
        within = [w for w in within if not math.isnan(w)]
        bon = wmaj = 0
        for p, rs in by_problem.items():
            gold = ds_gold(ds, p)
            ans = [r["answer"] for r in rs]
            w = [f(r) for r in rs]
            bon += is_correct(gold, pick(ans, w, "argmax") or "")
            wmaj += is_correct(gold, pick(ans, w, "weighted") or "")
        lines.append(f"| {name} | {pooled:.3f} | {np.mean(within):.3f} (n={len(within)}) | "
                     f"{bon / n_prob:.1%} | {wmaj / n_prob:.1%} |")
    lines += ["", f"Cost: value scoring took {score_time:.3f} s in all against {sample_wall:.1f} s "
              f"of sampling wall time ({100 * score_time / max(sample_wall, 1e-9):.2f}% extra; "
              "the hidden states come from the generating decode, so the head is one small "
              "matrix product per step).", ""]

    if not args.skip_pf:
        lines += ["Accuracy vs budget (95% Wilson interval); baselines from subsets of the "
                  f"{args.samples} samples (first N), pf runs with `--reward value` at "
                  f"N = {', '.join(map(str, pf_budgets))} only (each pf run samples anew):", "",
                  "| method | " + " | ".join(f"N={b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        table: dict[str, list[str]] = defaultdict(list)
        for b in budgets:
            counts = Counter()
            for p, rs in by_problem.items():
                gold = ds_gold(ds, p)
                sub = rs[:b]
                ans = [r["answer"] for r in sub]
                w = [r["value_last"] for r in sub]
                counts["majority vote"] += is_correct(gold, pick(ans, [1.0] * b, "vote") or "")
                counts["best-of-N (value)"] += is_correct(gold, pick(ans, w, "argmax") or "")
                counts["weighted BoN (value)"] += is_correct(gold, pick(ans, w, "weighted") or "")
            for name in ("majority vote", "best-of-N (value)", "weighted BoN (value)"):
                lo, hi = wilson(counts[name], n_prob)
                table[name].append(f"{counts[name] / n_prob:.1%} [{lo:.0%}, {hi:.0%}]")
            problems = [next(q for q in ds.problems if q.id == p) for p in by_problem]

            if b not in pf_budgets:
                table["pf (value)"].append("not run")
                continue

            async def run_pf(k: int, q: Problem, b: int = b) -> int:
                async with sem:
                    res = await asolve(q, generator=gen, reward=value, method="pf", budget=b,
                                       seed=k, max_steps=args.max_steps,
                                       max_step_tokens=args.max_step_tokens)
                return int(is_correct(q.answer or "", res.answer or ""))

            ok = sum(await asyncio.gather(*(run_pf(k, q) for k, q in enumerate(problems))))
            lo, hi = wilson(ok, n_prob)
            table["pf (value)"].append(f"{ok / n_prob:.1%} [{lo:.0%}, {hi:.0%}]")
        for name, cells in table.items():
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Wall time: {time.perf_counter() - t0:.0f} s (sampling {sample_wall:.0f} s)."]
    gen.close()
    body = "\n".join(lines)
    print(body)
    write_section("value", "## Value head (learned PRM) on GSM8K test\n\n" + body)
    Path("artifacts").mkdir(exist_ok=True)
    Path("artifacts/bench_value_rows.json").write_text(json.dumps(rows))


def ds_gold(ds, pid: str) -> str:
    return next(q.answer for q in ds.problems if q.id == pid) or ""


if __name__ == "__main__":
    asyncio.run(main())
