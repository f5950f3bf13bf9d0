"""The typer application every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="particlescale",
    help="Inference-time scaling of LLMs by particle-based Monte Carlo methods.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
