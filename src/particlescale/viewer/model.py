"""From a :class:`~particlescale.types.Trace` to what the page draws.

A trace is a list of populations (``TraceStep``), each tagged with a *band*: ``pf``,
``iteration k`` (particle Gibbs), ``chain c iteration k`` (parallel tempering), ``beam``,
``subtree k`` (DVTS), ``samples`` / ``greedy`` (sampling baselines). The page draws:

- one horizontal **lane** per band, except that parallel tempering's bands ``chain c iteration
  k`` share the lane ``chain c`` and sit in it side by side as **segments** (one per iteration);
- in a segment, one **column** per step (x = step) and one **row** per particle. Rows are
  ordered by the parent's row, then by slot, so ancestor → child edges never cross: the
  drawing of a genealogy is planar, and a resampling collapse shows as a fan;
- per node: its normalised weight ``w`` (size), whether it is finished, its extracted answer
  and, when the gold answer is known, whether that answer is correct (colour);
- per segment: the answers of its final population (for beam search, of every finished
  beam: finished beams leave the search) with their count and summed weight, and label groups
  to draw next to *terminal* finished nodes (finished nodes with no child in the band: the final
  population, resampled-away finished particles, the leaves of a beam), one label per run of
  adjacent rows giving the same answer.

Everything here is plain JSON-ready data; ``render_html`` embeds it and the page's script only
maps (lane, segment, column, row) to pixels. Non-finite numbers become ``None`` (or the
strings ``"inf"``/``"-inf"``) because JSON has no infinities.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from particlescale.answers import normalize_answer
from particlescale.quick_grading import grade_numeric, grade_text
from particlescale.types import Trace, TraceNode

Verdict = Callable[[str | None], bool | None]

_PT_BAND = re.compile(r"(chain \d+) (iteration \d+)")


def lane_of(band: str) -> tuple[str, str | None]:
    """(lane, segment label): PT's ``chain c iteration k`` -> (``chain c``, ``iteration k``)."""
    m = _PT_BAND.fullmatch(band)
    if m:
        return m.group(1), m.group(2)
    return band, None


ExtraGrader = Callable[[str, list[str]], list[bool]]
"""``(gold, answers) -> correct?`` for answers the quick rules judged wrong (e.g. math-verify,
passed in by the CLI: the viewer itself imports no evaluation harness)."""


def grade_answers(gold: str | None, answers: Iterable[str | None], *,
                  extra: ExtraGrader | None = None,
                  extra_name: str = "math-verify") -> tuple[dict[str, bool], str]:
    """``answer -> correct?`` for each distinct answer, and the name of the rule used.

    Rules, in order: the process-free numeric and word-answer graders (``025`` = ``25``,
    ``1,000`` = ``1000``; :mod:`particlescale.quick_grading`), then equality of
    :func:`~particlescale.answers.normalize_answer` keys. With ``extra``, answers still judged
    wrong go to it (the CLI's ``--math-verify`` passes the harness's math-verify grader).
    No gold answer gives an empty map and the rule ``"none"``.
    """
    if gold is None or not str(gold).strip():
        return {}, "none"
    gold = str(gold)
    key_gold = normalize_answer(gold)
    rules = [grade_numeric, grade_text]
    verdicts: dict[str, bool] = {}
    for a in dict.fromkeys(a for a in answers if a is not None and a.strip()):
        ok = normalize_answer(a) == key_gold
        for rule in rules if not ok else []:
            try:
                grade = rule(gold, a)
            except Exception:  # a grader failure must not stop the drawing
                grade = None
            if grade is not None:
                ok = bool(grade.correct)
                break
        verdicts[a] = ok
    name = "quick-grading"
    if extra is not None:
        todo = [a for a, ok in verdicts.items() if not ok]
        for a, ok in zip(todo, extra(gold, todo) if todo else [], strict=True):
            verdicts[a] = bool(ok)
        name += f"+{extra_name}"
    return verdicts, name


def finite(x: float | None) -> float | str | None:
    """A JSON-safe number: NaN -> None, +-inf -> "inf" / "-inf"."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _answer_key(answer: str | None) -> str:
    return "" if answer is None else (normalize_answer(answer) or answer)


def _layout_band(steps: list[tuple[int, list[TraceNode]]]) -> dict[int, tuple[int, int]]:
    """node id -> (column, row) for one band's populations, parent-ordered (planar)."""
    pos: dict[int, tuple[int, int]] = {}
    for col, (_, nodes) in enumerate(steps):
        order = sorted(
            range(len(nodes)),
            key=lambda i: (pos[nodes[i].parent][1] if nodes[i].parent in pos else -1, i),
        )
        for row, i in enumerate(order):
            pos[nodes[i].id] = (col, row)
    return pos


