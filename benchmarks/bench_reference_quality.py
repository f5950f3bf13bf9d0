"""How good a PRM the answer-key reward ``reference`` is, on the axis the CPU rewards are
measured on: step AUC against Monte-Carlo labels (Math-Shepherd) and outcome AUC, at noise 0
and at the noise levels whose within-problem step AUC is about 0.85, 0.75 and 0.65.

Labels (``--phase label``, model-heavy): ``bench_value_steps``' protocol on the study's own
solutions. ``value-steps`` recorded labels but not the prefixes' texts, and regenerating its
solutions on this machine does not give the same ones (the llama.cpp build's numerics
differ: of the first study problems, most of the solutions drawn with the same seeds differ
from the recorded ones, and even identical texts have log-probs 0.3% apart), so its labels
cannot be used for a text-based reward. Instead, for each problem of
``bench_reference_study``'s ``samples`` phase, the first ``--solutions`` (4) stored
solutions, up to ``--prefixes`` (2) random non-final prefixes of each (``choose_prefixes``,
seeded as ``value-steps``), each rolled out ``--rollouts`` (4) times to the end; a prefix is
good (hard label) if any completion reaches the gold answer. One JSON line per problem in
``--record`` (see ``record.py``); the prefixes' texts are in the study's record.

Report (no model): every score below on the labelled prefixes, pooled AUC (95% interval,
problems resampled) and within-problem AUC (mean over problems with both labels, 95%);
outcome AUC over all of the study's solutions (their final score against their
correctness); the noise calibration (within-problem step AUC, mean over noise seeds, on a
grid of S, read off at 0.85 / 0.75 / 0.65).

Usage: python -m benchmarks.bench_reference_quality [--phase label --minutes M]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_reference_study import (
    MODEL,
    TEMPERATURE,
    THREADS_HELP,
    load_problems,
    phase_key,
    problem_seed,
)
from benchmarks.common import auc_interval, within_interval, write_section
from benchmarks.record import add_record_args, grow_record, read_record
from benchmarks.study_report import particles
from benchmarks.value.bench_value_steps import choose_prefixes
from particlescale.algorithms.common import IdSource
from particlescale.protocols import SamplingParams
from particlescale.rewards.reference import ReferenceReward
from particlescale.stats import auc, per_problem_aucs
from particlescale.types import Particle, Problem, Usage

RECORD = Path(__file__).parent / "results" / "reference-quality-gsm8k.jsonl"
STUDY = Path(__file__).parent / "results" / "reference-study-gsm8k.jsonl"
TARGETS = (0.85, 0.75, 0.65)
READING = (
    "Reading. The answer key ranks finished solutions perfectly (outcome AUC 1.00 by "
    "construction) but a problem's partial solutions only moderately (within-problem step AUC "
    "about 0.64, pooled about 0.73): the Monte-Carlo label is itself noisy (4 rollouts of a "
    "model that solves about one problem in five: a prefix whose completions succeed 20% of the "
    "time is labelled good 59% of the time), a model that takes another route than the worked "
    "solution computes values the key does not list, and few problems have both labels. So the "
    "issue's targets of 0.85 and 0.75 cannot be reached by adding noise, which only lowers the "
    "AUC. The noise knob also lowers the two axes at different rates: step ranking is near "
    "chance by S=4 while final answers are still ranked at 0.91. Tier B of the study uses S=4, "
    "between tier A (0.64 / 1.00) and the CPU reward (0.49 / 0.69) on both axes.")
GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
NOISE_SEEDS = 5
# variants of the clean mapping compared (name -> ReferenceReward options)
VARIANTS: dict[str, dict[str, Any]] = {
    "reference (mean of computing steps)": {},
    "reference, min": {"aggregation": "min"},
    "reference, last computing step": {"aggregation": "last"},
    "reference, evidence (logits add up)": {"aggregation": "evidence"},
    "reference, evidence; off = 0.4": {"aggregation": "evidence",
                                       "state_values": {"off": 0.4}},
    "reference, evidence; off = fail = 0.05": {"aggregation": "evidence", "state_values": {
        "off": 0.05, "fail": 0.05, "part": 0.2}},
    "reference, evidence; hit 0.75, off = fail = 0.1": {"aggregation": "evidence",
                                                         "state_values": {
        "hit": 0.75, "off": 0.1, "fail": 0.1, "part": 0.3}},
    "reference, mean; off = 0.4": {"state_values": {"off": 0.4}},
    "reference, mean; off = 0.1 (= fail)": {"state_values": {"off": 0.1}},
    "reference, stated numbers too, mean": {"stated": True},
    "reference, stated numbers too, last": {"stated": True, "aggregation": "last"},
    "reference, stated numbers too, evidence": {"stated": True, "aggregation": "evidence"},
    "reference, mean; one-step routes 0.6": {"near": 0.6},
    "reference, min; one-step routes 0.6": {"near": 0.6, "aggregation": "min"},
}


def label_key(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "samples_of": phase_key("samples", args), "solutions":
            args.solutions, "prefixes": args.prefixes, "rollouts": args.rollouts,
            "temperature": TEMPERATURE}


async def label_one(gen: Any, q: Problem, k: int, rec: dict[str, Any],
                    args: argparse.Namespace) -> dict[str, Any]:
    from particlescale.algorithms.common import complete
    from particlescale.eval.value_train import is_correct

    sols = particles(rec)[: args.solutions]
    pseed = problem_seed(args, k)
    chosen = choose_prefixes([len(p.steps) for p in sols], args.prefixes,
                             np.random.default_rng(pseed))
    ids = IdSource()
    prefixes = [Particle(id=ids(), steps=sols[j].steps[:n]) for j, n in chosen]
    usage = Usage()
    params = SamplingParams(temperature=TEMPERATURE, max_step_tokens=args.max_step_tokens)
    t = time.perf_counter()
    session = gen.session(q, params, np.random.default_rng(pseed + 1), usage)
    try:
        runs = await complete(session, prefixes, args.rollouts, ids, args.max_steps)
    finally:
        await session.aclose()
    gold = q.answer or ""
    return {"prefixes": [{"solution": j, "step": n,
                          "correct_rollouts": sum(is_correct(gold, c.text) for c in kids)}
                         for (j, n), kids in zip(chosen, runs, strict=True)],
            "tokens": usage.generated_tokens, "seconds": round(time.perf_counter() - t, 1)}


async def label(args: argparse.Namespace, problems: list[Problem],
                samples: dict[str, dict]) -> None:
    from particlescale.backends.llamacpp import LlamaCppGenerator

    key = label_key(args)
    done, _ = read_record(args.record, key)
    todo = [q for q in problems if q.id in samples]
    print(f"label: {sum(q.id in done for q in todo)} of the {len(todo)} sampled problems "
          "labelled", file=sys.stderr)
    n = args.solutions * args.prefixes * args.rollouts * args.concurrency
    gen = LlamaCppGenerator(args.model, n_ctx=65536, n_seq_max=min(256, max(16, n)),
                            n_threads=args.threads)
    # problems not sampled yet are passed over as if done (nothing is written for them)
    skip = {q.id: {} for q in problems if q.id not in samples and q.id not in done}
    try:
        await grow_record(args.record, key, problems, {**done, **skip},
                          lambda q, k: label_one(gen, q, k, samples[q.id], args),
                          minutes=args.minutes, concurrency=args.concurrency)
    finally:
        gen.close()


# --- scores --------------------------------------------------------------------------------


def prefix_scores(problems: dict[str, Problem], samples: dict[str, dict],
                  ) -> dict[str, dict[str, list[list[float]]]]:
    """score name -> problem -> per solution, per step: the prefix score (noiseless)."""
    from particlescale.aggregation import aggregate
    from particlescale.rewards.registry import make_reward

    out: dict[str, dict[str, list[list[float]]]] = {}
    cpu = {"arithmetic check at the step": ("arith", None),
           "arithmetic check, mean so far": ("arith", "mean"),
           "log-prob per token so far": ("logprob", None),
           "arith*logprob (the CPU default)": ("arith*logprob", None)}
    for name, opts in VARIANTS.items():
        r = ReferenceReward(**opts)
        out[name] = {pid: [r.clean_scores(problems[pid], p.steps) for p in particles(rec)]
                     for pid, rec in samples.items()}
    for name, (spec, agg) in cpu.items():
        r = make_reward(spec)
        out[name] = {}
        for pid, rec in samples.items():
            ps = particles(rec)
            vals = asyncio.run(r.score(problems[pid], [p.steps for p in ps], Usage()))
            out[name][pid] = [[aggregate(v[: i + 1], agg) for i in range(len(v))] if agg
                              else list(v) for v in vals]
    if all(s["value"] for rec in samples.values() for s in rec["samples"]):
        out["value head at the step"] = {pid: [s["value"] for s in rec["samples"]]
                                         for pid, rec in samples.items()}
        out["value head, min so far"] = {pid: [list(np.minimum.accumulate(s["value"]))
                                               for s in rec["samples"]]
                                         for pid, rec in samples.items()}
    return out


def noisy_table(problems: dict[str, Problem], samples: dict[str, dict], s: float, seed: int
                ) -> dict[str, list[list[float]]]:
    """The chosen reference at noise ``s`` (noise seed ``seed``): prefix scores."""
    r = ReferenceReward(noise=s, seed=seed)
    out = {}
    for pid, rec in samples.items():
        out[pid] = []
        for p in particles(rec):
            out[pid].append(r.noisy(problems[pid], p.steps, r.clean_scores(problems[pid],
                                                                            p.steps)))
    return out


def step_arrays(labels: dict[str, dict], table: dict[str, list[list[float]]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hard label, soft label, score and problem of every labelled prefix."""
    y, soft, p, g = [], [], [], []
    for pid, rec in labels.items():
        for x in rec["prefixes"]:
            y.append(int(x["correct_rollouts"] > 0))
            soft.append(int(2 * x["correct_rollouts"] >= rec["rollouts"]))
            p.append(table[pid][x["solution"]][x["step"] - 1])
            g.append(pid)
    return np.array(y), np.array(soft), np.array(p, dtype=float), np.array(g)


