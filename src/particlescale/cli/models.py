"""``particlescale models list | pull NAME | path NAME``: the known GGUF models and the cache."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from particlescale import models as registry
from particlescale.cli.app import app

models_app = typer.Typer(help="Known GGUF models: list, pull into the user cache, print path.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def list_models() -> None:
    """Known names, size, and whether each is pulled."""
    table = Table(title=f"models (cache: {registry.cache_dir()})")
    for col in ("name", "size", "pulled", "what it is"):
        table.add_column(col)
    for m in registry.KNOWN.values():
        pulled = "yes" if registry.is_pulled(m.name) else "no"
        table.add_row(m.name, f"{m.size / 1e6:.0f} MB", pulled, m.description)
    Console().print(table)


@models_app.command("pull")
def pull(name: str = typer.Argument(..., help="a known model name (see `models list`)")) -> None:
    """Download, join and verify a known model into the user cache (no-op when cached)."""
    path = registry.pull(name, progress=True)
    typer.echo(str(path))


@models_app.command("path")
def path(
    spec: str = typer.Argument(..., help="known name, .gguf path or hf:OWNER/REPO/FILE"),
) -> None:
    """Print the local path of a model (error if a known name is not pulled)."""
    typer.echo(str(registry.resolve(spec)))
