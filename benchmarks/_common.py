"""Settings, preset shapes and bookkeeping shared by the benchmark files.

Every benchmark records in ``benchmark.extra_info``: ``kind`` (``"op"``,
``"model"`` or ``"peak"``), ``impl``, ``gflop`` (floating-point operations per
call, in units of 1e9), ``gemm_like`` (whether the share of the float32 matmul
peak means something for it), ``check`` (what its result was compared with and
the error found), thread counts and library versions. ``benchmarks/conftest.py``
adds GFLOP/s, speed-ups and peak shares to the JSON after the run;
:mod:`fastcnn.benchreport` renders it.

Environment:
    FASTCNN_BENCH_SMALL=1     batch 4 instead of 64 and no batch-1000 inference
                              (the CI smoke run: ``pytest benchmarks --benchmark-disable``).
    FASTCNN_BENCH_THREADS=n   threads for Numba, BLAS and PyTorch (default: usable cores).
"""

import os
import time

import numpy as np

#: Small shapes for the CI smoke run.
SMALL = os.environ.get("FASTCNN_BENCH_SMALL", "").strip() not in ("", "0")
#: Batch of every op benchmark, training step and inference pass.
BATCH = 4 if SMALL else 64
#: Batch of the large inference benchmark (issue 7's figure); None skips it.
BIG_BATCH = None if SMALL else 1000
#: Threads for Numba, BLAS and PyTorch alike.
THREADS = int(os.environ.get("FASTCNN_BENCH_THREADS", "0")) or len(os.sched_getaffinity(0))


#: The warm-up of a model stops after this many seconds even if its thread tuner is still on
#: its first trials (ten blocks of at least ``fastcnn.parallel.BLOCK_S`` each: seconds at most).
WARM_UP_MAX_S = 60.0


def warm_up(call):
    """Untimed calls of a fastcnn model before its timed rounds: the first compiles and
    allocates; the next are the adaptive thread tuner's first trials, until
    :func:`fastcnn.parallel.in_trials` says they are done (it alternates the usable cores and one
    thread in blocks of calls, as in the first steps of any ``fit``; a block is at least
    ``BLOCK_S`` of calls, so short calls take more of them). The rounds then time the steady state."""
    from fastcnn import parallel

    call()
    start = time.perf_counter()
    while parallel.in_trials() and time.perf_counter() - start < WARM_UP_MAX_S:
        call()


#: A reference call estimated to take longer than this (seconds) is not run;
#: the smoke run keeps it to the cheapest shapes so it stays well under a minute.
REFERENCE_BUDGET_S = 0.2 if SMALL else 4.0
#: Order in which implementations appear in a group.
IMPL_ORDER = ("reference", "numpy", "numba", "torch")


def blas_threads():
    """Threads of the BLAS NumPy uses (via threadpoolctl), or None if unknown."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def run_info(impl, *, torch=False):
    """The extra_info entries every benchmark carries: threads and versions."""
    import numba

    info = {
        "impl": impl,
        "numba_threads": numba.get_num_threads(),
        "blas_threads": blas_threads(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "small": SMALL,
    }
    if torch:
        import torch as _torch

        info["torch"] = _torch.__version__
        info["torch_threads"] = _torch.get_num_threads()
    return info


def float32_exact(rng, shape, scale=1.0):
    """Standard-normal float64 data that float32 represents exactly.

    Timed float32 runs and the float64 truth then see identical values, so
    a max-pool argmax cannot flip between them on a near-tie.
    """
    return (scale * rng.standard_normal(shape)).astype(np.float32).astype(np.float64)


def shape_text(shape):
    return "(" + ",".join(str(s) for s in shape) + ")"


def model_gflop(layer_specs, batch, *, training):
    """GFLOP of one pass of a preset: GEMM FLOPs of its convs and denses.

    ``layer_specs``: ``("conv", OH, OW, KH, KW, C, F)`` or ``("dense", IN, OUT)``.
    Training counts three times the forward (forward, dx and dw), the usual
    convention; elementwise work is left out.
    """
    total = 0
    for spec in layer_specs:
        if spec[0] == "conv":
            _, OH, OW, KH, KW, C, F = spec
            total += 2 * OH * OW * KH * KW * C * F
        else:
            _, IN, OUT = spec
            total += 2 * IN * OUT
    return total * batch * (3 if training else 1) / 1e9


#: Per-sample GEMM shapes of each preset, for :func:`model_gflop`.
PRESET_LAYERS = {
    "tutorial_cnn": [("conv", 26, 26, 3, 3, 1, 8), ("dense", 1352, 10)],
    "mnist_cnn": [
        ("conv", 26, 26, 3, 3, 1, 32), ("conv", 24, 24, 3, 3, 32, 64),
        ("dense", 9216, 128), ("dense", 128, 10),
    ],
    "vgg_mini": [
        ("conv", 28, 28, 3, 3, 1, 32), ("conv", 28, 28, 3, 3, 32, 32),
        ("conv", 14, 14, 3, 3, 32, 64), ("conv", 14, 14, 3, 3, 64, 64),
        ("dense", 3136, 256), ("dense", 256, 10),
    ],
    "resnet_mini": [  # in the model's layer order (topological: each block's shortcut after its main path)
        ("conv", 28, 28, 3, 3, 1, 16),
        *[("conv", 28, 28, 3, 3, 16, 16)] * 4,
        ("conv", 14, 14, 3, 3, 16, 32), ("conv", 14, 14, 3, 3, 32, 32), ("conv", 14, 14, 1, 1, 16, 32),
        ("conv", 14, 14, 3, 3, 32, 32), ("conv", 14, 14, 3, 3, 32, 32),
        ("conv", 7, 7, 3, 3, 32, 64), ("conv", 7, 7, 3, 3, 64, 64), ("conv", 7, 7, 1, 1, 32, 64),
        ("conv", 7, 7, 3, 3, 64, 64), ("conv", 7, 7, 3, 3, 64, 64),
        ("dense", 64, 10),
    ],
}

PRESETS = tuple(PRESET_LAYERS)
