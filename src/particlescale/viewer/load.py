"""Reading trace files for the viewer, with one-line errors for bad input.

A trace file is the JSON of :meth:`particlescale.types.Trace.to_dict` (``{"version": 1,
"method": ..., "problem": ..., "config": ..., "steps": [...], "events": [...]}``). A result file
written with its trace (``Result.to_dict(trace=True)``, a dict with a ``"trace"`` key) is accepted
too, so ``particlescale view`` opens whatever ``solve`` or ``eval`` wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from particlescale.errors import ParticlescaleError
from particlescale.types import Trace

TRACE_VERSION = 1


class TraceFileError(ParticlescaleError, ValueError):
    """A trace file is missing, is not JSON, or is not a particlescale trace."""


def trace_from_json(data: Any, source: str = "trace") -> Trace:
    """A :class:`Trace` from decoded JSON (a trace dict or a result dict holding one)."""
    if isinstance(data, dict) and "steps" not in data and isinstance(data.get("trace"), dict):
        data = data["trace"]
    if not isinstance(data, dict) or "steps" not in data or "method" not in data:
        raise TraceFileError(
            f"{source}: not a particlescale trace (expected a JSON object with 'method' and "
            "'steps', as written by Trace.to_dict()); pass a trace file"
        )
    version = data.get("version", TRACE_VERSION)
    if not isinstance(version, int) or version > TRACE_VERSION:
        raise TraceFileError(
            f"{source}: trace version {version!r} is newer than this viewer understands "
            f"({TRACE_VERSION}); upgrade particlescale"
        )
    try:
        trace = Trace.from_dict({"problem": {}, "config": {}, **data})
        for step in trace.steps:
            if not isinstance(step.nodes, list):
                raise TypeError("nodes must be a list")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TraceFileError(f"{source}: malformed trace step or node ({e}); "
                             "regenerate the trace with this version of particlescale") from None
    if not isinstance(trace.problem, dict) or not isinstance(trace.config, dict):
        raise TraceFileError(f"{source}: 'problem' and 'config' must be JSON objects")
    return trace


def load_trace(path: str | Path) -> Trace:
    """Read one trace file; raise :class:`TraceFileError` naming the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise TraceFileError(f"{p}: no such trace file; pass the path of a trace JSON file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TraceFileError(f"{p}: not a text file; pass a trace JSON file") from None
    except json.JSONDecodeError as e:
        raise TraceFileError(
            f"{p}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})"
        ) from None
    return trace_from_json(data, str(p))
