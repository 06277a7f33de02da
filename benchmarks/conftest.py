"""Benchmark session setup: one thread count for everything, machine facts, derived figures.

- Numba, BLAS (through threadpoolctl) and PyTorch all get ``THREADS`` threads
  for the whole session, so no row wins by using more cores than another.
- ``machine_info["fastcnn"]`` records the CPU model, cores, BLAS and versions.
- After the run, each benchmark's ``extra_info`` gains GFLOP/s, its speed-up
  over its group's baseline and its share of the float32 matmul peak measured
  in the same run (computed by :func:`fastcnn.benchreport.annotate`).
"""

import pytest

from fastcnn import benchreport

from benchmarks._common import SMALL, THREADS


def pytest_report_header(config):
    mode = "small shapes (FASTCNN_BENCH_SMALL)" if SMALL else "preset shapes"
    return f"fastcnn benchmarks: {mode}, {THREADS} threads"


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastcnn"] = benchreport.environment(threads=THREADS, small=SMALL)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    benchreport.annotate(output_json)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Pin Numba, BLAS and (if already imported) PyTorch to ``THREADS`` threads."""
    import numba

    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=THREADS, user_api="blas"):
        yield
