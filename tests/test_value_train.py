"""``train-prm``'s pipeline on the real engine: shards per problem, resume without
re-sampling, a time box that never throws sampled work away, and the CLI fitting a head on
what was sampled."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from particlescale.eval.value_train import SampleSet, collect
from particlescale.models import is_pulled
from particlescale.protocols import SamplingParams
from particlescale.rewards.value_head import ValueHead, model_sha256
from particlescale.types import Problem

pytest.importorskip("llama_cpp")
pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(not is_pulled("smollm2-135m"),
                       reason="run: particlescale models pull smollm2-135m"),
]

PROBLEMS = [
    Problem("Tom has 3 apples and buys 2 more. How many apples does he have?", answer="5",
            id="0"),
    Problem("A box holds 4 pens. How many pens are in 3 boxes?", answer="12", id="1"),
    Problem("Sara had 10 dollars and spent 7. How many dollars are left?", answer="3", id="2"),
]


def test_collect_writes_a_shard_per_problem_resumes_and_keeps_to_its_deadline(tmp_path):
    from particlescale.backends.llamacpp import LlamaCppGenerator

    params = SamplingParams(temperature=1.0, max_step_tokens=12)
    with LlamaCppGenerator("smollm2-135m", embeddings=True, n_ctx=4096, n_seq_max=8) as gen:
        # A deadline already past: nothing starts, nothing is written.
        sets = asyncio.run(collect(gen, PROBLEMS, 2, tmp_path, params=params, max_steps=2,
                                   concurrency=2, deadline=time.monotonic()))
        assert sets == [] and not list(tmp_path.glob("*.npz"))

        sets = asyncio.run(collect(gen, PROBLEMS, 2, tmp_path, params=params, max_steps=2,
                                   concurrency=2))
        assert [s.problem_id for s in sets] == ["0", "1", "2"]
        assert len(list(tmp_path.glob("*.npz"))) == 3
        for s in sets:
            assert s.features.shape == (len(s.labels), gen.engine.n_embd)
            assert np.isfinite(s.features).all()
            assert set(np.unique(s.labels)) <= {0.0, 1.0}
            assert set(s.solution.tolist()) == {0, 1}  # two solutions per problem
            assert s.step.min() == 1 and s.step.max() <= 2
            # every prefix of one solution carries that solution's outcome
            for j in (0, 1):
                assert len(np.unique(s.labels[s.solution == j])) == 1

        calls = gen.engine.stats.decode_calls
        again = asyncio.run(collect(gen, PROBLEMS, 2, tmp_path, params=params, max_steps=2))
        assert gen.engine.stats.decode_calls == calls  # resumed from shards: no decoding
        for a, b in zip(sets, again, strict=True):
            # shards keep features as float16: loaded values are the rounded ones
            np.testing.assert_array_equal(a.features.astype(np.float16), b.features)
            np.testing.assert_array_equal(a.labels, b.labels)
            # the solutions themselves come back too, so other rewards can score them later
            assert b.solutions == a.solutions and len(b.solutions) == 2
            for j, rec in enumerate(b.solutions):
                steps = b.solution_steps(j)
                assert [st.text for st in steps] == rec["steps"]
                assert rec["correct"] == bool(b.labels[b.solution == j][0])
                assert sum(st.tokens for st in steps) > 0
                np.testing.assert_array_equal(steps[-1].features,
                                              b.features[b.solution == j][-1])


def test_collect_tops_up_a_shard_with_fewer_solutions_than_asked(tmp_path):
    from particlescale.backends.llamacpp import LlamaCppGenerator

    params = SamplingParams(temperature=1.0, max_step_tokens=10)
    with LlamaCppGenerator("smollm2-135m", embeddings=True, n_ctx=4096, n_seq_max=8) as gen:
        (two,) = asyncio.run(collect(gen, PROBLEMS[:1], 2, tmp_path, params=params,
                                     max_steps=2))
        (three,) = asyncio.run(collect(gen, PROBLEMS[:1], 3, tmp_path, params=params,
                                       max_steps=2))
        assert three.n_solutions == 3 and len(three.solutions) == 3
        assert set(three.solution.tolist()) == {0, 1, 2}
        old = three.solution < 2  # the two stored solutions come first, unchanged
        assert three.solutions[:2] == two.solutions
        # (shards keep features as float16: the stored ones are the rounded ones)
        np.testing.assert_array_equal(three.features[old], two.features.astype(np.float16))
        np.testing.assert_array_equal(three.labels[old], two.labels)
        new = three.solution_steps(2)  # the added one is whole: its text and its states
        assert [st.text for st in new] == three.solutions[2]["steps"]
        assert three.tokens > two.tokens
        calls = gen.engine.stats.decode_calls
        (again,) = asyncio.run(collect(gen, PROBLEMS[:1], 3, tmp_path, params=params,
                                       max_steps=2))
        assert gen.engine.stats.decode_calls == calls  # topped up once, then loaded
        assert again.solutions == three.solutions
        (fewer,) = asyncio.run(collect(gen, PROBLEMS[:1], 2, tmp_path, params=params,
                                       max_steps=2))
        assert fewer.n_solutions == 3  # asking for fewer keeps what is stored
        head = fewer.first(2)  # ... and a caller that wants exactly two takes the first two
        assert head.n_solutions == 2 and head.solutions == two.solutions
        np.testing.assert_array_equal(head.labels, two.labels)
        assert head.tokens == two.tokens


def test_collect_adds_monte_carlo_labels_to_the_shards_there(tmp_path):
    from particlescale.backends.llamacpp import LlamaCppGenerator

    params = SamplingParams(temperature=1.0, max_step_tokens=10)
    with LlamaCppGenerator("smollm2-135m", embeddings=True, n_ctx=4096, n_seq_max=16) as gen:
        plain = asyncio.run(collect(gen, PROBLEMS[:2], 2, tmp_path, params=params,
                                    max_steps=3))
        calls = gen.engine.stats.decode_calls
        mc = asyncio.run(collect(gen, PROBLEMS[:2], 2, tmp_path, params=params, max_steps=3,
                                 mc_rollouts=3))
        assert gen.engine.stats.decode_calls > calls  # the rollouts were decoded
        for a, b in zip(plain, mc, strict=True):
            assert b.mc_rollouts == 3 and a.mc_rollouts == 0
            np.testing.assert_array_equal(a.outcome, b.outcome)  # same solutions
            assert set(np.round(3 * b.labels, 6)) <= {0.0, 1.0, 2.0, 3.0}  # k of 3 rollouts
            for j in (0, 1):  # a solution's last prefix keeps its own outcome
                last = np.flatnonzero(b.solution == j)[-1]
                assert b.labels[last] == b.outcome[last]
        calls = gen.engine.stats.decode_calls
        again = asyncio.run(collect(gen, PROBLEMS[:2], 2, tmp_path, params=params,
                                    max_steps=3, mc_rollouts=3))
        assert gen.engine.stats.decode_calls == calls  # stored: nothing decoded again
        for b, c in zip(mc, again, strict=True):
            np.testing.assert_array_equal(b.labels, c.labels)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from particlescale.cli import main; main()",
                           *args], cwd=cwd,
                          capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120"})


def test_train_prm_fits_on_the_shards_there_within_a_zero_time_budget(tmp_path):
    from particlescale.models import resolve

    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?",
                                        "answer": str(2 * i)}) + "\n" for i in range(8)))
    work = tmp_path / "shards"
    out = tmp_path / "head.npz"

    # No shards and no time: a clear error, no traceback.
    r = _cli("train-prm", "--model", "smollm2-135m", "--dataset", str(data), "--problems", "8",
             "--samples", "4", "--out", str(out), "--work-dir", str(work), "--time-budget", "0",
             cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "only 0 problem(s) sampled" in r.stderr and "Traceback" not in r.stderr

    # Shards as an earlier, interrupted run would have left them (features with a signal in
    # one coordinate), for 6 of the 8 problems; the 2 others are never sampled.
    rng = np.random.default_rng(0)
    rec = json.loads((work / "sampling.json").read_text())
    assert rec["shards"] == 0 and rec["seconds"] is not None
    dim = 576  # smollm2-135m's hidden size
    for pid in range(6):
        y = np.repeat([1.0, 0.0, 1.0, 0.0], 5)
        x = rng.normal(size=(20, dim))
        x[:, 7] += 2.0 * y
        SampleSet(str(pid), x, y, y.copy(), np.repeat(np.arange(4), 5),
                  np.tile(np.arange(1, 6), 4), 300).save(work / f"{pid}.npz")
    r = _cli("train-prm", "--model", "smollm2-135m", "--dataset", str(data), "--problems", "8",
             "--samples", "4", "--out", str(out), "--work-dir", str(work), "--time-budget", "0",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fitting on 6 of 8 problems" in r.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["problems"] == 6 and meta["training"]["problems_requested"] == 8
    assert meta["training"]["sampling_seconds"] is None  # the earlier run's cost is unknown
    sha = model_sha256(resolve("smollm2-135m"), "smollm2-135m")
    head = ValueHead.load(out, model_sha256=sha)
    hi = np.zeros(dim)
    hi[7] = 2.0
    assert head.predict(hi[None, :])[0] > head.predict(np.zeros((1, dim)))[0]
