"""Vectorized 2-D convolution (NHWC, HWIO): im2col through a window view, one GEMM."""

import numpy as np

from fastcnn.windows import pad, window_slices, window_view

__all__ = ["conv2d_forward", "conv2d_backward", "im2col", "col2im"]


def im2col(x, kernel, stride, padding):
    """Copy every window of ``x`` into one matrix, once.

    Returns ``(cols, padded_shape)``: cols shape ``(N*OH*OW, KH*KW*C)``, rows in
    (n, oh, ow) order and columns in (kh, kw, c) order, matching an HWIO weight
    reshaped to ``(KH*KW*C, F)``.
    """
    xp = pad(x, padding)
    win = window_view(xp, kernel, stride)  # (N, OH, OW, KH, KW, C), read-only view
    N, OH, OW, KH, KW, C = win.shape
    cols = np.empty(win.shape, dtype=x.dtype)  # (N, OH, OW, KH, KW, C)
    np.copyto(cols, win)
    return cols.reshape(N * OH * OW, KH * KW * C), xp.shape


def col2im(dcols, x_shape, padded_shape, kernel, stride, padding):
    """Scatter-add window gradients back onto the input: the adjoint of :func:`im2col`.

    ``dcols`` has shape ``(N, OH, OW, KH, KW, C)``. Done as ``KH*KW`` strided
    slice-adds (never ``np.add.at``); returns a contiguous ``(N, H, W, C)`` array.
    """
    N, OH, OW, KH, KW, C = dcols.shape
    dxp = np.zeros(padded_shape, dtype=dcols.dtype)  # (N, H+PT+PB, W+PL+PR, C)
    for i in range(KH):
        for j in range(KW):
            dxp[window_slices(i, j, (OH, OW), stride)] += dcols[:, :, :, i, j, :]
    (pt, _), (pl, _) = padding
    H, W = x_shape[1:3]
    if dxp.shape[1:3] == (H, W):
        return dxp
    return np.ascontiguousarray(dxp[:, pt:pt + H, pl:pl + W, :])


def conv2d_forward(x, w, b, *, stride, padding, workspace=None, need_cache=True):
    """2-D cross-correlation of NHWC ``x`` with HWIO ``w``, plus ``b``.

    ``workspace`` and ``need_cache`` are hints this implementation ignores (see docs/ops.md).

    Shape:
        x (N, H, W, C), w (KH, KW, C, F), b (F,) or None -> y (N, OH, OW, F)
    """
    N = x.shape[0]
    KH, KW, C, F = w.shape
    cols, padded_shape = im2col(x, (KH, KW), stride, padding)  # (N*OH*OW, KH*KW*C)
    w2 = w.reshape(KH * KW * C, F)
    y = cols @ w2  # (N*OH*OW, F)
    if b is not None:
        y += b
    OH = (padded_shape[1] - KH) // stride[0] + 1
    OW = (padded_shape[2] - KW) // stride[1] + 1
    cache = (cols, w, b is not None, x.shape, padded_shape, stride, padding)
    return y.reshape(N, OH, OW, F), cache


def conv2d_backward(dy, cache, need_dx=True):
    """Gradients of :func:`conv2d_forward`: ``(dx, dw, db)``; ``db`` is None without bias,
    ``dx`` is None with ``need_dx=False`` (skipping the dcols GEMM and col2im)."""
    cols, w, has_bias, x_shape, padded_shape, stride, padding = cache
    KH, KW, C, F = w.shape
    N, OH, OW, _ = dy.shape
    dy2 = dy.reshape(N * OH * OW, F)
    dw = (cols.T @ dy2).reshape(w.shape)  # (KH, KW, C, F)
    db = dy2.sum(axis=0) if has_bias else None
    if not need_dx:
        return None, dw, db
    dcols = dy2 @ w.reshape(KH * KW * C, F).T  # (N*OH*OW, KH*KW*C)
    dx = col2im(dcols.reshape(N, OH, OW, KH, KW, C), x_shape, padded_shape, (KH, KW), stride, padding)
    return dx, dw, db
