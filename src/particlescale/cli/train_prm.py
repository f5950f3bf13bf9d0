"""``particlescale train-prm``: train a value head (a learned PRM) for an embedded model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from particlescale.cli.app import app
from particlescale.errors import ConfigError
from particlescale.rewards.value_head import model_sha256


@app.command("train-prm")
def train_prm(
    model: str = typer.Option("qwen2.5-0.5b", help="Generator model (name, .gguf, hf:...)."),
    dataset: str = typer.Option("gsm8k-train", help="Training problems with gold answers."),
    problems: int = typer.Option(200, help="K: number of training problems (seeded sample)."),
    samples: int = typer.Option(8, help="S: solutions sampled per problem."),
    out: Path = typer.Option(..., help="Where to write the head (.npz; a .json note beside)."),
    seed: int = typer.Option(0, help="Seed of the problem sample and of generation."),
    kind: str = typer.Option("logistic", help="Head: logistic or mlp."),
    max_steps: int = typer.Option(12, help="Step cap per solution."),
    max_step_tokens: int = typer.Option(160, help="Token cap per step."),
    temperature: float = typer.Option(0.8, help="LM sampling temperature."),
    concurrency: int = typer.Option(4, help="Problems sampled concurrently (batched)."),
    work_dir: Path | None = typer.Option(None, help="Shards of sampled solutions (resume); "
                                         "default OUT.samples/"),
    mc_rollouts: int = typer.Option(
        0, help="Monte-Carlo step labels (Math-Shepherd): label each prefix by the fraction of "
        "R completions from it that are correct, instead of its solution's outcome. Costs R "
        "completions per step: many times the sampling."),
    time_budget: float | None = typer.Option(
        None, help="Minutes of sampling: no problem starts after that, and the head is fit on "
        "the problems sampled so far (this run's and earlier runs' shards). 0 = fit on the "
        "shards already there. Re-run the same command to sample the rest."),
) -> None:
    """Sample solutions, label each step prefix by its solution's outcome, fit a value head."""
    from particlescale.backends.llamacpp import LlamaCppGenerator
    from particlescale.eval.datasets import Selection, load_dataset
    from particlescale.eval.value_train import SamplingClock, collect, fit_from_sets, write_head
    from particlescale.protocols import SamplingParams

    if kind not in ("logistic", "mlp"):
        raise ConfigError(f"--kind: unknown {kind!r}; choose logistic or mlp")
    if problems < 2 or samples < 1:
        raise ConfigError("--problems must be >= 2 and --samples >= 1 (a head needs both "
                          "correct and wrong solutions of several problems)")
    if mc_rollouts < 0:
        raise ConfigError(f"--mc-rollouts: must be >= 0, got {mc_rollouts}")
    if time_budget is not None and time_budget < 0:
        raise ConfigError(f"--time-budget: must be >= 0 minutes, got {time_budget}")
    if not out.name.endswith(".npz"):
        raise ConfigError(f"--out: {out} should end with .npz")
    ds = load_dataset(dataset, selection=Selection(sample=problems, seed=seed))
    missing = [p.id for p in ds.problems if not p.answer]
    if missing:
        raise ConfigError(f"dataset {dataset!r}: problems without a gold answer ({missing[:3]}"
                          "...); train-prm needs gold answers")
    work = work_dir or out.with_suffix(".samples")
    console = Console(stderr=True)
    gen = LlamaCppGenerator(model, embeddings=True, n_seq_max=max(16, concurrency * samples))
    params = SamplingParams(temperature=temperature, max_step_tokens=max_step_tokens)
    start = time.perf_counter()
    stats = {"tokens": 0, "new_tokens": 0, "correct": 0, "solutions": 0}
    clock = SamplingClock(work)
    try:
        with Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                      console=console) as bar:
            task = bar.add_task("s", total=len(ds.problems), info="")

            def done(s, cached: bool) -> None:
                if not cached:
                    clock.shard_done()
                    stats["new_tokens"] += s.tokens
                stats["tokens"] += s.tokens
                sols = len(set(s.solution.tolist()))
                stats["solutions"] += sols
                stats["correct"] += int(sum(s.outcome[s.step == 1])) if sols else 0
                # the rate of this run's sampling only (loaded shards cost nothing now)
                rate = stats["new_tokens"] / max(1e-9, time.perf_counter() - start)
                acc = stats["correct"] / max(1, stats["solutions"])
                bar.update(task, advance=1, info=f"solved {acc:.0%} · {rate:.0f} tok/s")

            deadline = None if time_budget is None else time.monotonic() + 60 * time_budget
            sets = asyncio.run(collect(gen, ds.problems, samples, work, seed=seed, params=params,
                                       max_steps=max_steps, concurrency=concurrency,
                                       on_done=done, deadline=deadline,
                                       mc_rollouts=mc_rollouts))
        clock.save()
        spent = clock.seconds  # this run's sampling plus the earlier runs' on these shards
        if len(sets) < len(ds.problems):
            console.print(f"time budget spent: fitting on {len(sets)} of {len(ds.problems)} "
                          "problems (run the same command again to sample the rest)")
        if len(sets) < 2:
            raise ConfigError(f"--time-budget: only {len(sets)} problem(s) sampled so far; a "
                              "head needs at least 2 (allow more minutes)")
        meta = {"model_name": model, "model_sha256": model_sha256(gen.engine.path, model),
                "feature": {"source": "final-layer hidden state (llama.cpp embeddings, "
                            "pooling none) at the last token of each step",
                            "dim": gen.engine.n_embd},
                "training": {"dataset": dataset, "problems": len(sets),
                             "problems_requested": len(ds.problems),
                             "samples": samples, "seed": seed, "max_steps": max_steps,
                             "labels": (f"Monte-Carlo, {mc_rollouts} rollouts per prefix"
                                        if mc_rollouts else "solution outcome"),
                             "mc_labelled_problems": sum(s.mc_rollouts > 0 for s in sets),
                             "max_step_tokens": max_step_tokens, "temperature": temperature,
                             "sampling_seconds": spent,
                             "generated_tokens": stats["tokens"],
                             "solution_accuracy": stats["correct"] / max(1, stats["solutions"])}}
        head, metrics = fit_from_sets(sets, kind=kind, seed=seed, metadata=meta)
        write_head(head, out, {"wall_seconds": round(time.perf_counter() - start, 1)})
    finally:
        gen.close()
    console.print(f"head written to {out}: cross-validated AUC {metrics['val_auc']:.3f} pooled, "
                  f"{metrics['val_auc_within']:.3f} within problem "
                  f"({metrics['val_examples']} prefixes of {metrics['problems']} problems, "
                  f"{metrics['folds']} folds split by problem)")
    if "final_val_auc" in metrics:
        console.print(f"final head (last steps only): {metrics['final_val_auc']:.3f} pooled, "
                      f"{metrics['final_val_auc_within']:.3f} within problem on "
                      f"{metrics['final_val_examples']} solutions")
