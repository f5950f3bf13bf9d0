"""Run every benchmark module (``benchmarks/bench_*.py`` and ``benchmarks/value/bench_*.py``),
one after the other, each as ``python -m benchmarks...`` from the repository root (each
rewrites its own section of BENCHMARKS.md).

Usage: python -m benchmarks.run_all [--list] [NAME ...]   (NAME: ``engine``, ``value_budget``...)
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from benchmarks.common import ROOT

HERE = ROOT / "benchmarks"
# These read shards sampled by hours of CPU (train-prm, bench_value --work) and take their
# paths as arguments (see each module's docstring); run them by hand, not from here.
NEEDS_DATA = {"value", "value_features", "value_data"}
# These need builds outside the project's venv and an idle machine for an hour or more.
NEEDS_BUILD = {"its_hub": "make bench-its-hub"}


def modules() -> dict[str, str]:
    """Benchmark name (``bench_`` dropped) -> module to run with ``python -m``."""
    out = {}
    for path in sorted([*HERE.glob("bench_*.py"), *HERE.glob("value/bench_*.py")]):
        rel = path.relative_to(ROOT).with_suffix("")
        out[path.stem.removeprefix("bench_")] = ".".join(rel.parts)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help="only these benchmarks")
    ap.add_argument("--list", action="store_true", help="print the modules and exit")
    args = ap.parse_args(argv)
    found = modules()
    unknown = sorted(set(args.names) - set(found))
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(found)}")
    chosen = {n: m for n, m in found.items() if not args.names or n in args.names}
    if args.list:
        print("\n".join(chosen.values()))
        return 0
    for name in sorted(set(chosen) & NEEDS_DATA):
        print(f"== {chosen.pop(name)}: skipped, needs sampled shards as arguments "
              f"(python -m {found[name]} --help)", flush=True)
    for name in sorted(set(chosen) & set(NEEDS_BUILD)):
        print(f"== {chosen.pop(name)}: skipped, run it by hand on an idle machine: "
              f"{NEEDS_BUILD[name]}", flush=True)
    failed = []
    for module in chosen.values():
        print(f"== {module}", flush=True)
        if subprocess.call([sys.executable, "-m", module], cwd=ROOT) != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
