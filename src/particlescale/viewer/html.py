"""One self-contained HTML page for one or more traces.

The page is static: the view models (``model.trace_view``) are embedded as JSON in a
``<script type="application/json">`` block, and a hand-written script (``static/viewer.js``)
draws them as SVG. No network, no CDN, no external fonts: the file opens from disk anywhere.

Safety: step texts are model output. They only ever reach the page as JSON (with ``<``, ``>``
and ``&`` written as ``\\u003c`` ... so the block cannot be closed early) and the script writes
them with ``textContent``, never as markup.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from particlescale.types import Trace
from particlescale.viewer.load import load_trace
from particlescale.viewer.model import ExtraGrader, trace_view

_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _static(name: str) -> str:
    return resources.files("particlescale.viewer").joinpath("static", name).read_text("utf-8")


def embed_json(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element (no ``</script>``, no ``<!--``)."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).translate(_JSON_ESCAPES)


def default_title(traces: Sequence[Trace]) -> str:
    methods = " vs ".join(t.method for t in traces)
    ids = sorted({str(t.problem.get("id", "problem")) for t in traces})
    return f"particlescale trace: {methods} on {', '.join(ids)}"


def render_html(traces: Sequence[Trace], title: str | None = None, *,
                extra: ExtraGrader | None = None) -> str:
    """The HTML page drawing the genealogy of each trace, side by side.

    Answers are graded by numeric forms and normalised equality; ``extra`` (e.g. the
    harness's math-verify, which the CLI passes for ``--math-verify``) grades the rest.
    """
    traces = list(traces)
    if not traces:
        raise ValueError("traces: pass at least one Trace to draw")
    title = title or default_title(traces)
    data = {"title": title,
            "traces": [trace_view(t, extra=extra) for t in traces]}
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # An empty data: icon keeps the browser from asking for /favicon.ico.
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{_static('viewer.css')}</style>\n"
        "</head>\n<body>\n"
        "<script type=\"application/json\" id=\"ps-data\">"
        f"{embed_json(data)}</script>\n"
        f"<script>\n{_static('viewer.js')}</script>\n</body>\n</html>\n"
    )


def write_view(trace_paths: Sequence[str | Path | Trace] | str | Path,
               out_path: str | Path, title: str | None = None, *,
               extra: ExtraGrader | None = None) -> Path:
    """Render trace files (or Trace objects) into one HTML file; returns its path.

    This is what ``particlescale view`` and the evaluation report call. Bad files raise
    :class:`~particlescale.viewer.load.TraceFileError` naming the file.
    """
    if isinstance(trace_paths, str | Path):
        trace_paths = [trace_paths]
    traces = [t if isinstance(t, Trace) else load_trace(t) for t in trace_paths]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(traces, title, extra=extra), encoding="utf-8")
    return out
