"""The results store of a sweep: ``DIR/config.json`` and the append-only ``DIR/results.jsonl``.

Crash safety: every result is one JSON line written with a single ``write``, then ``flush`` and
``os.fsync``, so a ``kill -9`` loses at most the results still in flight and can leave at most
a *torn last line* (no trailing newline, or not valid JSON). :func:`load_rows` detects that line
and truncates the file back to the last complete line before anything is appended again. A bad
line anywhere else is not a crash artefact: it is reported with its line number.

Resume: a row is identified by its key (problem id, method label, budget, seed). Rows are only
appended; the *last* row of a key wins, so retrying an errored task appends its new result.

Configuration: ``config.json`` holds the hash of everything that changes results (dataset
source and fields, generator, model, reward, common method options). A run whose hash differs
is refused unless ``force``, which moves the old results aside (never deletes them).

One writer per directory: :func:`lock_out` takes an exclusive ``flock`` on ``DIR/.lock`` and
writes its PID there. The kernel drops the lock when the process dies, however it dies, so a
``kill -9`` never leaves a stale lock; a second run on the same directory is refused naming
the PID that holds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

try:
    import fcntl
except ImportError:  # pragma: no cover  (not POSIX: no lock)
    fcntl = None  # type: ignore[assignment]
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from particlescale.errors import ConfigError, ParticlescaleError

RESULTS = "results.jsonl"
CONFIG = "config.json"
LOCK = ".lock"


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def row_key(problem_id: str, method: str, budget: int, seed: int) -> str:
    return f"{problem_id}\t{method}\t{budget}\t{seed}"


def key_of(row: dict[str, Any]) -> str:
    return row_key(str(row["problem_id"]), row["method"], int(row["budget"]), int(row["seed"]))


@dataclass
class Loaded:
    rows: list[dict[str, Any]]
    dropped_torn_line: bool = False

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last row of each key (a retry supersedes the errored attempt)."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            out[key_of(r)] = r
        return out


def load_rows(path: Path, *, repair: bool = False) -> Loaded:
    """Read ``results.jsonl``; a torn last line is dropped (and cut off the file if ``repair``)."""
    if not path.exists():
        return Loaded([])
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    lines = data.split(b"\n")
    # After split, a file ending in "\n" has an empty last element; anything else is a line
    # the writer did not finish.
    complete, tail = lines[:-1], lines[-1]
    torn = bool(tail.strip())
    good_end = 0
    for n, raw in enumerate(complete, start=1):
        if not raw.strip():
            good_end += len(raw) + 1
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict) or "problem_id" not in row:
                raise ValueError("not a result row")
        except ValueError as e:
            if n == len(complete) and not tail.strip():
                torn = True  # the last line is complete but garbled: same crash artefact
                break
            raise ParticlescaleError(
                f"{path}: line {n} is not a result row ({e}); the file was edited or corrupted "
                "outside a crash. Fix or delete that line, or start a new --out directory"
            ) from None
        rows.append(row)
        good_end += len(raw) + 1
    if torn and repair:
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return Loaded(rows, dropped_torn_line=torn)


class ResultWriter:
    """Appends rows to ``results.jsonl``: one write, flush and fsync per row."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "ab")  # noqa: SIM115  (kept open for the sweep's lifetime)

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=_jsonable)
                + "\n").encode()
        self._f.write(line)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonable(v: Any) -> Any:
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(v)


def _writable_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"out: cannot write to {out} ({e.strerror or e}); choose a writable "
                          "--out directory") from None


class OutLock:
    """The exclusive lock on a results directory (see :func:`lock_out`)."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def __del__(self) -> None:
        self.release()


def _holder(fd: int) -> str:
    """The PID written in a held lock file (the holder writes it just after locking)."""
    for _ in range(20):
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if pid:
            return pid
        time.sleep(0.025)
    return "unknown"


def lock_out(out: Path) -> OutLock:
    """Create ``out`` (checking it is writable) and lock it for this process, or raise
    :class:`ConfigError` naming the PID of the process that holds it."""
    _writable_dir(out)
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"out: cannot open the lock file {path} ({e.strerror or e}); make it "
                          "writable or choose another --out directory") from None
    if fcntl is None:  # pragma: no cover
        return OutLock(path, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder(fd) if isinstance(e, BlockingIOError) else None
        os.close(fd)
        if holder is None:
            raise ConfigError(f"out: cannot lock {path} ({e.strerror or e}); choose another "
                              "--out directory") from None
        raise ConfigError(f"out: {out} is in use by another run (PID {holder}); wait for it to "
                          "finish or stop it, or choose another --out directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return OutLock(path, fd)


def _writable_file(path: Path) -> None:
    """Refuse an existing file this process cannot read and append to."""
    if not path.exists() and not path.is_symlink():
        return
    try:
        with open(path, "r+b"):
            pass
    except OSError as e:
        raise ConfigError(f"out: cannot read and write {path} ({e.strerror or e}); make it "
                          "writable (chmod u+rw) or choose another --out directory") from None


def prepare_dir(out: Path, config: dict[str, Any], *, force: bool) -> str:
    """Create ``out``, check it and ``results.jsonl`` are writable, check or write
    ``config.json``; returns the hash.

    Refuses a directory whose results come from a different configuration unless ``force``;
    with ``force`` the old ``results.jsonl`` and ``config.json`` are renamed with a timestamp.
    """
    _writable_dir(out)
    h = config_hash(config)
    cfg_path = out / CONFIG
    if cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"out: {cfg_path} is unreadable ({e}); delete it or use a new "
                              "--out directory") from None
        if old.get("hash") != h:
            if not force:
                changed = diff_keys(old.get("config", {}), config)
                raise ConfigError(
                    f"out: {out} holds results of a different configuration (changed: "
                    f"{', '.join(changed) or 'unknown'}); pass --force to move them aside and "
                    "start over, or choose a new --out directory"
                )
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for name in (RESULTS, CONFIG):
                p = out / name
                if p.exists():
                    p.rename(out / f"{p.stem}.replaced-{stamp}{p.suffix}")
    _writable_file(out / RESULTS)
    if not cfg_path.exists():
        tmp = cfg_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "hash": h, "config": config}, indent=2,
                                  default=str))
        tmp.replace(cfg_path)
    return h


def diff_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_keys(a, b, f"{prefix}{k}."))
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True,
                                                                      default=str):
            out.append(f"{prefix}{k}")
    return out


def read_config(out: Path) -> dict[str, Any]:
    p = out / CONFIG
    if not p.exists():
        return {}
    return json.loads(p.read_text())


def iter_rows(out: Path) -> Iterable[dict[str, Any]]:
    """The latest row of every key (for reports); a torn last line is ignored, not repaired."""
    return load_rows(out / RESULTS).latest().values()