def trace_view(trace: Trace, *, extra: ExtraGrader | None = None) -> dict[str, Any]:
    """The JSON-ready view model of one trace (see the module docstring)."""
    gold = trace.problem.get("answer")
    verdicts, rule = grade_answers(
        gold, (n.answer for s in trace.steps for n in s.nodes if n.finished),
        extra=extra)

    known = rule != "none"

    def grader(answer: str | None) -> bool | None:
        if not known:
            return None
        return verdicts.get(answer, False) if answer is not None else False

    # Bands in order of first appearance; PT bands grouped into lanes of segments.
    band_steps: dict[str, list[int]] = {}
    for i, s in enumerate(trace.steps):
        band_steps.setdefault(s.band, []).append(i)
    # Beam search drops finished beams from the frontier: its answers are its finished leaves.
    leaves = trace.method == "beam"
    lanes: list[dict[str, Any]] = []
    lane_index: dict[str, int] = {}
    texts: list[str] = []
    text_index: dict[str, int] = {}
    nodes_out: list[dict[str, Any]] = []
    steps_out: list[dict[str, Any]] = []

    for band, idxs in band_steps.items():
        lane_name, seg_label = lane_of(band)
        if lane_name not in lane_index:
            lane_index[lane_name] = len(lanes)
            lanes.append({"name": lane_name, "segments": []})
        lane = lanes[lane_index[lane_name]]
        seg_no = len(lane["segments"])
        populations = [(i, trace.steps[i].nodes) for i in idxs]
        pos = _layout_band(populations)
        has_child = {n.parent for _, nodes in populations for n in nodes}
        seg_step_ids = []
        terminal: list[tuple[int, int, TraceNode, float]] = []
        final: list[tuple[int, int, TraceNode, float]] = []
        for col, (si, nodes) in enumerate(populations):
            st = trace.steps[si]
            step_id = len(steps_out)
            seg_step_ids.append(step_id)
            steps_out.append({
                "band": band, "lane": lane_index[lane_name], "seg": seg_no, "col": col,
                "t": st.t, "n": len(nodes), "ess": finite(st.ess), "resampled": st.resampled,
                "temperature": finite(st.temperature),
            })
            for n in nodes:
                col_, row = pos[n.id]
                w = math.exp(n.log_weight) if math.isfinite(n.log_weight) else 0.0
                tx = text_index.setdefault(n.text, len(texts))
                if tx == len(texts):
                    texts.append(n.text)
                ok = grader(n.answer) if n.finished else None
                nodes_out.append({
                    "id": n.id, "parent": n.parent, "lane": lane_index[lane_name],
                    "seg": seg_no, "col": col_, "row": row, "step": step_id,
                    "w": w, "logw": finite(n.log_weight), "reward": finite(n.reward),
                    "score": finite(n.score), "finished": n.finished, "answer": n.answer,
                    "ok": ok, "ref": n.reference, "text": tx,
                })
                if n.finished and n.id not in has_child:
                    terminal.append((col_, row, n, w))
                if n.finished and col == len(populations) - 1:
                    final.append((col_, row, n, w))
        lane["segments"].append({
            "band": band, "label": seg_label, "cols": len(populations),
            "rows": max((len(nodes) for _, nodes in populations), default=0),
            "steps": seg_step_ids,
            "answers": _answer_summary(terminal if leaves else final, grader),
            "labels": _label_groups(terminal, grader),
        })

    return {
        "method": trace.method,
        "problem": {"id": trace.problem.get("id"), "question": trace.problem.get("question"),
                    "answer": gold},
        "grading": rule,
        "answers_of": "finished beams" if leaves else "final step",
        "config": {k: _jsonable(v) for k, v in trace.config.items()},
        "events": [{k: _jsonable(v) for k, v in e.items()} for e in trace.events],
        "lanes": lanes,
        "steps": steps_out,
        "nodes": nodes_out,
        "texts": texts,
        "node_count": len(nodes_out),
    }


def _answer_summary(nodes: list[tuple[int, int, TraceNode, float]],
                    grader: Verdict) -> list[dict[str, Any]]:
    """Answers of finished nodes: count, summed weight, correct?; heaviest first."""
    groups: dict[str, dict[str, Any]] = {}
    for _, _, n, w in nodes:
        g = groups.setdefault(_answer_key(n.answer), {
            "answer": n.answer, "count": 0, "weight": 0.0, "ok": grader(n.answer)})
        g["count"] += 1
        g["weight"] += w
    return sorted(groups.values(), key=lambda g: (-g["weight"], -g["count"]))


def _label_groups(terminal: list[tuple[int, int, TraceNode, float]],
                  grader: Verdict) -> list[dict[str, Any]]:
    """Runs of adjacent rows in one column whose terminal nodes give the same answer."""
    out: list[dict[str, Any]] = []
    for col, row, n, _ in sorted(terminal, key=lambda x: (x[0], x[1])):
        key = _answer_key(n.answer)
        last = out[-1] if out else None
        if last and last["col"] == col and last["row1"] == row - 1 and last["key"] == key:
            last["row1"] = row
            last["count"] += 1
            continue
        out.append({"col": col, "row0": row, "row1": row, "key": key, "answer": n.answer,
                    "ok": grader(n.answer), "count": 1})
    for g in out:
        del g["key"]
    return out


def _jsonable(v: Any) -> Any:
    """Config and event values as JSON (non-finite floats made safe, unknown objects as text)."""
    if isinstance(v, float):
        return finite(v)
    if v is None or isinstance(v, str | int | bool):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return str(v)
