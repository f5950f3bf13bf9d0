"""The benchmarks are a package that uses the library: every module runs as
``python -m benchmarks...`` (``--help`` answers without a model), and none re-implements what
the library owns (statistics, selection, answer grading, BENCHMARKS.md sections), reaches for
``tests/`` helpers through ``sys.path`` or imports a private name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run_all import modules

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
FILES = sorted(p for p in BENCH.rglob("*.py") if "results" not in p.parts)
MODULES = modules()

# names the library owns: a benchmark that defines one is a second copy of it
OWNED = {
    "auc": "particlescale.stats", "roc_auc": "particlescale.stats",
    "per_problem_aucs": "particlescale.stats", "within_problem_auc": "particlescale.stats",
    "wilson": "particlescale.stats", "bootstrap": "particlescale.stats",
    "bootstrap_mean": "particlescale.stats", "paired_bootstrap": "particlescale.stats",
    "pick": "particlescale.algorithms.selection", "select": "particlescale.algorithms.selection",
    "select_answer": "particlescale.algorithms.selection",
    "select_from": "particlescale.algorithms.selection",
    "is_correct": "particlescale.eval.value_train (or eval.grading)",
    "grade_numeric": "particlescale.quick_grading",
    "normalize_answer": "particlescale.answers", "extract_answer": "particlescale.answers",
}
TEST_HELPERS = {"scripted", "fakes", "server_harness", "viewer_traces", "vllm_real", "tests",
                "invariance", "engines", "eval_plugin"}


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_every_benchmark_is_found() -> None:
    names = {p.stem.removeprefix("bench_") for p in FILES if p.stem.startswith("bench_")}
    assert set(MODULES) == names
    assert MODULES["value_budget"] == "benchmarks.value.bench_value_budget"
    assert MODULES["engine"] == "benchmarks.bench_engine"


@pytest.mark.parametrize("module", [*MODULES.values(), "benchmarks.run_all"])
def test_module_help_runs_without_a_model(module: str) -> None:
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(BENCH)) for p in FILES])
def test_no_copy_of_the_library(path: Path) -> None:
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.name not in OWNED, (
                f"{path.name}: defines {node.name}(); use {OWNED[node.name]}")
            assert node.name != "write_section" or path.name == "common.py", (
                f"{path.name}: defines write_section(); use benchmarks.common")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert not node.value.endswith((".jsonl",)) or "results" in node.value or \
                "/" not in node.value, f"{path.name}: reads {node.value!r} by hand; use " \
                "particlescale.eval.datasets.load_dataset"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(BENCH)) for p in FILES])
def test_imports_are_the_package_and_the_public_library(path: Path) -> None:
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Attribute) and node.attr == "path" and \
                isinstance(node.value, ast.Name) and node.value.id == "sys":
            pytest.fail(f"{path.name}:{node.lineno}: sys.path; import benchmarks.* instead")
        if isinstance(node, ast.ImportFrom):
            top = (node.module or "").split(".")[0]
            assert node.level == 0, f"{path.name}: relative import; use benchmarks.*"
            assert top not in TEST_HELPERS, (
                f"{path.name}: imports {node.module} (tests/); use particlescale.testing")
            assert top in {"benchmarks", "particlescale"} or top not in {
                p.stem for p in FILES}, f"{path.name}: imports {node.module} by file name"
            if top == "particlescale":
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name}: imports private {private} from {node.module}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in TEST_HELPERS, (
                    f"{path.name}: imports {alias.name} (tests/)")


def test_a_copied_helper_is_caught(tmp_path: Path) -> None:
    """The checks above fail on the shapes they forbid (kept as mutants)."""
    cases = {
        "def auc(y, p):\n    return 0.5\n": "defines auc()",
        "import sys\nsys.path.insert(0, 'tests')\n": "sys.path",
        "from scripted import ScriptedReward\n": "particlescale.testing",
        "from particlescale.backends.llamacpp.native import _llama\n": "imports private",
        "DATA = '../shared/datasets/gsm8k_test.jsonl'\n": "load_dataset",
    }
    for code, message in cases.items():
        path = tmp_path / "bench_mutant.py"
        path.write_text(code)
        with pytest.raises((AssertionError, pytest.fail.Exception), match=message):
            test_no_copy_of_the_library(path)
            test_imports_are_the_package_and_the_public_library(path)


def test_its_hub_resume_keeps_only_runs_with_the_same_settings(tmp_path: Path) -> None:
    import argparse
    import json

    from benchmarks import bench_its_hub as b
    from particlescale.types import Problem

    args = argparse.Namespace(model="m", budget=8, reward="arith", max_steps=16,
                              max_step_tokens=256, ctx=4096, seed=0, threads=2)
    same, other = b.settings(args), {**b.settings(args), "budget": 4}
    rows = [{"server": "llama-server", "problem": "0", "arm": arm, "config": same}
            for arm in b.ARMS]
    rows += [{"server": "vllm-cpu", "problem": "0", "arm": "ours", "config": other},
             {"server": "vllm-cpu", "problem": "0", "arm": "ours"}]  # before --resume existed
    out = tmp_path / "runs.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = b.previous_runs(out, same)
    assert done == rows[:3]
    problems = [Problem(question="q", answer="1", id="0")]
    assert not b.todo("llama-server", problems, done)
    assert b.todo("vllm-cpu", problems, done)
    assert b.todo("llama-server", [*problems, Problem(question="r", answer="2", id="1")], done)
    assert b.previous_runs(tmp_path / "missing.jsonl", same) == []
