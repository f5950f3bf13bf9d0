"""``particlescale methods``: list the algorithms and their options."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from particlescale.algorithms import METHODS
from particlescale.cli.app import app


@app.command()
def methods() -> None:
    """List the methods and their options (with paper defaults)."""
    table = Table(title="methods")
    table.add_column("method")
    table.add_column("what it is")
    table.add_column("options (default)")
    for m in METHODS.values():
        opts = ", ".join(f"{k}={f.default!r}" for k, f in m.config.model_fields.items())
        table.add_row(m.name, m.summary, opts)
    Console().print(table)
