"""Image augmentation as Numba kernels parallel over the batch.

The wrappers turn the draws into small index maps (:mod:`fastcnn.ops.augment`:
a row map ``(N, OH)`` and a column map ``(N, OW)``), then one kernel copies
every image in parallel (``prange`` over N), reading each input pixel once
with all its channels. Like the element-wise kernels, each comes as a
parallel and a serial twin, and batches under ``PARALLEL_MIN_SIZE`` elements
(a batch of 64 MNIST images is 50,176) run serially: waking the thread pool
costs more than such a copy when the cores are busy (a flip of that batch took
0.4 ms serially and 24 ms through a pool that had to wait for busy cores).

The backward kernels add each output gradient to its source pixel, per image
in row-major output order like the reference, so a pixel copied several times
(``"reflect"`` fills) sums in the same order and the results are bit-equal to
the reference's. Rotation computes its nearest source pixel inside the kernel,
in float64 and without fast-math, exactly as the reference does.

``zero_pad2d`` has no kernel: NumPy's one slice assignment is already a copy
at memory speed.
"""

import numpy as np
from numba import prange

from fastcnn.kernels._jit import PARALLEL_MIN_SIZE, exact_inline_kernel, exact_twins, pick
from fastcnn.ops.augment import FILL_MODES, crop_maps, flip_maps, rotation_trig, translate_maps

__all__ = [
    "flip2d_forward", "flip2d_backward",
    "translate2d_forward", "translate2d_backward",
    "crop2d_forward", "crop2d_backward",
    "rotate2d_forward", "rotate2d_backward",
    "warmup",
]


@exact_twins
def _gather_kernel(y, x, rows, cols, fill):
    # y: (N, OH, OW, C) out; x: (N, H, W, C); rows: (N, OH) int64 source row, -1 = fill;
    # cols: (N, OW) int64 source column, -1 = fill; fill: a scalar of y's dtype.
    N, OH, OW, C = y.shape
    for n in prange(N):
        for i in range(OH):
            si = rows[n, i]
            for j in range(OW):
                sj = cols[n, j]
                if si < 0 or sj < 0:
                    for c in range(C):
                        y[n, i, j, c] = fill
                else:
                    for c in range(C):
                        y[n, i, j, c] = x[n, si, sj, c]


@exact_twins
def _scatter_kernel(dx, dy, rows, cols):
    # dx: (N, H, W, C) out; dy: (N, OH, OW, C); rows, cols as in _gather_kernel.
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    zero = dx.dtype.type(0)
    for n in prange(N):
        for a in range(H):
            for b in range(W):
                for c in range(C):
                    dx[n, a, b, c] = zero
        for i in range(OH):
            si = rows[n, i]
            if si < 0:
                continue
            for j in range(OW):
                sj = cols[n, j]
                if sj < 0:
                    continue
                for c in range(C):
                    dx[n, si, sj, c] += dy[n, i, j, c]


@exact_inline_kernel
def _source_index(k, L, mode):
    # The fill modes of FILL_MODES by code: 0 constant (-1), 1 nearest, 2 reflect, 3 wrap.
    if k >= 0 and k < L:
        return k
    if mode == 0:
        return -1
    if mode == 1:
        return 0 if k < 0 else L - 1
    if mode == 3:
        return k % L
    k = k % (2 * L)
    return k if k < L else 2 * L - 1 - k


@exact_inline_kernel
def _rotation_source(i, j, cos_a, sin_a, H, W, mode):
    # The reference's rotation_source, operation for operation, then the fill mode per axis.
    cy = (H - 1) * 0.5
    cx = (W - 1) * 0.5
    u = j - cx
    v = i - cy
    sx = cos_a * u - sin_a * v + cx
    sy = sin_a * u + cos_a * v + cy
    si = _source_index(np.int64(np.floor(sy + 0.5)), H, mode)
    sj = _source_index(np.int64(np.floor(sx + 0.5)), W, mode)
    if si < 0 or sj < 0:
        return -1, -1
    return si, sj


