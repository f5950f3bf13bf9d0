"""The value head as a process reward, measured on GSM8K *test* problems (never trained on).

Three stages, each resumable, so the expensive sampling is done once and any head can be
scored on it later:

1. **Sample** S solutions per test problem with the embedded engine (hidden states recorded),
   one shard per problem in ``--work`` (the same shards ``train-prm`` writes, plus the step
   texts and log-probs). ``--sample-minutes`` bounds this stage; re-run to sample more.
2. **Score offline** every solution with each reward: value (last / min / mean over steps)
   for each ``--head``, the arithmetic check (mean), the generator's log-prob, and products;
   outcome AUC pooled and within-problem, best-of-S and weighted-majority@S, accuracy vs
   budget of majority vote, best-of-N and weighted best-of-N (first N of the S samples, as
   search-and-learn does), with 95% Wilson intervals.
3. **pf with the value reward** at ``--pf-budgets`` on the same problems (fresh samples),
   one line per finished problem in ``--work/pf.jsonl`` (resume), bounded by
   ``--pf-minutes`` (and ``--pf-problems``). Its accuracy is compared with the baselines *on
   the problems pf ran*. ``--pf-option KEY=VALUE`` and ``--pf-reward SPEC`` run a variant of
   pf (kept apart in ``pf.jsonl``); every variant run with the head is shown, side by side
   where they ran on the same problems.

Cost of the value reward: scoring time of the head vs sampling time, and the decode time of
the engine with hidden states on vs off (``--cost-problems``).

Usage: python -m benchmarks.value.bench_value --work DIR [--problems 100] [--samples 8]
       [--head PATH ...] [--sample-minutes M] [--pf-budgets 8] [--pf-minutes M]
       [--pf-problems K] [--pf-option KEY=VALUE ...] [--pf-reward SPEC]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import cell, gsm8k, write_section
from benchmarks.value.pf_runs import (
    Runs,
    diversity_line,
    parse_pf_options,
    read_pf,
    run_pf,
    variant_name,
)
from particlescale import asolve
from particlescale.aggregation import aggregate
from particlescale.algorithms.common import potential
from particlescale.algorithms.selection import SELECTORS, select_from
from particlescale.backends.llamacpp import LlamaCppGenerator
from particlescale.errors import ConfigError
from particlescale.eval.value_train import SampleSet, SamplingClock, collect, is_correct
from particlescale.protocols import SamplingParams
from particlescale.rewards.arith import ArithReward
from particlescale.rewards.registry import make_reward
from particlescale.rewards.value import ValueReward, packaged_head
from particlescale.rewards.value_head import ValueHead
from particlescale.smc import ess, normalize, resampling
from particlescale.stats import auc
from particlescale.types import Problem, Usage

MODEL = "qwen2.5-0.5b"
# pf's final population is read by each of the library's SELECTORS; the baselines pick from
# the stored samples with the same selectors (``select_from``): best-of-N by ``argmax``,
# weighted best-of-N by ``weighted-vote``, majority by ``vote``


async def score_rows(sets: list[SampleSet], heads: dict[str, ValueHead]) -> tuple[list[dict],
                                                                               float]:
    """One row per solution with every reward's score; and the heads' scoring seconds."""
    arith = ArithReward()
    rewards = {name: ValueReward(h) for name, h in heads.items()}
    rows, head_seconds = [], 0.0
    for s in sets:
        steps = [s.solution_steps(j) for j in range(len(s.solutions))]
        a = await arith.score(Problem("(scored offline)", id=s.problem_id), steps, Usage())
        per_head = {}
        for name, r in rewards.items():
            t = time.perf_counter()
            per_head[name] = await r.score(Problem("(scored offline)", id=s.problem_id), steps,
                                           Usage())
            head_seconds += time.perf_counter() - t
        for j, rec in enumerate(s.solutions):
            toks = sum(rec["tokens"])
            lp = sum(x or 0.0 for x in rec["logprob"]) / max(1, toks)
            row = {"problem": s.problem_id, "correct": int(rec["correct"]),
                   "answer": rec["answer"], "arith": float(np.mean(a[j])),
                   "logprob": math.exp(lp)}
            for name, v in per_head.items():
                row[f"{name}:last"] = v[j][-1]
                row[f"{name}:min"] = min(v[j])
                row[f"{name}:mean"] = float(np.mean(v[j]))
            rows.append(row)
    return rows, head_seconds


def reward_table(rows: list[dict], golds: dict[str, str], samples: int,
                 rewards: dict[str, Callable[[dict], float]]) -> list[str]:
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_problem[r["problem"]].append(r)
    n = len(by_problem)
    out = [f"| reward | AUC pooled | AUC within-problem | best-of-{samples} | "
           f"weighted-majority@{samples} |", "|---|---|---|---|---|"]
    for name, f in rewards.items():
        pooled = auc([r["correct"] for r in rows], [f(r) for r in rows])
        within = [auc([r["correct"] for r in rs], [f(r) for r in rs])
                  for rs in by_problem.values()]
        within = [w for w in within if not math.isnan(w)]
        bon = wmaj = 0
        for p, rs in by_problem.items():
            ans, w = [r["answer"] for r in rs], [f(r) for r in rs]
            bon += is_correct(golds[p], select_from(ans, w, "argmax") or "")
            wmaj += is_correct(golds[p], select_from(ans, w, "weighted-vote") or "")
        out.append(f"| {name} | {pooled:.3f} | {np.mean(within):.3f} (n={len(within)}) | "
                   f"{cell(bon, n)} | {cell(wmaj, n)} |")
    return out


def budget_table(rows: list[dict], golds: dict[str, str], budgets: list[int],
                 reward: Callable[[dict], float], label: str,
                 pf: dict[str, Runs] | None = None,
                 only: set[str] | None = None) -> list[str]:
    """Accuracy per budget: the baselines from the stored samples, and each pf variant's runs
    as ``pf[variant][selector][budget][problem] = correct`` (one row per variant and
    selector)."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if only is None or r["problem"] in only:
            by_problem[r["problem"]].append(r)
    n = len(by_problem)
    out = ["| method | " + " | ".join(f"N={b}" for b in budgets) + " |",
           "|---|" + "---|" * len(budgets)]
    table: dict[str, list[str]] = defaultdict(list)
    for b in budgets:
        counts = defaultdict(int)
        for p, rs in by_problem.items():
            ans = [r["answer"] for r in rs[:b]]
            w = [reward(r) for r in rs[:b]]
            for name, sel, ws in (("majority vote", "vote", [1.0] * len(ans)),
                                  (f"best-of-N ({label})", "argmax", w),
                                  (f"weighted BoN ({label})", "weighted-vote", w)):
                counts[name] += is_correct(golds[p], select_from(ans, ws, sel) or "")
        for name, k in counts.items():
            table[name].append(cell(k, n))
        for variant, runs in (pf or {}).items():
            for sel in SELECTORS:
                done = runs.done[sel].get(b, {})
                # a variant with its own reward is not scored by ``label``
                scored = sel if "reward=" in variant else f"{label}; {sel}"
                table[f"{variant_name(variant)} ({scored})"].append(
                    cell(sum(done[p] for p in by_problem), n)
                    if all(p in done for p in by_problem) else "not run")
    return out + [f"| {name} | " + " | ".join(cells) + " |" for name, cells in table.items()]


