"""The one place Numba compilation options are chosen.

``FASTMATH`` deliberately leaves out ``nnan`` and ``ninf``: max pooling pads
with ``-inf`` and NaN must propagate (and be detectable) exactly as in NumPy,
so LLVM may not assume either away.

The threading layer is chosen in :mod:`fastcnn.parallel`, imported here so
it is in force before the first parallel kernel runs.
"""

import types

import numba

import fastcnn.parallel  # noqa: F401  (selects the threading layer)

__all__ = ["FASTMATH", "PARALLEL_MIN_SIZE", "kernel", "inline_kernel", "ordered_kernel", "parallel_kernel", "twins",
           "pick", "exact_parallel_kernel", "exact_inline_kernel", "exact_twins"]

#: Fast-math flags for every kernel: reassociation (vectorized reductions),
#: FMA contraction, approximate functions, reciprocal, no signed zeros.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

#: Below this many elements an element-wise kernel runs serially: waking the
#: thread pool costs more than it saves.
PARALLEL_MIN_SIZE = 1 << 16

_OPTIONS = dict(cache=True, nogil=True, fastmath=set(FASTMATH))

#: Serial kernel: cached on disk, releases the GIL.
kernel = numba.njit(**_OPTIONS)

#: Kernel whose ``prange`` loop runs in parallel (only over disjoint writes).
parallel_kernel = numba.njit(parallel=True, **_OPTIONS)

#: A small helper copied into each kernel that calls it (Numba-level inlining):
#: called per window row in a hot loop, a real call would cost more than its work.
inline_kernel = numba.njit(inline="always", **_OPTIONS)

#: Serial kernel whose arithmetic must run in the order written: ``FASTMATH``
#: without ``reassoc``, which would turn ``(a - b) - c`` back into ``a - (b + c)``
#: and undo a formula arranged to avoid cancellation (softmax backward).
ordered_kernel = numba.njit(cache=True, nogil=True, fastmath=set(FASTMATH - {"reassoc"}))

#: Parallel kernel with no fast-math at all: IEEE arithmetic in the order written, no
#: FMA contraction, so its float64 index arithmetic rounds exactly as Python's does
#: (augmentation: a rotated pixel's nearest source must be the reference's, bit for bit).
exact_parallel_kernel = numba.njit(parallel=True, cache=True, nogil=True)

#: Helper inlined into :data:`exact_parallel_kernel` code, with the same (absent) flags.
exact_inline_kernel = numba.njit(inline="always", cache=True, nogil=True)

#: The serial counterpart of :data:`exact_parallel_kernel`.
exact_kernel = numba.njit(cache=True, nogil=True)


def twins(func):
    """Compile ``func`` twice: ``(parallel, serial)``; ``prange`` is plain ``range`` in the serial one.

    The serial twin gets its own ``__qualname__`` so the two never share an
    on-disk cache entry.
    """
    return parallel_kernel(func), kernel(_serial_copy(func))


def exact_twins(func):
    """:func:`twins` without fast-math: ``(exact_parallel_kernel, exact_kernel)`` builds of ``func``."""
    return exact_parallel_kernel(func), exact_kernel(_serial_copy(func))


def _serial_copy(func):
    """``func`` under its own name and ``__qualname__`` (+ ``_serial``), so its cache entry is its own."""
    serial = types.FunctionType(func.__code__, func.__globals__, func.__name__ + "_serial",
                                func.__defaults__, func.__closure__)
    serial.__qualname__ = func.__qualname__ + "_serial"
    serial.__module__ = func.__module__
    return serial


def pick(pair, size):
    """The parallel twin of a :func:`twins` pair for ``size`` elements or more, else the serial one."""
    return pair[0] if size >= PARALLEL_MIN_SIZE else pair[1]
