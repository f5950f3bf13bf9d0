"""``particlescale.wiring``: every spec kind is checked the same way for every face, what it
builds is closed exactly once, and no credential in a URL reaches an error."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from particlescale.cli import main
from particlescale.errors import ConfigError
from particlescale.models import DEFAULT_MODEL
from particlescale.wiring import (
    DEFAULT_GENERATOR_SPEC,
    GeneratorSetting,
    Setup,
    Wired,
    check,
    check_reward,
    resolve_generator,
    wire,
)

REPO = Path(__file__).resolve().parents[1]
PLUGIN = f"py:{REPO / 'tests' / 'eval_plugin.py'}"
URL = "http://127.0.0.1:9/v1"
SECRET_URL = "http://admin:s3cretpw@127.0.0.1:9/v1?api_key=k3y"


def test_default_model_and_default_generator_spec_are_distinct_names() -> None:
    assert f"llamacpp:{DEFAULT_MODEL}" == DEFAULT_GENERATOR_SPEC
    assert resolve_generator("llamacpp") == (DEFAULT_GENERATOR_SPEC, None)


@pytest.mark.parametrize(("spec", "model", "full", "upstream"), [
    ("llamacpp", None, f"llamacpp:{DEFAULT_MODEL}", None),
    ("llamacpp:", "smollm2-135m", "llamacpp:smollm2-135m", None),
    ("llamacpp", "smollm2-135m", "llamacpp:smollm2-135m", None),  # --model = the embedded model
    ("llamacpp:smollm2-135m", None, "llamacpp:smollm2-135m", None),
    ("llamacpp:smollm2-135m", "smollm2-135m", "llamacpp:smollm2-135m", None),  # said twice: ok
    ("llamacpp:hf:o/r/f.gguf", None, "llamacpp:hf:o/r/f.gguf", None),
    (f"openai:{URL}", "Qwen/X", f"openai:{URL}", "Qwen/X"),  # --model = the upstream name
    (f"openai: {URL} , http://b:8000/v1", None, f"openai:{URL},http://b:8000/v1", None),
    ("py:mod:factory", "m", "py:mod:factory", "m"),  # a plugin receives --model
])
def test_each_generator_kind_resolves(spec: str, model: str | None, full: str,
                                      upstream: str | None) -> None:
    assert resolve_generator(spec, model) == (full, upstream)


@pytest.mark.parametrize(("spec", "model", "words"), [
    ("", None, "--generator: empty; give llamacpp[:MODEL], openai:URL"),
    ("nope:x", None, "--generator: unknown kind 'nope'; give llamacpp[:MODEL], openai:URL"),
    ("qwen2.5-0.5b", None, "--generator: unknown kind 'qwen2.5-0.5b'"),
    (URL, None, f"unknown kind 'http' (a URL? write openai:{URL})"),
    ("openai", None, "--generator: 'openai' needs the server's URL, e.g. openai:http://"),
    ("openai:", None, "--generator: 'openai' needs the server's URL"),
    (f"openai:{URL},", None, "--generator: 'openai' needs the server's URL"),
    ("openai:localhost:8000", None, "--generator: 'localhost:8000' is not an http(s) URL"),
    ("openai:http://h:99999/v1", None, "is not an http(s) URL"),
    ("llamacpp:qwen2.5-0.5b", "smollm2-135m",
     "--model smollm2-135m and --generator llamacpp:qwen2.5-0.5b name two different models; "
     "name it once: --model smollm2-135m (with --generator llamacpp) or --generator "
     "llamacpp:qwen2.5-0.5b without --model"),
    ("llamacpp", " ", "--model: empty"),
])
def test_bad_generator_specs_are_one_line_naming_the_flag(spec: str, model: str | None,
                                                          words: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_generator(spec, model)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("reward", "generators", "words"), [
    ("nope", [], "--reward: unknown 'nope'; choose one of arith"),
    ("", [], "--reward: empty"),
    ("arith+", [], "reward: cannot read"),
    ("vllm-prm", [], "--reward: 'vllm-prm' needs its server's URL, e.g. vllm-prm:http://"),
    ("math-shepherd:x", [], "--reward: 'math-shepherd' needs its server's URL"),
    ("arith:3", [], "--reward: 'arith' takes no argument, got arith:3; write arith"),
    ("logprob", [f"openai:{URL}"], "--reward: 'logprob' needs step log-probabilities"),
    ("value", [f"openai:{URL}"], "--reward: 'value' reads the embedded generator's hidden"),
    ("value:/no/such.npz", ["llamacpp:x"], "value head '/no/such.npz' does not exist"),
    ("reference:noise=-1", [], "noise must be a number >= 0"),
])
def test_bad_reward_specs_are_one_line_naming_the_flag(reward: str, generators: list[str],
                                                       words: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_reward(reward, generators)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_the_reward_default_suits_the_generators_and_reference_needs_an_answer_key() -> None:
    assert check_reward(None, ["llamacpp:x"]) == "arith*logprob"
    assert check_reward(None, ["llamacpp:x", f"openai:{URL}"]) == "arith"
    assert check_reward(" judge+arith ", ["llamacpp:x"]) == "judge+arith"
    assert check_reward("py:m:f", []) == "py:m:f"  # a plugin is checked when it is loaded
    assert check_reward("reference:noise=0.5", []) == "reference:noise=0.5"  # eval
    with pytest.raises(ConfigError, match="--reward: 'reference' reads the answer key"):
        check_reward("0.5*reference+arith", [], answer_key=False)  # solve, serve


@pytest.mark.parametrize(("setup", "secret_free_words"), [
    (Setup(generator=f"openai:{SECRET_URL.replace(':9/', ':99999/')}"), "is not an http(s)"),
    (Setup(generator=SECRET_URL), "unknown kind 'http'"),
    (Setup(generator=f"openai:{URL}", reward=f"vllm-prm:{SECRET_URL}+"), "cannot read"),
    (Setup(generator=f"openai:{URL}", reward=f"judge:{SECRET_URL}*logprob"), "'logprob'"),
])
def test_no_credential_of_a_url_reaches_an_error(setup: Setup, secret_free_words: str) -> None:
    with pytest.raises(ConfigError) as e:
        setup.check()
    text = str(e.value)
    assert secret_free_words in text
    assert "s3cretpw" not in text and "admin" not in text and "k3y" not in text


def test_describe_is_the_old_hash_content_with_credentials_masked() -> None:
    assert Setup().describe() == {"generator": "llamacpp", "model": None, "reward": None}
    d = Setup(generator=f"openai:{SECRET_URL}", api_key="sk-1", timeout=3, template="qwen",
              reward="arith").describe()
    assert d == {"generator": "openai:http://127.0.0.1:9/v1?api_key=***", "model": None,
                 "reward": "arith", "template": "qwen"}
    assert "sk-1" not in repr(Setup(api_key="sk-1"))


def test_options_belong_to_server_generators() -> None:
    with pytest.raises(ConfigError, match="--timeout: only for generators on a server"):
        Setup(generator=PLUGIN + ":generator", timeout=3).check()
    with pytest.raises(ConfigError, match="--template: unknown 'nope'; choose one of auto"):
        Setup(generator=f"openai:{URL}", template="nope").check()
    with pytest.raises(ConfigError, match="--retries: must be >= 0"):
        check([GeneratorSetting(f"openai:{URL}", options={"retries": -1})], "arith")


# -- closing --------------------------------------------------------------------------------


class Part:
    """Records how it was closed."""

    def __init__(self, log: list[str], name: str, *, sync: bool = True,
                 asyn: bool = True) -> None:
        self.log, self.name = log, name
        if not sync:
            self.close = None  # type: ignore[assignment]
        if not asyn:
            self.aclose = None  # type: ignore[assignment]

    def close(self) -> None:
        self.log.append(f"{self.name}.close")

    async def aclose(self) -> None:
        self.log.append(f"{self.name}.aclose")


def test_closing_closes_each_part_once_reward_first() -> None:
    log: list[str] = []
    gen, other, rew = Part(log, "gen"), Part(log, "other", sync=False), Part(log, "rew",
                                                                                 asyn=False)
    wired = Wired({"a": gen, "b": other, "c": gen}, rew, owned=True)  # type: ignore[arg-type]
    assert wired.generator is gen

    async def use() -> None:
        async with wired:
            pass
        await wired.aclose()  # twice: a no-op

    asyncio.run(use())
    assert log == ["rew.close", "gen.aclose", "gen.close", "other.aclose"]
    wired.close()
    assert len(log) == 4


def test_what_a_caller_hands_in_stays_the_callers() -> None:
    log: list[str] = []
    with Wired(Part(log, "gen"), Part(log, "rew")) as wired:  # type: ignore[arg-type]
        assert list(wired.generators) == ["gen"]  # a lone generator: keyed by its name
    assert log == []
    with pytest.raises(ConfigError, match="generators: none given"):
        Wired({}, Part(log, "rew"))  # type: ignore[arg-type]


def test_wire_builds_plugins_and_closes_them(tmp_path: Path) -> None:
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "LOG = []\n"
        "class Gen:\n"
        "    name = 'gen'\n"
        "    def __init__(self, model): self.model = model\n"
        "    def close(self): LOG.append('gen')\n"
        "class Rew:\n"
        "    name = 'rew'\n"
        "    def __init__(self, generator): self.generator = generator\n"
        "    async def aclose(self): LOG.append('rew')\n"
        "def bad_reward(generator): raise RuntimeError('no reward today')\n")
    wired = Setup(generator=f"py:{plugin}:Gen", model="m", reward=f"py:{plugin}:Rew").wire()
    mod = sys.modules[type(wired.generator).__module__]
    assert wired.generator.model == "m" and wired.reward.generator is wired.generator
    assert wired.specs == {"generator:0": f"py:{plugin}:Gen", "reward": f"py:{plugin}:Rew"}
    wired.close()
    assert mod.LOG == ["rew", "gen"]
    with pytest.raises(RuntimeError, match="no reward today"):
        wire([GeneratorSetting(f"py:{plugin}:Gen", id="x")], f"py:{plugin}:bad_reward")
    assert mod.LOG == ["rew", "gen", "gen"]  # the generator built before the failure is closed
    with pytest.raises(ConfigError, match=r"--reward: plugin .* has no 'missing'"):
        Setup(generator=f"py:{plugin}:Gen", reward=f"py:{plugin}:missing").wire()


# -- the faces ------------------------------------------------------------------------------


def run_main(args: list[str], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["particlescale", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return int(e.value.code or 0), (out + err).strip()


FACES = {
    "solve": ["solve", "What is 2 + 2?"],
    "eval": ["eval", "-d", "gsm8k", "--limit", "1", "-o", "OUT"],
    "serve": ["serve", "--port", "0"],
}


@pytest.mark.parametrize("flags", [
    ["-g", "nope:x"],
    ["-g", "openai:"],
    ["-g", f"openai:{SECRET_URL.replace(':9/', ':99999/')}"],
    ["-g", "openai:" + URL, "-r", "logprob"],
    ["-r", "nope"],
    ["-r", "vllm-prm"],
    ["-r", "arith:x"],
    ["--model", "smollm2-135m", "-g", "llamacpp:qwen2.5-0.5b", "-r", "arith"],
    ["--model", "no-such-model", "-r", "arith"],  # --model is the embedded model everywhere
    ["--timeout", "3", "-r", "arith"],
])
def test_every_face_gives_the_same_one_line_error(flags: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    lines = {}
    for face, args in FACES.items():
        args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
        code, out = run_main([*args, *flags], capsys, monkeypatch)
        assert code == 2, (face, out)
        assert len(out.splitlines()) == 1 and out.startswith("error: "), (face, out)
        assert "s3cretpw" not in out and "Traceback" not in out
        lines[face] = out
    assert len(set(lines.values())) == 1, lines


def test_python_dash_m_particlescale_runs() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "particlescale", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    p = run("--help")
    assert p.returncode == 0 and all(c in p.stdout for c in ("solve", "eval", "serve"))
    p = run("methods")
    assert p.returncode == 0 and "pf" in p.stdout and "best-of-n" in p.stdout, p.stderr
    p = run("solve", "q", "-g", "nope:x")
    assert p.returncode == 2 and p.stderr.startswith("error: --generator: unknown kind")



def test_the_step_boundary_travels_with_the_setup_and_is_checked() -> None:
    """--step-boundary (solve, eval, serve) reaches the generator as ``boundary``, is hashed
    into a sweep only when set, and a bad value is the flag's one-line error."""
    s = Setup(generator="openai:http://127.0.0.1:9/v1", reward="arith", step_boundary="stop")
    assert s.options() == {"boundary": "stop"}
    assert s.describe()["step_boundary"] == "stop"
    assert "step_boundary" not in Setup(generator="openai:http://127.0.0.1:9/v1").describe()
    with pytest.raises(ConfigError, match="--step-boundary: unknown 'later'"):
        dataclasses.replace(s, step_boundary="later").check()
    with pytest.raises(ConfigError, match="--step-boundary: only for generators on a server"):
        Setup(generator="llamacpp", reward="arith", step_boundary="stop").check()


