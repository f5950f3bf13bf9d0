"""The trace viewer: layout, safety and loading in Python; drawing and interaction in a real
headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Screenshots land in ``artifacts/viewer/`` (gitignored) for a human to look at.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from particlescale.answers import normalize_answer
from particlescale.cli.view import math_verify_grader
from particlescale.testing.traces import GOLD, HOSTILE, make_trace, particle_steps, solve_in_thread
from particlescale.types import Trace
from particlescale.viewer import TraceFileError, load_trace, render_html, trace_view, write_view
from particlescale.viewer.html import embed_json

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "viewer"
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
METHODS = ["pf", "pg", "pt", "beam", "dvts", "best-of-n", "greedy"]


def _trace(method: str, **kw: object) -> Trace:
    kw.setdefault("budget", 12 if method != "pt" else 24)
    kw.setdefault("seed", 3)
    return make_trace(method, **kw)


# ---- Python side: view model --------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_layout_places_every_node_once_without_crossing_edges(method: str) -> None:
    trace = _trace(method)
    view = trace_view(trace)
    assert view["node_count"] == len(view["nodes"]) == particle_steps(trace)
    assert len({n["id"] for n in view["nodes"]}) == particle_steps(trace)
    cells: dict[tuple[int, int, int], list[int]] = {}
    for n in view["nodes"]:
        cells.setdefault((n["lane"], n["seg"], n["col"]), []).append(n["row"])
    for rows in cells.values():
        assert sorted(rows) == list(range(len(rows)))  # rows 0..n-1, each once
    # Planar: along a column, children's parents (in the previous column) never go back up.
    pos = {n["id"]: n for n in view["nodes"]}
    for (lane, seg, col), _ in cells.items():
        column = sorted((n for n in view["nodes"]
                         if (n["lane"], n["seg"], n["col"]) == (lane, seg, col)),
                        key=lambda n: n["row"])
        parent_rows = [pos[n["parent"]]["row"] for n in column
                       if n["parent"] in pos and pos[n["parent"]]["col"] == col - 1]
        assert parent_rows == sorted(parent_rows)


def test_lanes_follow_the_bands_of_each_method() -> None:
    lanes = {m: [(lane["name"], [s["label"] for s in lane["segments"]])
                 for lane in trace_view(_trace(m))["lanes"]] for m in ("pf", "pg", "pt", "dvts")}
    assert lanes["pf"] == [("pf", [None])]
    assert [name for name, _ in lanes["pg"]] == [f"iteration {k}" for k in range(1, 5)]
    # PT: one lane per chain, its iterations side by side.
    assert lanes["pt"] == [(f"chain {c}", [f"iteration {k}" for k in range(1, 5)])
                           for c in (1, 2)]
    assert all(name.startswith("subtree ") for name, _ in lanes["dvts"])


def test_pg_reference_path_is_marked_and_linked() -> None:
    view = trace_view(_trace("pg"))
    by_id = {n["id"]: n for n in view["nodes"]}
    refs = [n for n in view["nodes"] if n["ref"]]
    assert refs, "particle Gibbs after iteration 1 keeps a reference particle"
    assert all(n["lane"] > 0 for n in refs)  # iteration 1 has no reference yet
    for n in refs:
        if n["col"] > 0:
            assert by_id[n["parent"]]["ref"]  # the reference path is one unbroken line


def test_answers_are_coloured_against_the_gold_answer() -> None:
    trace = _trace("pf", horizon=5)
    view = trace_view(trace)
    finished = [n for n in view["nodes"] if n["finished"]]
    assert {n["answer"] for n in finished} >= {"72", "96"}
    for n in finished:
        assert n["ok"] is (normalize_answer(n["answer"]) == normalize_answer(GOLD))
    assert all(n["ok"] is None for n in view["nodes"] if not n["finished"])
    no_gold = trace_view(_trace("pf", horizon=5, gold=None))
    assert all(n["ok"] is None for n in no_gold["nodes"])
    # The final population's answers add up to the whole weight.
    (seg,) = view["lanes"][0]["segments"]
    assert sum(a["weight"] for a in seg["answers"]) == pytest.approx(1.0)
    assert sum(a["count"] for a in seg["answers"]) == len(trace.steps[-1].nodes)


def test_numeric_forms_of_the_gold_answer_count_as_correct() -> None:
    trace = _trace("pf", horizon=4)
    node = next(n for s in trace.steps for n in s.nodes if n.finished)
    node.answer = "72.0"
    trace.problem["answer"] = "\\$72"
    view = trace_view(trace)
    assert next(n for n in view["nodes"] if n["id"] == node.id)["ok"] is True


@pytest.mark.slow
def test_math_verify_grades_equivalent_expressions() -> None:
    trace = _trace("pf", horizon=4)
    finished = [n for s in trace.steps for n in s.nodes if n.finished]
    finished[0].answer, finished[-1].answer = "\\pi/2", "\\pi/3"
    trace.problem["answer"] = "\\frac{\\pi}{2}"
    ok = {n["id"]: n["ok"] for n in trace_view(trace)["nodes"]}
    assert ok[finished[0].id] is False  # plain normalised equality cannot see it
    ok = {n["id"]: n["ok"] for n in trace_view(trace, extra=math_verify_grader())["nodes"]}
    assert ok[finished[0].id] is True
    assert ok[finished[-1].id] is False


def test_embedded_data_cannot_break_out_of_its_script_block() -> None:
    trace = _trace("pf", horizon=4)
    evil = "</script><script>alert(1)</script><!-- \u2028 & </SCRIPT >"
    trace.steps[0].nodes[0].text = evil
    trace.problem["question"] = "Is 1 < 2 </script>?"
    page = render_html([trace], title="<b>title</b>")
    assert page.lower().count("</script") == 2  # the data block and the viewer script
    assert "<title>&lt;b&gt;title&lt;/b&gt;</title>" in page
    m = re.search(r'<script type="application/json" id="ps-data">(.*?)</script>', page, re.S)
    assert m is not None
    data = json.loads(m.group(1))
    assert evil in data["traces"][0]["texts"]
    assert data["traces"][0]["problem"]["question"] == "Is 1 < 2 </script>?"
    assert json.loads(embed_json({"x": float("1e308")}))["x"] == 1e308


def test_non_finite_numbers_stay_valid_json() -> None:
    trace = _trace("pf", horizon=4)
    trace.steps[0].temperature = float("inf")
    trace.steps[0].ess = float("nan")
    trace.steps[0].nodes[0].log_weight = float("-inf")
    view = trace_view(trace)
    json.dumps(view, allow_nan=False)
    assert view["steps"][0]["temperature"] == "inf"
    assert view["steps"][0]["ess"] is None
    assert view["nodes"][0]["w"] == 0.0


# ---- Python side: files and CLI -----------------------------------------------------------

def test_trace_files_round_trip_and_results_are_accepted(tmp_path: Path) -> None:
    trace = _trace("beam")
    p = tmp_path / "beam.json"
    p.write_text(json.dumps(trace.to_dict()))
    assert load_trace(p) == trace
    wrapped = tmp_path / "result.json"
    wrapped.write_text(json.dumps({"answer": "72", "trace": trace.to_dict()}))
    assert load_trace(wrapped) == trace
    out = write_view([p, trace], tmp_path / "sub" / "two.html")
    assert out.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such trace file"),
    ("{not json", "invalid JSON at line 1"),
    ("[1, 2]", "not a particlescale trace"),
    ('{"method": "pf", "steps": [{"band": "pf"}]}', "malformed trace"),
    ('{"version": 99, "method": "pf", "steps": []}', "newer than this viewer"),
    ("\udcff", "not a text file"),
])
def test_bad_trace_files_raise_one_clear_error(tmp_path: Path, content: str | None,
                                               message: str) -> None:
    p = tmp_path / "t.json"
    if content == "\udcff":
        p.write_bytes(b"\xff\xfe\x00garbage")
    elif content is not None:
        p.write_text(content)
    with pytest.raises(TraceFileError, match=message) as e:
        load_trace(p)
    assert str(p) in str(e.value)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from particlescale.cli import main; main()",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_cli_writes_the_page_and_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    a, b = tmp_path / "pf.json", tmp_path / "beam.json"
    a.write_text(json.dumps(_trace("pf").to_dict()))
    b.write_text(json.dumps(_trace("beam").to_dict()))
    r = _cli("view", str(a), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == tmp_path / "pf.html"
    assert (tmp_path / "pf.html").stat().st_size > 0
    r = _cli("view", str(a), str(b), "-o", "cmp.html", "--title", "pf vs beam", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "<title>pf vs beam</title>" in (tmp_path / "cmp.html").read_text()
    (tmp_path / "bad.json").write_text("{")
    for args in (["missing.json"], ["bad.json"], [str(a), "-o", "x.txt"], [str(a), "-o", str(a)]):
        r = _cli("view", *args, cwd=tmp_path)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr


# ---- In the browser -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium (make test installs it: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM),
            headless=True, args=BROWSER_ARGS, viewport={"width": 1600, "height": 1000})
        yield context
        context.close()


def point_at(page: object, selector: str) -> tuple[float, float]:
    """Viewport coordinates of the centre of an element (a node circle)."""
    loc = page.locator(selector)  # type: ignore[attr-defined]
    loc.scroll_into_view_if_needed()
    box = loc.bounding_box()
    assert box is not None, selector
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def click_node(page: object, selector: str) -> None:
    """A real mouse click where the node is drawn (the page picks the node under the mouse)."""
    page.mouse.click(*point_at(page, selector))  # type: ignore[attr-defined]


class Page:
    """A page that records console errors and every network request it makes."""

    def __init__(self, context: object, html_path: Path) -> None:
        self.url = html_path.resolve().as_uri()
        self.page = context.new_page()  # type: ignore[attr-defined]
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        started = time.perf_counter()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        self.load_s = time.perf_counter() - started

    def offline_and_clean(self) -> None:
        assert self.errors == []
        assert self.requests == [self.url]  # the file itself; nothing else, ever

    def node_counts(self) -> list[tuple[int, int]]:
        """(data-node-count, number of drawn node circles) per trace section."""
        return [tuple(x) for x in self.page.eval_on_selector_all(
            "section.trace",
            "els => els.map(e => [Number(e.dataset.nodeCount),"
            " e.querySelectorAll('circle.node').length])")]

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        return path


def _page(browser: object, tmp_path: Path, traces: list[Trace], name: str) -> Page:
    return Page(browser, write_view(traces, tmp_path / f"{name}.html"))


@pytest.mark.parametrize("method", METHODS)
def test_page_draws_every_particle_step_offline(browser: object, tmp_path: Path,
                                                method: str) -> None:
    trace = _trace(method)
    page = _page(browser, tmp_path, [trace], method)
    page.offline_and_clean()
    assert page.node_counts() == [(particle_steps(trace), particle_steps(trace))]
    dom = page.page
    # Colours: correct / incorrect finished nodes as graded in this test, independently.
    gold = normalize_answer(GOLD)
    finished = [n for s in trace.steps for n in s.nodes if n.finished]
    assert dom.locator("circle.node.ok").count() == sum(
        normalize_answer(n.answer) == gold for n in finished)
    assert dom.locator("circle.node.bad").count() == sum(
        normalize_answer(n.answer) != gold for n in finished)
    assert dom.locator("circle.node.live").count() == particle_steps(trace) - len(finished)
    # ESS strip: one point per step with an ESS, one marker per resampling.
    assert dom.locator("circle.ess-pt").count() == sum(s.ess is not None for s in trace.steps)
    assert dom.locator("path.resample").count() == sum(s.resampled for s in trace.steps)
    refs = sum(n.reference for s in trace.steps for n in s.nodes)
    assert dom.locator("circle.node.ref").count() == refs
    # The reference path: one highlighted path per lane where a reference slot continues.
    ids = {n.id: n for s in trace.steps for n in s.nodes}
    ref_bands = {s.band for s in trace.steps for n in s.nodes
                 if n.reference and n.parent in ids and ids[n.parent].reference}
    assert (len(ref_bands) > 0) == (method in ("pg", "pt"))
    ref_lanes = len(ref_bands) if method == "pg" else len({b.split(" iter")[0] for b in ref_bands})
    assert dom.locator("path.ref-edges").count() == ref_lanes
    page.shot(method)


def test_an_empty_trace_still_loads(browser: object, tmp_path: Path) -> None:
    empty = Trace(method="pf", problem={"id": "p", "question": "q", "answer": None}, config={})
    page = _page(browser, tmp_path, [empty, _trace("greedy")], "empty")
    page.offline_and_clean()
    assert page.node_counts()[0] == (0, 0)
    assert "no steps" in page.page.locator("section.trace").first.inner_text()


def test_clicking_a_node_shows_its_text_without_running_it(browser: object,
                                                           tmp_path: Path) -> None:
    trace = _trace("pf", budget=16, horizon=6, seed=5)
    page = _page(browser, tmp_path, [trace], "click")
    hostile = [n for s in trace.steps for n in s.nodes if HOSTILE in n.text]
    assert hostile, "the scripted model writes the hostile step with probability 0.2"
    node = hostile[-1]
    circle = f"section.trace circle.node[data-id='{node.id}']"
    page.page.mouse.move(*point_at(page.page, circle))
    assert node.text[:60] in page.page.locator("#tooltip").inner_text()
    click_node(page.page, circle)
    assert page.page.locator("#detail-text").text_content() == node.text
    assert page.page.get_attribute("#detail", "data-node-id") == str(node.id)
    assert page.page.evaluate("window.__pwned") is None
    assert page.page.locator("#detail img, #detail script").count() == 0
    # The ancestry is drawn, and the detail panel lists the solution so far.
    assert page.page.get_attribute("path.lineage", "d")
    assert page.page.locator("#detail pre.prefix span").count() >= 2
    page.offline_and_clean()
    page.shot("click")


def test_two_methods_side_by_side(browser: object, tmp_path: Path) -> None:
    a, b = _trace("pf", budget=16, horizon=8), _trace("beam", budget=16, horizon=8)
    page = _page(browser, tmp_path, [a, b], "pf-vs-beam")
    page.offline_and_clean()
    assert page.node_counts() == [(particle_steps(a),) * 2, (particle_steps(b),) * 2]
    boxes = [page.page.locator("section.trace").nth(i).bounding_box() for i in (0, 1)]
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"]  # side by side, not stacked
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 1
    # A click in the second trace shows that trace's node.
    node = b.steps[2].nodes[0]
    click_node(page.page, f"section[data-trace-index='1'] circle.node[data-id='{node.id}']")
    assert page.page.locator("#detail-text").text_content() == node.text
    assert page.page.get_attribute("#detail", "data-trace-index") == "1"
    page.shot("pf-vs-beam")


@pytest.mark.slow
def test_128_particles_by_40_steps_render_and_respond(browser: object, tmp_path: Path) -> None:
    trace = make_trace("pf", budget=128, horizon=40, early=False)
    assert len(trace.steps) == 40 and particle_steps(trace) == 128 * 40
    page = _page(browser, tmp_path, [trace], "pf-128x40")
    page.offline_and_clean()
    assert page.node_counts() == [(5120, 5120)]
    node = trace.steps[20].nodes[7]
    click_node(page.page, f"circle.node[data-id='{node.id}']")
    assert page.page.locator("#detail-text").text_content() == node.text
    page.shot("pf-128x40")


@pytest.mark.model
def test_traces_of_the_embedded_model_render(browser: object, tmp_path: Path) -> None:
    from particlescale.backends.llamacpp import LlamaCppGenerator
    from particlescale.models import is_pulled
    from particlescale.rewards.registry import make_reward
    from particlescale.types import Problem

    if not is_pulled("smollm2-135m"):
        pytest.skip("run `particlescale models pull smollm2-135m` (make test does)")
    problem = Problem(question="What is 7 + 5?", id="add", answer="12")
    with LlamaCppGenerator("smollm2-135m", n_ctx=4096, n_seq_max=8) as gen:
        traces = [solve_in_thread(problem, generator=gen, reward=make_reward("arith", gen),
                                  method=m, budget=4, seed=0, max_steps=3, max_step_tokens=24
                                  ).trace
                  for m in ("pf", "beam")]
    assert all(t.config["generator"] == "llamacpp:smollm2-135m" for t in traces)
    page = _page(browser, tmp_path, traces, "smollm2")
    page.offline_and_clean()
    assert page.node_counts() == [(particle_steps(t), particle_steps(t)) for t in traces]
    for ti, trace in enumerate(traces):
        node = trace.steps[-1].nodes[-1]
        click_node(page.page, f"section[data-trace-index='{ti}'] circle.node[data-id='{node.id}']")
        assert page.page.locator("#detail-text").text_content() == node.text
    page.shot("smollm2")
