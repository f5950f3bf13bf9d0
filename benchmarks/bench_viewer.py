"""Benchmark: the trace viewer on a 128-particle x 40-step particle-filtering run (5120 nodes).

The trace is real: ``pf`` with budget 128 over the scripted generator of the tests, whose
steps never finish before the 40-step horizon. Measured in headless Chromium
(/usr/bin/chromium via Playwright, software rendering): Python render time and page size; page
load to drawn (the script's ``performance.now()`` when every node is in the DOM) and to the
first frame after it; the time a click on a node takes to fill the detail panel and draw its
ancestry (to the next frame); the same page with two such traces side by side. Medians of
``--repeat`` loads. Writes the ``<!-- bench:viewer -->`` section of BENCHMARKS.md.

    .venv/bin/python -m benchmarks.bench_viewer [--repeat 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_section
from particlescale.testing.traces import make_trace, particle_steps
from particlescale.viewer import render_html

SECTION = "viewer"
TARGET_S = 3.0
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

# Runs in the page: click the middle node of the middle column, time handler and next frame.
CLICK_JS = """() => new Promise(resolve => {
  const svg = document.querySelector('svg.genealogy');
  const nodes = svg.querySelectorAll('circle.node');
  const c = nodes[Math.floor(nodes.length / 2)];
  c.scrollIntoView({block: 'center', inline: 'center'});
  requestAnimationFrame(() => {
    const r = c.getBoundingClientRect();
    const t0 = performance.now();
    svg.dispatchEvent(new MouseEvent('click', {bubbles: true, clientX: r.x + r.width / 2,
                                               clientY: r.y + r.height / 2}));
    const t1 = performance.now();
    requestAnimationFrame(() => resolve({handler: t1 - t0, frame: performance.now() - t0,
      shown: document.getElementById('detail').dataset.nodeId === c.dataset.id}));
  });
})"""
FRAME_JS = ("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame("
            "() => r(performance.now()))))")


def measure(page, url: str, repeat: int) -> dict[str, float]:
    rows = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        frame = page.evaluate(FRAME_JS)
        wall = time.perf_counter() - t0
        drawn = float(page.get_attribute("body", "data-render-ms"))
        click = page.evaluate(CLICK_JS)
        assert click["shown"], "the click did not select the node"
        rows.append({"wall_s": wall, "drawn_ms": drawn, "frame_ms": frame,
                     "click_ms": click["frame"], "handler_ms": click["handler"]})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    trace = make_trace("pf", budget=128, horizon=40, early=False)
    n = particle_steps(trace)
    assert n == 128 * 40, n
    t0 = time.perf_counter()
    one = render_html([trace])
    render_s = time.perf_counter() - t0
    two = render_html([trace, trace])
    tmp = Path(tempfile.mkdtemp())
    (tmp / "one.html").write_text(one)
    (tmp / "two.html").write_text(two)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1600, "height": 1000})
        page = ctx.new_page()
        r1 = measure(page, (tmp / "one.html").as_uri(), args.repeat)
        r2 = measure(page, (tmp / "two.html").as_uri(), args.repeat)
        version = ctx.browser.version if ctx.browser else "?"
        ctx.close()

    verdict = "met" if r1["frame_ms"] < TARGET_S * 1000 else "NOT met"

    def row(label: str, size: int, py: str, r: dict[str, float]) -> str:
        cells = [label, f"{size / 1e6:.2f} MB", py, f"{r['drawn_ms']:.0f} ms",
                 f"{r['frame_ms']:.0f} ms", f"{r['wall_s'] * 1000:.0f} ms",
                 f"{r['click_ms']:.0f} ms"]
        return "| " + " | ".join(cells) + " |"

    table = "\n".join([
        "| page | HTML size | Python render | drawn (script done) | first frame "
        "| load to frame (wall) | click -> detail + frame |",
        "|---|---|---|---|---|---|---|",
        row(f"one trace ({n} nodes)", len(one), f"{render_s * 1000:.0f} ms", r1),
        row(f"two side by side ({2 * n} nodes)", len(two), "-", r2),
    ])
    body = f"""## Trace viewer: 128 particles x 40 steps

`python -m benchmarks.bench_viewer`: a real `pf` trace (budget 128, 40 steps, scripted generator:
{n} nodes) drawn by `particlescale view` in headless Chromium {version} (software rendering,
{os.cpu_count()} CPUs, {platform.machine()}); medians of {args.repeat} page loads.

{table}

"drawn" and "first frame" are `performance.now()` from navigation start; the click handler
alone takes {r1['handler_ms']:.1f} ms (one trace). Target: under {TARGET_S:g} s from load to
the first frame of a 128 x 40 trace: {verdict} ({r1['frame_ms'] / 1000:.2f} s)."""
    print(body)
    if not args.no_write:
        write_section(SECTION, body, stamp=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
