"""The machine's float32 matmul rate through NumPy: the peak every other row is a share of."""

import numpy as np

from fastcnn.testing import assert_close, max_rel_error

from benchmarks._common import SMALL, float32_exact, run_info

#: Square matmul size: big enough for BLAS to reach its steady rate.
SIZE = 256 if SMALL else 2048


def test_sgemm_peak(benchmark):
    rng = np.random.default_rng(0)
    a64 = float32_exact(rng, (SIZE, SIZE))
    b64 = float32_exact(rng, (SIZE, SIZE))
    a, b = a64.astype(np.float32), b64.astype(np.float32)

    benchmark.group = f"sgemm {SIZE}x{SIZE} @ {SIZE}x{SIZE}"
    benchmark.extra_info.update(run_info("numpy"))
    benchmark.extra_info.update(kind="peak", gflop=2 * SIZE**3 / 1e9, gemm_like=True, dtype="float32")
    np.matmul(a, b)  # warm up the BLAS thread pool
    c = benchmark(np.matmul, a, b)

    truth = a64 @ b64
    assert c.dtype == np.float32
    assert_close(c, truth, dtype=np.float32, name="sgemm")
    benchmark.extra_info["check"] = f"float64 matmul: max rel error {max_rel_error(c, truth):.1e}"
