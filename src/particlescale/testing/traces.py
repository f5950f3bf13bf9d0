"""Real traces for the viewer tests and benchmark: every method run over the scripted generator.

The scripted language model writes math-like steps (so the pages look like real runs) and
finishes with a ``\\boxed{}`` answer at the horizon or, with a small probability, earlier; the
scripted reward prefers the steps of the correct line of reasoning. Some step texts carry HTML
on purpose, to check that the viewer never injects model output as markup.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from particlescale import solve
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward
from particlescale.types import Problem, Result, Trace

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
            "clips in May. How many clips did Natalia sell altogether in April and May?")
GOLD = "72"
HOSTILE = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"


def math_steps(prefix: tuple[str, ...], horizon: int, early: bool = True) -> dict[str, float]:
    """Next-step distribution: a right and a wrong line of reasoning, plus boxed answers
    (at the horizon, and before it with probability 0.1 when ``early``)."""
    k = len(prefix) + 1
    if k >= horizon:
        return {f"So the answer is $\\boxed{{{GOLD}}}$.": 0.6,
                "So the answer is $\\boxed{96}$.": 0.3,
                "Therefore, the final answer is: $\\boxed{24}$.": 0.1}
    steps = {
        f"Step {k}: In May she sold 48 / 2 = 24 clips, so the total is 48 + 24 = 72.": 0.4,
        f"Step {k}: She sold 48 clips in April and twice as many, 96, in May.": 0.3,
        f"Step {k}: Check a < b && b > c: {HOSTILE}": 0.2,
        "Early stop: the answer is $\\boxed{72}$.": 0.05,
        "Early stop: the answer is $\\boxed{120}$.": 0.05,
    }
    if not early:
        steps = {text: p for text, p in steps.items() if "boxed" not in text}
    return steps


def math_reward(texts: tuple[str, ...]) -> float:
    """Higher for the correct reasoning, with deterministic jitter per prefix."""
    last = texts[-1]
    base = 0.8 if ("= 72" in last or "{72}" in last) else 0.3 if "96" in last else 0.5
    jitter = (zlib.crc32("|".join(texts).encode()) % 1000) / 1000 - 0.5
    return min(0.98, max(0.02, base + 0.3 * jitter))


def make_trace(method: str = "pf", budget: int = 8, horizon: int = 6, seed: int = 0,
               gold: str | None = GOLD, early: bool = True, **options: object) -> Trace:
    """A trace of ``method`` on the clips problem (``horizon`` steps at most; exactly
    ``horizon`` when not ``early``)."""
    gen = ScriptedGenerator(lambda p: math_steps(p, horizon, early), horizon=horizon)
    reward = ScriptedReward(math_reward)
    problem = Problem(question=QUESTION, id="gsm8k-clips", answer=gold)
    return solve_in_thread(problem, generator=gen, reward=reward, method=method,
                           budget=budget, seed=seed, max_steps=horizon, **options).trace


def solve_in_thread(problem: Problem, **kwargs: Any) -> Result:
    """``solve`` on a worker thread: Playwright's sync API keeps an event loop running on the
    test's thread, where ``asyncio.run`` refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(solve, problem, **kwargs).result()


def particle_steps(trace: Trace) -> int:
    """The number of (particle, step) nodes a trace records."""
    return sum(len(s.nodes) for s in trace.steps)
