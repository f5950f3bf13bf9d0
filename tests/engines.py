"""Real llama.cpp engines and servers for tests: skipped, with the command that fixes it,
when the binding, the server extras or the model is missing."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest


def need(model: str) -> None:
    pytest.importorskip("llama_cpp")
    from particlescale.models import is_pulled

    if not is_pulled(model):
        pytest.skip(f"run: particlescale models pull {model}")


def engine_for(model: str, **kwargs: Any) -> Iterator[Any]:
    """``yield from`` this in a fixture: a LlamaEngine, closed afterwards."""
    need(model)
    from particlescale.backends.llamacpp import LlamaEngine

    eng = LlamaEngine(model, **kwargs)
    try:
        yield eng
    finally:
        eng.close()


# llama.cpp's repacked CPU kernels use AMX tile instructions on CPUs that advertise AMX, which
# die with SIGILL on VMs that do not enable it (see backends/llamacpp/engine.py); the server
# has no flag for it, so it is launched with llama.cpp's extra weight buffers turned off.
LLAMA_SERVER_NO_AMX = """
import runpy, sys
import llama_cpp.llama_cpp as L
_default = L.llama_model_default_params
def _params():
    p = _default()
    p.use_extra_bufts = False
    return p
L.llama_model_default_params = _params
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def llama_cpp_python_server(model: str = "smollm2-135m", *, n_threads: int = 1,
                            nice: int = 0) -> Iterator[str]:
    """``yield from`` this in a fixture: ``python -m llama_cpp.server`` serving ``model`` on
    127.0.0.1; yields its ``/v1`` URL and stops it afterwards. One thread by default:
    llama.cpp's threads spin while they wait for each other, which on a busy 2-core machine
    costs more than a second thread gains (the embedded engine: 75 s with 2, 15 s with 1)."""
    pytest.importorskip("llama_cpp.server.app", reason="pip install 'llama-cpp-python[server]'")
    from particlescale import models

    try:
        path = models.resolve(model)
    except Exception as e:  # not pulled here
        pytest.skip(f"{model} is not available: {e}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["nice", "-n", str(nice), sys.executable, "-c", LLAMA_SERVER_NO_AMX, "--model",
         str(path), "--model_alias", model, "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "2048", "--n_threads", str(n_threads), "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 900  # a loaded 2-core machine loads slowly
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("llama_cpp.server did not start")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
