"""Repository-root pytest hook: ``pytest --benchmark-only`` runs the benchmark suite.

Plain ``pytest`` collects ``tests/`` only (``testpaths`` in pyproject.toml), so
the benchmarks never slow the test run. Given ``--benchmark-only`` and no
paths, there is nothing in ``tests/`` to run (pytest-benchmark skips every
non-benchmark), so ``benchmarks/`` is collected instead. Explicit paths are
left alone: ``pytest benchmarks ...`` and ``pytest tests ...`` mean what they say.
"""

import pytest


def pytest_configure(config):
    if not config.getoption("benchmark_only", default=False):
        return
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return
    benchmarks = config.rootpath / "benchmarks"
    if benchmarks.is_dir():
        config.args[:] = [str(benchmarks)]