@exact_twins
def _rotate_kernel(y, x, trig, mode, fill):
    # y: (N, H, W, C) out; x: (N, H, W, C); trig: (N, 2) float64 [cos, sin]; mode: fill-mode code.
    N, H, W, C = y.shape
    for n in prange(N):
        for i in range(H):
            for j in range(W):
                si, sj = _rotation_source(i, j, trig[n, 0], trig[n, 1], H, W, mode)
                if si < 0:
                    for c in range(C):
                        y[n, i, j, c] = fill
                else:
                    for c in range(C):
                        y[n, i, j, c] = x[n, si, sj, c]


@exact_twins
def _rotate_scatter_kernel(dx, dy, trig, mode):
    # dx: (N, H, W, C) out; dy: (N, H, W, C); trig, mode as in _rotate_kernel.
    N, H, W, C = dx.shape
    zero = dx.dtype.type(0)
    for n in prange(N):
        for a in range(H):
            for b in range(W):
                for c in range(C):
                    dx[n, a, b, c] = zero
        for i in range(H):
            for j in range(W):
                si, sj = _rotation_source(i, j, trig[n, 0], trig[n, 1], H, W, mode)
                if si >= 0:
                    for c in range(C):
                        dx[n, si, sj, c] += dy[n, i, j, c]


def _gather(x, rows, cols, fill):
    x = np.ascontiguousarray(x)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    N, _, _, C = x.shape
    y = np.empty((N, rows.shape[1], cols.shape[1], C), dtype=x.dtype)  # (N, OH, OW, C)
    pick(_gather_kernel, y.size)(y, x, rows, cols, x.dtype.type(fill))
    return y, (rows, cols, x.shape)


def _scatter(dy, cache):
    rows, cols, x_shape = cache
    dy = np.ascontiguousarray(dy)
    dx = np.empty(x_shape, dtype=dy.dtype)  # (N, H, W, C)
    pick(_scatter_kernel, dx.size + dy.size)(dx, dy, rows, cols)
    return dx


def flip2d_forward(x, *, flip):
    """See :func:`fastcnn.reference.augment.flip2d_forward`."""
    return _gather(x, *flip_maps(flip, x.shape[1], x.shape[2]), 0)


def flip2d_backward(dy, cache):
    return _scatter(dy, cache)


def translate2d_forward(x, *, shift, fill_mode, fill_value):
    """See :func:`fastcnn.reference.augment.translate2d_forward`."""
    return _gather(x, *translate_maps(shift, x.shape[1], x.shape[2], fill_mode), fill_value)


def translate2d_backward(dy, cache):
    return _scatter(dy, cache)


def crop2d_forward(x, *, offset, size):
    """See :func:`fastcnn.reference.augment.crop2d_forward`."""
    return _gather(x, *crop_maps(offset, size), 0)


def crop2d_backward(dy, cache):
    return _scatter(dy, cache)


def rotate2d_forward(x, *, angle, fill_mode, fill_value):
    """See :func:`fastcnn.reference.augment.rotate2d_forward`."""
    x = np.ascontiguousarray(x)
    trig = rotation_trig(angle)  # (N, 2)
    mode = FILL_MODES.index(fill_mode)
    y = np.empty(x.shape, dtype=x.dtype)
    pick(_rotate_kernel, y.size)(y, x, trig, mode, x.dtype.type(fill_value))
    return y, (trig, mode)


def rotate2d_backward(dy, cache):
    trig, mode = cache
    dy = np.ascontiguousarray(dy)
    dx = np.empty(dy.shape, dtype=dy.dtype)
    pick(_rotate_scatter_kernel, dx.size)(dx, dy, trig, mode)
    return dx


def warmup(dtype):
    """Compile (or load) every kernel above for ``dtype``, serial and parallel twins."""
    for N in (2, PARALLEL_MIN_SIZE // 8):  # (N, 2, 4, 1) images: the serial, then the parallel twins
        x = np.zeros((N, 2, 4, 1), dtype=dtype)
        draws = np.zeros((N, 2), dtype=np.int64)
        for y, cache, backward in (
            (*flip2d_forward(x, flip=draws.astype(bool)), flip2d_backward),
            (*translate2d_forward(x, shift=draws, fill_mode="reflect", fill_value=0.0), translate2d_backward),
            (*crop2d_forward(x, offset=draws, size=(2, 4)), crop2d_backward),
            (*rotate2d_forward(x, angle=np.zeros(N), fill_mode="constant", fill_value=0.0), rotate2d_backward),
        ):
            backward(np.ones_like(y), cache)
