"""The Ray executor on a local Ray instance (ray.init(num_cpus=2)): same rows as the local
executor, the driver alone writes them, resume and retries work the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from particlescale.eval.store import RESULTS, load_rows
from particlescale.eval.sweep import run_sweep
from test_eval_sweep import config, latest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


def test_cli_starts_a_local_ray_and_matches_the_local_executor(tmp_path: Path):
    # Runs before the in-process Ray below is started (file order): the CLI starts its own.
    from test_eval_sweep import GEN, REW, run_cli, tiny_dataset

    data = tiny_dataset(tmp_path / "tiny.jsonl")
    common = ["eval", "-d", str(data), "--question-field", "q", "--answer-field", "a",
              "--id-field", "id", "--methods", "pf,best-of-n(temperature=0.5)",
              "--budgets", "1,2", "--generator", GEN, "--reward", REW, "--no-progress"]
    p = run_cli(*common, "-o", str(tmp_path / "ray"), "--executor", "ray", "--ray-workers", "2",
                timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "24 run" in " ".join(p.stderr.split())
    p = run_cli(*common, "-o", str(tmp_path / "local"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert latest(tmp_path / "ray") == latest(tmp_path / "local")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_sweep_matches_local_and_resumes(local_ray, tmp_path: Path):
    from particlescale.eval.ray_executor import run_sweep_ray

    local = config(tmp_path, out="local", methods="pf,greedy,best-of-n", fail=(3,),
                   traces=True)
    run_sweep(local)
    remote = config(tmp_path, out="ray", methods="pf,greedy,best-of-n", fail=(3,),
                    traces=True, concurrency=2)
    s = run_sweep_ray(remote, workers=2)
    assert s.ran == 6 * 7 and s.errors == 7
    a, b = latest(local.out), latest(remote.out)
    assert a == b  # same answers, candidates, usage, errors, trace paths
    assert len(list((remote.out / "traces").glob("*.json"))) == 5 * 7
    assert len(load_rows(remote.out / RESULTS).rows) == 42  # one writer, no duplicates

    again = run_sweep_ray(remote, workers=2)
    assert again.skipped == 35 and again.ran == 7  # only the failed problem is retried
    assert len(load_rows(remote.out / RESULTS).rows) == 49


def test_ray_resume_of_a_partial_local_run(local_ray, tmp_path: Path):
    from particlescale.eval.ray_executor import run_sweep_ray

    part = config(tmp_path, methods="pf", budgets=(1,))
    run_sweep(part)
    full = config(tmp_path, methods="pf,best-of-n", budgets=(1, 2))
    s = run_sweep_ray(full, workers=2)
    assert s.skipped == 6 and s.ran == 18
    ref = config(tmp_path, out="ref", methods="pf,best-of-n", budgets=(1, 2))
    run_sweep(ref)
    assert latest(full.out) == latest(ref.out)


def test_ray_shares_the_baselines_samples_like_the_local_executor(local_ray, tmp_path: Path):
    from particlescale.eval.ray_executor import run_sweep_ray

    methods = "self-consistency,best-of-n,weighted-best-of-n"
    local = config(tmp_path, out="local", methods=methods, reuse_samples=True)
    run_sweep(local)
    remote = config(tmp_path, out="ray", methods=methods, reuse_samples=True, concurrency=2)
    s = run_sweep_ray(remote, workers=2)
    # one drawing task per problem on a worker, its two sharers replay it there
    assert s.ran == 6 and s.shared == 12 and s.derived == 6 * 3 * 2
    assert latest(local.out) == latest(remote.out)
