"""Benchmark: what the OpenAI-compatible server costs on top of ``asolve``, and its throughput.

1. Overhead. The same requests (same seeds, so the same tokens) are run alternately through
   the server (uvicorn on 127.0.0.1, an httpx client with keep-alive) and by ``asolve`` on the
   same engine, directly. Added latency = server wall time - direct wall time, per pair; its
   median is the figure (target: p50 < 20 ms). Measured twice: on the embedded engine
   (``greedy``, short answers, so the noise of a model run stays small) and on a zero-cost
   scripted generator, which isolates HTTP, validation, JSON and the run's bookkeeping.
2. Throughput. Rounds of 8 simultaneous requests (budget 4, ``pf``, capped answers), through
   the server and, alternating round by round, as 8 concurrent ``asolve`` calls in one
   process; and the engine's own rate during the server rounds (sampled tokens per second of
   ``llama_decode``), i.e. the raw batched rate.

Writes the ``<!-- bench:server -->`` section of BENCHMARKS.md. Run it alone (it loads a model):

    flock /tmp/ps-cpu.lock .venv/bin/python -m benchmarks.bench_server [--model qwen2.5-0.5b]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import httpx

from benchmarks.common import write_section
from particlescale import asolve
from particlescale.server import ServerConfig
from particlescale.testing.live_server import LiveServer
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward
from particlescale.wiring import Wired

QUESTIONS = [
    "What is 17 + 25?",
    "A box holds 6 eggs. How many eggs are in 7 boxes?",
    "Tom had 40 marbles and gave away 15. How many are left?",
    "What is 9 times 8?",
]
TARGET_MS = 20.0


def served(gen: Any, reward: Any, name: str, max_concurrent: int = 16) -> LiveServer:
    cfg = ServerConfig(generators=[{"spec": f"bench:{name}", "id": name}],
                       limits={"max_concurrent": max_concurrent, "max_budget": 64})
    return LiveServer(cfg, Wired({name: gen}, reward))


def overhead(server: LiveServer, gen: Any, reward: Any, n: int, **run: Any) -> dict[str, float]:
    """The server's added latency, two ways.

    ``added`` (robust): per request, the client's wall time minus the run's own wall time as
    ``asolve`` measures it inside the server (``scaling.wall_time``), less the same gap for a
    direct ``asolve`` call (its set-up outside the run's stopwatch). This is what the server
    adds around a run, whatever the run itself cost, so the model's run-to-run spread and
    other processes' load do not blur it. ``paired``: server wall time minus direct wall time
    for the same seed (alternating order), which includes that spread.
    """
    body_extra = {k: v for k, v in run.items() if k in ("max_tokens",)}
    options = {k: v for k, v in run.items() if k not in ("max_tokens", "method", "budget")}
    server_s, direct_s, server_gap, direct_gap = [], [], [], []
    with httpx.Client(base_url=server.url, timeout=600) as client:
        for i in range(n + 2):  # 2 warm-up pairs, not counted
            q = QUESTIONS[i % len(QUESTIONS)]
            body = {"messages": [{"role": "user", "content": q}], "seed": i,
                    "method": run["method"], "budget": run["budget"], "options": options,
                    **body_extra}

            def via_server(body: dict = body) -> tuple[float, float]:
                t = time.perf_counter()
                r = client.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                wall = time.perf_counter() - t
                return wall, wall - r.json()["scaling"]["wall_time"]

            def direct(q: str = q, i: int = i) -> tuple[float, float]:
                t = time.perf_counter()
                result = asyncio.run(direct_run(gen, reward, q, i, run))
                wall = time.perf_counter() - t
                return wall, wall - result.usage.wall_time

            if i % 2:
                a, b = via_server(), direct()
            else:
                b, a = direct(), via_server()
            if i >= 2:
                server_s.append(a[0])
                direct_s.append(b[0])
                server_gap.append(a[1])
                direct_gap.append(b[1])

    def q(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[int(p * (len(xs) - 1))] * 1000

    paired = [a - b for a, b in zip(server_s, direct_s, strict=True)]
    added = [a - statistics.median(direct_gap) for a in server_gap]
    return {"n": n, "server_ms": q(server_s, 0.5), "direct_ms": q(direct_s, 0.5),
            "added_p50_ms": q(added, 0.5), "added_p90_ms": q(added, 0.9),
            "paired_p10_ms": q(paired, 0.1), "paired_p50_ms": q(paired, 0.5),
            "paired_p90_ms": q(paired, 0.9)}


async def direct_run(gen: Any, reward: Any, question: str, seed: int, run: dict[str, Any]
                     ) -> Any:
    from particlescale.server.capped import CappedGenerator

    # The server wraps the generator the same way (max_tokens); do the same work directly.
    capped = CappedGenerator(gen, run.get("max_tokens"))
    options = {k: v for k, v in run.items() if k not in ("max_tokens", "method", "budget")}
    return await asolve(question, generator=capped, reward=reward, method=run["method"],
                        budget=run["budget"], seed=seed, **options)


def throughput(server: LiveServer, gen: Any, reward: Any, engine: Any, clients: int,
               rounds: int, run: dict[str, Any]) -> dict[str, float]:
    """``rounds`` x (server, then direct): each round, ``clients`` concurrent requests. The
    two paths alternate so that a change in the machine's load hits both alike."""

    def body(seed: int) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": QUESTIONS[seed % len(QUESTIONS)]}],
                "seed": seed, "method": run["method"], "budget": run["budget"],
                "max_tokens": run["max_tokens"]}

    async def through_server(seeds: list[int]) -> int:
        async with httpx.AsyncClient(base_url=server.url, timeout=1200) as client:
            async def one(seed: int) -> int:
                r = await client.post("/v1/chat/completions", json=body(seed))
                r.raise_for_status()
                return r.json()["usage"]["completion_tokens"]

            return sum(await asyncio.gather(*(one(s) for s in seeds)))

    async def direct(seeds: list[int]) -> int:
        results = await asyncio.gather(*(direct_run(
            gen, reward, QUESTIONS[s % len(QUESTIONS)], s, run) for s in seeds))
        return sum(r.usage.generated_tokens for r in results)

    totals = {"server": [0, 0.0], "direct": [0, 0.0]}  # tokens, wall
    sampled = decode_s = 0.0
    for r in range(rounds):
        seeds = [1000 + r * clients + c for c in range(clients)]
        s0 = (engine.stats.sampled_tokens, engine.stats.decode_seconds)
        t = time.perf_counter()
        totals["server"][0] += asyncio.run(through_server(seeds))
        totals["server"][1] += time.perf_counter() - t
        sampled += engine.stats.sampled_tokens - s0[0]
        decode_s += engine.stats.decode_seconds - s0[1]
        t = time.perf_counter()
        totals["direct"][0] += asyncio.run(direct(seeds))
        totals["direct"][1] += time.perf_counter() - t
    n = rounds * clients
    out: dict[str, float] = {"requests": n, "engine_tok_s": sampled / decode_s,
                             "max_sessions": engine.stats.max_sessions_per_decode}
    for path, (tokens, wall) in totals.items():
        out.update({f"{path}_rpm": 60 * n / wall, f"{path}_tok_s": tokens / wall,
                    f"{path}_wall": wall})
    return out


