"""Reports: table numbers against hand computations, the budget multiplier, plots, index.html."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from particlescale.errors import ConfigError
from particlescale.eval.report import budget_multiplier, interpolate_budget, wilson, write_report
from particlescale.eval.store import RESULTS
from test_eval_sweep import config


def row(pid, method, budget, correct, *, tokens=0, wall=0.0, cands=None, error=None, seed=0):
    return {"problem_id": pid, "method": method, "budget": budget, "seed": seed,
            "gold": "1", "answer": "1" if correct else "2", "correct": correct,
            "candidates": cands or [], "usage": {"generated_tokens": tokens, "wall_time": wall},
            "error": error, "reused_from": None, "trace": None}


def cand(weight, correct, copies=1):
    return {"answer": "1" if correct else "2", "weight": weight, "correct": correct,
            "copies": copies, "tokens": 1, "steps": 1, "score": 0.5}


HAND_ROWS = [
    # pf@1: 2/4 correct; tokens 10..40 (mean 25); wall 1..4 s (mean 2.50)
    *(row(f"p{i}", "pf", 1, c, tokens=10 * (i + 1), wall=float(i + 1))
      for i, c in enumerate([True, False, True, False])),
    # pf@4: 3/4 correct, one failed problem counted apart; candidates for pass@N / weights
    row("p0", "pf", 4, True, cands=[cand(0.8, True, 3), cand(0.2, False, 1)]),
    row("p1", "pf", 4, True, cands=[cand(1.0, True, 4)]),
    row("p2", "pf", 4, True, cands=[cand(0.5, True, 2), cand(0.5, False, 2)]),
    row("p3", "pf", 4, False, cands=[cand(0.7, False, 3), cand(0.3, True, 1)]),
    row("p4", "pf", 4, False, error="BackendError: down"),
    # best-of-n: 1/4, 2/4, 4/4 at budgets 1, 4, 16
    *(row(f"p{i}", "best-of-n", 1, i == 0) for i in range(4)),
    *(row(f"p{i}", "best-of-n", 4, i in (0, 2)) for i in range(4)),
    *(row(f"p{i}", "best-of-n", 16, True) for i in range(4)),
    # greedy: 1/4 (budget-free)
    *(row(f"p{i}", "greedy", 1, i == 2) for i in range(4)),
]


def table(md: str, title: str) -> dict[str, list[str]]:
    """The rows of one markdown table: method -> cells."""
    block = md.split(f"### {title}", 1)[1].split("###", 1)[0]
    out = {}
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def test_wilson_matches_reference_values():
    # Hand-checked against the closed form (and the usual tables: 3/10 -> [10.8%, 60.3%]).
    for (k, n), (lo, hi) in {(3, 10): (0.1078, 0.6032), (2, 4): (0.1500, 0.8500),
                             (0, 4): (0.0, 0.4899), (4, 4): (0.5101, 1.0),
                             (50, 100): (0.4038, 0.5962)}.items():
        a, b = wilson(k, n)
        assert a == pytest.approx(lo, abs=5e-4) and b == pytest.approx(hi, abs=5e-4)


def test_interpolation_on_the_log_budget_axis():
    base = [(1, 0.3), (2, 0.4), (4, 0.5), (8, 0.55)]
    assert interpolate_budget(base, 0.4) == ("at", 2.0)
    kind, x = interpolate_budget(base, 0.45)  # halfway between 2 and 4 in log2
    assert kind == "at" and x == pytest.approx(2 ** 1.5)
    assert interpolate_budget(base, 0.2) == ("below", 1.0)
    assert interpolate_budget(base, 0.6) == ("never", None)
    mult = budget_multiplier([(1, 0.4), (2, 0.45), (4, 0.6)], base)
    assert mult == {1: "2.0×", 2: "1.4×", 4: "> 2× (> max)"}


def test_tables_from_a_hand_made_results_file(tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in HAND_ROWS))
    (out / "config.json").write_text(json.dumps({"hash": "x", "config": {
        "dataset": {"name": "hand"}, "backend": {"generator": "g"}}}))
    rep = write_report(out)
    md = (out / "report.md").read_text()
    acc = table(md, "Accuracy (%)")
    assert acc["pf"] == ["50.0 [15.0, 85.0]", "75.0 [30.1, 95.4] (1 failed)", "–"]
    assert acc["best-of-n"] == ["25.0 [4.6, 69.9]", "50.0 [15.0, 85.0]", "100.0 [51.0, 100.0]"]
    assert acc["greedy"] == ["25.0 [4.6, 69.9]"] * 3  # budget-free: repeated
    assert table(md, "Mean generated tokens per problem")["pf"][0] == "25"
    assert table(md, "Mean wall time per problem (s)")["pf"][0] == "2.50"
    # pf@4: every problem has a correct candidate; weights put (.8 + 1 + .5 + .3)/4 on correct
    # answers; uniformly (3/4 + 1 + 1/2 + 1/4)/4
    assert table(md, "pass@N: some candidate correct (%)")["pf"][1] == "100.0"
    assert table(md, "Expected accuracy under the weights (%)")["pf"][1] == "65.0"
    assert table(md, "Mean candidate accuracy, uniform weights (%)")["pf"][1] == "62.5"
    # best-of-n reaches pf@1's 50% at N=4 (4x); pf@4's 75% halfway (log2) between 4 and 16
    assert table(md, "Budget multiplier")["best-of-n"] == ["4.0×", "2.0×"]
    assert "greedy" not in table(md, "Budget multiplier")
    assert rep.budgets == [1, 4, 16]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pf@4"]["errors"] == 1 and summary["pf@4"]["correct"] == 3


def test_report_of_a_real_sweep_renders_plots_and_an_index(tmp_path: Path):
    from matplotlib.image import imread

    from particlescale.eval.store import load_rows
    from particlescale.eval.sweep import run_sweep

    cfg = config(tmp_path, methods="pf,greedy,best-of-n", budgets=(1, 2, 4), seeds=(0, 1),
                 traces=True)
    run_sweep(cfg)
    rep = write_report(cfg.out)
    rows = list(load_rows(cfg.out / RESULTS).latest().values())
    acc = table(rep.markdown, "Accuracy (%)")
    for m in ("pf", "best-of-n"):
        for i, b in enumerate((1, 2, 4)):
            sel = [r for r in rows if r["method"] == m and r["budget"] == b]
            k, n = sum(r["correct"] for r in sel), len(sel)
            assert n == 12
            assert acc[m][i].startswith(f"{100 * k / n:.1f} [")
    for name in ("scaling.png", "tokens.png"):
        img = imread(cfg.out / name)
        assert img.shape[0] > 300 and img.shape[1] > 500
        assert img.std() > 0.05  # not blank
    index = (cfg.out / "index.html").read_text()
    links = re.findall(r'href="(traces/[^"]+)"', index)
    assert len(links) == len(rows)
    assert all((cfg.out / link).exists() and link.endswith(".html") for link in links)
    assert index.count("<tr>") == 1 + 6  # header + one row per problem


def test_report_without_results_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        write_report(tmp_path)
