"""Run every benchmark script in this folder, one after the other (each rewrites its own
section of BENCHMARKS.md). Usage: python benchmarks/run_all.py [NAME ...]"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# These read shards sampled by hours of CPU (train-prm, bench_value --work) and take their
# paths as arguments (see each script's docstring); run them by hand, not from here.
NEEDS_DATA = {"value", "value_features", "value_data"}


def main(names: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
    for script in [s for s in scripts if s.stem.removeprefix("bench_") in NEEDS_DATA]:
        print(f"== {script.name}: skipped, needs sampled shards as arguments (see its "
              f"docstring: python {script} --help)", flush=True)
    scripts = [s for s in scripts if s.stem.removeprefix("bench_") not in NEEDS_DATA]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
