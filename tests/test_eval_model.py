"""The real CLI over the embedded llama.cpp engine: a sweep killed with SIGKILL mid-way and
resumed ends with the results of an uninterrupted run (smollm2-135m), and an end-to-end eval of
5 GSM8K problems with qwen2.5-0.5b (two methods, budgets 1,2). Run under
``flock /tmp/ps-cpu.lock`` (they load models on the shared CPUs).

No time limit on the model runs: they end on their own (steps and tokens are capped), and a
busy machine must not fail a test for being slow (a 900 s limit did, issue 23)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines import need
from particlescale.eval.store import RESULTS, load_rows
from test_eval_sweep import latest

pytestmark = pytest.mark.model
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from particlescale.cli import main; main()"]


def test_sigkill_mid_sweep_then_resume_equals_an_uninterrupted_run(tmp_path: Path):
    need("smollm2-135m")
    # Tiny budgets and capped steps: this checks the harness over a real engine, not accuracy.
    common = ["eval", "-d", "gsm8k", "--limit", "2", "--methods", "pf,best-of-n",
              "--budgets", "1,2", "--model", "smollm2-135m", "--reward", "arith",
              "--options", "max_steps=3,max_step_tokens=12", "--no-progress"]
    ref = subprocess.run([*CLI, *common, "-o", str(tmp_path / "ref")], cwd=REPO,
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert len(load_rows(tmp_path / "ref" / RESULTS).rows) == 8

    out = tmp_path / "killed"
    proc = subprocess.Popen([*CLI, *common, "-o", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / RESULTS
    while proc.poll() is None:  # it ends by itself if it is never caught mid-way
        if results.exists() and results.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    done = results.read_bytes().count(b"\n")
    assert 3 <= done < 8, f"not killed mid-way ({done} rows)"

    resumed = subprocess.run([*CLI, *common, "-o", str(out)], cwd=REPO, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{done} already done" in " ".join(resumed.stderr.split())
    assert len(load_rows(results).rows) == 8
    assert latest(out) == latest(tmp_path / "ref")


def test_end_to_end_gsm8k_with_qwen(tmp_path: Path):
    need("qwen2.5-0.5b")
    out = tmp_path / "e2e"
    # Capped (max_steps=3, max_step_tokens=48) to stay within ~3 minutes on 2 cores.
    p = subprocess.run(
        [*CLI, "eval", "-d", "gsm8k", "--limit", "5", "--methods", "pf,best-of-n",
         "--budgets", "1,2", "--model", "qwen2.5-0.5b", "--reward", "arith",
         "--options", "max_steps=3,max_step_tokens=48", "--concurrency", "5", "--traces",
         "--no-progress", "-o", str(out)],
        cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = load_rows(out / RESULTS).rows
    assert len(rows) == 20 and not [r for r in rows if r["error"]]
    gold = {r["problem_id"]: r["gold"] for r in rows}
    assert gold["0"] == "18"
    assert all(r["usage"]["generated_tokens"] > 0 for r in rows)
    answered = [r for r in rows if r["answer"] is not None]
    assert len(answered) >= 15  # the model writes numbers; most runs end with an answer
    rep = subprocess.run([*CLI, "report", str(out)], cwd=REPO, capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr[-2000:]
    for name in ("report.md", "scaling.png", "tokens.png", "index.html"):
        assert (out / name).exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pf@1", "pf@2", "best-of-n@1", "best-of-n@2"}
    for key, s in summary.items():
        m, b = key.split("@")
        sel = [r for r in rows if r["method"] == m and r["budget"] == int(b)]
        assert s["correct"] == sum(r["correct"] for r in sel)
    print(json.dumps({k: v["accuracy"] for k, v in summary.items()}),
          "wall", round(sum(r["usage"]["wall_time"] for r in rows), 1), file=sys.stderr)
    assert os.path.getsize(out / "scaling.png") > 10_000
