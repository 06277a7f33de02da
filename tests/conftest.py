import os

# Keep BLAS from oversubscribing the two cores while numba also runs threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Tests never depend on timings: the planner uses its fixed rules unless a test says otherwise.
os.environ.setdefault("FASTCNN_PLAN", "heuristic")

from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def fashion_small():
    """1000 train / 500 test real Fashion-MNIST images: ``x_*`` float32 (N, 28, 28, 1) in [0, 1],
    ``raw_*`` uint8 (N, 28, 28), ``y_*`` int64 (N,).

    Skipped when the Debian package is not installed, unless ``FASTCNN_REQUIRE_DATA=1``
    (set by ``make test`` and so by CI), where its absence is a failure.
    """
    if not os.path.isdir(FASHION_DIR):
        message = f"Fashion-MNIST is not installed at {FASHION_DIR} (Debian package dataset-fashion-mnist)"
        if os.environ.get("FASTCNN_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from fastcnn import datasets

    (raw_train, y_train), (raw_test, y_test) = datasets.load("fashion-mnist", path=FASHION_DIR,
                                                             download=False, raw=True)
    raw_train, raw_test = raw_train[:1000].copy(), raw_test[:500].copy()

    def scale(raw):
        return (raw.astype(np.float32) / np.float32(255))[..., None]

    return SimpleNamespace(
        raw_train=raw_train, x_train=scale(raw_train), y_train=y_train[:1000].copy(),
        raw_test=raw_test, x_test=scale(raw_test), y_test=y_test[:500].copy(),
    )
