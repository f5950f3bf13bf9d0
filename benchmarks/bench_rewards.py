"""Which cheap reward should ``solve`` use by default? Measured, not chosen by taste.

1. Sample S solutions (T=0.8, steps split at blank lines, at most MAX_TOKENS tokens) for each of
   the first P GSM8K *test* problems with the default generator (qwen2.5-0.5b on the embedded
   engine, problems batched together), and label each solution by its final answer (numeric
   grading against the number after ``####``).
2. Score every solution with each reward as the algorithms would see it at the end: the
   reward's per-step values aggregated with its default aggregation (``arith``: mean over
   steps; ``logprob``: exp of the mean token log-prob; ``judge``: the last step's P(yes);
   products via :class:`~particlescale.rewards.combine.Combined`).
3. Report each reward's AUC at telling correct from wrong solutions (pooled; 95% bootstrap
   interval over problems) and the accuracy of best-of-S (highest score) and weighted
   majority@S (answer with the largest score sum), next to majority@S and pass@S.
4. The ``judge`` (qwen2.5-1.5b, ~1 s per step on 2 cores) is scored on the first J problems
   only, within a time box; every reward is also reported on that subset for comparison.

Samples are cached in ``--cache`` (JSON) so the scoring can be re-run without re-sampling.
Run it alone on the machine:
``flock /tmp/ps-cpu.lock .venv/bin/python -m benchmarks.bench_rewards``.

Usage: python -m benchmarks.bench_rewards [--problems 40] [--samples 8] [--judge-problems 8]
       [--judge-seconds 420] [--no-judge] [--resample] [--cache PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import gsm8k_first, write_section
from particlescale.aggregation import aggregate
from particlescale.algorithms.selection import select_from
from particlescale.answers import extract_answer, has_boxed
from particlescale.eval.value_train import is_correct
from particlescale.models import DEFAULT_MODEL
from particlescale.protocols import SamplingParams
from particlescale.rewards.registry import DEFAULT_REWARD, make_reward
from particlescale.stats import grouped_auc_interval
from particlescale.types import Particle, Problem, Step, Usage

TEMPERATURE = 0.8
MAX_TOKENS = 400  # per solution (as in MODELS.md's first figures)
LIVE = 16  # solutions decoding at once
SEED = 0
NEVER = "\x00\x00"  # a delimiter that never occurs: sample whole solutions
CHEAP = ["arith", "logprob", "arith*logprob", "0.5*arith+logprob", "2*arith+logprob"]
JUDGED = ["judge", "judge*arith", "judge*arith*logprob"]


def split_steps(step: Step) -> list[dict]:
    """A whole solution drawn in one go, split into steps at blank lines as the engine splits
    them, and cut after the first step with \\boxed (the algorithms' stopping rule).

    Only the solution's total log-prob is known, so it rides on the last step (earlier steps
    carry 0 tokens): the ``logprob`` reward's *final* value, exp(total / tokens), is exact.
    """
    texts = [t.strip("\n") for t in step.text.split("\n\n") if t.strip()]
    for k, t in enumerate(texts):
        if has_boxed(t):
            texts = texts[: k + 1]
            break
    steps = [{"text": t, "tokens": 0, "logprob": 0.0, "finish": "step"} for t in texts]
    if steps:
        steps[-1].update(tokens=step.tokens, logprob=step.logprob, finish=step.finish)
    return steps


async def sample_all(problems: list[Problem], s: int, done: dict[str, dict],
                     save: Any) -> dict:
    """Sample every problem not in ``done`` (filled in place; ``save()`` after each one, so
    an interrupted run resumes).

    Each solution is one engine job drawn without step barriers, and at most LIVE of them
    run at once whatever problem they belong to, so the engine stays full: on 2 cores more
    sequences are slower, not faster (each attends over the whole unified KV cache). The
    solutions of a problem draw their seeds from its session's RNG (seeded by SEED and the
    problem's index) in the order they start, which depends on timing: the draw is random
    and seeded, but not bit-for-bit reproducible.
    """
    from particlescale.backends.llamacpp import LlamaCppGenerator

    gen = LlamaCppGenerator(DEFAULT_MODEL, n_ctx=16384, n_seq_max=2 * LIVE + 2)
    usage = Usage()
    gate = asyncio.Semaphore(LIVE)
    params = SamplingParams(temperature=TEMPERATURE, max_step_tokens=MAX_TOKENS,
                            delimiter=NEVER)
    t0 = time.perf_counter()

    async def one(i: int, p: Problem) -> None:
        session = gen.session(p, params, np.random.default_rng(SEED + i), usage)

        async def draw() -> Step:
            async with gate:
                [[step]] = await session.extend([Particle(id=0)], [1])
                return step

        try:
            whole = await asyncio.gather(*(draw() for _ in range(s)))
        finally:
            await session.aclose()
        sols = [{"steps": split_steps(step)} for step in whole]
        for sol in sols:
            sol["correct"] = is_correct(p.answer or "",
                                        "\n\n".join(st["text"] for st in sol["steps"]))
        done[p.id] = {"id": p.id, "question": p.question, "gold": p.answer, "samples": sols}
        save({"wall_s": time.perf_counter() - t0, "generated_tokens": usage.generated_tokens,
              "prompt_tokens": usage.prompt_tokens})
        print(f"  sampled {p.id}: {sum(x['correct'] for x in sols)}/{s} correct "
              f"({usage.generated_tokens / (time.perf_counter() - t0):.0f} tok/s)", flush=True)

    try:
        await asyncio.gather(*(one(i, p) for i, p in enumerate(problems) if p.id not in done))
    finally:
        gen.close()
    return {"wall_s": time.perf_counter() - t0, "generated_tokens": usage.generated_tokens,
            "prompt_tokens": usage.prompt_tokens}


def steps_of(sol: dict) -> list[Step]:
    return [Step(text=s["text"], tokens=s["tokens"], logprob=s["logprob"], finish=s["finish"])
            for s in sol["steps"]]


async def score_all(rows: list[dict], spec: str, close: bool = True) -> tuple[list, float]:
    """Final score of every solution (problem-major), and the wall time spent."""
    reward = make_reward(spec)
    agg = str(getattr(reward, "default_aggregation", "last"))
    usage = Usage()
    t0 = time.perf_counter()
    scores = []
    try:
        for row in rows:
            problem = Problem(question=row["question"], id=row["id"])
            trajs = [steps_of(sol) for sol in row["samples"]]
            values = await reward.score(problem, trajs, usage)
            scores.append([aggregate(v, agg) if v else 0.5 for v in values])
    finally:
        if close and callable(getattr(reward, "close", None)):
            reward.close()  # type: ignore[attr-defined]
    return scores, time.perf_counter() - t0


def auc_ci(scores: list[list[float]], labels: list[list[bool]], n_boot: int = 400
           ) -> tuple[float, float, float]:
    """Pooled AUC and a 95% bootstrap interval resampling whole problems."""
    groups = np.concatenate([np.full(len(x), k) for k, x in enumerate(scores)])
    return grouped_auc_interval(np.concatenate(labels).astype(int), np.concatenate(scores),
                                groups, np.random.default_rng(SEED), n_boot)


def chosen_correct(row: dict, weights: list[float], selector: str) -> bool:
    """Is the answer the library's ``selector`` picks among the row's solutions correct?
    (Each answer's verdict was graded once, at sampling.)"""
    answers = [extract_answer("\n\n".join(s["text"] for s in sol["steps"]))
               for sol in row["samples"]]
    verdict = {a: bool(sol["correct"]) for a, sol in zip(answers, row["samples"], strict=True)}
    chosen = select_from(answers, weights, selector)
    return chosen is not None and verdict[chosen]


def picks(rows: list[dict], scores: list[list[float]]) -> tuple[float, float]:
    """Accuracy of best-of-S (``argmax``) and weighted majority@S (``weighted-vote``) under
    these scores."""
    best = sum(chosen_correct(r, sc, "argmax") for r, sc in zip(rows, scores, strict=True))
    wmaj = sum(chosen_correct(r, sc, "weighted-vote") for r, sc in zip(rows, scores, strict=True))
    return best / len(rows), wmaj / len(rows)


def baselines(rows: list[dict]) -> dict[str, float]:
    n = len(rows)
    maj = sum(chosen_correct(r, [1.0] * len(r["samples"]), "vote") for r in rows) / n
    any_ok = sum(any(s["correct"] for s in r["samples"]) for r in rows) / n
    single = float(np.mean([s["correct"] for r in rows for s in r["samples"]]))
    return {"majority": maj, "pass": any_ok, "single": single}


def table(rows: list[dict], results: dict[str, list[list[float]]], times: dict[str, float]) -> str:
    labels = [[s["correct"] for s in r["samples"]] for r in rows]
    n_steps = sum(len(s["steps"]) for r in rows for s in r["samples"])
    lines = ["| reward | AUC (95% CI) | best-of-S | weighted maj@S | scoring s/step |",
             "|---|---|---|---|---|"]
    for name, sc in results.items():
        a, lo, hi = auc_ci(sc, labels)
        b, w = picks(rows, sc)
        per = times[name] / max(n_steps, 1)
        lines.append(f"| `{name}` | {a:.3f} ({lo:.2f}-{hi:.2f}) | {b:.1%} | {w:.1%} | "
                     f"{per:.4f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--judge-problems", type=int, default=8)
    ap.add_argument("--judge-seconds", type=float, default=420.0)
    ap.add_argument("--no-judge", action="store_true")
    ap.add_argument("--resample", action="store_true")
    ap.add_argument("--cache", type=Path,
                    default=Path("/tmp/particlescale-bench/rewards_samples.json"))
    args = ap.parse_args()

    problems = gsm8k_first(args.problems)
    key = {"samples": args.samples, "model": DEFAULT_MODEL,
           "temperature": TEMPERATURE, "max_tokens": MAX_TOKENS, "seed": SEED}
    cached = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    if cached.get("key") != key or args.resample:
        cached = {"key": key, "rows": {}, "generation": {}}
    done: dict[str, dict] = cached["rows"]
    previous = cached["generation"] or {"wall_s": 0.0, "generated_tokens": 0,
                                        "prompt_tokens": 0}

    def save(now: dict) -> None:
        gen = {k: previous[k] + now[k] for k in previous}
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        args.cache.write_text(json.dumps({"key": key, "rows": done, "generation": gen}))

    if len(done) < len(problems):
        print(f"sampling {len(problems) - len(done)} of {len(problems)} problems x "
              f"{args.samples} ({len(done)} cached in {args.cache}) ...", flush=True)
        now = asyncio.run(sample_all(problems, args.samples, done, save))
        save(now)
    rows = [done[p.id] for p in problems]
    gen_info = json.loads(args.cache.read_text())["generation"]

    results: dict[str, list[list[float]]] = {}
    times: dict[str, float] = {}
    for spec in CHEAP:
        results[spec], times[spec] = asyncio.run(score_all(rows, spec))
        print(f"scored {spec}", flush=True)

    judge_rows: list[dict] = []
    judge_results: dict[str, list[list[float]]] = {}
    judge_times: dict[str, float] = {}
    judge_note = "not run (--no-judge)"
    if not args.no_judge:
        judge_rows, judge_results, judge_times, judge_note = asyncio.run(
            run_judge(rows[: args.judge_problems], args.judge_seconds))
        for spec in CHEAP:
            judge_results[spec] = results[spec][: len(judge_rows)]
            judge_times[spec] = times[spec] * len(judge_rows) / len(rows)

    body = report(rows, results, times, gen_info, judge_rows, judge_results, judge_times,
                  judge_note, args)
    write_section("rewards", body)
    print(body)
    return 0


async def run_judge(rows: list[dict], seconds: float
                    ) -> tuple[list[dict], dict[str, list[list[float]]], dict[str, float], str]:
    """Judge problem by problem until the time box is spent (then report what was judged)."""
    from particlescale.rewards.judge import make_local_judge
    from particlescale.rewards.registry import REWARDS

    judge = make_local_judge(None, None)
    usage = Usage()
    done: list[dict] = []
    p_yes: list[list[list[float]]] = []  # per problem, per solution, per step
    t0 = time.perf_counter()
    try:
        for row in rows:
            if time.perf_counter() - t0 > seconds:
                break
            problem = Problem(question=row["question"], id=row["id"])
            trajs = [steps_of(s) for s in row["samples"]]
            # Step by step, as an algorithm asks: each call judges one new step per solution
            # and the engine reuses the KV of the previous call's prompts.
            for t in range(1, max(len(x) for x in trajs)):
                await judge.score(problem, [x[:t] for x in trajs if len(x) > t], usage)
            p_yes.append(await judge.score(problem, trajs, usage))
            done.append(row)
            print(f"  judged {row['id']} ({time.perf_counter() - t0:.0f} s)", flush=True)
        wall = time.perf_counter() - t0
        n_steps = sum(len(s["steps"]) for r in done for s in r["samples"])
        # The judge's per-step values are cached: products reuse them at no model cost.
        cached_builder = REWARDS["judge"]
        REWARDS["judge"] = lambda arg, gen: judge
        out: dict[str, list[list[float]]] = {}
        times: dict[str, float] = {}
        try:
            for spec in JUDGED:
                out[spec], extra = await score_all(done, spec, close=False)
                times[spec] = wall + extra
            for agg in ("min", "prod", "mean"):
                out[f"judge ({agg})"] = [[aggregate(v, agg) for v in prob] for prob in p_yes]
                times[f"judge ({agg})"] = wall
        finally:
            REWARDS["judge"] = cached_builder
        note = (f"{len(done)} problems x {len(rows[0]['samples'])} samples = {n_steps} step "
                f"judgements in {wall:.0f} s ({wall / max(n_steps, 1):.2f} s/step, "
                f"{usage.prm_tokens} prompt tokens)")
        return done, out, times, note
    finally:
        judge.close()


def report(rows: list[dict], results: dict, times: dict, gen: dict, judge_rows: list[dict],
           judge_results: dict, judge_times: dict, judge_note: str, args: Any) -> str:
    base = baselines(rows)
    s = args.samples
    n_sol = len(rows) * s
    n_ok = sum(x["correct"] for r in rows for x in r["samples"])
    out = [
        "## Cheap rewards on GSM8K (bench_rewards.py)",
        "",
        f"{len(rows)} GSM8K test problems (the first {len(rows)}) x {s} samples from "
        f"`{DEFAULT_MODEL}` (T={TEMPERATURE}, blank-line steps, at most {MAX_TOKENS} tokens "
        f"per solution, seed {SEED}); {n_sol} solutions, {n_ok} correct ({n_ok / n_sol:.1%}). "
        f"Sampling took {gen['wall_s']:.0f} s for {gen['generated_tokens']} tokens "
        f"({gen['generated_tokens'] / gen['wall_s']:.0f} tok/s aggregate).",
        "",
        f"Without a reward: one sample {base['single']:.1%}, majority@{s} {base['majority']:.1%}, "
        f"pass@{s} (oracle) {base['pass']:.1%}.",
        "",
        "Each solution's score is the reward's per-step values aggregated as the algorithms do by "
        "default (`arith`: mean; `logprob`: exp(mean token log-prob); `judge`: last step). AUC: "
        "how well the score separates correct from wrong solutions (0.5 = chance; interval: "
        "bootstrap over problems).",
        "",
        table(rows, results, times),
    ]
    if judge_rows:
        jb = baselines(judge_rows)
        out += [
            "",
            f"### With the `qwen2.5-1.5b` judge (subset: first {len(judge_rows)} problems)",
            "",
            f"Judge cost: {judge_note}. On this subset: one sample {jb['single']:.1%}, "
            f"majority@{s} {jb['majority']:.1%}, pass@{s} {jb['pass']:.1%}.",
            "",
            table(judge_rows, judge_results, judge_times),
        ]
    else:
        out += ["", f"Judge: {judge_note}."]
    out += ["", f"Default reward of `solve` / `make demo`: **`{DEFAULT_REWARD}`** "
                "(why: docs/rewards.md; the subsets here are small, so the 480-solution "
                "figures of `../shared/MODELS.md` weigh more)."]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
