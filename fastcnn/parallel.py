"""One knob for both thread pools: Numba's kernels and the BLAS behind the GEMMs.

Numba's ``prange`` kernels and OpenBLAS/MKL each keep their own pool of
threads; on a small machine two pools of full size oversubscribe the cores
(an idle OpenBLAS worker keeps spinning for a while after each GEMM, slowing a
Numba kernel that starts right after it). :func:`set_num_threads` sets both.

BLAS is resized at run time through ``threadpoolctl``. Without it only Numba
changes, and BLAS keeps the size it read from ``OPENBLAS_NUM_THREADS`` /
``MKL_NUM_THREADS`` / ``OMP_NUM_THREADS`` when NumPy was first imported: those
variables are read once, at import, so they must be set before ``import
numpy`` to have any effect.

Threading layer: importing this module selects Numba's ``omp`` layer where
an OpenMP runtime is available, else ``workqueue`` (unless the user chose one
with ``NUMBA_THREADING_LAYER``), before any parallel kernel or
:func:`set_num_threads` starts Numba's pool. A training step launches a dozen
parallel kernels with Python in between; ``omp``'s workers spin briefly between
them where ``workqueue``'s go to sleep and must be woken for each launch. Same
run, 2 cores, median ``train_on_batch`` at batch 64: tutorial_cnn 2.15 ms with
``workqueue`` against 1.18 ms with ``omp``, mnist_cnn 36.1 against 32.5 ms,
vgg_mini 62.6 against 47.5 ms. (An earlier version, whose GEMMs ran on
OpenBLAS's own threads between the kernels, measured the opposite: the two
spinning pools fought for the cores. Now every GEMM of the Numba path runs on
Numba's threads with BLAS single-threaded, see :mod:`fastcnn.kernels._blas`.)
OpenMP's pool is not fork-safe: fork only before the first kernel runs, or
use the ``spawn`` start method.

Numba's thread count is per calling thread (``numba.set_num_threads`` is
thread-local); the BLAS count is process-wide.
"""

import numbers
import os

import numba  # noqa: E402


def _choose_threading_layer():
    """``omp`` if Numba can load an OpenMP runtime, else ``workqueue``; a user's choice stands."""
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:
        layer = "workqueue"
    else:
        layer = "omp"
    numba.config.THREADING_LAYER = layer  # read when the first parallel kernel starts the pool


_choose_threading_layer()

try:  # noqa: E402
    import threadpoolctl
except ImportError:  # optional at run time; BLAS then keeps its import-time size
    threadpoolctl = None

__all__ = ["set_num_threads", "get_num_threads", "max_num_threads", "blas_num_threads"]


def max_num_threads():
    """The most threads Numba can use: ``NUMBA_NUM_THREADS`` (the core count unless set)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def set_num_threads(n):
    """Use ``n`` threads in Numba kernels and in BLAS.

    Parameters
    ----------
    n : int
        ``1 <= n <= max_num_threads()``.

    Raises
    ------
    TypeError
        ``n`` is not an int.
    ValueError
        ``n`` is outside ``[1, max_num_threads()]``.
    """
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"set_num_threads: `n` must be an int, received {n!r}")
    limit = max_num_threads()
    if not 1 <= n <= limit:
        raise ValueError(
            f"set_num_threads: `n` must be between 1 and {limit} "
            f"(NUMBA_NUM_THREADS, the threads this process started with), received {n}"
        )
    numba.set_num_threads(int(n))
    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(limits=int(n), user_api="blas")


def get_num_threads():
    """Threads the Numba kernels use in the calling thread (BLAS is set to match by :func:`set_num_threads`)."""
    return int(numba.get_num_threads())


def blas_num_threads():
    """Threads each loaded BLAS library uses, ``{internal_api: n}``; empty without ``threadpoolctl``."""
    if threadpoolctl is None:
        return {}
    return {
        info["internal_api"]: info["num_threads"]
        for info in threadpoolctl.threadpool_info()
        if info.get("user_api") == "blas"
    }
