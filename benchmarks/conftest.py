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

from benchmarks._common import BATCH, SMALL, THREADS


def pytest_report_header(config):
    mode = "small shapes (FASTCNN_BENCH_SMALL)" if SMALL else "preset shapes"
    return f"fastcnn benchmarks: {mode}, {THREADS} threads"


#: Prefixes of the peer benchmarks' test names (PyTorch, ONNX Runtime).
PEER_PREFIXES = ("test_torch_", "test_ort_")


def _peer_key(item):
    """``(kind, preset, batch)`` of a model benchmark: the Numba row and its peers share it."""
    params = getattr(item, "callspec", None)
    params = params.params if params is not None else {}
    name = item.originalname if hasattr(item, "originalname") else item.name
    kind = {"test_train_step": "train", "test_torch_train_step": "train",
            "test_predict": "predict", "test_torch_predict": "predict", "test_ort_predict": "predict"}.get(name)
    if kind is None or "preset" not in params:
        return None, False
    is_torch = name.startswith(PEER_PREFIXES)  # a peer (PyTorch or ONNX Runtime)
    if not is_torch and params.get("impl") != "numba":
        return None, False
    return (kind, params["preset"], params.get("n", BATCH)), is_torch


def pytest_collection_modifyitems(session, config, items):
    """Run each peer benchmark (PyTorch, ONNX Runtime) right after the fastcnn (Numba) benchmark it
    is compared with, so the two are seconds apart, not minutes: this machine's speed drifts by 10% and
    more over minutes, and the report's speed-up is the ratio of the two."""
    peers = {}
    for item in items:
        key, is_torch = _peer_key(item)
        if key is not None and is_torch:
            peers.setdefault(key, []).append(item)
    numba_keys = {key for key, is_torch in map(_peer_key, items) if key is not None and not is_torch}
    ordered = []
    for item in items:
        key, is_torch = _peer_key(item)
        if is_torch and key in numba_keys:
            continue  # placed after its fastcnn row below
        ordered.append(item)
        if key is not None and not is_torch and key in peers:
            ordered.extend(peers[key])
    items[:] = ordered


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
