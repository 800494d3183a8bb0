"""Experiments behind docs/PERFORMANCE.md's answers, kept with the code they measure.

Run from a checkout (``python -m bench.experiments.NAME`` at the repository root,
``bench/experiments/workers.sh``). Not packaged: pyproject.toml excludes this package, so the
wheel carries only the benchmarks the README documents (``fashion-bench``,
``python -m bench.peers``, ``fashion-soak``).
"""