def burst(server: LiveServer, engine: Any, k: int = 16) -> dict[str, float]:
    """One request alone, then ``k`` identical ones at once (same seed: the same work each),
    so ``k`` times the first is what serving them one after the other would cost."""
    body = {"messages": [{"role": "user", "content": QUESTIONS[0]}], "seed": 5,
            "method": "pf", "budget": 1, "max_tokens": 64}

    async def send(n: int) -> float:
        async with httpx.AsyncClient(base_url=server.url, timeout=1200) as client:
            t = time.perf_counter()
            rs = await asyncio.gather(*(client.post("/v1/chat/completions", json=body)
                                        for _ in range(n)))
            for r in rs:
                r.raise_for_status()
            return time.perf_counter() - t

    asyncio.run(send(1))  # warm-up
    c0 = engine.stats.decode_calls
    one = asyncio.run(send(1))
    c1 = engine.stats.decode_calls
    many = asyncio.run(send(k))
    c2 = engine.stats.decode_calls
    return {"k": k, "one_s": one, "many_s": many, "ratio": many / one,
            "one_calls": c1 - c0, "many_calls": c2 - c1}


def latency_row(name: str, run: str, r: dict[str, float]) -> str:
    return (f"| {name} | {run} | {r['direct_ms']:.1f} ms | {r['server_ms']:.1f} ms "
            f"| **{r['added_p50_ms']:.1f} ms** | {r['added_p90_ms']:.1f} ms "
            f"| {r['paired_p50_ms']:.1f} ms ({r['paired_p10_ms']:.1f} .. "
            f"{r['paired_p90_ms']:.1f}) |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-0.5b", help="embedded model for throughput")
    ap.add_argument("--overhead-model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from particlescale.backends.llamacpp import LlamaCppGenerator
    from particlescale.models import resolve
    from particlescale.rewards.registry import make_reward

    rows: dict[str, Any] = {}
    # Zero-cost generator: the server's own overhead.
    gen0 = ScriptedGenerator(lambda p: {"Add. ": 0.5, "So \\boxed{4}.": 0.5}, horizon=4)
    rew0 = ScriptedReward(lambda t: 0.5)
    with served(gen0, rew0, "scripted") as s:
        rows["scripted"] = overhead(s, gen0, rew0, args.pairs * 5, method="pf", budget=4)
    print("scripted", rows["scripted"], flush=True)

    small = LlamaCppGenerator(resolve(args.overhead_model), n_ctx=8192, n_seq_max=16)
    rew = make_reward("arith")
    with served(small, rew, args.overhead_model) as s:
        rows["engine"] = overhead(s, small, rew, args.pairs, method="greedy", budget=1,
                                  max_tokens=16)
    small.close()
    print("engine", rows["engine"], flush=True)

    big = LlamaCppGenerator(resolve(args.model), n_ctx=32768, n_seq_max=64)
    run = {"method": "pf", "budget": 4, "max_tokens": args.max_tokens}
    with served(big, rew, args.model) as s:
        bu = burst(s, big.engine)
        print("burst", bu, flush=True)
        tp = throughput(s, big, rew, big.engine, args.clients, args.rounds, run)
    big.close()
    print("throughput", tp, flush=True)

    sc, en = rows["scripted"], rows["engine"]
    load = os.getloadavg()
    body = f"""## Server: overhead over `asolve` and throughput (bench_server.py)

The same requests (same seeds) go alternately through the server (uvicorn on 127.0.0.1,
httpx client with keep-alive, JSON in and out) and to `asolve` on the same generator;
{sc['n']} / {en['n']} pairs. "Added" = client wall time minus the run's own wall time
measured inside `asolve` (reported as `scaling.wall_time`), less the same gap of a direct
call: what the server adds around a run, immune to the model's run-to-run spread. "Paired"
= server minus direct wall time per seed, median (p10 .. p90), which includes that spread.

| generator | run | direct p50 | server p50 | added p50 | added p90 | paired |
|---|---|---|---|---|---|---|
{latency_row("scripted (zero cost)", "pf, budget 4", sc)}
{latency_row(f"{args.overhead_model} (embedded)", "greedy, max_tokens 16", en)}

Target: added p50 < {TARGET_MS:.0f} ms (HTTP, validation, JSON, the run's task, the
`max_tokens` wrapper, the response).

Batching through the server: one request alone (pf, budget 1, max_tokens 64, {args.model},
seed 5) took {bu['one_s']:.2f} s and {bu['one_calls']} `llama_decode` calls; {bu['k']} identical
requests sent at once took {bu['many_s']:.2f} s in all (**{bu['ratio']:.1f}x** one request, against
{bu['k']}x one after the other) and {bu['many_calls']} decode calls. On 2 cores a decode of 16
sequences costs several times a decode of one, so the wall-time gain is smaller than the
decode-call gain.

Throughput: {args.rounds} rounds of {args.clients} simultaneous requests, {tp['requests']} in
all per path (pf, budget 4, max_tokens {args.max_tokens}, {args.model} embedded, `arith`
reward); the paths alternate round by round.

| path | requests/min | generated tokens/s | wall |
|---|---|---|---|
| server (HTTP) | {tp["server_rpm"]:.1f} | {tp["server_tok_s"]:.1f} | {tp["server_wall"]:.1f} s |
| `asolve` x {args.clients} concurrent, one process | {tp["direct_rpm"]:.1f} \
| {tp["direct_tok_s"]:.1f} | {tp["direct_wall"]:.1f} s |
| engine: sampled tokens per second inside `llama_decode` (server rounds) | \
| {tp['engine_tok_s']:.1f} | |

The engine decoded up to {tp['max_sessions']} requests' sequences in one `llama_decode`. Its
own rate counts only time inside `llama_decode` (prompt reading included); the rest of a
request's time is sampling, scoring and step synchronisation (a step waits for its slowest
particle). The machine is shared: load average {load[0]:.1f} / {load[1]:.1f} (1/5 min) at the
end of the run, so absolute rates vary between runs; compare the rows of one run.
"""
    if not args.no_write:
        write_section("server", body)
    print(body)


if __name__ == "__main__":
    main()
