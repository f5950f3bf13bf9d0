"""The benchmarks behind BENCHMARKS.md: run each from the repository root as a module,
``python -m benchmarks.NAME --help`` (``benchmarks.value.NAME`` for the value-head studies),
or all of them with ``make bench`` (``python -m benchmarks.run_all``). Shared pieces live in
:mod:`benchmarks.common`; statistics, selection, datasets and grading come from the library."""
