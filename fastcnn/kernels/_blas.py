"""The BLAS that NumPy uses, callable from inside Numba kernels.

The fast convolution calls GEMM from *inside* its parallel loop: each thread
turns a few images into an im2col block that stays in its own L2 cache,
multiplies it, and applies the epilogue, instead of one huge im2col matrix
streamed through memory and one GEMM over all of it (at the mnist_cnn conv2
shape a single-threaded SGEMM on 576-row blocks runs at ~135 GFLOP/s, on the
whole 36,864-row matrix at ~95).

Binding: the BLAS library NumPy loaded is found through ``threadpoolctl``; its
``cblas_?gemm`` entry point (NumPy's wheels ship OpenBLAS with 64-bit integers
and the symbol prefix ``scipy_``) is registered with LLVM under a fixed name,
so the compiled kernels refer to a *name*, not an address, and stay cacheable
on disk; the name is bound again at every import.

:data:`AVAILABLE` is False when no usable BLAS is found (then the kernels that
need it are never called: see :mod:`fastcnn.kernels.conv`).

Threads: inside a kernel each calling thread runs its own GEMM, so BLAS must
not start threads of its own; :func:`blas_single_threaded` sets OpenBLAS to
one thread around such a kernel and restores it after.
"""

import contextlib
import ctypes
import os

import llvmlite.binding as llvm
import numpy as np
from numba import types
from numba.core.extending import overload

try:
    import threadpoolctl
except ImportError:  # pragma: no cover - a hard dependency, but stay importable
    threadpoolctl = None

__all__ = ["AVAILABLE", "REASON", "SMALL_GEMM_MNK", "small_gemm_mnk", "small_gemm_rows", "gemm", "blas_single_threaded",
           "ROW_MAJOR",
           "NO_TRANS", "TRANS"]

#: CBLAS enums (cblas.h).
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

# Symbol names tried, with the width of their integer arguments.
_CANDIDATES = (
    ("scipy_cblas_{}gemm64_", 64),  # NumPy >= 2 wheels (scipy-openblas64)
    ("cblas_{}gemm64_", 64),
    ("cblas_{}gemm", 32),  # system OpenBLAS / MKL / BLIS (LP64)
)
_THREAD_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_THREAD_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")


def _numpy_blas_info():
    """threadpoolctl's record of the BLAS library NumPy loaded (``filepath``, ``internal_api``,
    ``architecture``, ...), or an empty dict."""
    if threadpoolctl is None:
        return {}
    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") == "blas" and info.get("filepath"):
            return info
    return {}


def _numpy_blas_library():
    """Path of the BLAS shared library NumPy loaded, or None."""
    return _numpy_blas_info().get("filepath")


def _small_gemm_mnk():
    """The fixed rule for the GEMM cut: ``FASTCNN_SMALL_GEMM_MNK`` if set, else 0 (never cut).

    Some OpenBLAS builds send an SGEMM of at most 100**3 multiply-adds to kernels
    that read A and B where they lie (``sgemm_small_kernel_permit``); whether that
    pays is timed on the machine under ``FASTCNN_PLAN=measure``
    (:func:`_measure_small_gemm`). This rule, used by ``heuristic`` and as the
    fallback, names no CPU: it is the same on every machine.
    """
    override = os.environ.get("FASTCNN_SMALL_GEMM_MNK", "").strip()
    if override:
        try:
            value = int(override)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"FASTCNN_SMALL_GEMM_MNK must be a non-negative integer (0 turns the small GEMM "
                             f"calls off), got {override!r}")
        return value
    return 0


