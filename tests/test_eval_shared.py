"""The sampled baselines of a sweep share one sample set (eval.shared): the sweep generates what
one of them would, and every row is what its method gives on those samples (compared with each
method run alone on the same seeds, over the scripted generator of tests/eval_plugin.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import eval_plugin
from particlescale.eval.shared import Recording, Replay, ReplayMismatch
from particlescale.eval.store import RESULTS, load_rows
from particlescale.eval.sweep import run_sweep
from particlescale.protocols import SamplingParams
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward, ScriptedSession
from particlescale.types import Particle, Problem, Usage
from test_eval_sweep import config, latest

BASELINES = ("self-consistency", "best-of-n", "weighted-best-of-n")


def minority_reward() -> ScriptedReward:
    # Prefers \boxed{1}, the least likely answer (0.2): voting and reward-picking disagree.
    return ScriptedReward(lambda texts: 0.9 if "boxed{1}" in texts[-1] else 0.3)


def sweep(tmp_path: Path, methods: str, out: str, **kw):
    cfg = config(tmp_path, methods=methods, out=out, **kw)
    gen = eval_plugin.generator()
    summary = run_sweep(cfg, generator=gen, reward=minority_reward())
    return summary, sum(sum(c) for c in gen.calls), latest(cfg.out)


def test_the_three_baselines_generate_what_one_does_and_pick_as_each_would_alone(
        tmp_path: Path):
    kw = {"budgets": (2, 8), "seeds": (0, 1, 2)}
    s, drawn, rows = sweep(tmp_path, ",".join(BASELINES), "shared", **kw)
    alone = {m: sweep(tmp_path, m, m, **kw) for m in BASELINES}
    # The generator drew what a single method draws; the rows' new_tokens add up to it.
    assert drawn == alone["best-of-n"][1] == alone["self-consistency"][1] > 0
    assert s.ran == 6 * 3 * 2 and s.shared == 2 * s.ran and s.errors == 0
    assert sum(r["new_tokens"] for r in rows.values()) == drawn
    for m, (_, _, own) in alone.items():
        for key, r in own.items():
            shared = rows[key]
            # The same samples (candidates), the same pick (answer), the same cost (usage).
            for field in ("answer", "correct", "candidates", "usage", "info"):
                assert shared[field] == r[field], (key, field)
            if m == "best-of-n":  # it drew the samples
                assert shared["samples_from"] is None and shared["reused_from"] is None
                assert shared["new_tokens"] == r["usage"]["generated_tokens"]
            else:
                assert shared["samples_from"] == "best-of-n" and shared["reused_from"] == r[
                    "budget"]
                assert shared["new_tokens"] == 0
    # Not vacuous: the methods pick differently on some problems, and self-consistency breaks
    # some ties (two answers, one vote each) the way it does alone.
    picks: dict[tuple, set] = {}
    for r in rows.values():
        picks.setdefault((r["problem_id"], r["budget"], r["seed"]), set()).add(r["answer"])
    assert any(len(v) > 1 for v in picks.values())
    ties = [r for r in rows.values() if r["method"] == "self-consistency" and r["budget"] == 2
            and len({c["answer"] for c in r["candidates"]}) == 2]
    assert ties


def test_reuse_samples_derives_every_baseline_from_the_one_drawn_set(tmp_path: Path):
    kw = {"budgets": (1, 2, 4, 8), "reuse_samples": True}
    s, drawn, rows = sweep(tmp_path, ",".join(BASELINES), "shared", **kw)
    assert s.ran == 6 and s.shared == 12 and s.derived == 6 * 3 * 3
    _, drawn_one, _ = sweep(tmp_path, "best-of-n", "one", **kw)
    assert drawn == drawn_one == sum(r["new_tokens"] for r in rows.values())
    for r in rows.values():
        if r["method"] == "best-of-n" and r["budget"] == 8:
            continue
        assert r["samples_from"] == "best-of-n" and r["reused_from"] == 8
        assert r["new_tokens"] == 0
        # a row's own cost stays its samples' tokens (what the report compares)
        assert r["usage"]["generated_tokens"] == sum(c["tokens"] * c["copies"]
                                                     for c in r["candidates"])


def test_resume_after_a_crash_between_a_drawing_row_and_its_sharers(tmp_path: Path):
    kw = {"budgets": (2, 8), "reuse_samples": True}
    _, _, full = sweep(tmp_path, ",".join(BASELINES), "out", **kw)
    path = tmp_path / "out" / RESULTS
    rows = load_rows(path).rows

    def drop(r):  # p0: the drawing row was written, its sharers were not; p1: the opposite
        return ((r["problem_id"] == "p0" and r["method"] != "best-of-n")
                or (r["problem_id"] == "p1" and r["method"] == "best-of-n"))

    kept = [line for line, r in zip(path.read_text().splitlines(keepends=True), rows,
                                    strict=True) if not drop(r)]
    path.write_text("".join(kept))
    s, drawn, again = sweep(tmp_path, ",".join(BASELINES), "out", **kw)
    # p0's two sharers run on their own, p1's best-of-n draws and nobody replays it
    assert s.ran == 3 and s.shared == 0 and s.derived == 3 and s.skipped == 36 - 6
    assert drawn == 3 * 8 * 2  # 3 runs of 8 solutions of two one-token steps
    for key, r in again.items():
        for field in ("answer", "candidates"):  # same seeds: the same samples
            assert r[field] == full[key][field], (key, field)
    p0 = again["p0|self-consistency|8|0"]
    assert p0["samples_from"] is None and p0["new_tokens"] == p0["usage"]["generated_tokens"]
    assert again["p0|self-consistency|2|0"]["samples_from"] == "self-consistency"


def test_a_replay_that_asks_for_other_samples_is_an_error():
    gen = eval_plugin.generator()
    recording = Recording(gen)
    problem, params = Problem("q?", id="a"), SamplingParams()
    usage = Usage()
    session = recording.session(problem, params, np.random.default_rng(0), usage)
    steps = asyncio.run(session.extend([Particle(id=0)], [3]))
    assert recording.generated_tokens == usage.generated_tokens == 3
    assert all(s.handle is None for s in recording.sessions[0].calls[0].steps[0])

    replay = Replay(recording, "self-consistency")
    again = Usage()
    s2 = replay.session(problem, params, np.random.default_rng(1), again)
    got = asyncio.run(s2.extend([Particle(id=0)], [3]))
    assert [s.text for s in got[0]] == [s.text for s in steps[0]]
    assert again.generated_tokens == 3 and len(gen.calls) == 1  # counted, not generated
    with pytest.raises(ReplayMismatch, match="generator call 2"):
        asyncio.run(s2.extend([Particle(id=0)], [3]))
    with pytest.raises(ReplayMismatch, match="session 2"):
        replay.session(problem, params, np.random.default_rng(1), Usage())
    other = Replay(recording, "best-of-n")
    with pytest.raises(ReplayMismatch, match="sampling settings"):
        other.session(problem, SamplingParams(temperature=0.5), np.random.default_rng(1),
                      Usage())


class ToEndSession(ScriptedSession):
    """A scripted session offering barrier-free sampling (as the llama.cpp one does)."""

    async def extend_to_end(self, parents, children, final):
        out = []
        for parent, k in zip(parents, children, strict=True):
            kids = []
            for _ in range(k):
                p, steps = parent, []
                while not steps or not final(steps[-1], len(p.steps)):
                    (step,), = await self.extend([p], [1])
                    steps.append(step)
                    p = Particle(id=0, steps=(*p.steps, step))
                kids.append(steps)
            out.append(kids)
        return out


class ToEndGenerator(ScriptedGenerator):
    def session(self, problem, params, rng, usage):
        return ToEndSession(self, params, rng, usage)


def test_barrier_free_sampling_is_replayed_only_where_the_drawing_session_offered_it():
    problem, params = Problem("q?", id="a"), SamplingParams()
    gen = ToEndGenerator(eval_plugin.dist, horizon=2)
    recording = Recording(gen)
    usage = Usage()
    s = recording.session(problem, params, np.random.default_rng(0), usage)

    def final(step, n):
        return step.finish == "eos"

    drawn = asyncio.run(s.extend_to_end([Particle(id=0)], [4], final))
    assert usage.generated_tokens == 8 and len(drawn[0]) == 4
    again = Usage()
    r = Replay(recording, "self-consistency").session(problem, params,
                                                      np.random.default_rng(1), again)
    got = asyncio.run(r.extend_to_end([Particle(id=0)], [4], final))
    assert [[st.text for st in kid] for kid in got[0]] == [[st.text for st in kid]
                                                          for kid in drawn[0]]
    assert all(st.handle is None for kid in got[0] for st in kid) and again.generated_tokens == 8
    other = Replay(recording, "x").session(problem, params, np.random.default_rng(1), Usage())
    with pytest.raises(ReplayMismatch):  # an extend where the drawing run called extend_to_end
        asyncio.run(other.extend([Particle(id=0)], [4]))
    # a session without it: neither the recording nor the replay pretends to have it
    plain = Recording(eval_plugin.generator())
    assert not hasattr(plain.session(problem, params, np.random.default_rng(0), Usage()),
                       "extend_to_end")
    assert not hasattr(Replay(plain, "x").session(problem, params, np.random.default_rng(0),
                                                  Usage()), "extend_to_end")


@pytest.mark.model
def test_on_the_embedded_model_one_sample_set_serves_the_three_baselines(tmp_path: Path):
    """smollm2-135m (run under ``flock /tmp/ps-cpu.lock``): the real engine's handles and
    usage go through the recording; the engine is deterministic per (problem, seed), so each
    method alone draws the very samples the shared run drew."""
    from engines import need
    from particlescale.eval.datasets import Selection, load_dataset
    from particlescale.eval.specs import parse_methods
    from particlescale.eval.sweep import SweepConfig
    from particlescale.wiring import Setup

    need("smollm2-135m")
    ds = load_dataset("gsm8k", selection=Selection(limit=2))
    options = {"max_steps": 3, "max_step_tokens": 12}

    def run(methods: str, out: str) -> dict[str, dict]:
        cfg = SweepConfig(dataset=ds, methods=parse_methods(methods, options), budgets=[2, 4],
                          seeds=[0], out=tmp_path / out, options=options, reuse_samples=True,
                          setup=Setup(model="smollm2-135m", reward="arith"))
        run_sweep(cfg)
        return latest(cfg.out)

    shared = run(",".join(BASELINES), "shared")
    assert len(shared) == 2 * 3 * 2 and not [r for r in shared.values() if r["error"]]
    for m in ("best-of-n", "self-consistency"):
        alone = run(m, m)
        drawn_alone = sum(r["new_tokens"] for r in alone.values())
        assert sum(r["new_tokens"] for r in shared.values()) == drawn_alone > 0
        for key, r in alone.items():
            for field in ("answer", "candidates"):
                assert shared[key][field] == r[field], (key, field)
            assert shared[key]["usage"]["generated_tokens"] == r["usage"]["generated_tokens"]
