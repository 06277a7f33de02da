"""Data-parallel scaling (benchmarks/distributed_scaling.py) as part of the suite.

Runs the script's measurement: 1 rank x 1 thread, 1 rank x 2 threads and 2
ranks x 1 thread (with and without the progress thread), each a fresh process
(``mpiexec -n 2`` for two ranks). With ``FASTCNN_BENCH_SMALL=1`` (CI) only
mnist_cnn, batch 8, 3 steps: it checks that everything runs and adds up, not
speed. The full table: ``python -m benchmarks.distributed_scaling --markdown --profile``.

Not a pytest-benchmark timing (each row is a set of processes), so
``--benchmark-only`` skips it.
"""

import importlib.util
import math
import os

import pytest

from benchmarks import distributed_scaling as scaling
from benchmarks._common import SMALL


def _require_mpi():
    reason = None
    if importlib.util.find_spec("mpi4py") is None:
        reason = "mpi4py is not installed (pip install 'fastcnn[mpi]')"
    elif not os.path.exists(scaling.mpiexec()) and scaling.mpiexec() == "mpiexec":
        import shutil

        if shutil.which("mpiexec") is None:
            reason = "no mpiexec (pip install mpich)"
    if reason:
        if os.environ.get("FASTCNN_REQUIRE_MPI") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def test_distributed_scaling():
    _require_mpi()
    presets = ("mnist_cnn",) if SMALL else scaling.PRESETS
    batch, steps = (8, 3) if SMALL else (64, 20)
    results = scaling.measure(presets, batch, steps)
    assert [(r["preset"], r["ranks"], r["threads"]) for r in results] == [
        (p, ranks, threads) for p in presets for ranks, threads, _ in scaling.CONFIGS]
    for r in results:
        assert r["images_per_s"] > 0 and math.isfinite(r["loss"])
        stats = r.get("stats")
        if r["ranks"] == 1:
            assert stats is None
            continue
        assert stats["allreduce_bytes_per_step"] == 4 * r["params"]
        assert stats["steps"] == steps
        assert 0 <= stats["exposed_ms_per_step"] <= stats["allreduce_in_flight_ms_per_step"] + 1e-6
        assert r["allreduce_alone_ms"] > 0
    assert len(scaling.scaling_table(results)) == len(results) + 1
    assert scaling.profile_lines(results)
    assert any("network > compute" in line for line in scaling.network_table(results))
