"""``particlescale eval``: run a resumable sweep of methods x budgets x seeds over a dataset.

Everything is validated (numbers, dataset, fields, methods and their options, budgets, seeds,
reward and generator options, output directory and its lock, configuration hash) before any
model is loaded. Re-running the same command resumes; two runs on one ``--out`` at once are
refused (the second exits 2 naming the PID of the first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from particlescale.cli.app import app
from particlescale.errors import ConfigError
from particlescale.eval.datasets import PROFILES, Dataset, Selection, load_dataset
from particlescale.eval.specs import parse_budgets, parse_methods, parse_options, parse_seeds
from particlescale.eval.sweep import SweepConfig, SweepSummary, run_sweep
from particlescale.rewards.registry import spec_uses_answer_key
from particlescale.wiring import Setup

PAPER_METHODS = "pf,pg,greedy,self-consistency,best-of-n,weighted-best-of-n,beam,dvts"


@app.command("eval")
def eval_command(
    dataset: Annotated[str, typer.Option(
        "--dataset", "-d",
        help=f"Profile ({', '.join(PROFILES)}), JSONL path, or Hugging Face name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results directory (resumable).")],
    methods: Annotated[str, typer.Option(
        help="Methods with options, e.g. 'pf,pf(resampling=systematic),pg(iterations=4)'.")
    ] = "pf,best-of-n",
    budgets: Annotated[str, typer.Option(help="Budgets (particles / rollouts).")] = "1,2,4,8",
    seeds: Annotated[str, typer.Option(help="Run seeds, e.g. 0,1,2.")] = "0",
    options: Annotated[str, typer.Option(
        help="Options for every method, e.g. 'max_steps=20,max_step_tokens=256'.")] = "",
    generator: Annotated[str, typer.Option(
        "--generator", "-g",
        help="Generator spec: llamacpp[:MODEL] (embedded), openai:URL[,URL...], or "
             "py:MODULE:FACTORY.")] = "llamacpp",
    model: Annotated[str | None, typer.Option(
        help="The embedded model (known name, .gguf path, hf:REPO/FILE; default "
             "qwen2.5-0.5b); with --generator openai:URL the served model's name.")] = None,
    reward: Annotated[str | None, typer.Option(
        "--reward", "-r",
        help="Reward spec, e.g. arith, judge+arith (default: arith*logprob; arith with "
             "openai:URL, which reports no log-probabilities).")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for HTTP generators.")] = None,
    timeout: Annotated[float | None, typer.Option(
        help="openai:URL: seconds per request (default 120); a generation that times out is "
             "not sent again.")] = None,
    retries: Annotated[int | None, typer.Option(
        help="openai:URL: extra attempts after a failed request (default 4).")] = None,
    template: Annotated[str | None, typer.Option(
        help="openai:URL: chat template of the served model: auto, server, hf, qwen, llama3.")
    ] = None,
    step_boundary: Annotated[str | None, typer.Option(
        "--step-boundary", help="openai:URL: how a step ends and the next resumes: auto, "
                                "stop, stream, regenerate (docs/remote.md).")] = None,
    limit: Annotated[int | None, typer.Option(help="Keep the first N problems.")] = None,
    sample: Annotated[int | None, typer.Option(help="Draw K problems at random (see --seed).")
                      ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --sample.")] = 0,
    ids: Annotated[str | None, typer.Option(help="Comma-separated problem ids to keep.")
                   ] = None,
    question_field: Annotated[str | None, typer.Option(help="JSONL field of the question.")
                              ] = None,
    answer_field: Annotated[str | None, typer.Option(help="JSONL field of the gold answer.")
                            ] = None,
    id_field: Annotated[str | None, typer.Option(
        help="JSONL field of the id (default: line number).")] = None,
    answer_extractor: Annotated[str | None, typer.Option(
        help="plain, gsm8k (number after '#### ') or boxed.")] = None,
    grading: Annotated[str | None, typer.Option(help="math or numeric (default: per dataset).")
                       ] = None,
    concurrency: Annotated[int, typer.Option(help="Problems in flight at once.")] = 1,
    force: Annotated[bool, typer.Option(
        help="Start over if --out holds results of another configuration (old ones are kept "
        "aside).")] = False,
    reuse_samples: Annotated[bool, typer.Option(
        help="Sampling baselines at smaller budgets from subsets of the largest budget's "
        "samples (they always share one sample set per problem, seed and budget).")] = False,
    traces: Annotated[bool, typer.Option(help="Write one trace JSON per task under DIR/traces.")
                      ] = False,
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster address (default: start a local Ray).")] = None,
    ray_workers: Annotated[int | None, typer.Option(
        help="Ray workers (each builds its own generator and reward; default: cluster "
             "CPUs).")] = None,
    grading_workers: Annotated[int, typer.Option(help="Grading processes.")] = 2,
    grading_timeout: Annotated[float, typer.Option(help="Seconds per graded answer.")] = 10.0,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Evaluate methods x budgets x seeds on a dataset; results go to OUT/results.jsonl."""
    _check_numbers(concurrency=concurrency, grading_workers=grading_workers,
                   grading_timeout=grading_timeout, limit=limit, sample=sample,
                   ray_workers=ray_workers)
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor: unknown {executor!r}; choose local or ray")
    if ray_address and executor != "ray":
        raise ConfigError("ray-address: only with --executor ray")
    common = parse_options(options, "--options")
    specs = parse_methods(methods, common)
    budget_list = parse_budgets(budgets)
    seed_list = parse_seeds(seeds)
    id_list = tuple(i.strip() for i in ids.split(",") if i.strip()) if ids else None
    setup = Setup(generator=generator, model=model, reward=reward, api_key=api_key,
                  timeout=timeout, retries=retries, template=template,
                  step_boundary=step_boundary)
    setup.check()
    ds = load_dataset(dataset, question_field=question_field, answer_field=answer_field,
                      id_field=id_field, extractor=answer_extractor, grading=grading,
                      selection=Selection(limit=limit, sample=sample, seed=seed, ids=id_list))
    cfg = SweepConfig(
        dataset=ds, methods=specs, budgets=budget_list, seeds=seed_list, out=out,
        setup=setup,
        options=common, concurrency=concurrency, force=force, reuse_samples=reuse_samples,
        traces=traces, grader_workers=grading_workers, grading_timeout_s=grading_timeout,
    )
    console = Console(stderr=True)
    if reward is not None and spec_uses_answer_key(reward):
        check_answer_key(ds)
        console.print(f"note: reward {reward!r} uses the answer key (each problem's worked "
                      "solution): an instrument for studying the algorithms; its accuracies are "
                      "not the system's accuracy", markup=False, highlight=False,
                      soft_wrap=True)
    sink = None
    if progress:
        from particlescale.eval.progress import RichProgress

        sink = RichProgress(f"{ds.name} ({len(ds)} problems)", console)
    if executor == "ray":
        from particlescale.eval.ray_executor import run_sweep_ray

        summary = run_sweep_ray(cfg, address=ray_address, workers=ray_workers, progress=sink)
    else:
        summary = run_sweep(cfg, progress=sink)
    print_summary(summary, console)


