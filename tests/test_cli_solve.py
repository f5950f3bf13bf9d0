"""``particlescale solve``: bad input gives one line and exit 2; a real run gives a boxed answer;
Ctrl-C stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from particlescale.cli import main
from particlescale.errors import ConfigError
from particlescale.eval.specs import parse_options
from particlescale.models import is_pulled
from particlescale.types import Trace

NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
           "clips in May. How many clips did Natalia sell altogether in April and May?")


def run_main(args: list[str], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["particlescale", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


@pytest.fixture
def fake_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache, plus a corrupt 'qwen2.5-1.5b' in it."""
    monkeypatch.setenv("PARTICLESCALE_CACHE", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "qwen2.5-1.5b.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    return tmp_path


def _truncated_gguf(tmp_path: Path) -> str:
    p = tmp_path / "truncated.gguf"
    p.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    return str(p)


BAD = [
    (["", "--reward", "arith"], "question: is empty"),
    (["   ", "--reward", "arith"], "question: is empty"),
    (["q", "--method", "nope"], "method: unknown 'nope'"),
    (["q", "--budget", "0"], "--budget: must be between 1 and 4096"),
    (["q", "--budget", "5000"], "--budget: must be between 1 and 4096"),
    (["q", "--seed", "-1"], "--seed: must be >= 0"),
    (["q", "-O", "nonsense=1"], "unknown option 'nonsense'"),
    (["q", "-O", "resampling=bogus"], "option 'resampling'"),
    (["q", "-O", "novalue"], "--option: option 'novalue' must be NAME=VALUE"),
    (["q", "--reward", "nope"], "--reward: unknown 'nope'"),
    (["q", "--reward", "arith+"], "reward: cannot read"),
    (["q", "--reward", "arith", "--model", "nope"], "model: unknown name 'nope'"),
    (["q", "--reward", "arith", "--model", "qwen2.5-0.5b"], "is not pulled yet"),
    (["q", "--reward", "arith", "--model", "qwen2.5-1.5b"], "is corrupt"),
    (["q", "--reward", "arith", "--model", "/no/such/file.gguf"], "does not exist"),
    (["q", "--reward", "arith", "--generator", "nope:x"], "--generator: unknown kind 'nope'"),
    (["q", "--trace", "/no/such/dir/trace.json"], "--trace: the folder"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, fake_cache: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_main(["solve", *args], capsys, monkeypatch)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], err


def test_unloadable_gguf_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    code, _, err = run_main(["solve", "q", "--reward", "arith", "--model",
                             _truncated_gguf(tmp_path)], capsys, monkeypatch)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: model: llama.cpp could not load")
    assert "Traceback" not in err


def test_parse_options() -> None:
    assert parse_options(["resampling=systematic", "ess-threshold = 0.5", "aggregation=none"],
                         "--option") \
        == {"resampling": "systematic", "ess_threshold": 0.5, "aggregation": None}
    # one option per -o item: a comma stays in the value
    assert parse_options(["a=1,2"], "--option") == {"a": "1,2"}
    with pytest.raises(ConfigError, match="--option: option '=3' must be NAME=VALUE"):
        parse_options(["=3"], "--option")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from particlescale.cli import main; main()", *args]


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(not is_pulled("qwen2.5-0.5b"), reason="run: particlescale models pull "
                    "qwen2.5-0.5b")
def test_solve_end_to_end_gives_a_boxed_answer(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    proc = subprocess.run(
        _cli("solve", NATALIA, "--method", "pf", "--budget", "4", "--seed", "0",
             "--reward", "arith", "--json", "--trace", str(trace)),
        capture_output=True, text=True,  # no limit: it ends by itself, however busy the CPUs
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["answer"], result
    assert "\\boxed" in result["text"]
    assert result["method"] == "pf" and result["budget"] == 4
    assert result["usage"]["generated_tokens"] > 0
    assert "step 1" in proc.stderr  # progress lines (stderr is not a terminal here)
    tr = Trace.from_dict(json.loads(trace.read_text()))
    assert tr.method == "pf" and tr.steps and tr.config["reward"] == "arith"


@pytest.mark.model
@pytest.mark.skipif(not is_pulled("smollm2-135m"), reason="run: particlescale models pull "
                    "smollm2-135m")
def test_ctrl_c_stops_cleanly() -> None:
    proc = subprocess.Popen(
        _cli("solve", NATALIA, "--model", "smollm2-135m", "--budget", "16", "--seed", "0",
             "--reward", "arith", "-O", "max_steps=40", "-O", "max_step_tokens=512"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A child inherits an ignored SIGINT (earlier tests in this process may ignore it),
        # and Python then installs no KeyboardInterrupt handler: restore the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 3600  # the loop ends at the line or at EOF before that
    seen = ""
    # The line naming the generator is printed once the engine is up, right before the run
    # starts: the signal then lands inside the run (waiting for a step line instead raced a
    # fast machine, where the whole run could end first).
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if line.startswith("generator ") or not line:
            break
    assert "generator " in seen, seen
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, seen + err
    assert "interrupted" in err
    assert "Traceback" not in seen + err


@pytest.mark.model
@pytest.mark.skipif(not is_pulled("smollm2-135m"), reason="run: particlescale models pull "
                    "smollm2-135m")
def test_solve_without_method_runs_the_measured_default_for_its_reward() -> None:
    # issue 20, item 4: with a CPU reward pf answered fewer problems than majority voting,
    # so `solve` (and `make demo`) run weighted majority voting unless told otherwise
    proc = subprocess.run(
        _cli("solve", "What is 2 + 3?", "--model", "smollm2-135m", "--budget", "2", "--seed",
             "0", "--reward", "arith", "-O", "max_steps=4", "--json"),
        capture_output=True, text=True,  # no limit: it ends by itself, however busy the CPUs
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["method"] == "weighted-best-of-n"
    assert "method weighted-best-of-n" in proc.stderr and "--method pf" in proc.stderr
