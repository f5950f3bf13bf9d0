"""Reading the README and docs/ as tests read them: code blocks, commands, links, anchors.

The checks of ``tests/test_docs.py``, as functions of a page's text, so that a test can run
them on a rotten copy of a page too. Each raises :class:`DocError` naming the page and line.
"""

from __future__ import annotations

import doctest
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import typer.main
from typer.testing import CliRunner

from particlescale.algorithms import make_config
from particlescale.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
TEST_MODEL = "smollm2-135m"
SUBSTITUTIONS = {"qwen2.5-0.5b": TEST_MODEL}
CAPS = {"max_steps": 2, "max_step_tokens": 16}  # per run: the calls are checked, not answers
# Files a page may link to before they exist, and who writes them.
PENDING: dict[str, str] = {}
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(.+?)\s*-->")


class DocError(AssertionError):
    """A page's example, command, config or link no longer matches the code."""


@dataclass(frozen=True)
class Block:
    page: str
    lang: str
    line: int  # line of the block's first code line in the page (1-based)
    code: str
    skip: str | None


def blocks(page: str, text: str) -> list[Block]:
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.search(prev)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        out.append(Block(page, m.group(1), i + 2, "\n".join(lines[i + 1:j]) + "\n",
                         skip.group(1) if skip else None))
        i = j + 1
    return out


def read(page: str) -> str:
    return (ROOT / page).read_text(encoding="utf-8")


def python_blocks(page: str, text: str) -> list[Block]:
    return [b for b in blocks(page, text) if b.lang == "python" and b.skip is None]


def substituted(code: str) -> str:
    for old, new in SUBSTITUTIONS.items():
        code = code.replace(old, new)
    return code


def needs_model(page: str) -> bool:
    code = "".join(substituted(b.code) for b in python_blocks(page, read(page)))
    return TEST_MODEL in code or "LlamaEngine(" in code or "LlamaCppGenerator(" in code


# --- bash lines against the real CLI ---------------------------------------------------------


def commands(block: Block) -> Iterator[tuple[int, list[str]]]:
    """(line, tokens) of each command in a bash block, continuation lines joined, comments
    and leading ``VAR=value`` assignments dropped."""
    line, pending, start = block.line, "", block.line
    for k, raw in enumerate(block.code.splitlines()):
        if not pending:
            start = line + k
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        tokens = shlex.split(pending + raw, comments=True)
        pending = ""
        while tokens and re.match(r"^[A-Za-z_]\w*=", tokens[0]):
            tokens.pop(0)
        if tokens:
            yield start, tokens


def flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens
            if t.startswith("-") and not re.match(r"^-\d", t) and t != "-"]


@cache
def cli_help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    return result.output


def parse_cli(where: str, args: list[str]) -> Any:
    """Parse ``particlescale ARGS`` with the real CLI, without running the command; returns
    the click context (typer may vendor click, so commands are used by their methods)."""
    cmd = typer.main.get_command(app)
    ctx = cmd.context_class(cmd, info_name="particlescale")
    path: list[str] = []
    while hasattr(cmd, "list_commands"):
        if not args or args[0].startswith("-"):
            raise DocError(f"{where}: 'particlescale {' '.join(path)}' needs a command")
        sub = cmd.get_command(ctx, args[0])
        if sub is None:
            raise DocError(f"{where}: no command 'particlescale {' '.join([*path, args[0]])}'")
        path.append(args.pop(0))
        cmd = sub
    try:
        ctx = cmd.make_context(" ".join(["particlescale", *path]), list(args))
    except Exception as e:
        if not hasattr(e, "format_message"):  # a click usage error
            raise
        raise DocError(f"{where}: particlescale {' '.join(path)}: {e.format_message()}") from e
    shown = cli_help(tuple(path))
    for f in flags(args):
        if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", shown):
            raise DocError(f"{where}: {f} is not in 'particlescale {' '.join(path)} --help'")
    return ctx


@cache
def module_help(module: str) -> str:
    """``python -m MODULE --help`` from the repository root (benchmarks are a package there)."""
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([\w.-]+)\s*:(?!=)", text, re.M))


