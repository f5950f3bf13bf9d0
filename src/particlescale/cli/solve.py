"""``particlescale solve "QUESTION"``: solve one problem and show how the particles did.

Everything that can be checked without a model (question, method, options, budget, seed,
reward spec and the files it names, the model file, server flags, trace path) is checked
first, so a typo fails in milliseconds with one line ``error: ...`` instead of after a model
load. The default reward is ``arith*logprob`` with the embedded engine and ``arith`` with a
server (which reports no step log-probabilities). Then the generator and the reward are built,
the method runs with a live status line (step, live / finished particles, ESS), and the
answer and a table of the final particles (answer, weight, reward, steps) are printed.
``--json`` prints the Result as JSON on stdout instead (progress stays on stderr). Ctrl-C
cancels the run: the session, the reward and the engine are closed before exiting (130).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from particlescale.algorithms import make_config
from particlescale.api import MAX_BUDGET, asolve
from particlescale.cli.app import app
from particlescale.errors import ConfigError
from particlescale.eval.specs import parse_options
from particlescale.models import DEFAULT_MODEL
from particlescale.rewards.registry import DEFAULT_REWARD
from particlescale.types import Problem, Result
from particlescale.wiring import Setup, default_method, redact

MAX_ROWS = 20


def _check_inputs(question: str, method: str, options: dict[str, Any], budget: int,
                  seed: int | None, trace: Path | None) -> None:
    if not question.strip():
        raise ConfigError("question: is empty; pass the problem text, e.g. "
                          "particlescale solve \"What is 12 * 7?\"")
    make_config(method, options)  # unknown method / option / bad value
    if not 1 <= budget <= MAX_BUDGET:
        raise ConfigError(f"--budget: must be between 1 and {MAX_BUDGET} particles, got {budget}")
    if seed is not None and seed < 0:
        raise ConfigError(f"--seed: must be >= 0, got {seed}")
    if trace is not None and not trace.expanduser().resolve().parent.is_dir():
        raise ConfigError(f"--trace: the folder of {str(trace)!r} does not exist")


class _Status:
    """The live status line fed by ``asolve``'s progress callback."""

    def __init__(self, console: Console, method: str, budget: int) -> None:
        self.console = console
        self.head = f"[bold]{method}[/bold] N={budget}"
        self.live = console.status(self.head + " · starting", spinner="dots")
        self.interactive = console.is_terminal

    def __enter__(self) -> _Status:
        if self.interactive:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.interactive:
            self.live.__exit__(None, None, None)

    def __call__(self, info: dict[str, Any]) -> None:
        parts = [f"step {info.get('step')}"]
        band = info.get("band")
        if band and band not in ("pf", "samples"):
            parts.insert(0, str(band))
        if info.get("live") is not None:
            parts.append(f"live {info['live']}")
        if info.get("finished") is not None:
            parts.append(f"finished {info['finished']}")
        if info.get("ess") is not None:
            parts.append(f"ESS {info['ess']:.1f}/{info.get('n', '?')}")
        if info.get("resampled"):
            parts.append("resampled")
        line = " · ".join(parts)
        if self.interactive:
            self.live.update(f"{self.head} · {line}")
        else:
            self.console.print(line, highlight=False)


