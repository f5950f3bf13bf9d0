"""Evaluation harness: datasets, grading, resumable sweeps, reports, and a Ray executor.

::

    dataset  = load_dataset("gsm8k", selection=Selection(limit=20))     # eval.datasets
    methods  = parse_methods("pf,pf(resampling=systematic),best-of-n")   # eval.specs
    summary  = run_sweep(SweepConfig(dataset, methods, budgets=[1, 2, 4], seeds=[0],
                                     out=Path("runs/gsm8k")))             # eval.sweep
    report   = write_report(Path("runs/gsm8k"))                           # eval.report

Every (problem, method, budget, seed) becomes one line of ``runs/gsm8k/results.jsonl``, graded
by :mod:`particlescale.eval.grading` (exact numbers, then math-verify in worker processes);
re-running resumes. ``particlescale eval`` / ``particlescale report`` are the CLI faces.
"""

from particlescale.eval.datasets import PROFILES, Dataset, Selection, load_dataset
from particlescale.eval.grading import Grade, Grader
from particlescale.eval.report import write_report
from particlescale.eval.specs import MethodSpec, parse_methods
from particlescale.eval.sweep import SweepConfig, SweepSummary, arun_sweep, run_sweep

__all__ = [
    "PROFILES",
    "Dataset",
    "Grade",
    "Grader",
    "MethodSpec",
    "Selection",
    "SweepConfig",
    "SweepSummary",
    "arun_sweep",
    "load_dataset",
    "parse_methods",
    "run_sweep",
    "write_report",
]
