"""The README and every page of docs/ stay runnable: the docs cannot rot.

- Every ```python block runs: a page's blocks in order, in one namespace, in a fresh folder.
  A block written as a doctest (``>>>`` lines) has its output checked too (ELLIPSIS on).
- Every ```bash line running ``particlescale`` is parsed by the real CLI (the command exists,
  it accepts every flag and value; nothing runs) and every flag it uses is in that command's
  ``--help``; ``python -m benchmarks.X`` names a benchmark module whose ``--help`` lists its
  flags (a ``python benchmarks/X.py`` line is refused: benchmarks are a package);
  ``make X`` names a Makefile target.
- Every ```toml block loads as a ``particlescale serve --config`` file.
- Every relative link and image points to a file that exists, and every ``#anchor`` to one of
  its headings (GitHub's slugs).
- The options table of docs/cli.md and ``particlescale solve`` list the same flags.
- A rotten copy of a page (a renamed keyword, flag, command, config field or anchor) fails.

Stand-ins for what CI does not have, the same for every page (the examples' calls are what is
checked, not their answers):

- ``qwen2.5-0.5b`` becomes ``smollm2-135m`` (``docs_check.SUBSTITUTIONS``), and every run's
  ``max_steps`` / ``max_step_tokens`` are capped (``docs_check.CAPS``: ``particlescale.api``'s
  ``make_config`` is wrapped, so ``solve``, ``asolve`` and ``eval`` runs are all capped). A
  page that then loads a model is marked ``model``.
- ``http://host:8000/v1`` and ``http://host:8001`` (a vLLM generator and a vLLM PRM) become
  the repository's fake vLLM (``particlescale.testing.fake_vllm``), over real HTTP;
  ``http://127.0.0.1:8000`` (a ``particlescale serve``) becomes a real ``particlescale serve``
  process in front of it.
- A trace file that a page's python reads and its ``solve --trace FILE`` line writes is
  written first by that line's method, budget and seed, against the fake vLLM.

A block that cannot run here is preceded by ``<!-- docs-test: skip: REASON -->``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import particlescale.api
from docs_check import (
    PAGES,
    TEST_MODEL,
    DocError,
    blocks,
    capped,
    check_bash,
    check_links,
    check_solve_table,
    check_toml,
    commands,
    needs_model,
    parse_cli,
    python_blocks,
    read,
    run_python,
)
from particlescale.models import is_pulled

LM_URL, PRM_URL, SERVER_URL = "http://host:8000/v1", "http://host:8001", "http://127.0.0.1:8000"
FAKE_LM_MODEL = "Qwen/Qwen2.5-Math-1.5B-Instruct"


@pytest.fixture(scope="module")
def fake_lm() -> Iterator[Any]:
    from particlescale.testing.fake_vllm import FakeVLLM

    with FakeVLLM(model=FAKE_LM_MODEL) as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_prm() -> Iterator[Any]:
    from particlescale.testing.fake_vllm import FakeVLLM

    with FakeVLLM(runner="pooling", model="Qwen/Qwen2.5-Math-PRM-7B") as fake:
        yield fake


@pytest.fixture(scope="module")
def served(fake_lm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``particlescale serve`` in its own process, in front of the fake vLLM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from particlescale.cli import main; main()", "serve",
             "-g", f"openai:{fake_lm.v1}", "--model", FAKE_LM_MODEL, "-r", "arith",
             "--port", str(port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("particlescale serve did not start:\n" + log.read_text())
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stand_ins(request: pytest.FixtureRequest, code: str) -> dict[str, str]:
    """URL -> stand-in URL for the services the code calls (started on first use)."""
    urls: dict[str, str] = {}
    if LM_URL in code:
        urls[LM_URL] = request.getfixturevalue("fake_lm").v1
    if PRM_URL in code:
        urls[PRM_URL] = request.getfixturevalue("fake_prm").url
    if SERVER_URL in code:
        urls[SERVER_URL] = request.getfixturevalue("served")
    return urls


def write_traces(page: str, text: str, code: str, fake: Callable[[], Any]) -> None:
    """Write the trace files the page's python reads, as its ``solve --trace`` lines would."""
    from particlescale import solve
    from particlescale.backends.openai import OpenAIGenerator
    from particlescale.rewards.arith import ArithReward

    for block in blocks(page, text):
        if block.lang != "bash":
            continue
        for line, tokens in commands(block):
            if tokens[:2] != ["particlescale", "solve"] or "--trace" not in tokens:
                continue
            p = parse_cli(f"{page}:{line}", tokens[1:]).params
            if p["trace"] is None or p["trace"].name not in code:
                continue
            lm = fake()
            result = solve(p["question"], generator=OpenAIGenerator(lm.v1, FAKE_LM_MODEL),
                           reward=ArithReward(), method=p["method"], budget=p["budget"],
                           seed=p["seed"])
            p["trace"].write_text(json.dumps(result.trace.to_dict(), indent=1))


