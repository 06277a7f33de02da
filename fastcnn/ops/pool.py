"""Vectorized max, average and global-average pooling (NHWC)."""

import numpy as np

from fastcnn.windows import pad, window_slices, window_view

__all__ = [
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "global_avg_pool2d_forward",
    "global_avg_pool2d_backward",
]


def _crop(dxp, x_shape, padding):
    (pt, _), (pl, _) = padding
    H, W = x_shape[1:3]
    if dxp.shape[1:3] == (H, W):
        return dxp
    return np.ascontiguousarray(dxp[:, pt:pt + H, pl:pl + W, :])


def max_pool2d_forward(x, *, pool_size, stride, padding):
    """Max over each window; caches the argmax (first maximum, row-major window order).

    Shape:
        x (N, H, W, C) -> y (N, OH, OW, C); cached argmax (N, OH, OW, C) small ints
    """
    PH, PW = pool_size
    xp = pad(x, padding, -np.inf)
    win = window_view(xp, pool_size, stride)  # (N, OH, OW, PH, PW, C)
    N, OH, OW, _, _, C = win.shape
    flat = win.reshape(N, OH, OW, PH * PW, C)  # a copy: windows overlap in memory
    index_dtype = np.int8 if PH * PW <= 127 else np.int32
    argmax = flat.argmax(axis=3).astype(index_dtype)  # (N, OH, OW, C)
    y = np.take_along_axis(flat, argmax[:, :, :, None, :].astype(np.intp), axis=3)[:, :, :, 0, :]
    return y, (argmax, x.shape, xp.shape, pool_size, stride, padding)


def max_pool2d_backward(dy, cache):
    """Route each window's gradient to its cached argmax, as PH*PW strided slice-adds."""
    argmax, x_shape, padded_shape, (PH, PW), stride, padding = cache
    OH, OW = dy.shape[1:3]
    dxp = np.zeros(padded_shape, dtype=dy.dtype)  # (N, Hp, Wp, C)
    zero = dy.dtype.type(0)
    for i in range(PH):
        for j in range(PW):
            dxp[window_slices(i, j, (OH, OW), stride)] += np.where(argmax == i * PW + j, dy, zero)
    return _crop(dxp, x_shape, padding)


def _window_counts(x_shape, pool_size, stride, padding, dtype):
    """How many unpadded elements each window holds: (1, OH, OW, 1)."""
    ones = pad(np.ones((1, x_shape[1], x_shape[2], 1), dtype=dtype), padding, 0)
    return window_view(ones, pool_size, stride).sum(axis=(3, 4))


def avg_pool2d_forward(x, *, pool_size, stride, padding):
    """Mean over each window's unpadded elements (TensorFlow/Keras semantics).

    Shape:
        x (N, H, W, C) -> y (N, OH, OW, C)
    """
    xp = pad(x, padding, 0)
    win = window_view(xp, pool_size, stride)  # (N, OH, OW, PH, PW, C)
    counts = _window_counts(x.shape, pool_size, stride, padding, x.dtype)  # (1, OH, OW, 1)
    y = win.sum(axis=(3, 4)) / counts
    return y, (counts, x.shape, xp.shape, pool_size, stride, padding)


def avg_pool2d_backward(dy, cache):
    """Spread each window's gradient evenly over its unpadded elements."""
    counts, x_shape, padded_shape, (PH, PW), stride, padding = cache
    OH, OW = dy.shape[1:3]
    g = dy / counts  # (N, OH, OW, C)
    dxp = np.zeros(padded_shape, dtype=dy.dtype)
    for i in range(PH):
        for j in range(PW):
            dxp[window_slices(i, j, (OH, OW), stride)] += g
    return _crop(dxp, x_shape, padding)


def global_avg_pool2d_forward(x):
    """Mean over H and W. Shape: x (N, H, W, C) -> y (N, C)."""
    return x.mean(axis=(1, 2)), x.shape


def global_avg_pool2d_backward(dy, cache):
    """Broadcast ``dy / (H*W)`` back over H and W."""
    N, H, W, C = cache
    g = dy / dy.dtype.type(H * W)
    return np.ascontiguousarray(np.broadcast_to(g[:, None, None, :], (N, H, W, C)))
