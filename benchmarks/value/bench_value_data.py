"""Would more training data make the value head rank well? A learning curve, measured offline.

The value head's within-problem AUC is what pf's weights need, and it sits near 0.7 on
GSM8K test. This benchmark asks whether the number of training problems is what holds it
there: heads are fitted (``eval.value_train.fit_from_sets``, exactly as ``train-prm`` fits them)
on seeded random subsets of the ``train-prm`` shards, ``--repeats`` subsets per size, and
each is scored on the ``bench_value`` test shards:

- within-problem AUC of the solution's ``min``, ``mean`` and ``last`` step score, each step
  scored as the ``value`` reward scores it (prefix head; final head on a step that ends the
  solution), the same figures as ``bench_value``'s reward table;
- weighted majority@S with the ``min`` score (the answer whose solutions' scores sum highest).

A second question is the objective. ``train-prm`` fits every prefix pooled over problems,
so part of what the head learns is which *problems* are hard, which does not help weight the
particles of one problem. The ``centred`` row fits the same logistic layer on features
centred per problem, on the problems with both outcomes only (a fixed-effects fit: only
differences *within* a problem are left to explain); its strength is chosen by 5-fold
cross-validation split by problem on within-problem AUC. Shifting all of a problem's scores
by one constant changes none of pf's weights, so the centred head needs no intercept.

Usage: python -m benchmarks.value.bench_value_data --train DIR --test DIR
       [--sizes 10,20,40,60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import write_section
from particlescale.aggregation import aggregate
from particlescale.algorithms.selection import select_from
from particlescale.answers import normalize_answer
from particlescale.eval.value_train import SampleSet, fit_from_sets
from particlescale.rewards.value import ValueReward
from particlescale.rewards.value_head import ValueHead
from particlescale.stats import auc, within_problem_auc
from particlescale.types import Problem, Usage

C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def load(shards: Path) -> list[SampleSet]:
    files = [p for p in sorted(shards.glob("*.npz")) if ".tmp" not in p.name]
    return [s for s in (SampleSet.load(p, p.stem) for p in files) if len(s.labels)]


def solution_scores(s: SampleSet, reward: ValueReward) -> dict[str, np.ndarray]:
    """Per solution: min, mean and last of its step scores from the ``value`` reward."""
    steps = [s.solution_steps(j) for j in range(len(s.solutions))]
    per = asyncio.run(reward.score(Problem("(scored offline)", id=s.problem_id), steps, Usage()))
    return {agg: np.array([aggregate(v, agg) for v in per])
            for agg in ("min", "mean", "last")}


def weighted_majority(s: SampleSet, weights: np.ndarray) -> bool:
    """Is the answer with the largest summed weight correct?"""
    right = {normalize_answer(r["answer"]) or "": bool(r["correct"])
             for r in s.solutions if r["answer"] is not None}
    chosen = select_from([r["answer"] for r in s.solutions], weights, "weighted-vote")
    return chosen is not None and right[normalize_answer(chosen) or ""]


def per_problem(test: list[SampleSet], head: ValueHead) -> dict[str, np.ndarray]:
    """Per test problem with both outcomes: AUC of the min / mean / last step score among its
    solutions; and per problem: is weighted majority (min) right?"""
    reward = ValueReward(head)
    out: dict[str, list[float]] = {"min": [], "mean": [], "last": [], "wmaj": []}
    for s in test:
        sc = solution_scores(s, reward)
        y = np.array([r["correct"] for r in s.solutions], dtype=int)
        out["wmaj"].append(float(weighted_majority(s, sc["min"])))
        if 0 < y.sum() < len(y):
            for k in ("min", "mean", "last"):
                out[k].append(auc(y, sc[k]))
    return {k: np.array(v) for k, v in out.items()}


def score_test(test: list[SampleSet], head: ValueHead) -> dict[str, float]:
    """Within-problem AUCs of min / mean / last and weighted majority@S with min."""
    return {k: float(v.mean()) for k, v in per_problem(test, head).items()}


def centred(sets: list[SampleSet], mean: np.ndarray, scale: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised prefix features centred per problem, for problems with both outcomes."""
    xs, ys, gs = [], [], []
    for s in sets:
        if len(np.unique(s.outcome)) < 2:
            continue  # no within-problem difference to learn from
        x = (s.features - mean) / scale
        xs.append(x - x.mean(axis=0))
        ys.append((s.labels > 0.5).astype(int))
        gs += [s.problem_id] * len(s.labels)
    return np.vstack(xs), np.concatenate(ys), np.array(gs)