def check_bash(page: str, text: str) -> int:
    """Check every command of the page's bash blocks; returns how many were checked."""
    n = 0
    for block in blocks(page, text):
        if block.lang not in ("bash", "sh", "console") or block.skip is not None:
            continue
        for line, tokens in commands(block):
            where = f"{page}:{line}"
            if tokens[0] == "particlescale":
                parse_cli(where, tokens[1:])
            elif tokens[0] == "python" and len(tokens) > 1 and tokens[1].startswith("benchmarks/"):
                raise DocError(f"{where}: benchmarks run as modules from the repository root: "
                               f"python -m {tokens[1].removesuffix('.py').replace('/', '.')}")
            elif tokens[:2] == ["python", "-m"] and len(tokens) > 2 and tokens[2].startswith(
                    "benchmarks."):
                module = tokens[2]
                if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
                    raise DocError(f"{where}: no benchmark module {module}")
                shown = module_help(module)
                for f in flags(tokens[3:]):
                    if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", shown):
                        raise DocError(f"{where}: {f} is not in 'python -m {module} --help'")
            elif tokens[0] == "make":
                for target in (t for t in tokens[1:] if not t.startswith("-") and "=" not in t):
                    if target not in make_targets():
                        raise DocError(f"{where}: no Makefile target {target!r}")
            else:
                continue
            n += 1
    return n


# --- links -------------------------------------------------------------------------------------


def slugs(text: str) -> set[str]:
    """GitHub's heading anchors of a markdown text."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M):
        s = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def check_links(page: str, text: str) -> int:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    n = 0
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (ROOT / page).parent / path if path else ROOT / page
        rel = dest.resolve().relative_to(ROOT).as_posix()
        if not dest.exists():
            if rel in PENDING:
                continue
            raise DocError(f"{page}: link to {target}: {rel} does not exist")
        if anchor and anchor not in slugs(dest.read_text(encoding="utf-8")):
            raise DocError(f"{page}: link to {target}: {rel} has no heading #{anchor}")
        n += 1
    return n


# --- toml configs and the solve options table ----------------------------------------------------


def check_toml(page: str, text: str, folder: Path) -> int:
    from particlescale.errors import ConfigError
    from particlescale.server import load_config

    n = 0
    for block in blocks(page, text):
        if block.lang != "toml" or block.skip is not None:
            continue
        path = folder / "serve.toml"
        path.write_text(block.code)
        try:
            load_config(path)
        except ConfigError as e:
            raise DocError(f"{page}:{block.line}: {e}") from e
        n += 1
    return n


def check_solve_table(text: str) -> None:
    rows = re.findall(r"^\| `(-[^`]*)` \|", text, re.M)
    documented = {f for row in rows for f in re.findall(r"--?[\w-]+", row)}
    cmd = typer.main.get_command(app)
    solve = cmd.get_command(cmd.context_class(cmd), "solve")
    options = [p for p in solve.params if p.param_type_name == "option"]
    actual = {o for p in options for o in p.opts}
    if unknown := documented - actual:
        raise DocError(f"docs/cli.md: the options table has {sorted(unknown)}, which "
                       "'particlescale solve' does not")
    missing = [max(p.opts, key=len) for p in options if not set(p.opts) & documented]
    if missing:
        raise DocError(f"docs/cli.md: 'particlescale solve' has {missing}; add a row to the "
                       "options table")


# --- python blocks ---------------------------------------------------------------------------


def run_python(page: str, code_blocks: list[Block], urls: dict[str, str]) -> int:
    """Run the blocks in one namespace (the caller sets the folder and the caps)."""
    ns: dict[str, Any] = {"__name__": "__docs__"}
    try:
        for block in code_blocks:
            code = substituted(block.code)
            for old, new in urls.items():
                code = code.replace(old, new)
            where = f"{page}:{block.line}"
            if re.search(r"^>>> ", code, re.M):
                test = doctest.DocTestParser().get_doctest(code, ns, where, page, block.line - 1)
                report: list[str] = []
                runner = doctest.DocTestRunner(
                    optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
                runner.run(test, out=report.append, clear_globs=False)
                if runner.failures:
                    raise DocError(f"{where}: doctest failed\n" + "".join(report))
                continue
            try:
                exec(compile("\n" * (block.line - 1) + code, page, "exec"), ns)
            except Exception as e:
                lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                         if f.filename == page]
                raise DocError(f"{page}:{lines[-1] if lines else block.line}: "
                               f"{type(e).__name__}: {e}") from e
    finally:
        close_models(ns)
    return len(code_blocks)


def close_models(ns: dict[str, Any]) -> None:
    try:
        from particlescale.backends.llamacpp import LlamaCppGenerator, LlamaEngine
    except ImportError:
        return
    for value in ns.values():
        if isinstance(value, (LlamaCppGenerator, LlamaEngine)):
            value.close()


def capped(method: str, options: dict[str, Any]) -> Any:
    options = dict(options)
    for key, cap in CAPS.items():
        options[key] = min(options.get(key, cap), cap)
    return make_config(method, options)
