"""Reports of a sweep: tables, the paper's scaling plot, the budget multiplier, an HTML index.

From the latest row of every (problem, method, budget, seed) in ``DIR/results.jsonl``:

* **accuracy** per method and budget over the rows that finished (failed rows are counted
  apart), with a 95% **Wilson** score interval
  ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``, z = 1.96;
* mean generated tokens and mean wall time per problem;
* **pass@N** (some candidate is correct: the oracle), **expected accuracy under the weights**
  (Σ wᵢ·correctᵢ: what sampling the answer from the final weights would score) and the mean
  candidate accuracy (the same with uniform weights);
* the **budget multiplier**: for each baseline and each budget b of the reference method (pf),
  the budget x at which the baseline first reaches pf's accuracy at b, read off the baseline's
  curve linearly interpolated in log2(budget); reported as x/b ("4.0×"), "≤ m×" when the
  baseline's smallest budget already matches, "> m×" when its largest budget never does;
* ``scaling.png`` (accuracy vs budget, log2 axis, greedy as a horizontal line) and
  ``tokens.png`` (accuracy vs mean generated tokens: the compute-matched view), drawn with
  matplotlib's Agg backend; ``index.html`` lists problems with each method's verdicts, linked
  to the trace pages when the sweep wrote traces.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from particlescale.errors import ConfigError
from particlescale.eval.specs import BUDGET_FREE
from particlescale.eval.store import RESULTS, load_rows, read_config
from particlescale.rewards.registry import spec_uses_answer_key
from particlescale.stats import wilson


@dataclass
class Cell:
    """Statistics of one method at one budget."""

    method: str
    budget: int
    n: int = 0
    correct: int = 0
    errors: int = 0
    tokens: float = 0.0
    wall: float = 0.0
    oracle: int = 0
    weighted: float = 0.0
    uniform: float = 0.0
    reused: bool = False

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.correct, self.n)

    def mean(self, total: float) -> float:
        return total / self.n if self.n else float("nan")


def cells_from_rows(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, int], Cell]:
    cells: dict[tuple[str, int], Cell] = {}
    for r in rows:
        key = (r["method"], int(r["budget"]))
        c = cells.setdefault(key, Cell(*key))
        if r.get("error"):
            c.errors += 1
            continue
        c.n += 1
        c.correct += bool(r.get("correct"))
        usage = r.get("usage") or {}
        c.tokens += float(usage.get("generated_tokens", 0))
        c.wall += float(usage.get("wall_time", 0.0))
        cands = r.get("candidates") or []
        c.oracle += any(x.get("correct") for x in cands)
        c.weighted += sum(float(x.get("weight", 0.0)) for x in cands if x.get("correct"))
        copies = sum(int(x.get("copies", 1)) for x in cands)
        if copies:
            c.uniform += sum(int(x.get("copies", 1)) for x in cands if x.get("correct")) / copies
        c.reused |= r.get("reused_from") is not None
    return cells


def interpolate_budget(curve: list[tuple[int, float]], target: float) -> tuple[str, float | None]:
    """Where ``curve`` (budget, accuracy) first reaches ``target`` on a log2-budget axis:
    ("at", x), ("below", smallest budget) or ("never", None)."""
    pts = sorted(curve)
    for i, (b, acc) in enumerate(pts):
        if acc >= target:
            if i == 0:
                return ("below", float(b))
            b0, a0 = pts[i - 1]
            l0, l1 = math.log2(b0), math.log2(b)
            frac = (target - a0) / (acc - a0)
            return ("at", 2 ** (l0 + frac * (l1 - l0)))
    return ("never", None)


def budget_multiplier(ref: list[tuple[int, float]], base: list[tuple[int, float]]
                      ) -> dict[int, str]:
    """For each reference budget b: how much more budget the baseline needs (text)."""
    out = {}
    max_base = max(b for b, _ in base)
    for b, acc in sorted(ref):
        kind, x = interpolate_budget(base, acc)
        if kind == "at":
            assert x is not None
            out[b] = f"{x / b:.1f}×"
        elif kind == "below":
            assert x is not None
            out[b] = f"≤ {x / b:g}×"
        else:
            out[b] = f"> {max_base / b:g}× (> max)"
    return out


@dataclass
class Report:
    markdown: str
    cells: dict[tuple[str, int], Cell]
    methods: list[str]
    budgets: list[int]
    files: list[Path] = field(default_factory=list)


def _is_budget_free(method: str) -> bool:
    return method.split("(", 1)[0] in BUDGET_FREE


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def build_report(rows: list[dict[str, Any]], config: dict[str, Any] | None = None,
                 reference: str = "pf") -> Report:
    if not rows:
        raise ConfigError("report: no results yet; run `particlescale eval` first")
    cells = cells_from_rows(rows)
    order = (config or {}).get("config", {}).get("methods") or []
    seen = list(dict.fromkeys(r["method"] for r in rows))
    methods = [m for m in order if m in seen] + [m for m in seen if m not in order]
    budgets = sorted({b for (m, b) in cells if not _is_budget_free(m)}) or \
        sorted({b for (_, b) in cells})

    def cell(m: str, b: int) -> Cell | None:
        if _is_budget_free(m):
            return next((c for (mm, _), c in cells.items() if mm == m), None)
        return cells.get((m, b))

    def table(title: str, fmt: Any) -> list[str]:
        lines = [f"### {title}", "", "| method | " + " | ".join(f"N={b}" for b in budgets) + " |",
                 "|---|" + "---|" * len(budgets)]
        for m in methods:
            vals = []
            for b in budgets:
                c = cell(m, b)
                vals.append("–" if c is None or (c.n == 0 and c.errors == 0) else fmt(c))
            mark = " †" if any(cells[k].reused for k in cells if k[0] == m) else ""
            lines.append(f"| {m}{mark} | " + " | ".join(vals) + " |")
        return [*lines, ""]

    def acc_fmt(c: Cell) -> str:
        if c.n == 0:
            return f"– ({c.errors} failed)"
        lo, hi = c.interval
        s = f"{_pct(c.accuracy)} [{_pct(lo)}, {_pct(hi)}]"
        return s + (f" ({c.errors} failed)" if c.errors else "")

    cfg = (config or {}).get("config", {})
    ds = cfg.get("dataset", {})
    be = cfg.get("backend", {})
    n_problems = len({r["problem_id"] for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    md = [f"# Evaluation: {ds.get('name', '?')}", "",
          f"{n_problems} problems, seeds {', '.join(map(str, seeds))}; generator "
          f"`{be.get('generator', '?')}` model `{be.get('model') or 'default'}`, reward "
          f"`{be.get('reward') or 'default'}`; common options `{cfg.get('options') or {}}`.",
          "Accuracy in % over finished rows (problem x seed) with a 95% Wilson interval; "
          "failed rows are counted apart."]
    if spec_uses_answer_key(str(be.get("reward") or "")):
        md.append("**Answer key:** the reward reads each problem's worked solution "
                  "(`reference`): these accuracies measure the algorithms under a PRM of known "
                  "quality; they are not the system's accuracy.")
    if any(_is_budget_free(m) for m in methods):
        md.append("Greedy does not depend on the budget: it runs once and is repeated across "
                  "columns.")
    if any(c.reused for c in cells.values()):
        md.append("† Reused samples: the sampled baselines share one sample set per problem "
                  "and seed (each picks its answer from it), and with --reuse-samples budgets "
                  "below the largest are subsets of the largest budget's samples. Tokens and "
                  "wall time are what each method costs on its own (a subset's prompt tokens "
                  "and wall time prorated, its generated tokens its own); the sweep generated "
                  "them once.")
    md.append("")
    md += table("Accuracy (%)", acc_fmt)
    md += table("Mean generated tokens per problem", lambda c: f"{c.mean(c.tokens):.0f}")
    md += table("Mean wall time per problem (s)", lambda c: f"{c.mean(c.wall):.2f}")
    md += table("pass@N: some candidate correct (%)", lambda c: _pct(c.mean(c.oracle)))
    md += table("Expected accuracy under the weights (%)", lambda c: _pct(c.mean(c.weighted)))
    md += table("Mean candidate accuracy, uniform weights (%)",
                lambda c: _pct(c.mean(c.uniform)))
    md += _multiplier_section(cells, methods, reference)
    return Report("\n".join(md), cells, methods, budgets)


def _curve(cells: dict[tuple[str, int], Cell], m: str) -> list[tuple[int, float]]:
    return sorted((b, c.accuracy) for (mm, b), c in cells.items() if mm == m and c.n)


def _multiplier_section(cells: dict[tuple[str, int], Cell], methods: list[str],
                        reference: str) -> list[str]:
    ref = _curve(cells, reference)
    if not ref:
        return ["### Budget multiplier", "", f"(no rows of the reference method "
                f"{reference!r}; pass --reference)", ""]
    rb = [b for b, _ in ref]
    lines = ["### Budget multiplier", "",
             f"How much more budget each baseline needs to match `{reference}`'s accuracy at "
             "each budget (interpolated on the log2-budget axis).", "",
             "| baseline | " + " | ".join(f"N={b}" for b in rb) + " |",
             "|---|" + "---|" * len(rb)]
    for m in methods:
        if m == reference or _is_budget_free(m):
            continue
        base = _curve(cells, m)
        if not base:
            continue
        mult = budget_multiplier(ref, base)
        lines.append(f"| {m} | " + " | ".join(mult[b] for b in rb) + " |")
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------
# Plots


def plot_scaling(rep: Report, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.4), dpi=120)
    for m in rep.methods:
        curve = _curve(rep.cells, m)
        if not curve:
            continue
        if _is_budget_free(m):
            ax.axhline(100 * curve[0][1], linestyle="--", color="grey", label=m)
            continue
        xs = [b for b, _ in curve]
        ax.plot(xs, [100 * a for _, a in curve], marker="o", label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(rep.budgets, [str(b) for b in rep.budgets])
    ax.set_xlabel("budget (particles / samples)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_tokens(rep: Report, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.4), dpi=120)
    for m in rep.methods:
        pts = sorted((c.mean(c.tokens), 100 * c.accuracy) for (mm, _), c in rep.cells.items()
                     if mm == m and c.n)
        if not pts:
            continue
        style = {"linestyle": "--", "color": "grey"} if _is_budget_free(m) else {}
        ax.plot([max(x, 1.0) for x, _ in pts], [y for _, y in pts], marker="o", label=m, **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean generated tokens per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title + " (compute-matched)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# HTML index


def trace_page(out: Path, trace_rel: str) -> str:
    """The link for a trace: its HTML view (rendered with ``particlescale.viewer`` if missing
    or older than the JSON), or the JSON itself when the viewer is unavailable or fails."""
    src = out / trace_rel
    page = src.with_suffix(".html")
    try:
        from particlescale.viewer import write_view
    except ImportError:
        return trace_rel
    if not page.exists() or page.stat().st_mtime < src.stat().st_mtime:
        try:
            write_view([src], page)
        except Exception:  # a broken trace must not stop the report; link the JSON instead
            return trace_rel
    return str(page.relative_to(out))


def write_index(out: Path, rows: list[dict[str, Any]], rep: Report, title: str) -> Path:
    by_problem: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    gold: dict[str, str | None] = {}
    for r in rows:
        by_problem[r["problem_id"]][r["method"]].append(r)
        gold[r["problem_id"]] = r.get("gold")
    seeds = {int(r["seed"]) for r in rows}
    head = "".join(f"<th>{html.escape(m)}</th>" for m in rep.methods)
    body = []
    for pid, per in by_problem.items():
        cells = []
        for m in rep.methods:
            badges = []
            for r in sorted(per.get(m, []), key=lambda r: (int(r["budget"]), int(r["seed"]))):
                label = f"N={r['budget']}" + (f"·s{r['seed']}" if len(seeds) > 1 else "")
                cls = "err" if r.get("error") else ("ok" if r.get("correct") else "no")
                tip = html.escape(r.get("error") or f"answer: {r.get('answer')}", quote=True)
                text = f"{label} {'!' if cls == 'err' else ('✓' if cls == 'ok' else '✗')}"
                if r.get("trace") and (out / r["trace"]).exists():
                    href = html.escape(trace_page(out, r["trace"]), quote=True)
                    badges.append(f'<a class="{cls}" title="{tip}" href="{href}">{text}</a>')
                else:
                    badges.append(f'<span class="{cls}" title="{tip}">{text}</span>')
            cells.append(f"<td>{' '.join(badges)}</td>")
        body.append(f"<tr><td>{html.escape(pid)}</td><td>{html.escape(str(gold[pid]))}</td>"
                    + "".join(cells) + "</tr>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; }}
a, span {{ display: inline-block; margin: 1px; padding: 0 4px; border-radius: 3px;
  text-decoration: none; }}
.ok {{ background: #d4f4d4; color: #185c18; }} .no {{ background: #f8d7d7; color: #7a1a1a; }}
.err {{ background: #eee; color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p><a href="report.md">report.md</a> · <a href="scaling.png">scaling.png</a> ·
<a href="tokens.png">tokens.png</a> · ✓ correct, ✗ wrong, ! failed; links open the trace
view.</p>
<img src="scaling.png" alt="accuracy vs budget" width="560">
<table><thead><tr><th>problem</th><th>gold</th>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_report(out: Path, *, reference: str = "pf", html: bool = True) -> Report:
    """Read ``out/results.jsonl`` and write report.md, scaling.png, tokens.png, index.html."""
    out = Path(out)
    if not (out / RESULTS).exists():
        raise ConfigError(f"report: {out / RESULTS} not found; pass the --out directory of "
                          "`particlescale eval`")
    rows = list(load_rows(out / RESULTS).latest().values())
    config = read_config(out)
    rep = build_report(rows, config, reference)
    title = f"{config.get('config', {}).get('dataset', {}).get('name', out.name)}"
    (out / "report.md").write_text(rep.markdown + "\n", encoding="utf-8")
    rep.files.append(out / "report.md")
    rep.files.append(plot_scaling(rep, out / "scaling.png", title))
    rep.files.append(plot_tokens(rep, out / "tokens.png", title))
    if html:
        rep.files.append(write_index(out, rows, rep, title))
    (out / "summary.json").write_text(json.dumps(
        {f"{m}@{b}": {"n": c.n, "correct": c.correct, "errors": c.errors,
                      "accuracy": None if c.n == 0 else c.accuracy, "interval": c.interval,
                      "mean_generated_tokens": c.mean(c.tokens) if c.n else None,
                      "mean_wall_time": c.mean(c.wall) if c.n else None,
                      "reused": c.reused}
         for (m, b), c in sorted(rep.cells.items())}, indent=2))
    rep.files.append(out / "summary.json")
    return rep