def page_params(pages: list[str]) -> list[Any]:
    out = []
    for page in pages:
        marks = []
        if needs_model(page):
            marks = [pytest.mark.model, pytest.mark.skipif(
                not is_pulled(TEST_MODEL), reason=f"run: particlescale models pull {TEST_MODEL}")]
        out.append(pytest.param(page, marks=marks, id=page))
    return out


@pytest.mark.parametrize("page", page_params(
    [p for p in PAGES if python_blocks(p, read(p))]))
def test_python_examples_run(page: str, request: pytest.FixtureRequest, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    text = read(page)
    code_blocks = python_blocks(page, text)
    code = "".join(b.code for b in code_blocks)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(particlescale.api, "make_config", capped)
    write_traces(page, text, code, lambda: request.getfixturevalue("fake_lm"))
    assert run_python(page, code_blocks, stand_ins(request, code)) > 0


@pytest.mark.parametrize("page", PAGES)
def test_commands_match_the_cli(page: str) -> None:
    check_bash(page, read(page))


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page: str) -> None:
    check_links(page, read(page))


def test_server_config_examples_load(tmp_path: Path) -> None:
    assert sum(check_toml(p, read(p), tmp_path) for p in PAGES) >= 1


def test_solve_options_table_matches_the_cli() -> None:
    check_solve_table(read("docs/cli.md"))


def test_readme_is_the_first_screens() -> None:
    text = read("README.md")
    first = blocks("README.md", text)[0]
    assert [t[:2] for _, t in commands(first)] == [["make", "demo"], ["make", "test"]]
    assert text.count("\n") < 250, "README.md: keep it under 250 lines; manuals go in docs/"


# --- the test fails when a page rots ------------------------------------------------------------

# (page, text in it, what it becomes in a rotten copy, check, what the failure names)
MUTANTS = [
    ("docs/remote.md", "reward=VllmPRM(", "prm=VllmPRM(", "python", "docs/remote.md:25: TypeError"),
    ("docs/python-api.md", "np.random.default_rng(0), 4)", "np.random.default_rng(0), size=4)",
     "python", "unexpected keyword argument 'size'"),
    ("docs/rewards.md", "48 / 2 = 25 fails", "48 / 2 = 25 holds", "python", "doctest failed"),
    ("README.md", "--method pf --budget 8 --seed 0 --trace", "--method pf --budgets 8 --seed 0 "
     "--trace", "bash", "No such option: --budgets"),
    ("docs/eval.md", "particlescale report runs/math500", "particlescale reports runs/math500",
     "bash", "no command 'particlescale reports'"),
    ("docs/value-heads.md", "--pf-budgets 8 --pf-problems", "--pf-budget 8 --pf-problems", "bash",
     "--pf-budget is not in"),
    ("docs/development.md", "make bench ", "make benchmarks ", "bash", "target 'benchmarks'"),
    ("docs/value-heads.md", "python -m benchmarks.value.bench_value_budget --minutes",
     "python benchmarks/value/bench_value_budget.py --minutes", "bash", "run as modules"),
    ("docs/value-heads.md", "benchmarks.value.bench_value_steps --minutes",
     "benchmarks.bench_value_steps --minutes", "bash",
     "no benchmark module benchmarks.bench_value_steps"),
    ("docs/server.md", "max_budget = 64", "max_budjet = 64", "toml", "max_budjet"),
    ("README.md", "methods.md#what-each-method-samples", "methods.md#what-each-method-sample",
     "links", "no heading #what-each-method-sample"),
    ("docs/cli.md", "| `--json` |", "| `--jsonl` |", "table", "--jsonl"),
]


@pytest.mark.parametrize(("page", "old", "new", "check", "names"), MUTANTS,
                         ids=[f"{m[3]}-{m[0]}" for m in MUTANTS])
def test_a_rotten_copy_fails(page: str, old: str, new: str, check: str, names: str,
                             request: pytest.FixtureRequest, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    text = read(page)
    assert text.count(old) == 1, f"{page}: the mutant's text {old!r} moved; update MUTANTS"
    rotten = text.replace(old, new)
    with pytest.raises(DocError, match=re.escape(names)):
        if check == "python":  # only the changed block (the page's others may need a model)
            monkeypatch.chdir(tmp_path)
            changed = [b for b in python_blocks(page, rotten) if new in b.code]
            run_python(page, changed, stand_ins(request, changed[0].code))
        elif check == "bash":
            check_bash(page, rotten)
        elif check == "toml":
            check_toml(page, rotten, tmp_path)
        elif check == "links":
            check_links(page, rotten)
        else:
            check_solve_table(rotten)
