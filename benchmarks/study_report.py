"""The report of ``bench_reference_study``, rebuilt from its record (any partial record).

Sampled baselines are read off the ``samples`` phase with the library's own code: the
stored solutions become Particles again, every reward scores them
(``rewards.registry.make_reward``), the scores are aggregated as the algorithms aggregate
them, the candidates are built by ``algorithms.common.candidates_from`` with the weights
each baseline gives (none for self-consistency, the score for best-of-n and weighted
best-of-n) and the answer is picked by ``algorithms.selection.select_answer`` with the
baseline's selector. Budget b uses the first b of the 16 solutions. Statistics: Wilson
intervals, cells and the budget multiplier from ``eval.report``; a paired bootstrap over
problems for pf minus the best baseline at equal budget.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_reference_study import NOISE_B, RUNS, TEMPERATURE, phase_key
from benchmarks.common import write_section
from benchmarks.record import read_record
from particlescale.algorithms.common import aggregation_for, candidates_from
from particlescale.algorithms.selection import select_answer
from particlescale.answers import normalize_answer
from particlescale.eval.report import budget_multiplier, cells_from_rows
from particlescale.rewards.registry import make_reward
from particlescale.stats import paired_bootstrap, wilson
from particlescale.types import Particle, Problem, Step, Usage

BUDGETS = (1, 2, 4, 8, 16)
TIERS = {"A": "reference", "B": f"reference:noise={NOISE_B:g}", "C": "arith*logprob"}
TIER_TITLES = {"A": "A: answer-key PRM (reference, noise 0)",
               "B": f"B: reference at noise {NOISE_B:g} (within-problem step AUC ≈ 0.55, "
                    "outcome AUC ≈ 0.91)",
               "C": "C: CPU reward arith*logprob"}
TIER_NOTES = {
    "A": "At noise 0 a finished particle is scored by the answer key itself (outcome AUC 1.00), "
         "so best-of-n and weighted-best-of-n pick a correct answer whenever one was sampled: "
         "they equal pass@N, an oracle verifier. pf can only beat them by raising the chance "
         "that its final population holds a correct answer (compare the pass@N line).",
    "B": "Noise in logit space, fresh for every prefix: partial solutions are ranked barely "
         "above chance, final answers still well (BENCHMARKS `reference-quality`).",
    "C": "The CPU default reward: step AUC at chance, outcome AUC about 0.69.",
}
READING = (
    "Reading (the mechanism, from the lines above). Under the answer key best-of-n is an "
    "oracle verifier, so pf can beat it only by putting a correct answer into its population "
    "on problems where independent samples have none: at N=16 it finds as many such problems as "
    "it loses (its population's pass@16 equals the samples'), at N=4 it loses more than it "
    "finds, because resampling at every step collapses the population onto one or two routes "
    "before the key can tell them apart (step AUC 0.64; `ess_threshold=0.5` keeps more routes "
    "and loses fewer). DVTS, whose subtrees never compete, finds the most. Its selection is not "
    "the problem: with the key it almost never picks a wrong answer from a population that holds "
    "a right one. With step scores blurred to chance (tier B) resampling discards correct routes "
    "on a third of the problems, while best-of-n, which needs only the still-good final scores, "
    "keeps them; with the CPU reward (tier C) pf both loses routes and, its final scores being "
    "weak, picks wrong answers from populations that held right ones. With `ess_threshold=0.5` "
    "the CPU reward's weights are so even that pf seldom resamples: its population keeps as many "
    "answers as independent samples and the same pass@16, so it is weighted majority voting "
    "with extra steps, and argmax over its weak final scores picks wrong most often of all. "
    "pf's advantage in the paper rests on a PRM that ranks partial solutions far better than "
    "any reward this machine has.")
# baseline -> (selector, weighted by the reward)
BASELINES = {"self-consistency": ("vote", False), "best-of-n": ("argmax", True),
             "weighted-best-of-n": ("weighted-vote", True)}


def particles(rec: dict[str, Any]) -> list[Particle]:
    """The stored solutions as finished Particles (no engine handles)."""
    out = []
    for j, s in enumerate(rec["samples"]):
        steps = tuple(Step(text=t, tokens=n, finish=f, logprob=lp) for t, n, f, lp in
                      zip(s["steps"], s["tokens"], s["finish"], s["logprob"], strict=True))
        out.append(Particle(id=j, steps=steps, finished=True))
    return out


def correct_of(rec: dict[str, Any]) -> dict[str, int]:
    """Verdicts of the answers the solutions gave (graded once, at sampling)."""
    return {s["answer"]: int(s["correct"]) for s in rec["samples"] if s["answer"] is not None}


async def baseline_rows(problems: dict[str, Problem], samples: dict[str, dict],
                        spec: str) -> list[dict[str, Any]]:
    """eval-style rows (method, budget, correct, usage, candidates) of every sampled
    baseline at every budget, scored by ``spec``."""
    reward = make_reward(spec)
    agg = aggregation_for(reward, None)
    rows = []
    for pid, rec in samples.items():
        ps = particles(rec)
        values = await reward.score(problems[pid], [p.steps for p in ps], Usage())
        for p, v in zip(ps, values, strict=True):
            p.rewards = tuple(float(x) for x in v)
        verdict = correct_of(rec)
        for b in BUDGETS:
            if b > len(ps):
                continue
            first = ps[:b]
            scores = np.array([_agg(p.rewards, agg) for p in first])
            tokens = sum(sum(s["tokens"]) for s in rec["samples"][:b])
            distinct = len({normalize_answer(s["answer"]) for s in rec["samples"][:b]
                            if s["answer"] is not None})
            for name, (selector, weighted) in BASELINES.items():
                lw = np.log(np.clip(scores, 1e-12, None)) if weighted else np.zeros(b)
                cands = candidates_from(first, lw, agg)
                a = select_answer(cands, selector)
                label = name if name == "self-consistency" else f"{name} ({spec})"
                rows.append({"problem": pid, "method": label, "budget": b,
                             "correct": bool(verdict.get(a, 0)) if a is not None else False,
                             "usage": {"generated_tokens": tokens}, "distinct": distinct,
                             "candidates": [{"correct": bool(verdict.get(c.answer, 0)),
                                             "weight": c.weight, "copies": c.copies}
                                            for c in cands]})
    return rows


def _agg(rewards: tuple[float, ...], agg: str) -> float:
    from particlescale.aggregation import aggregate

    return aggregate(rewards, agg)


def run_rows(phase: str, done: dict[str, dict]) -> list[dict[str, Any]]:
    """eval-style rows of one tier run (its default selector's answer, and each selector)."""
    _, method, budget, _, options = RUNS[phase]
    name = method + ("" if not options else
                     "[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]")
    rows = []
    for pid, r in done.items():
        usage = {"generated_tokens": r["tokens"], "wall_time": r["seconds"]}
        cands = [{"correct": bool(c[3]), "weight": c[1], "copies": c[2]}
                 for c in r["candidates"]]
        rows.append({"problem": pid, "method": name, "budget": budget,
                     "correct": bool(r["correct"]), "usage": usage, "candidates": cands,
                     "distinct": r["population_answers"]})
        for sel, ok in r["correct_by"].items():
            if sel != "argmax" and method == "pf":
                rows.append({"problem": pid, "method": f"{name}; {sel}", "budget": budget,
                             "correct": bool(ok), "usage": usage, "candidates": cands})
    return rows


def cell_text(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k / n:.1%} [{lo:.0%}, {hi:.0%}]" if n else "–"


def paired(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> str:
    """Mean of ``a - b`` (per problem, 0/1) with a 95% paired bootstrap interval."""
    d, lo, hi = paired_bootstrap(a, b, rng, draws=4000)
    return f"{100 * d:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def tier_section(tier: str, rows: list[dict[str, Any]], rng: np.random.Generator
                 ) -> tuple[list[str], dict[str, list[tuple[int, float]]]]:
    """The tier's table, multipliers, paired intervals; and its curves for the plot."""
    by: dict[tuple[str, int], dict[str, bool]] = defaultdict(dict)
    for r in rows:
        by[(r["method"], r["budget"])][r["problem"]] = r["correct"]
    cells = cells_from_rows(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    base = [m for m in methods if m.split(" (")[0] in BASELINES]
    runs = [m for m in methods if m not in base]
    lines = [f"### Tier {TIER_TITLES[tier]}", "", TIER_NOTES[tier], "",
             "| method | " + " | ".join(f"N={b}" for b in BUDGETS) + " | tokens/problem |",
             "|---|" + "---|" * (len(BUDGETS) + 1)]
    curves: dict[str, list[tuple[int, float]]] = {}
    full = max(c.n for c in cells.values())
    for m in methods:
        cs = [cells.get((m, b)) for b in BUDGETS]
        lines.append(f"| {m} | " + " | ".join(cell_text(c.correct, c.n) if c else "·"
                                               for c in cs)
                     + " | " + ", ".join(f"{c.mean(c.tokens):.0f}@{c.budget}" for c in cs if c)
                     + " |")
        if ";" not in m:  # the plot: default selectors, cells on every sampled problem only
            curves[m] = [(c.budget, c.accuracy) for c in cs if c and c.n == full]
    shown = {"independent samples": base[0]} if base else {}
    shown.update({m: m for m in runs if ";" not in m})
    lines += ["", "pass@N (some solution or final particle correct): " + "; ".join(
        f"{name}: " + ", ".join(f"{100 * c.mean(c.oracle):.0f}%@{c.budget}"
                                for c in (cells.get((m, b)) for b in BUDGETS) if c)
        for name, m in shown.items()) + "."]
    for m in (x for x in runs if ";" not in x):  # selector variants: in the table only
        for (_, b), got in ((k, v) for k, v in by.items() if k[0] == m):
            pids = sorted(got)
            if not pids or not base:
                continue

            def acc(x: str, at: int, pids: list[str] = pids) -> float:
                return float(np.mean([by[(x, at)].get(p, False) for p in pids]))

            best = max(base, key=lambda x, b=b: acc(x, b))
            a = np.array([got[p] for p in pids])
            z = np.array([by[(best, b)].get(p, False) for p in pids])
            # the baselines' curves on the same problems as this run
            curve = {x: [(c, acc(x, c)) for c in BUDGETS if (x, c) in by] for x in base}
            mult = "; ".join(f"{x}: {budget_multiplier([(b, a.mean())], curve[x])[b]}"
                             for x in base)
            spread = {x: np.mean([r["distinct"] for r in rows if r["method"] == x
                                  and r["budget"] == b and r["problem"] in got])
                      for x in (m, base[0])}
            lines += ["", f"**{m}@{b}** (n={len(pids)}): {a.mean():.1%}; minus the best "
                      f"baseline at N={b} ({best}, {z.mean():.1%}): {paired(a, z, rng)} (95% "
                      f"paired bootstrap over problems). Budget multiplier (the budget each "
                      f"baseline needs to match it, on these problems): {mult}. Distinct answers "
                      f"in the final population: {spread[m]:.2f}, against {spread[base[0]]:.2f} "
                      f"among {b} independent samples. {sources(rows, m, base[0], b, got)}"]
    return lines, curves


def sources(rows: list[dict[str, Any]], run: str, indep: str, b: int,
            got: dict[str, bool]) -> str:
    """Where a run's accuracy comes from, against b independent samples of the same problems:
    an oracle verifier (best-of-n under the answer key) answers exactly where some sample is
    correct, so a run beats it only by holding a correct answer where none of those samples
    did (found), and loses by missing one they had (lost) or by picking a wrong answer
    although its population held a correct one (picked wrong)."""
    def holds(m: str) -> dict[str, bool]:
        return {r["problem"]: any(c["correct"] for c in r["candidates"]) for r in rows
                if r["method"] == m and r["budget"] == b and r["problem"] in got}

    mine, theirs = holds(run), holds(indep)
    found = sum(mine[p] and not theirs.get(p, False) for p in mine)
    lost = sum(theirs.get(p, False) and not mine[p] for p in mine)
    wrong = sum(mine[p] and not got[p] for p in mine)
    return (f"Its final population holds a correct answer on {sum(mine.values())} of "
            f"{len(mine)} problems, {b} independent samples on "
            f"{sum(theirs.get(p, False) for p in mine)}: found where none of them had one "
            f"{found}, lost where they had one {lost}; picked a wrong answer although its "
            f"population held a correct one {wrong}.")


def plot(panels: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), dpi=110,
                             squeeze=False)
    for ax, (tier, curves) in zip(axes[0], panels.items(), strict=True):
        for m, curve in curves.items():
            if not curve:
                continue
            xs, ys = zip(*sorted(curve), strict=True)
            style = "o-" if len(xs) > 1 else "*"
            ax.plot(xs, [100 * y for y in ys], style, label=m,
                    markersize=12 if len(xs) == 1 else 5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
        ax.set_xlabel("budget (particles / samples)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(TIER_TITLES[tier], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def samples_summary(samples: dict[str, dict], args: argparse.Namespace) -> list[str]:
    """Throughput of the sampling phase and whether it reproduced the earlier records."""
    tokens = sum(r["tokens"] for r in samples.values())
    secs = sum(r["seconds"] for r in samples.values())
    one = np.mean([s["correct"] for r in samples.values() for s in r["samples"]])
    oracle = sum(any(s["correct"] for s in r["samples"]) for r in samples.values())
    same, compared = 0, 0
    vb = Path(args.record).parent / "value-budget-gsm8k.jsonl"
    if vb.exists():
        import json

        for line in vb.read_text().splitlines():
            r = json.loads(line)
            mine = samples.get(r["problem"])
            if mine is None or r["config"].get("seed") != args.seed:
                continue
            for a, b in zip(r["samples"], mine["samples"], strict=False):
                compared += 1
                same += (a["tokens"] == sum(b["tokens"]) and a["steps"] == len(b["steps"])
                         and a["answer"] == b["answer"])
    n = len(samples)
    return [f"Sampling: {n} problems × {args.samples} solutions by `{args.model}`; {tokens} "
            f"generated tokens in {secs:.0f} s of problem time ({tokens / max(secs, 1e-9):.1f} "
            f"tokens/s per problem in flight, {args.concurrency} at once). One sample "
            f"{one:.1%}; oracle pass@{args.samples} {cell_text(oracle, n)}. Same solution as "
            f"`value-budget` recorded (tokens, steps, answer): {same} of {compared} compared."]


def study_report(args: argparse.Namespace, problems: list[Problem]) -> str:
    by_id = {q.id: q for q in problems}
    samples, _ = read_record(args.record, phase_key("samples", args))
    samples = {p: r for p, r in samples.items() if p in by_id}
    lines = [f"GSM8K test: the first {args.first} problems of the seeded selection "
             f"(seed {args.seed}) of `bench_value_budget`; T={TEMPERATURE}, "
             f"≤{args.max_steps} steps of ≤{args.max_step_tokens} tokens. Record: "
             f"`{Path(args.record).as_posix().split('benchmarks/', 1)[-1]}`. Accuracies with "
             "`reference` use the answer key: they measure the algorithms under a PRM of known "
             "quality, not the system.", ""]
    if not samples:
        lines.append("No problem sampled yet.")
        body = "\n".join(lines)
        print(body)
        return body
    lines += samples_summary(samples, args)
    rng = np.random.default_rng(0)
    panels = {}
    for tier, spec in TIERS.items():
        try:
            rows = asyncio.run(baseline_rows(by_id, samples, spec))
        except Exception as e:  # a reward that cannot run here: say so, report the rest
            lines += ["", f"Tier {tier}: baselines not scored ({type(e).__name__}: {e})."]
            continue
        for phase, (t, *_rest) in RUNS.items():
            if t == tier:
                done, _ = read_record(args.record, phase_key(phase, args))
                rows += run_rows(phase, {p: r for p, r in done.items() if p in samples})
        sec, curves = tier_section(tier, rows, rng)
        lines += ["", *sec]
        panels[tier] = curves
    png = Path(args.record).parent / "scaling.png"
    if len(panels) == len(TIERS):
        lines += ["", READING]
    if panels:
        plot(panels, png)
        lines += ["", "The plot shows only cells measured on every sampled problem (a run still "
                  "growing is in its table, not in the plot).", "",
                  f"![scaling](benchmarks/results/{png.name})"]
    body = "\n".join(lines)
    print(body)
    if args.phase is None:
        write_section("reference-study", "## Reference-guided study: pf against the baselines "
                      "across PRM quality (bench_reference_study.py)\n\n" + body)
    return body
