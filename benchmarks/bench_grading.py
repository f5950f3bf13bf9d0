"""Benchmark: grading 500 MATH500 answers on 2 worker processes (target: under 30 s).

Predictions are realistic answer strings: the last ``\\boxed{}`` of each problem's reference
solution (same answer as the gold, often in another surface form: ``\\dfrac`` vs ``\\frac``,
spacing, ``^\\circ``) and, for the wrong set, the gold answer of the next problem. Times
include starting the spawned pool (importing sympy in each worker). Writes the
``<!-- bench:grading -->`` section of BENCHMARKS.md.

    .venv/bin/python -m benchmarks.bench_grading [--workers 2] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import Counter

from benchmarks.common import write_section
from particlescale.eval.datasets import load_dataset
from particlescale.eval.grading import Grader

SECTION = "grading"
TARGET_S = 30.0


def run(workers: int) -> dict:
    ds = load_dataset("math500")
    golds = [p.answer or "" for p in ds.problems]
    # the reference solutions' last \boxed{}, read as the gold field by the same loader
    right = [p.answer or "" for p in load_dataset("math500", answer_field="solution",
                                                  extractor="boxed").problems]
    wrong = golds[1:] + golds[:1]
    out = {"n": len(golds), "workers": workers, "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    with Grader(workers=workers) as grader:
        grades_right = grader.grade_many(list(zip(golds, right, strict=True)))
        t1 = time.perf_counter()
        grades_wrong = grader.grade_many(list(zip(golds, wrong, strict=True)))
        t2 = time.perf_counter()
        out["restarts"] = grader.restarts
    # Worst case: no exact-number or word shortcut, all 500 pairs through math-verify.
    with Grader(workers=workers, shortcuts=False) as grader:
        t3 = time.perf_counter()
        grades_mv = grader.grade_many(list(zip(golds, right, strict=True)))
        out["mv_s"] = time.perf_counter() - t3
        out["mv_agree"] = sum(g.correct for g in grades_mv)
        out["restarts"] += grader.restarts
    out["right_s"] = t1 - t0
    out["wrong_s"] = t2 - t1
    out["agree"] = sum(g.correct for g in grades_right)
    out["equal_pairs"] = [(gold, w) for g, gold, w in zip(grades_wrong, golds, wrong, strict=True)
                          if g.correct and gold != w]
    same = sum(gold == w for gold, w in zip(golds, wrong, strict=True))
    out["same_gold"] = same
    out["how"] = Counter(g.how for g in grades_right + grades_wrong)
    out["disagree_examples"] = [(gold, r) for g, gold, r in zip(grades_right, golds, right,
                                                                  strict=True)
                                if not g.correct][:5]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    r = run(args.workers)
    worst = max(r["right_s"], r["wrong_s"], r["mv_s"])
    ok = "meets" if worst < TARGET_S else "MISSES"
    right = f"{r['agree']}/{r['n']} judged equal to gold"
    wrong = (f"{len(r['equal_pairs'])} different strings judged equal: "
             + ", ".join(f"`{a}` = `{b}`" for a, b in r["equal_pairs"]))
    mv = f"{r['mv_agree']}/{r['n']} judged equal to gold"
    how = ", ".join(f"{k} {v}" for k, v in sorted(r["how"].items()))
    body = f"""
## Grading (math-verify in a process pool + exact numbers)

`python -m benchmarks.bench_grading` — {r['n']} MATH500 answers, {r['workers']} worker
processes, {r['cpus']} CPUs, Python {platform.python_version()}. Times include starting the pool.

| prediction set | wall time | verdicts |
|---|---|---|
| boxed answer of the reference solution | {r['right_s']:.1f} s | {right} |
| gold answer of the next problem | {r['wrong_s']:.1f} s | {wrong} |
| reference answers, math-verify only (no shortcuts) | {r['mv_s']:.1f} s | {mv} |

Target: 500 answers in under {TARGET_S:.0f} s on 2 cores — {ok} (slowest set {worst:.1f} s).
Decided by (first two sets): {how}.
Pool restarts after a timeout: {r['restarts']}. Reference-solution answers judged different
from gold (first 5): {r['disagree_examples']}.
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body, stamp=False)


if __name__ == "__main__":
    main()