def outcome_arrays(samples: dict[str, dict], table: dict[str, list[list[float]]]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, p, g = [], [], []
    for pid, rec in samples.items():
        for s, sc in zip(rec["samples"], table[pid], strict=True):
            y.append(int(s["correct"]))
            p.append(sc[-1])
            g.append(pid)
    return np.array(y), np.array(p, dtype=float), np.array(g)


def proxy_arrays(samples: dict[str, dict], table: dict[str, list[list[float]]]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every non-final prefix of every solution against its own solution's outcome (a proxy
    of the step label that needs no rollouts)."""
    y, p, g = [], [], []
    for pid, rec in samples.items():
        for s, sc in zip(rec["samples"], table[pid], strict=True):
            for v in sc[:-1]:
                y.append(int(s["correct"]))
                p.append(v)
                g.append(pid)
    return np.array(y), np.array(p, dtype=float), np.array(g)


def proxy_report(problems: dict[str, Problem], samples: dict[str, dict]) -> str:
    """Before any Monte-Carlo label: the scores against the outcome of their solution."""
    lines = [f"No Monte-Carlo labels yet. Proxy on {len(samples)} sampled problems: AUC of "
             "every non-final prefix's score against its own solution's outcome (pooled / "
             "within-problem), and outcome AUC (pooled / within).", "",
             "| prefix score | proxy pooled | proxy within | outcome pooled | outcome within |",
             "|---|---|---|---|---|"]
    for name, table in prefix_scores(problems, samples).items():
        y, p, g = proxy_arrays(samples, table)
        oy, op, og = outcome_arrays(samples, table)
        lines.append(f"| {name} | {auc(y, p):.3f} | {within(y, p, g):.3f} | {auc(oy, op):.3f} "
                     f"| {within(oy, op, og):.3f} |")
    return "\n".join(lines)


def within(y: np.ndarray, p: np.ndarray, g: np.ndarray) -> float:
    per = per_problem_aucs(y, p, g)
    return float(per.mean()) if len(per) else math.nan


def calibrate(problems: dict[str, Problem], samples: dict[str, dict], labels: dict[str, dict]
              ) -> tuple[list[tuple[float, float, float]], dict[float, float]]:
    """(S, mean within-problem step AUC over noise seeds, its spread) on the grid, and the
    S read off for each target (linear in S between grid points)."""
    curve = []
    for s in GRID:
        vals, pooled, out_pooled, out_within = [], [], [], []
        for seed in range(NOISE_SEEDS if s else 1):
            table = noisy_table(problems, samples, s, seed)
            y, _, p, g = step_arrays(labels, table)
            vals.append(within(y, p, g))
            pooled.append(auc(y, p))
            oy, op, og = outcome_arrays(samples, table)
            out_pooled.append(auc(oy, op))
            out_within.append(within(oy, op, og))
        curve.append((s, float(np.mean(vals)), float(np.std(vals)), float(np.mean(pooled)),
                      float(np.mean(out_pooled)), float(np.mean(out_within))))
    found = {}
    for t in TARGETS:
        for (s0, a0, *_), (s1, a1, *_) in itertools.pairwise(curve):
            if a0 >= t > a1:
                found[t] = round(s0 + (a0 - t) / (a0 - a1) * (s1 - s0), 2)
                break
    return curve, found


def report(args: argparse.Namespace, problems: dict[str, Problem], samples: dict[str, dict],
           labels: dict[str, dict], other: int) -> str:
    rng = np.random.default_rng(0)
    for rec in labels.values():
        rec["rollouts"] = args.rollouts
    tables = prefix_scores(problems, samples)
    curve, found = calibrate(problems, samples, labels)
    for t, s in found.items():
        tables[f"reference, noise {s:g} (step AUC ≈ {t})"] = noisy_table(problems, samples, s, 0)
    y, soft, _, g = step_arrays(labels, next(iter(tables.values())))
    tokens = sum(r["tokens"] for r in labels.values())
    secs = sum(r["seconds"] for r in labels.values())
    n_sol = sum(len(r["samples"]) for r in samples.values())
    lines = [f"Monte-Carlo labels on GSM8K test: {len(labels)} problems of "
             f"`bench_reference_study`'s record (the first {args.solutions} of its stored "
             f"solutions per problem, up to {args.prefixes} random non-final prefixes each, "
             f"{args.rollouts} rollouts per prefix by `{args.model}`, T={TEMPERATURE}, as "
             f"`value-steps`): {len(y)} labelled prefixes, {y.mean():.0%} good by the hard "
             f"label; {tokens} tokens in {secs:.0f} s. Outcome AUC over the {n_sol} solutions "
             f"of the {len(samples)} sampled problems. Record: "
             f"`{args.record.as_posix().split('benchmarks/', 1)[-1]}`."
             + (f" {other} recorded lines under other settings are not counted." if other
                else ""), "",
             "`value-steps`' own labels could not be used: its prefixes' texts were not "
             "recorded, and regenerating its solutions with the same seeds on this machine "
             "gives different ones (llama.cpp numerics of this build; checked on the recorded "
             "per-prefix steps, arith and log-prob values).", "",
             "| prefix score | step AUC, pooled (95%) | step AUC within-problem (95%) "
             "| step AUC vs soft label | outcome AUC pooled | outcome AUC within |",
             "|---|---|---|---|---|---|"]
    for name, table in tables.items():
        y, soft, p, g = step_arrays(labels, table)
        oy, op, og = outcome_arrays(samples, table)
        lines.append(f"| {name} | {auc_interval(y, p, g, rng)} | {within_interval(y, p, g, rng)}"
                     f" | {auc(soft, p):.3f} | {auc(oy, op):.3f} | {within(oy, op, og):.3f} |")
    lines += ["", "Noise calibration of `reference` (the first row's mapping), mean over "
              f"{NOISE_SEEDS} noise seeds (± sd of the within-problem step AUC):", "",
              "| noise S | step AUC within | step AUC pooled | outcome AUC pooled "
              "| outcome AUC within |", "|---|---|---|---|---|"]
    lines += [f"| {s:g} | {a:.3f}" + (f" ± {d:.3f}" if d else "") +
              f" | {pool:.3f} | {op:.3f} | {ow:.3f} |" for s, a, d, pool, op, ow in curve]
    top = curve[0][1]
    lines += ["", "Noise levels read off (within-problem step AUC): " + "; ".join(
        f"{t} at S ≈ {found[t]:g}" if t in found else
        f"{t} not reachable (noise only lowers the AUC, and S=0 gives {top:.3f})"
        for t in TARGETS) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_record_args(ap, RECORD)
    ap.add_argument("--study", type=Path, default=STUDY, help="the study's record")
    ap.add_argument("--model", default=MODEL, help="generator (another one: smoke tests only)")
    ap.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    ap.add_argument("--first", type=int, default=60)
    ap.add_argument("--samples", type=int, default=16, help="the study's samples per problem")
    ap.add_argument("--solutions", type=int, default=4, help="solutions labelled per problem")
    ap.add_argument("--prefixes", type=int, default=2, help="labelled prefixes per solution")
    ap.add_argument("--rollouts", type=int, default=4, help="completions per labelled prefix")
    ap.add_argument("--phase", choices=("label",), default=None)
    args = ap.parse_args()
    problems = load_problems(args)
    by_id = {q.id: q for q in problems}
    samples, _ = read_record(args.study, phase_key("samples", args))
    samples = {p: r for p, r in samples.items() if p in by_id}
    if args.phase == "label":
        asyncio.run(label(args, problems, samples))
    labels, other = read_record(args.record, label_key(args))
    labels = {p: r for p, r in labels.items() if p in samples}
    if not labels:
        print(f"--record: no problem labelled under these settings in {args.record}; run with "
              "--phase label --minutes M")
        if samples:
            print(proxy_report(by_id, samples))
        return
    body = report(args, by_id, samples, labels, other) + "\n\n" + READING
    print(body)
    if args.phase is None:
        write_section("reference", "## Reference (answer-key) PRM: step and outcome AUC, noise "
                      "calibration (bench_reference_quality.py)\n\n" + body)


if __name__ == "__main__":
    main()
