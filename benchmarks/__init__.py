"""chipjax speed and memory benchmarks: ``python -m benchmarks.<name> [--quick]``.

Each prints a table and appends a dated section (machine, versions, exact command) to
``benchmarks/RESULTS.md``. Shared helpers live in :mod:`benchmarks.common`.
"""
