"""``particlescale view``: draw the genealogy of one or more traces as one HTML file."""

from __future__ import annotations

import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from particlescale.cli.app import app
from particlescale.errors import ConfigError
from particlescale.viewer import write_view


def default_output(traces: list[Path]) -> Path:
    """``run.json`` -> ``run.html``; several traces -> ``a-vs-b.html`` beside the first."""
    if len(traces) == 1:
        return traces[0].with_suffix(".html")
    return traces[0].with_name("-vs-".join(t.stem for t in traces) + ".html")


def math_verify_grader() -> Callable[[str, list[str]], list[bool]]:
    """The harness's math-verify grader, for the viewer's answers (one worker process)."""
    from particlescale.eval.grading import Grader

    def grade(gold: str, answers: list[str]) -> list[bool]:
        with Grader(workers=1) as grader:
            return [g.correct for g in grader.grade_many([(gold, a) for a in answers])]

    return grade


@app.command()
def view(
    traces: Annotated[list[Path], typer.Argument(
        help="Trace JSON files (drawn side by side).", metavar="TRACE.json",
        show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="HTML file to write (default: TRACE.html beside it).")] = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
    open_: Annotated[bool, typer.Option(
        "--open", help="Open the page in a web browser.")] = False,
    math_verify: Annotated[bool, typer.Option(
        "--math-verify",
        help="Grade answers not plainly equal to the gold one with math-verify (slower).")] = False,
) -> None:
    """Draw the particles of a run: genealogy, weights, answers, ESS and resampling."""
    out = output or default_output(traces)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--output: {out} should end in .html (it is an HTML page)")
    if out.resolve() in {t.resolve() for t in traces}:
        raise ConfigError(f"--output: {out} is one of the input traces; choose another path")
    path = write_view(traces, out, title=title,
                      extra=math_verify_grader() if math_verify else None)
    typer.echo(str(path))
    if open_ and not webbrowser.open(path.resolve().as_uri()):
        typer.echo(f"no web browser found; open {path} yourself", err=True)
