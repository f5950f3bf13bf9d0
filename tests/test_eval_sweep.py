"""Sweeps over the scripted plugin backends (tests/eval_plugin.py): rows, resume, retries,
torn lines, config changes, --reuse-samples, traces, the CLI, and a SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from particlescale.errors import ConfigError, ParticlescaleError
from particlescale.eval.datasets import load_dataset
from particlescale.eval.specs import parse_methods
from particlescale.eval.store import RESULTS, load_rows
from particlescale.eval.sweep import SweepConfig, plan, run_sweep
from particlescale.types import Trace
from particlescale.wiring import Setup

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PLUGIN = HERE / "eval_plugin.py"
GEN, REW = f"py:{PLUGIN}:generator", f"py:{PLUGIN}:reward"
CLI = [sys.executable, "-c", "from particlescale.cli import main; main()"]
VOLATILE = ("time",)


def tiny_dataset(path: Path, n: int = 6, fail: tuple[int, ...] = ()) -> Path:
    rows = [{"q": f"Problem number {i}?" if i not in fail else f"FAIL number {i}",
             "a": str(1 + i % 3), "id": f"p{i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path: Path, *, methods: str = "pf,best-of-n", budgets=(1, 2, 4), seeds=(0,),
           fail=(), out: str = "out", **kw) -> SweepConfig:
    data = tiny_dataset(tmp_path / "tiny.jsonl", fail=fail)
    ds = load_dataset(str(data), question_field="q", answer_field="a", id_field="id")
    return SweepConfig(dataset=ds, methods=parse_methods(methods), budgets=list(budgets),
                       seeds=list(seeds), out=tmp_path / out,
                       setup=Setup(generator=GEN, reward=REW), **kw)


def stable(rows) -> dict[str, dict]:
    """Rows keyed by task, without what legitimately differs between runs (time, wall time)."""
    out = {}
    for r in rows:
        r = {k: v for k, v in r.items() if k not in VOLATILE}
        r["usage"] = {k: v for k, v in r["usage"].items() if k != "wall_time"}
        out[f"{r['problem_id']}|{r['method']}|{r['budget']}|{r['seed']}"] = r
    return out


def latest(out: Path) -> dict[str, dict]:
    return stable(load_rows(out / RESULTS).latest().values())


def test_one_row_per_task_then_resume_runs_nothing(tmp_path: Path):
    cfg = config(tmp_path, methods="pf,greedy,best-of-n", seeds=(0, 1))
    s = run_sweep(cfg)
    # 6 problems x 2 seeds x (pf at 3 budgets + greedy once + best-of-n at 3 budgets)
    assert s.planned == s.ran == 6 * 2 * 7 and s.errors == 0
    rows = load_rows(cfg.out / RESULTS).rows
    assert len(rows) == 84
    r = rows[0]
    for key in ("problem_id", "method", "budget", "seed", "answer", "gold", "correct",
                "candidates", "usage", "error", "config_hash"):
        assert key in r
    assert {x["budget"] for x in rows if x["method"] == "greedy"} == {1}
    assert all(abs(sum(c["weight"] for c in x["candidates"]) - 1) < 1e-9 for x in rows)
    # the verdicts agree with the gold: scripted answers are "\boxed{k}"
    assert all(x["correct"] == (x["answer"] == x["gold"]) for x in rows)
    before = (cfg.out / RESULTS).read_bytes()
    again = run_sweep(cfg)
    assert again.ran == 0 and again.skipped == 84
    assert (cfg.out / RESULTS).read_bytes() == before


def test_a_failing_problem_is_recorded_and_retried_on_resume(tmp_path: Path):
    cfg = config(tmp_path, fail=(2,))
    s = run_sweep(cfg)
    assert s.errors == 6 and s.ran == 36  # p2 fails at every method x budget
    rows = load_rows(cfg.out / RESULTS).latest()
    failed = [r for r in rows.values() if r["error"]]
    assert {r["problem_id"] for r in failed} == {"p2"}
    assert all("BackendError" in r["error"] and r["correct"] is False for r in failed)
    assert sum(1 for r in rows.values() if not r["error"]) == 30
    again = run_sweep(cfg)
    assert again.ran == 6 and again.skipped == 30  # only the failed ones, retried
    assert len(load_rows(cfg.out / RESULTS).rows) == 42


def test_results_do_not_depend_on_concurrency(tmp_path: Path):
    a = config(tmp_path, out="a", concurrency=1)
    b = config(tmp_path, out="b", concurrency=5)
    run_sweep(a)
    run_sweep(b)
    ra, rb = latest(a.out), latest(b.out)
    for r in (*ra.values(), *rb.values()):
        r.pop("config_hash")  # same config, but compare contents only
    assert ra == rb


def test_torn_last_line_is_dropped_and_its_task_rerun(tmp_path: Path):
    cfg = config(tmp_path)
    run_sweep(cfg)
    path = cfg.out / RESULTS
    full = latest(cfg.out)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # kill -9 mid-write
    loaded = load_rows(path)
    assert loaded.dropped_torn_line and len(loaded.rows) == len(lines) - 1
    s = run_sweep(cfg)
    assert s.dropped_torn_line and s.ran == 1
    assert all(json.loads(x) for x in path.read_bytes().splitlines())
    assert path.read_bytes().endswith(b"\n")
    assert latest(cfg.out) == full


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path: Path):
    cfg = config(tmp_path)
    run_sweep(cfg)
    path = cfg.out / RESULTS
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = "{oops\n"
    path.write_text("".join(lines))
    with pytest.raises(ParticlescaleError, match="line 2"):
        run_sweep(cfg)


def test_a_changed_config_is_refused_unless_forced(tmp_path: Path):
    cfg = config(tmp_path)
    run_sweep(cfg)
    changed = config(tmp_path, options={"max_steps": 1})
    with pytest.raises(ConfigError, match=r"different configuration.*options"):
        run_sweep(changed)
    # budgets, seeds and methods may change: the sweep is extended, not refused
    more = config(tmp_path, methods="pf,best-of-n,greedy", budgets=(1, 2, 4, 8))
    assert run_sweep(more).ran == 6 * 2 + 6
    forced = config(tmp_path, options={"max_steps": 1}, force=True)
    s = run_sweep(forced)
    assert s.skipped == 0 and s.ran == 36
    assert len(list(cfg.out.glob("results.replaced-*.jsonl"))) == 1
    assert len(load_rows(cfg.out / RESULTS).rows) == 36


def test_reuse_samples_derives_smaller_budgets_from_nested_subsets(tmp_path: Path):
    cfg = config(tmp_path, methods="self-consistency,best-of-n,pf", budgets=(1, 2, 4, 8),
                 reuse_samples=True)
    s = run_sweep(cfg)
    # best-of-n draws at 8 and self-consistency replays its samples (tests/test_eval_shared.py)
    assert s.ran == 6 * (1 + 4) and s.shared == 6 and s.derived == 6 * 2 * 3
    rows = load_rows(cfg.out / RESULTS).latest()
    for pid in (f"p{i}" for i in range(6)):
        for method in ("self-consistency", "best-of-n"):
            top = rows[f"{pid}\t{method}\t8\t0"]
            assert top["reused_from"] == (None if method == "best-of-n" else 8)
            top_counts = Counter({c["answer"]: 0 for c in top["candidates"]})
            for c in top["candidates"]:
                top_counts[c["answer"]] += c["copies"]
            prev: Counter | None = None
            for k in (1, 2, 4):
                r = rows[f"{pid}\t{method}\t{k}\t0"]
                assert r["reused_from"] == 8
                counts = Counter()
                for c in r["candidates"]:
                    counts[c["answer"]] += c["copies"]
                assert sum(counts.values()) == k
                assert all(counts[a] <= top_counts[a] for a in counts)  # a subset
                if prev is not None:
                    assert all(prev[a] <= counts[a] for a in prev)  # nested
                prev = counts
                assert r["usage"]["generated_tokens"] == sum(c["tokens"] * c["copies"]
                                                             for c in r["candidates"])
                if method == "self-consistency":  # majority vote of the subset
                    assert counts[r["answer"]] == max(counts.values())
                else:  # best-of-n: the highest-reward sample of the subset
                    assert r["answer"] == max(r["candidates"], key=lambda c: c["score"])["answer"]
                assert r["correct"] == (r["answer"] == r["gold"])
    # pf is never derived
    assert all(r["reused_from"] is None for r in rows.values() if r["method"] == "pf")


def test_reuse_samples_plan_runs_only_the_top_budget():
    # (no I/O: plan() is pure)
    from particlescale.eval.datasets import Dataset, FieldMap
    from particlescale.types import Problem

    ds = Dataset("d", "d", FieldMap(), "numeric", [Problem("q?", id="a", answer="1")])
    cfg = SweepConfig.__new__(SweepConfig)
    cfg.__dict__.update(dataset=ds, methods=parse_methods(
        "self-consistency,best-of-n,pf,greedy,weighted-best-of-n,best-of-n(temperature=0.5)"),
                        budgets=[1, 4, 16], seeds=[0], options={}, reuse_samples=True,
                        traces=False)
    tasks = plan(cfg)
    # the first scored baseline draws for the others with the same sampling settings
    assert sorted((t.method, t.budget, t.derive, tuple(m.method for m in t.shares))
                  for t in tasks) == [
        ("best-of-n", 16, (1, 4), ("self-consistency", "weighted-best-of-n")),
        ("best-of-n(temperature=0.5)", 16, (1, 4), ()),
        ("greedy", 1, (), ()), ("pf", 1, (), ()), ("pf", 4, (), ()), ("pf", 16, (), ())]


def test_traces_are_written_per_task(tmp_path: Path):
    cfg = config(tmp_path, methods="pf(resampling=systematic)", budgets=(2,), traces=True)
    run_sweep(cfg)
    rows = list(load_rows(cfg.out / RESULTS).rows)
    assert len(rows) == 6
    for r in rows:
        path = cfg.out / r["trace"]
        assert path.parent.name == "traces" and path.suffix == ".json"
        trace = Trace.from_dict(json.loads(path.read_text()))
        assert trace.problem["id"] == r["problem_id"] and trace.method == "pf"
        assert trace.config["budget"] == 2 and trace.config["resampling"] == "systematic"
        assert trace.steps  # a genealogy to draw


def run_cli(*args: str, env: dict | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("args", "match"), [
    (["--methods", "pf(ess=0.5)"], "unknown option 'ess'"),
    (["--methods", "nope"], "unknown 'nope'"),
    (["--budgets", "0,2"], "budgets: 0 must be >= 1"),
    (["--budgets", "a"], "not an integer"),
    (["--question-field", "question"], "no field 'question'"),
    (["--reward", "nonsense"], "reward: unknown 'nonsense'"),
    (["--generator", "vllm"], "--generator: unknown kind 'vllm'"),
])
def test_cli_rejects_bad_input_before_any_model_call(tmp_path: Path, args, match):
    data = tiny_dataset(tmp_path / "tiny.jsonl")
    out = tmp_path / "out"
    base = ["eval", "-d", str(data), "--question-field", "q", "--answer-field", "a",
            "-o", str(out), "--generator", GEN, "--reward", REW]
    # later options override earlier ones
    p = run_cli(*base, *args)
    assert p.returncode == 2, p.stderr
    assert match in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("error:")
    assert not out.exists()


def test_cli_unwritable_out_dir(tmp_path: Path):
    data = tiny_dataset(tmp_path / "tiny.jsonl")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = run_cli("eval", "-d", str(data), "--question-field", "q", "--answer-field", "a",
                "-o", str(blocker / "out"), "--generator", GEN, "--reward", REW)
    assert p.returncode == 2 and "cannot write" in p.stderr and "Traceback" not in p.stderr


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_results(tmp_path: Path):
    data = tiny_dataset(tmp_path / "tiny.jsonl", n=6)
    common = ["eval", "-d", str(data), "--question-field", "q", "--answer-field", "a",
              "--id-field", "id", "--methods", "pf,best-of-n,greedy", "--budgets", "1,2,4",
              "--generator", GEN, "--reward", REW, "--no-progress"]
    ref = run_cli(*common, "-o", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    env = {**os.environ, "PS_TEST_STEP_DELAY": "0.05"}
    proc = subprocess.Popen([*CLI, *common, "-o", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / RESULTS
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 8:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    n_before = results.read_bytes().count(b"\n")
    assert 8 <= n_before < 42, "the run was not killed mid-way"

    resumed = run_cli(*common, "-o", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{n_before} already done" in resumed.stderr.replace("\n", " ")
    assert latest(out) == latest(tmp_path / "ref")
    assert len(load_rows(results).rows) == 42  # nothing run twice