def lineage_line(sets: list[SampleSet], head: ValueHead, agg: str, n: int, seed: int) -> str:
    """Lineages that survive one resampling step, per scheme, when the weights are pf's
    (softmax of the logit of the value, ``agg`` over steps so far) on ``n`` stored solutions
    of a problem at steps 1-3: how much diversity a resampling scheme spends by its own noise
    rather than by the reward."""
    rng = np.random.default_rng(seed)
    log_weights = []
    for s in sets:
        if len(s.solutions) < n:
            continue
        v = head.predict(s.features.astype(np.float32))
        for t in (1, 2, 3):
            per = [v[(s.solution == j) & (s.step <= t)] for j in range(n)]
            if all(len(x) for x in per):
                # pf's paper weights: the logit of the prefix's aggregated value
                log_weights.append(potential([aggregate(x, agg) for x in per], "logit"))
    out = []
    for name in ("multinomial", "stratified", "residual", "systematic"):
        resample = resampling.get(name)
        kept = [len(set(resample(normalize(lw), rng, n).tolist()))
                for lw in log_weights for _ in range(20)]
        out.append(f"{name} {np.mean(kept):.2f}")
    ess_n = np.mean([ess(lw) / n for lw in log_weights])
    return (f"Lineages of {n} kept by one resampling step under pf's weights (value, {agg}; "
            f"{len(log_weights)} populations of {n} stored solutions at steps 1-3, mean ESS/N "
            f"{ess_n:.2f}; 20 draws each): " + ", ".join(out) + ".")


