"""``particlescale models list | pull NAME | path NAME | export-hf NAME DIR | tiny-prm KIND DIR``:
the known GGUF models, the cache, and Hugging Face-format exports for vLLM."""

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


@models_app.command("export-hf")
def export_hf(
    name: str = typer.Argument(..., help="a known model name or a .gguf path"),
    out_dir: str = typer.Argument(..., metavar="DIR", help="directory to write (created)"),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float16 or float32"),
    force: bool = typer.Option(False, "--force", help="replace DIR's contents"),
) -> None:
    """Save a GGUF model as a Hugging Face safetensors directory (for `vllm serve DIR`).

    Needs `pip install 'particlescale[export]'` (transformers, gguf, accelerate, torch)."""
    from particlescale import hf_export

    typer.echo(str(hf_export.export_hf(name, out_dir, dtype=dtype, force=force)))


@models_app.command("tiny-prm")
def tiny_prm(
    kind: str = typer.Argument(..., help="qwen-prm or math-shepherd"),
    out_dir: str = typer.Argument(..., metavar="DIR", help="directory to write (replaced)"),
    tokenizer: str = typer.Option(..., help="an `export-hf qwen2.5-0.5b` directory"),
    hidden: int = typer.Option(64, help="hidden size (multiple of 32)"),
    layers: int = typer.Option(2, help="transformer layers"),
    seed: int = typer.Option(0, help="seed of the random weights"),
) -> None:
    """A small random-weight PRM with a real architecture, for testing a vLLM set-up; prints
    the vLLM flags that serve it."""
    import json

    from particlescale import hf_export

    info = hf_export.tiny_prm(kind, out_dir, tokenizer, hidden=hidden, layers=layers, seed=seed)
    typer.echo(json.dumps(info, ensure_ascii=False))
