"""Write one benchmark's section into BENCHMARKS.md between ``<!-- bench:NAME -->`` markers,
so that each benchmark can be re-run on its own without touching the others' figures."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` with ``body`` plus a provenance line."""
    stamp = f"_Measured {time.strftime('%Y-%m-%d')} on {machine()}._"
    block = f"<!-- bench:{name} -->\n{body.rstrip()}\n\n{stamp}\n<!-- /bench:{name} -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->",
                         re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)