async def embedding_cost(problems: list[Problem], args) -> str:
    """Decode time of the same best-of-N runs with the engine's hidden states off and on."""
    seconds = {}
    for emb in (False, True, False, True):
        gen = LlamaCppGenerator(MODEL, embeddings=emb, n_seq_max=16)
        t = time.perf_counter()
        toks = 0
        for k, q in enumerate(problems):
            res = await asolve(q, generator=gen, reward="logprob", method="best-of-n",
                               budget=8, seed=k, max_steps=args.max_steps,
                               max_step_tokens=args.max_step_tokens)
            toks += res.usage.generated_tokens
        seconds.setdefault(emb, []).append((time.perf_counter() - t, toks))
        gen.close()
    off = sum(s for s, _ in seconds[False]) / sum(t for _, t in seconds[False])
    on = sum(s for s, _ in seconds[True]) / sum(t for _, t in seconds[True])
    return (f"Hidden states on vs off (best-of-8 with the same seeds on {len(problems)} "
            f"problems, alternated twice): {1e3 * on:.1f} vs {1e3 * off:.1f} ms per generated "
            f"token, **{100 * (on / off - 1):+.1f}%**.")


async def step_quality(gen: LlamaCppGenerator, problems: list[Problem], sets: list[SampleSet],
                       heads: dict[str, ValueHead], args) -> str:
    """AUC of per-step scores against Math-Shepherd's Monte-Carlo step labels (hard
    estimation: a prefix is good if any of R completions from it ends correct)."""
    chosen = {s.problem_id for s in sets[: args.mc_problems]}
    todo = [q for q in problems if q.id in chosen]
    deadline = None if args.mc_minutes is None else time.monotonic() + 60 * args.mc_minutes
    t = time.perf_counter()
    mc = await collect(gen, todo, args.samples, args.work, seed=args.seed,
                       params=SamplingParams(max_step_tokens=args.max_step_tokens),
                       max_steps=args.max_steps, concurrency=args.concurrency,
                       deadline=deadline, mc_rollouts=args.mc_rollouts)
    spent = time.perf_counter() - t
    mc = [m for m in mc if m.mc_rollouts >= args.mc_rollouts]
    if not mc:
        return "Step-level quality: no problem got its Monte-Carlo labels in the time given."
    arith = ArithReward()
    scores: dict[str, list[float]] = defaultdict(list)
    good: list[int] = []
    for m in mc:
        steps = [m.solution_steps(j) for j in range(len(m.solutions))]
        a = await arith.score(Problem("(scored offline)", id=m.problem_id), steps, Usage())
        for j in range(len(m.solutions)):
            rows = np.flatnonzero(m.solution == j)[:-1]  # the last prefix is the outcome
            scores["arith (per step)"] += list(a[j][:-1])
            for name, h in heads.items():
                scores[f"value[{name}]"] += list(h.predict(m.features[rows])) if len(rows) else []
            good += [int(x > 0) for x in m.labels[rows]]
    head = (f"Step-level quality on {len(good)} non-final prefixes of {len(mc)} problems, "
            f"labelled by {args.mc_rollouts} completions each (Math-Shepherd hard estimation: "
            f"good if any ends correct; {np.mean(good):.0%} good; " + (
                f"labelling took {spent:.0f} s in this run):" if spent >= 1 else
                "labels from earlier runs; their labelling time is not kept in the shards):"))
    table = ["| per-step score | AUC vs MC label |", "|---|---|"]
    table += [f"| {k} | {auc(good, v):.3f} |" for k, v in scores.items()]
    return head + "\n\n" + "\n".join(table)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True, help="shards and pf results (resume)")
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1234, help="problem selection and sampling")
    ap.add_argument("--head", action="append", default=[],
                    help="head file (repeatable); default the packaged one")
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--max-step-tokens", type=int, default=160)
    ap.add_argument("--concurrency", type=int, default=2, help="problems sampled at once")
    ap.add_argument("--sample-minutes", type=float, default=None)
    ap.add_argument("--budgets", default="1,2,4,8")
    ap.add_argument("--pf-budgets", default="8")
    ap.add_argument("--aggregation", default="min", choices=("last", "min", "mean"),
                    help="the value reward's aggregation over steps, for pf and the baselines")
    ap.add_argument("--pf-minutes", type=float, default=0.0)
    ap.add_argument("--pf-reward", default=None, metavar="SPEC",
                    help="pf's reward as a spec (e.g. 'value:HEAD*arith*logprob'); default the "
                         "first head's value reward alone")
    ap.add_argument("--pf-problems", type=int, default=None,
                    help="run pf on the first K sampled problems only (default: all)")
    ap.add_argument("--pf-tag", default="",
                    help="keep these pf runs apart from earlier ones with the same head")
    ap.add_argument("--pf-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a pf option (repeatable), e.g. resampling=systematic; results are "
                         "kept apart by their options")
    ap.add_argument("--cost-problems", type=int, default=0)
    ap.add_argument("--mc-problems", type=int, default=0,
                    help="Monte-Carlo step labels on the first P sampled problems")
    ap.add_argument("--mc-rollouts", type=int, default=4)
    ap.add_argument("--mc-minutes", type=float, default=None)
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    pf_budgets = [int(b) for b in args.pf_budgets.split(",") if b]
    if max(budgets) > args.samples:
        raise SystemExit(f"--budgets: {max(budgets)} is more than --samples {args.samples}; "
                         "the baselines use the first N of the stored samples (raise --samples "
                         "to top the shards up)")
    args.pf_options = parse_pf_options(args.pf_option)
    head_paths = [Path(h) for h in args.head] or [packaged_head(MODEL)]
    heads = {p.stem: ValueHead.load(p) for p in head_paths}
    problems = gsm8k(args.problems, args.seed)
    golds = {q.id: q.answer or "" for q in problems}
    t0 = time.perf_counter()

    clock = SamplingClock(args.work)
    gen = LlamaCppGenerator(MODEL, embeddings=True, n_seq_max=max(16, 8 * args.concurrency))
    deadline = None if args.sample_minutes is None else time.monotonic() + 60 * args.sample_minutes
    params = SamplingParams(max_step_tokens=args.max_step_tokens)
    sets = await collect(gen, problems, args.samples, args.work, seed=args.seed,
                         params=params, max_steps=args.max_steps,
                         concurrency=args.concurrency, deadline=deadline,
                         on_done=lambda s, cached: None if cached else clock.shard_done())
    clock.save()
    # a shard topped up past --samples (or not yet topped up to it) must not change the
    # figures: each problem counts with exactly its first S solutions, or not at all
    sets = [s.first(args.samples) for s in sets
            if s.solutions and s.n_solutions >= args.samples]
    print(f"{len(sets)} of {len(problems)} problems sampled", flush=True)
    rows, head_seconds = await score_rows(sets, heads)

    first = next(iter(heads))
    h0 = heads[first]
    tr = h0.metadata.get("training", {})
    val = h0.metadata.get("validation", {})
    tokens = sum(s.tokens for s in sets)
    steps = sum(len(s.labels) for s in sets)
    sc = sum(r["correct"] for r in rows) / len(rows)
    n = len(sets)
    maj = sum(is_correct(golds[s.problem_id],
                         select_from([r["answer"] for r in s.solutions],
                                     [1.0] * len(s.solutions), "vote") or "") for s in sets)
    oracle = sum(any(r["correct"] for r in s.solutions) for s in sets)
    lines = [f"GSM8K test: {n} problems (seeded sample, seed {args.seed}), {args.samples} "
             f"solutions each by `{MODEL}` (T=0.8, ≤{args.max_steps} steps of "
             f"≤{args.max_step_tokens} tokens; {tokens} tokens in {clock.seconds} s of "
             f"sampling). Head `{first}`: {h0.kind}, trained on {tr.get('problems', '?')} GSM8K "
             f"train problems × {tr.get('samples', '?')} solutions; cross-validated AUC "
             f"{val.get('val_auc', float('nan')):.3f} pooled / "
             f"{val.get('val_auc_within', float('nan')):.3f} within problem"
             + (f"; its final head {val['final_val_auc']:.3f} / "
                f"{val['final_val_auc_within']:.3f} on finished solutions"
                if "final_val_auc" in val else "")
             + f". Training data: {tr.get('generated_tokens', '?')} tokens sampled in "
             f"{tr.get('sampling_seconds', '?')} s of CPU (`particlescale train-prm --model "
             f"{MODEL} --dataset {tr.get('dataset', '?')} --problems "
             f"{tr.get('problems_requested', '?')} --samples {tr.get('samples', '?')} "
             f"--time-budget M`, re-run until {tr.get('problems', '?')} problems were "
             "sampled).", "",
             f"One sample: {sc:.1%}; majority@{args.samples}: {cell(maj, n)}; "
             f"oracle pass@{args.samples}: {cell(oracle, n)}.", ""]
    rewards: dict[str, Callable[[dict], float]] = {}
    for name in heads:
        tag = "value" if len(heads) == 1 else f"value[{name}]"
        for agg in ("last", "min", "mean"):
            rewards[f"{tag} ({agg})"] = lambda r, k=f"{name}:{agg}": r[k]
    rewards["arith (mean)"] = lambda r: r["arith"]
    rewards["log-prob"] = lambda r: r["logprob"]
    rewards["arith × log-prob"] = lambda r: r["arith"] * r["logprob"]
    rewards["value (last) × arith"] = lambda r: r[f"{first}:last"] * r["arith"]
    rewards["value (min) × arith × log-prob"] = (
        lambda r: r[f"{first}:min"] * r["arith"] * r["logprob"])
    if len(heads) > 1:
        lines += ["Heads: " + "; ".join(
            f"`{n}` {h.kind}, {'with' if h.final is not None else 'without'} a final head"
            for n, h in heads.items()) + ".", ""]
    lines += reward_table(rows, golds, args.samples, rewards)
    lines += ["", f"Scoring cost: the head scored {steps} step prefixes in {head_seconds:.3f} s "
              f"({1e6 * head_seconds / max(1, steps):.0f} µs per step) against "
              f"{clock.seconds} s of sampling. Recording the hidden states in the generating "
              "decode costs no measurable decode time (BENCHMARKS.md, `engine`)."]
    if args.cost_problems:
        lines += ["", await embedding_cost(problems[: args.cost_problems], args)]

    if args.mc_problems:
        lines += ["", await step_quality(gen, problems, sets, heads, args)]

    agg = args.aggregation
    value_of: Callable[[dict], float] = rewards[f"value ({agg})" if len(heads) == 1
                                                else f"value[{first}] ({agg})"]
    label = f"value, {agg}"
    lines += ["", "Accuracy vs budget (95% Wilson intervals), all problems sampled; baselines "
              f"use the first N of the {args.samples} samples and the value head's score "
              f"({agg} over steps):", ""]
    lines += budget_table(rows, golds, budgets, value_of, label, {})
    lines += ["", lineage_line(sets, h0, agg, args.samples, args.seed)]
    # pf results are keyed by the head's fit (not its file name), the aggregation, and the
    # variant (tag, options); every variant run with this head is shown
    base = f"created {h0.metadata.get('created')}" + (
        "" if agg == "last" else f" aggregation {agg}")
    log = args.work / "pf.jsonl"
    if pf_budgets:
        key = base + (f" tag {args.pf_tag}" if args.pf_tag else "") + "".join(
            f" {k}={v}" for k, v in sorted(args.pf_options.items())) + (
            f" reward={args.pf_reward}" if args.pf_reward else "")
        try:
            reward = (make_reward(args.pf_reward, gen) if args.pf_reward
                      else ValueReward(h0, aggregation=agg))
        except ConfigError as e:
            raise SystemExit(f"--pf-reward: {e}") from None
        problems = [q for q in problems if q.id in {s.problem_id for s in sets}]
        problems = problems[: args.pf_problems]
        deadline = time.monotonic() + 60 * args.pf_minutes
        await run_pf(gen, problems, pf_budgets, reward, log, key, deadline, args)
    runs = read_pf(log, base)
    # one table per set of problems some pf variant has run on; each table shows every variant
    # that covers the set (restricted to it), so variants run on a subset are compared with
    # pf's defaults on the same problems and a run still going hides nothing complete;
    # tagged re-runs (``--pf-tag``) only feed the diversity line
    compared = {v: r for v, r in runs.items() if not v.startswith("tag ")}
    sets_run = {frozenset(done) for r in compared.values() for done in r.done["argmax"].values()}
    for ran in sorted(sets_run, key=len, reverse=True):
        shown = {v: r for v, r in compared.items()
                 if any(ran <= set(done) for done in r.done["argmax"].values())}
        cover = ", ".join(
            f"{variant_name(v)} at N = " + ", ".join(
                str(b) for b, done in sorted(r.done["argmax"].items()) if ran <= set(done))
            for v, r in sorted(shown.items()))
        lines += ["", f"pf with the value reward against the same baselines, on the {len(ran)} "
                  f"problems where pf ran ({cover}):", ""]
        lines += budget_table(rows, golds, budgets, value_of, label, shown, only=set(ran))
    line = diversity_line(runs, rows)
    if line:
        lines += ["", line]
    gen.close()
    lines += ["", f"This run: {time.perf_counter() - t0:.0f} s."]
    body = "\n".join(lines)
    print(body)
    write_section("value", "## Value head (learned PRM) on GSM8K test\n\n" + body)


if __name__ == "__main__":
    asyncio.run(main())
