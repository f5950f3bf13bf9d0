"""What the benchmarks share: their sections of BENCHMARKS.md, the seeded GSM8K selection,
and the figures' text (Wilson cells, bootstrap intervals) over :mod:`particlescale.stats`.

Each benchmark rewrites only its own section, between ``<!-- bench:NAME -->`` markers, so it
can be re-run alone without touching the others' figures. Run a benchmark from the
repository root as a module: ``python -m benchmarks.NAME`` (``benchmarks.value.NAME`` for
the value-head studies).
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import numpy as np

from particlescale.eval.datasets import Selection, load_dataset
from particlescale.stats import grouped_auc_interval, paired_bootstrap, wilson
from particlescale.stats import within_problem_interval as _within_problem_interval
from particlescale.types import Problem

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, body: str, *, stamp: bool = True) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md with ``body``, followed by a
    provenance line (date and machine) unless ``stamp`` is off (a body that says it)."""
    tail = f"\n\n_Measured {time.strftime('%Y-%m-%d')} on {machine()}._" if stamp else ""
    block = f"<!-- bench:{name} -->\n{body.strip()}{tail}\n<!-- /bench:{name} -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->",
                         re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)


def gsm8k(problems: int, seed: int) -> list[Problem]:
    """The seeded selection of GSM8K test problems the value-head and reference studies
    share (``--problems``, ``--seed``), through the library's dataset loader."""
    return load_dataset("gsm8k", selection=Selection(sample=problems, seed=seed)).problems


def gsm8k_first(k: int) -> list[Problem]:
    """The first ``k`` GSM8K test problems, in file order (ids are line numbers)."""
    return load_dataset("gsm8k", selection=Selection(limit=k)).problems


def cell(k: int, n: int) -> str:
    """``k/n`` as a percentage with its 95% Wilson interval: ``62.0% [52%, 71%]``."""
    lo, hi = wilson(k, n)
    return f"{k / n:.1%} [{lo:.0%}, {hi:.0%}]"


def paired_text(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                draws: int = 4000) -> str:
    """Mean of ``a - b`` (per problem, 0/1) in points with its 95% paired bootstrap interval."""
    d, lo, hi = paired_bootstrap(a, b, rng, draws)
    return f"{100 * d:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def auc_interval(y: np.ndarray, p: np.ndarray, groups: np.ndarray, rng: np.random.Generator,
                 draws: int = 1000) -> str:
    """Pooled AUC with its 95% bootstrap interval over problems: ``0.712 [0.66, 0.76]``."""
    a, lo, hi = grouped_auc_interval(y, p, groups, rng, draws)
    return f"{a:.3f} [{lo:.2f}, {hi:.2f}]"


def within_interval(y: np.ndarray, p: np.ndarray, groups: np.ndarray, rng: np.random.Generator,
                    draws: int = 1000) -> str:
    """Within-problem AUC with its 95% bootstrap interval over problems, and how many
    problems have both labels: ``0.650 [0.60, 0.70] (n=31)``."""
    a, lo, hi, n = _within_problem_interval(y, p, groups, rng, draws)
    if not n:
        return "n/a (no problem has both labels)"
    return f"{a:.3f} [{lo:.2f}, {hi:.2f}] (n={n})"
