"""The trace viewer: the genealogy of a run as one self-contained HTML page.

Each particle at each step is a node (x = step, size = normalised weight, colour = live /
finished correct / finished incorrect); edges go from ancestor to child, so resampling shows
as fans and collapse as a narrowing trunk. Hover or click a node for its step text, reward,
score and weight; a strip above each lane plots ESS per step and marks resampling.
Particle Gibbs draws one lane per iteration with the reference path highlighted, parallel
tempering one lane per chain, beam search and DVTS their trees in the same form, and several
traces sit side by side::

    from particlescale.viewer import render_html, write_view
    write_view(["pf.json", "beam.json"], "compare.html")
"""

from particlescale.viewer.html import render_html, write_view
from particlescale.viewer.load import TraceFileError, load_trace, trace_from_json
from particlescale.viewer.model import trace_view

__all__ = ["TraceFileError", "load_trace", "render_html", "trace_from_json", "trace_view",
           "write_view"]