def check_answer_key(ds: Dataset) -> None:
    """``reference`` needs every problem's worked solution: one line naming what is missing."""
    missing = [p.id for p in ds.problems if not p.reference]
    if missing:
        raise ConfigError(
            f"reward 'reference': dataset {ds.name!r} has no worked solutions (field "
            f"'reference' of {len(missing)} of its {len(ds)} problems, e.g. {missing[0]!r}); "
            "it needs GSM8K-style solutions with <<expr=value>> steps: use -d gsm8k, or a JSONL "
            "file with --answer-extractor gsm8k")


def _check_numbers(**values: float | None) -> None:
    """Refuse a count below 1 or a non-positive timeout, naming the flag (before anything
    loads; a grader built with them would fail mid-sweep)."""
    for name, value in values.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name == "grading_timeout":
            if not 0 < value < float("inf"):
                raise ConfigError(f"{flag}: must be a number of seconds > 0, got {value}")
        elif value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")


def print_summary(s: SweepSummary, console: Console) -> None:
    if s.dropped_torn_line:
        console.print("dropped a torn last line of results.jsonl (an interrupted write)")
    console.print(
        f"{s.out}: {s.planned} results planned, {s.skipped} already done, {s.ran} run, "
        f"{s.shared} on another method's samples, {s.derived} derived from larger budgets, "
        f"{s.errors} failed"
    )
    for e in s.error_examples:
        console.print(f"  failed: {e}")
    if s.errors:
        console.print("re-run the same command to retry the failed ones")
    console.print(f"report: particlescale report {s.out}")