@pytest.mark.parametrize(("reward", "method"), [
    ("arith*logprob", "weighted-best-of-n"),  # the CPU default reward
    ("arith", "weighted-best-of-n"),
    ("0.5*value*arith", "weighted-best-of-n"),
    ("judge:qwen2.5-1.5b+arith", "weighted-best-of-n"),  # a local judge is measured weak too
    ("judge:http://u:hunter2@gpu:8000/v1", "pf"),  # a served judge may be a strong model
    ("vllm-prm:http://u:hunter2@gpu:8001", "pf"),
    ("vllm-prm:http://gpu:8001*arith", "pf"),  # a PRM in the product: pf
    ("math-shepherd:http://gpu:8002", "pf"),
    (f"{PLUGIN}:make_reward", "pf"),  # the user's own reward: the paper's method
])
def test_default_method_is_pf_only_with_a_reward_that_can_rank_steps(reward: str,
                                                                     method: str) -> None:
    from particlescale.wiring import default_method

    got, why = default_method(reward)
    assert got == method, why
    assert "hunter2" not in why
    assert ("near chance" in why) == (method != "pf")


def test_solve_without_method_names_its_default_and_refuses_pf_options_with_the_fix(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["particlescale", "solve", "What is 2 + 2?", "-r", "arith",
                                      "-g", f"openai:{URL}", "--model", "m",
                                      "-O", "resampling=systematic"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "unknown option 'resampling'" in err and "add --method pf" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
