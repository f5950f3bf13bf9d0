"""A scripted generator and reward exposed as ``py:`` plugins for eval tests (tests only).

``particlescale eval --generator py:tests/eval_plugin.py:generator --reward
py:tests/eval_plugin.py:reward`` runs the real CLI, store, grading and report over the
scripted backends of ``particlescale.testing.scripted``: no model, exact and fast. A
solution is two steps, the second ends in ``\\boxed{k}`` with k in 1..3 (probabilities 0.2 /
0.5 / 0.3); the reward prefers ``\\boxed{2}``. A question containing ``FAIL`` makes the
backend raise (an isolated problem failure); ``PS_TEST_STEP_DELAY`` (seconds) slows each step
so a run can be killed mid-way.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from particlescale.errors import BackendError
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward

FINAL = {"Then \\boxed{1}": 0.2, "Then \\boxed{2}": 0.5, "Then \\boxed{3}": 0.3}


def dist(prefix: tuple[str, ...]) -> dict[str, float]:
    if not prefix:
        return {"Think a.": 0.5, "Think b.": 0.5}
    return FINAL


class _Session:
    def __init__(self, inner, problem, delay):
        self.inner, self.problem, self.delay = inner, problem, delay

    async def extend(self, parents, children):
        if "FAIL" in self.problem.question:
            raise BackendError("scripted backend: this problem always fails", kind="http",
                               status=500)
        if self.delay:
            await asyncio.sleep(self.delay)
        return await self.inner.extend(parents, children)

    def release(self, particles):
        self.inner.release(particles)

    async def aclose(self):
        await self.inner.aclose()


class PluginGenerator(ScriptedGenerator):
    def session(self, problem, params, rng, usage):
        delay = float(os.environ.get("PS_TEST_STEP_DELAY", "0") or 0)
        return _Session(super().session(problem, params, rng, usage), problem, delay)


def generator(model=None):
    return PluginGenerator(dist, horizon=2, name="scripted")


def reward(generator=None):
    return ScriptedReward(lambda texts: 0.9 if "boxed{2}" in texts[-1] else 0.3)
