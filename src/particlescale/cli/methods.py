"""``particlescale methods``: list the algorithms, their options and what each one samples."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from particlescale.algorithms import METHODS
from particlescale.algorithms.targets import EXACT_WHEN, describe
from particlescale.cli.app import app


@app.command()
def methods() -> None:
    """List the methods and their options (with paper defaults) and the target each samples."""
    table = Table(title="methods: what each samples")
    table.add_column("method")
    table.add_column("what it is")
    table.add_column("with the defaults")
    table.add_column("exact (samples its stated target) when")
    for m in METHODS.values():
        exact = describe(m.name, m.config())["exact"]
        table.add_row(m.name, m.summary, "exact" if exact else "heuristic",
                      EXACT_WHEN.get(m.name, "always"))
    options = Table(title="options (default = paper)")
    options.add_column("method")
    options.add_column("options (default)")
    for m in METHODS.values():
        options.add_row(m.name, ", ".join(f"{k}={f.default!r}"
                                          for k, f in m.config.model_fields.items()))
    console = Console()
    console.print(table)
    console.print(options)
    console.print("result.info['target'] and result.info['exact'] say the same for each run.")