def _bind():
    """Find ``?gemm`` and register them with LLVM; returns ``(int width, thread setter, getter, reason)``."""
    if os.environ.get("FASTCNN_NO_BLAS_KERNELS"):
        return None, None, None, "disabled by FASTCNN_NO_BLAS_KERNELS"
    path = _numpy_blas_library()
    if path is None:
        return None, None, None, "NumPy's BLAS library was not found (threadpoolctl reports none)"
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:  # pragma: no cover
        return None, None, None, f"cannot open {path}: {e}"
    for pattern, width in _CANDIDATES:
        try:
            s = getattr(lib, pattern.format("s"))
            d = getattr(lib, pattern.format("d"))
        except AttributeError:
            continue
        llvm.add_symbol(f"fastcnn_sgemm_i{width}", ctypes.cast(s, ctypes.c_void_p).value)
        llvm.add_symbol(f"fastcnn_dgemm_i{width}", ctypes.cast(d, ctypes.c_void_p).value)
        setter = getter = None
        for name in _THREAD_SETTERS:
            if hasattr(lib, name):
                setter = getattr(lib, name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                break
        for name in _THREAD_GETTERS:
            if hasattr(lib, name):
                getter = getattr(lib, name)
                getter.argtypes, getter.restype = [], ctypes.c_int
                break
        return width, setter, getter, None
    return None, None, None, f"no cblas_sgemm/cblas_dgemm entry point in {path}"


_WIDTH, _SET_THREADS, _GET_THREADS, REASON = _bind()

#: True when :func:`gemm` can be called from kernels.
AVAILABLE = _WIDTH is not None

#: float32 GEMMs of at most this ``M*N*K`` are issued as separate calls (:func:`small_gemm_mnk`);
#: None until first needed, then decided by the planner.
SMALL_GEMM_MNK = None if AVAILABLE else 0

#: The measured decision's GEMM: vgg_mini conv2's block, ``(2048, 288) x (288, 32)``, whole
#: against cut into calls of 100**3 multiply-adds (108 rows).
_PROBE = (2048, 288, 32)


def _measure_small_gemm(repeats=5):
    """``(mnk, seconds)``: 100**3 when cutting the probe GEMM into small calls beats one call by 5%
    or more on this machine, else 0 (one BLAS thread, as inside the kernels)."""
    import time

    M, K, N = _PROBE
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c = np.empty((M, N), dtype=np.float32)
    sub = 100**3 // (K * N)

    def whole():
        np.matmul(a, b, out=c)

    def cut():
        for s0 in range(0, M, sub):
            np.matmul(a[s0:s0 + sub], b, out=c[s0:s0 + sub])

    best = {}
    with blas_single_threaded():
        for name, fn in (("whole", whole), ("cut", cut)):
            fn()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            best[name] = min(times)
    return (100**3 if best["cut"] < 0.95 * best["whole"] else 0), best


def small_gemm_mnk():
    """:data:`SMALL_GEMM_MNK`, deciding it on first use: ``FASTCNN_SMALL_GEMM_MNK`` if set, else the
    planner's decision (``FASTCNN_PLAN=measure``: :func:`_measure_small_gemm`, kept in the plan
    file; otherwise :func:`_small_gemm_mnk`'s fixed rule)."""
    global SMALL_GEMM_MNK
    if SMALL_GEMM_MNK is None:
        if os.environ.get("FASTCNN_SMALL_GEMM_MNK", "").strip():
            SMALL_GEMM_MNK = _small_gemm_mnk()
        else:
            from fastcnn import planner

            SMALL_GEMM_MNK = int(planner.tuned("small_gemm_mnk", _measure_small_gemm, _small_gemm_mnk))
    return SMALL_GEMM_MNK


def small_gemm_rows(K, N, dtype, least):
    """Rows per call that keep a float32 GEMM ``(rows, K) x (K, N)`` within
    :data:`SMALL_GEMM_MNK`, or ``2**62`` (one call) when that is fewer than ``least``
    rows, for float64, or without small kernels."""
    rows = small_gemm_mnk() // (K * N) if np.dtype(dtype) == np.float32 and K * N else 0
    return rows if rows >= least else 1 << 62


_INT = types.int64 if _WIDTH != 32 else types.int32
_SUFFIX = f"i{_WIDTH or 64}"


def _external(prefix, float_type):
    ptr = types.CPointer(float_type)
    sig = types.void(types.int32, types.int32, types.int32, _INT, _INT, _INT, float_type, ptr, _INT,
                     ptr, _INT, float_type, ptr, _INT)
    return types.ExternalFunction(f"fastcnn_{prefix}gemm_{_SUFFIX}", sig)


_sgemm = _external("s", types.float32)
_dgemm = _external("d", types.float64)


def gemm(trans_a, trans_b, alpha, a, b, beta, c):
    """``c = alpha * op(a) @ op(b) + beta * c`` on 2-D arrays, inside a kernel.

    ``op(a)`` is ``a.T`` when ``trans_a`` is true. Rows may be strided (a
    column block of a larger array) but each row must be contiguous. Nothing
    is checked: the caller guarantees the layout, one float dtype and matching
    shapes. Only callable from ``@njit`` code (see the overload below).
    """
    raise NotImplementedError("fastcnn.kernels._blas.gemm is only callable from Numba kernels")


@overload(gemm, jit_options={"nogil": True})
def _gemm_overload(trans_a, trans_b, alpha, a, b, beta, c):
    fn = _sgemm if a.dtype == types.float32 else _dgemm

    def impl(trans_a, trans_b, alpha, a, b, beta, c):
        M, N = c.shape
        K = a.shape[0] if trans_a else a.shape[1]
        ta = TRANS if trans_a else NO_TRANS
        tb = TRANS if trans_b else NO_TRANS
        size = c.itemsize
        # A leading dimension is the row stride, except of a one-row array, whose row
        # stride NumPy leaves arbitrary (``w.T`` of a ``(K, 1)`` weight has stride 1)
        # while BLAS demands at least the row length.
        lda = a.strides[0] // size if a.shape[0] > 1 else max(1, a.shape[1])
        ldb = b.strides[0] // size if b.shape[0] > 1 else max(1, b.shape[1])
        ldc = c.strides[0] // size if c.shape[0] > 1 else max(1, c.shape[1])
        fn(ROW_MAJOR, ta, tb, M, N, K, c.dtype.type(alpha), a.ctypes, lda, b.ctypes, ldb, c.dtype.type(beta),
           c.ctypes, ldc)

    return impl


@contextlib.contextmanager
def blas_single_threaded():
    """OpenBLAS on one thread for the duration (each kernel thread runs its own GEMMs)."""
    if _SET_THREADS is None or _GET_THREADS is None:
        yield
        return
    before = _GET_THREADS()
    if before == 1:
        yield
        return
    _SET_THREADS(1)
    try:
        yield
    finally:
        _SET_THREADS(before)

