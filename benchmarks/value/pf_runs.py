"""pf runs of ``bench_value``: one JSON line per finished (budget, problem) in
``--work/pf.jsonl``, keyed by the head's fit, the aggregation and the variant (``--pf-tag``,
``--pf-option``, ``--pf-reward``), each line with the answer of every library selector."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from particlescale import asolve
from particlescale.algorithms import make_config
from particlescale.algorithms.selection import SELECTORS, select_answer
from particlescale.answers import normalize_answer
from particlescale.backends.llamacpp import LlamaCppGenerator
from particlescale.errors import ConfigError
from particlescale.eval.value_train import is_correct
from particlescale.protocols import RewardModel
from particlescale.types import Problem


def variant_name(variant: str) -> str:
    """``pf`` for the paper's settings, ``pf[resampling=systematic]`` for a variant."""
    return f"pf[{variant}]" if variant else "pf"


def parse_pf_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as pf options (VALUE read as JSON when it parses: numbers,
    booleans), checked against pf's configuration before anything runs."""
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--pf-option: expected KEY=VALUE (e.g. resampling=systematic), "
                             f"got {item!r}")
        try:
            opts[key] = json.loads(raw)
        except json.JSONDecodeError:
            opts[key] = raw
    try:
        make_config("pf", opts)
    except ConfigError as e:
        raise SystemExit(f"--pf-option: {e}") from None
    return opts


@dataclass
class Runs:
    """One pf variant's finished runs: ``done[selector][budget][problem]`` (correct or not)
    and ``population[budget][problem]`` (distinct answers in the final population)."""

    done: dict[str, dict[int, dict[str, int]]] = field(
        default_factory=lambda: {sel: defaultdict(dict) for sel in SELECTORS})
    population: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))


def read_pf(log: Path, base: str) -> dict[str, Runs]:
    """Every pf variant run with this head and aggregation (``base``), keyed by what its key
    adds to ``base`` ('' for pf's defaults, 'resampling=systematic', 'tag diversity', ...).
    Lines written before every selector was recorded carry ``argmax`` (pf's default) only."""
    runs: dict[str, Runs] = defaultdict(Runs)
    if not log.exists():
        return runs
    for line in log.read_text().splitlines():
        r = json.loads(line)
        key = r.get("head", "")
        if key != base and not key.startswith(base + " "):
            continue
        v = runs[key[len(base):].strip()]
        for sel, ok in r.get("selected", {"argmax": r["correct"]}).items():
            v.done[sel][r["budget"]][r["problem"]] = ok
        if "population_answers" in r:
            v.population[r["budget"]][r["problem"]] = r["population_answers"]
    return runs


async def run_pf(gen: LlamaCppGenerator, problems: list[Problem], budgets: list[int],
                 reward: RewardModel, log: Path, key: str, deadline: float, args) -> None:
    """pf with the value reward, one JSON line per finished (budget, problem) under ``key``
    (resumable). One run answers for every selector (they differ only in how the final
    weighted population is read), so each line records all three."""
    ran = read_pf(log, key).get("", Runs()).done["argmax"]
    sem = asyncio.Semaphore(args.concurrency)

    async def one(k: int, q: Problem, b: int) -> None:
        async with sem:
            if q.id in ran.get(b, {}) or time.monotonic() >= deadline:
                return
            t = time.perf_counter()
            res = await asolve(q, generator=gen, reward=reward, method="pf", budget=b, seed=k,
                               max_steps=args.max_steps, max_step_tokens=args.max_step_tokens,
                               **args.pf_options)
            answers = {sel: select_answer(res.candidates, sel) for sel in SELECTORS}
            selected = {sel: int(is_correct(q.answer or "", a or "")) for sel, a in answers.items()}
            # how much of the population survived resampling: distinct final particles and
            # distinct answers among them (independent samples keep all b)
            kinds = {normalize_answer(c.answer) for c in res.candidates if c.answer is not None}
            with log.open("a") as f:
                f.write(json.dumps({"head": key, "budget": b, "problem": q.id,
                                    "correct": selected["argmax"], "answer": res.answer,
                                    "selected": selected, "answers": answers,
                                    "particles": len(res.candidates),
                                    "population_answers": len(kinds),
                                    "seconds": round(time.perf_counter() - t, 1)}) + "\n")

    for b in budgets:
        await asyncio.gather(*(one(k, q, b) for k, q in enumerate(problems)))


def diversity_line(runs: dict[str, Runs], rows: list[dict]) -> str | None:
    """Distinct answers in each pf variant's final population against b independent samples
    of the same problems: the diversity resampling leaves to vote over."""
    answers: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        answers[r["problem"]].append(normalize_answer(r["answer"]) if r["answer"] else None)
    parts = []
    for variant, v in runs.items():
        for b, pop in sorted(v.population.items()):
            got = {p: n for p, n in pop.items() if len(answers[p]) >= b}
            if got:
                indep = [len({a for a in answers[p][:b] if a is not None}) for p in got]
                parts.append(f"{variant_name(variant)} at N={b} on {len(got)} problems: "
                             f"{np.mean(list(got.values())):.2f} distinct answers in the final "
                             f"population against {np.mean(indep):.2f} among {b} independent "
                             "samples")
    return ("Diversity left to vote over: " + "; ".join(parts) + ".") if parts else None