def fit_centred(train: list[SampleSet], seed: int) -> tuple[np.ndarray, np.ndarray,
                                                            np.ndarray, float, float]:
    """Logistic layer on per-problem centred features; C by grouped CV on within AUC."""
    from sklearn.linear_model import LogisticRegression

    allx = np.vstack([s.features for s in train])
    mean, scale = allx.mean(axis=0), allx.std(axis=0) + 1e-6
    x, y, g = centred(train, mean, scale)
    problems = np.unique(g)
    fold_of = dict(zip(np.random.default_rng(seed).permutation(problems),
                       np.arange(len(problems)) % 5, strict=True))
    fold = np.array([fold_of[p] for p in g])
    best = (-1.0, C_GRID[0])
    for c in C_GRID:
        oof = np.empty(len(y))
        for f in range(5):
            tr = fold != f
            clf = LogisticRegression(C=c, fit_intercept=False, max_iter=3000).fit(x[tr], y[tr])
            oof[~tr] = x[~tr] @ clf.coef_[0]
        cv = within_problem_auc(y, oof, g)[0]
        best = max(best, (cv, c))
    cv, c = best
    w = LogisticRegression(C=c, fit_intercept=False, max_iter=3000).fit(x, y).coef_[0]
    return w, mean, scale, c, cv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=Path, required=True, help="train-prm shards (OUT.samples)")
    ap.add_argument("--test", type=Path, required=True, help="bench_value --work shards")
    ap.add_argument("--sizes", default="10,20,40,60",
                    help="training problems per subset (all of them is always added)")
    ap.add_argument("--repeats", type=int, default=3, help="random subsets per size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    t0 = time.perf_counter()
    train, test = load(args.train), [s for s in load(args.test) if s.solutions]
    if not train or not test:
        raise SystemExit(f"--train/--test: no shards with labelled prefixes in "
                         f"{args.train if not train else args.test}")
    sizes = sorted({int(k) for k in args.sizes.split(",") if int(k) < len(train)}
                   | {len(train)})
    rng = np.random.default_rng(args.seed)
    cols = ("min", "mean", "last", "wmaj")
    rows = ["| training problems | subsets | value (min) | value (mean) | value (last) | "
            "weighted maj@S (min) |", "|---|---|---|---|---|---|"]
    curve = []
    for k in sizes:
        reps = 1 if k == len(train) else args.repeats
        got = defaultdict(list)
        for _ in range(reps):
            sub = [train[i] for i in rng.permutation(len(train))[:k]]
            head, _m = fit_from_sets(sub, kind="logistic", seed=args.seed)
            r = score_test(test, head)
            for c in cols:
                got[c].append(r[c])
        mean = {c: float(np.mean(got[c])) for c in cols}
        curve.append((k, mean["min"]))
        rows.append(f"| {k} | {reps} | " + " | ".join(
            f"{mean[c]:.1%}" if c == "wmaj" else f"{mean[c]:.3f}" for c in cols) + " |")
        print(rows[-1], flush=True)
    w, mu, sd, c, cv = fit_centred(train, args.seed)
    # one linear layer, no final head: every step, the last included, is scored by it
    r = score_test(test, ValueHead(kind="logistic", mean=mu, scale=sd, weights=[w[:, None]],
                                   biases=[np.zeros(1)]))
    rows.append(f"| {len(train)}, centred per problem | 1 | {r['min']:.3f} | {r['mean']:.3f} | "
                f"{r['last']:.3f} | {r['wmaj']:.1%} |")
    print(rows[-1], flush=True)
    ks, aucs = np.log2([k for k, _ in curve]), np.array([a for _, a in curve])
    # the smallest subsets are far below the rest, so the slope is also fitted without them:
    # the rate of the curve's flat end is the one that says what more data would buy
    fits = [(f"{2 ** ks[i]:.0f}–{2 ** ks[-1]:.0f}", float(np.polyfit(ks[i:], aucs[i:], 1)[0]))
            for i in (0, 1) if len(ks) - i >= 3]
    slope = fits[-1][1] if fits else float("nan")
    need = len(train) * 2 ** ((0.80 - aucs[-1]) / slope) if slope > 0 else float("nan")
    n_within = sum(len(np.unique(s.outcome)) == 2 for s in test)
    body = (
        "## Value head: training data and objective (bench_value_data.py)\n\n"
        f"Logistic heads fitted as `train-prm` fits them on random subsets of the {len(train)} "
        f"GSM8K-train problems sampled for the packaged head, and scored on {len(test)} "
        f"GSM8K-test problems ({n_within} with both outcomes, which the within-problem AUCs "
        "average over). Each row is the mean over its subsets. The last row fits every "
        f"prefix's features centred per problem, with C={c:g} chosen by cross-validated "
        f"within-problem AUC ({cv:.3f}).\n\n" + "\n".join(rows)
        + "\n\nThe within-problem AUC of `value (min)` per doubling of the training problems "
        "(least squares on log2 of the sizes): " + ", ".join(
            f"{d:+.3f} over {span} problems" for span, d in fits) + "."
        + (f" At the last rate, 0.80 would take about {need:,.0f} training problems if the "
           "rate held (GSM8K train has 7,473)." if slope > 0 else "")
        + f"\n\nThis run: {time.perf_counter() - t0:.0f} s.")
    write_section("value-data", body)


if __name__ == "__main__":
    main()
