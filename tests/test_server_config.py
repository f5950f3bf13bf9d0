"""Server configuration (TOML/YAML files and flags) and ``particlescale serve`` end to end
against the fake vLLM upstream (a real subprocess, a real port, the official OpenAI SDK)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from particlescale.errors import ConfigError
from particlescale.server import load_config
from particlescale.testing.fake_vllm import FakeVLLM

TOML = """
reward = "arith"
method = "beam"
budget = 4

[[generators]]
spec = "openai:http://gpu:8000/v1"
model = "Qwen/Qwen2.5-Math-7B-Instruct"
api_key_env = "VLLM_KEY"

[[generators]]
id = "local"
spec = "llamacpp:qwen2.5-0.5b"

[options.pf]
resampling = "systematic"

[presets.pf-32]
method = "pf"
budget = 32
generator = "local"

[limits]
max_budget = 32
max_concurrent = 3
request_timeout = 60
"""

YAML = """
reward: arith
budget: 4
generator: openai:http://gpu:8000/v1
presets:
  careful: {method: pf, budget: 16, options: {temperature: 0.5}}
limits: {max_budget: 16}
"""


def test_toml_file(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TOML)
    cfg = load_config(tmp_path / "s.toml")
    assert [g.model_id for g in cfg.generators] == ["Qwen/Qwen2.5-Math-7B-Instruct", "local"]
    assert cfg.generators[0].api_key_env == "VLLM_KEY"
    assert (cfg.reward, cfg.method, cfg.budget) == ("arith", "beam", 4)
    assert cfg.options == {"pf": {"resampling": "systematic"}}
    assert cfg.preset_table()["pf-32"].generator == "local"
    assert (cfg.limits.max_budget, cfg.limits.max_concurrent, cfg.limits.request_timeout,
            cfg.limits.max_body_bytes) == (32, 3, 60.0, 1_000_000)


def test_yaml_file_with_the_one_generator_shorthand(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(YAML)
    cfg = load_config(tmp_path / "s.yaml")
    assert [g.spec for g in cfg.generators] == ["openai:http://gpu:8000/v1"]
    assert cfg.preset_table()["careful"].options == {"temperature": 0.5}
    assert list(cfg.preset_table()) == ["careful"]


def test_flags_override_the_file(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TOML)
    cfg = load_config(tmp_path / "s.toml", budget=8, max_concurrent=9, method=None,
                      generators=[{"spec": "openai:http://other/v1", "id": "local"}])
    assert (cfg.budget, cfg.method, cfg.limits.max_concurrent, cfg.limits.max_budget) == (
        8, "beam", 9, 32)
    assert [g.spec for g in cfg.generators] == ["openai:http://other/v1"]
    with pytest.raises(ConfigError, match=r"presets\.pf-32\.generator: unknown 'local'"):
        load_config(tmp_path / "s.toml", generators=[{"spec": "openai:http://other/v1"}])


def test_defaults_serve_the_embedded_model_with_presets() -> None:
    cfg = load_config()
    assert cfg.generators[0].spec == "llamacpp:qwen2.5-0.5b"
    assert (cfg.method, cfg.budget) == ("pf", 8)
    assert list(cfg.preset_table()) == ["pf-4", "pf-8", "pf-16"]


def test_keys_from_file_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTICLESCALE_API_KEYS", "a, b,,")
    assert load_config(api_keys=("c",)).keys() == ("c", "a", "b")


@pytest.mark.parametrize(("text", "suffix", "words"), [
    ("budget = ", ".toml", "not valid TOML"),
    ("a: [", ".yaml", "not valid YAML"),
    ("- 1", ".yaml", "mapping"),
    ("", ".ini", "must end in .toml"),
    ("bugdet = 3", ".toml", "bugdet: Extra inputs are not permitted"),
    ("method = 'magic'", ".toml", "method: unknown 'magic'"),
    ("budget = 100", ".toml", "budget: default 100 exceeds limits.max_budget 64"),
    ("[limits]\nmax_concurrent = 0", ".toml", "limits.max_concurrent"),
    ("[presets.x]\nmethod = 'pf'\nbudget = 500", ".toml", "presets.x.budget"),
    ("[presets.x]\nmethod = 'pf'\nbudget = 5\ngenerator = 'nope'", ".toml",
     "presets.x.generator: unknown 'nope'"),
    ("[[generators]]\nspec = 'openai:http://a/v1'\nmodel = 'm'\n"
     "[[generators]]\nspec = 'openai:http://b/v1'\nmodel = 'm'", ".toml", "ids must be unique"),
])
def test_bad_config_names_the_setting(tmp_path: Path, text: str, suffix: str, words: str
                                      ) -> None:
    path = tmp_path / f"s{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match="config") as e:
        load_config(path)
    assert words in str(e.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/serve.toml")


def _cli(*args: str, **kw) -> subprocess.Popen:
    code = "from particlescale.cli import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_cli_bad_config_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text("budget = 0")
    proc = _cli("serve", "--config", str(tmp_path / "s.toml"))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2
    assert out.strip().splitlines() == ["error: config: budget: Input should be greater than or "
                                        "equal to 1"]


def test_cli_unknown_generator_is_one_error_line() -> None:
    proc = _cli("serve", "--generator", "nope:x")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2 and out.startswith("error: --generator: unknown kind 'nope'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_the_openai_sdk_against_an_upstream() -> None:
    model = "Qwen/Qwen2.5-Math-1.5B-Instruct"
    with FakeVLLM(model=model) as upstream:
        port = free_port()
        env = {**os.environ, "PARTICLESCALE_API_KEYS": "sekrit"}
        proc = _cli("serve", "--generator", f"openai:{upstream.v1}", "--model", model,
                    "--reward", "arith", "--port", str(port), "--budget", "2",
                    "--log-level", "warning", env=env)
        try:
            deadline = time.monotonic() + 600
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.1)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sekrit")
            assert next(m.id for m in client.models.list()) == model
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What is 40 + 2?"}],
                seed=3, max_tokens=64)
            assert r.choices[0].message.content and r.usage.completion_tokens > 0
            assert r.model_extra["scaling"]["budget"] == 2
            with pytest.raises(openai.PermissionDeniedError):
                openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong",
                              max_retries=0).models.list()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    assert proc.returncode == 0
