"""``particlescale report DIR``: tables, plots and an HTML index of a sweep's results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from particlescale.cli.app import app


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="The --out directory of `particlescale eval`.")],
    reference: Annotated[str, typer.Option(
        help="The method whose accuracy the budget multiplier is measured against.")] = "pf",
    html: Annotated[bool, typer.Option(help="Write index.html (and render traces).")] = True,
) -> None:
    """Write report.md, scaling.png, tokens.png and index.html into DIR; print the table."""
    from particlescale.eval.report import write_report

    rep = write_report(out, reference=reference, html=html)
    typer.echo(rep.markdown)
    for p in rep.files:
        typer.echo(f"wrote {p}")