def _print_result(console: Console, result: Result) -> None:
    table = Table(title=f"final particles ({result.method}, budget {result.budget})")
    for col, just in (("#", "right"), ("answer", "left"), ("weight", "right"),
                      ("reward", "right"), ("steps", "right"), ("tokens", "right"),
                      ("copies", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for i, c in enumerate(result.candidates[:MAX_ROWS], 1):
        table.add_row(str(i), escape(c.answer or "—"), f"{c.weight:.3f}",
                      "—" if c.score != c.score else f"{c.score:.3f}",  # NaN: unscored
                      str(c.steps), str(c.tokens), str(c.copies))
    if len(result.candidates) > MAX_ROWS:
        table.caption = f"... and {len(result.candidates) - MAX_ROWS} more"
    text = result.text
    if text:
        console.rule("solution")
        # A Text, not markup: LaTeX's \[ ... \] must print as written.
        console.print(Text(text.strip()), highlight=False)
    console.print(table)
    u = result.usage
    rewards = f", {u.prm_calls} reward-model calls" if u.prm_calls else ""
    console.print(f"[dim]{u.generated_tokens} tokens generated, {u.prompt_tokens} prompt tokens"
                  f"{rewards}, {u.wall_time:.1f} s[/dim]")
    console.print(f"[bold]answer:[/bold] {escape(str(result.answer))}", highlight=False)


@app.command()
def solve(
    question: str = typer.Argument(..., help="the problem to solve"),
    method: str | None = typer.Option(
        None, "--method", "-m",
        help="pf, pg, pt, greedy, self-consistency, best-of-n, weighted-best-of-n, beam, dvts "
             "(default: pf with a process reward model; weighted-best-of-n with the CPU "
             "rewards, with which pf answered fewer problems than majority voting)"),
    budget: int = typer.Option(8, "--budget", "-n", help="particles / samples (N; N*T for pg)"),
    seed: int | None = typer.Option(None, "--seed", help="random seed (reproducible runs)"),
    model: str | None = typer.Option(
        None, "--model",
        help=f"the embedded model: known name, .gguf path or hf:REPO/FILE (default "
             f"{DEFAULT_MODEL}); with --generator openai:URL the served model's name"),
    generator: str = typer.Option("llamacpp", "--generator", "-g",
                                  help="llamacpp[:MODEL] (embedded), openai:URL[,URL...] or "
                                       "py:MODULE:FACTORY"),
    reward: str | None = typer.Option(
        None, "--reward", "-r",
        help="arith, logprob, judge[:MODEL|:URL], vllm-prm:URL, ... or a product such as "
             "judge+arith, 0.5*arith+judge (default: arith*logprob; arith with openai:URL, "
             "which reports no log-probabilities)"),
    option: list[str] = typer.Option([], "--option", "-O",
                                     help="method option KEY=VALUE (repeatable; see "
                                          "`particlescale methods`)"),
    api_key: str | None = typer.Option(None, "--api-key",
                                       help="key for openai:URL servers (else "
                                            "PARTICLESCALE_API_KEY / OPENAI_API_KEY)"),
    timeout: float | None = typer.Option(
        None, "--timeout", help="openai:URL: seconds per request (default 120); a generation "
                                "that times out is not sent again"),
    retries: int | None = typer.Option(
        None, "--retries", help="openai:URL: extra attempts after a failed request "
                                "(default 4)"),
    template: str | None = typer.Option(
        None, "--template", help="openai:URL: chat template of the served model: auto, "
                                 "server, hf, qwen (ChatML), llama3 (default auto)"),
    step_boundary: str | None = typer.Option(
        None, "--step-boundary", help="openai:URL: how a step ends and the next resumes: "
                                      "auto (probe the tokeniser), stop, stream, regenerate "
                                      "(docs/remote.md; default auto)"),
    as_json: bool = typer.Option(False, "--json", help="print the Result as JSON on stdout"),
    trace: Path | None = typer.Option(None, "--trace",
                                      help="write the run's trace (JSON) to this file"),
) -> None:
    """Solve QUESTION with an inference-time scaling method and print the answer."""
    options = parse_options(option, "--option")
    setup = Setup(generator=generator, model=model, reward=reward, api_key=api_key,
                  timeout=timeout, retries=retries, template=template,
                  step_boundary=step_boundary)
    defaulted = method is None
    if method is None:  # every default reward is a CPU one; a named reward is parsed
        method = default_method(reward if reward and reward.strip() else DEFAULT_REWARD)[0]
    try:
        _check_inputs(question, method, options, budget, seed, trace)
    except ConfigError as e:
        if not (defaulted and str(e).startswith(method)):
            raise
        raise ConfigError(f"{e} ({method} is the default with this reward; add --method pf "
                          "for pf's options)") from None
    setup = dataclasses.replace(setup, reward=setup.check(answer_key=False))
    err = Console(stderr=True)
    out = Console() if not as_json else err
    if defaulted:  # the method stays the one its options were checked for; the reason names
        why = default_method(setup.reward)[1]  # the reward the setup resolved (per generator)
        hint = "--method pf for particle filtering" if method != "pf" else "--method to choose"
        err.print(f"[dim]method {method}: {escape(why)}; {hint}[/dim]")
    try:
        asyncio.run(_run(question, method, budget, seed, setup, options, as_json, trace, err,
                         out))
    except KeyboardInterrupt:
        # asyncio.run has cancelled the run: its sessions and the engine are closed by now.
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None


async def _run(question: str, method: str, budget: int, seed: int | None, setup: Setup,
               options: dict[str, Any], as_json: bool, trace: Path | None, err: Console,
               out: Console) -> None:
    with err.status(f"loading {escape(redact(setup.model or setup.generator))} ..."):
        wired = setup.wire(answer_key=False)
    async with wired:
        gen, rew = wired.generator, wired.reward
        err.print(f"[dim]generator {escape(gen.name)}, reward {escape(rew.name)}[/dim]")
        with _Status(err, method, budget) as status:
            result = await asolve(Problem(question=question.strip()), generator=gen, reward=rew,
                                  method=method, budget=budget, seed=seed, progress=status,
                                  **options)
    if trace is not None:
        try:
            trace.expanduser().write_text(json.dumps(result.trace.to_dict(), indent=1))
        except OSError as e:
            raise ConfigError(f"--trace: cannot write {str(trace)!r}: {e.strerror}") from None
    if as_json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _print_result(out, result)
