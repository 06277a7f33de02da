"""Reference pooling (max, average, global average) over NHWC input, as explicit loops."""

import numpy as np

from fastcnn.reference._window import out_size, pad_hw

__all__ = [
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "global_avg_pool2d_forward",
    "global_avg_pool2d_backward",
]


def _first_max(window):
    """``(row, col)`` of the first maximum of a 2-D window in row-major order."""
    # np.argmax returns the first occurrence, which is exactly the tie rule.
    return np.unravel_index(np.argmax(window), window.shape)


def max_pool2d_forward(x, *, pool_size, stride, padding):
    """Maximum of each ``PH x PW`` window, per channel; padding is ``-inf``.

    Parameters
    ----------
    x : ndarray
        Input activations.
    pool_size : tuple of int
        ``(PH, PW)``.
    stride : tuple of int
        ``(SH, SW)``.
    padding : tuple
        ``((PT, PB), (PL, PR))``; padded cells never win because they are ``-inf``.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``.
    cache : tuple
        Private to :func:`max_pool2d_backward`.

    Shape
    -----
    x ``(N, H, W, C)``, y ``(N, OH, OW, C)`` with ``OH = (H + PT + PB - PH) // SH + 1``.
    """
    N, H, W, C = x.shape
    PH, PW = pool_size
    SH, SW = stride
    (pt, pb), (pl, pr) = padding
    OH = out_size(H, PH, SH, pt, pb)
    OW = out_size(W, PW, SW, pl, pr)
    xp = pad_hw(x, padding, -np.inf)  # (N, H + PT + PB, W + PL + PR, C)

    y = np.zeros((N, OH, OW, C), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for c in range(C):
                    window = xp[n, i * SH : i * SH + PH, j * SW : j * SW + PW, c]  # (PH, PW)
                    y[n, i, j, c] = np.max(window)
    return y, (x.shape, xp, pool_size, stride, padding)


def max_pool2d_backward(dy, cache):
    """Route each window's gradient wholly to its first maximum (argmax).

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : tuple
        From :func:`max_pool2d_forward`.

    Returns
    -------
    dx : ndarray
        Gradient of ``x``, of ``x.dtype``; overlapping windows accumulate.

    Shape
    -----
    dy ``(N, OH, OW, C)``, dx ``(N, H, W, C)``.
    """
    x_shape, xp, (PH, PW), (SH, SW), padding = cache
    N, OH, OW, C = dy.shape
    (pt, _), (pl, _) = padding
    dxp = np.zeros(xp.shape, dtype=xp.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for c in range(C):
                    window = xp[n, i * SH : i * SH + PH, j * SW : j * SW + PW, c]
                    r, s = _first_max(window)
                    dxp[n, i * SH + r, j * SW + s, c] += dy[n, i, j, c]
    _, H, W, _ = x_shape
    return dxp[:, pt : pt + H, pl : pl + W, :].copy()


def _unpadded_window(i, j, pool_size, stride, padding, H, W):
    """Row and column slices of window ``(i, j)`` clipped to the unpadded input."""
    PH, PW = pool_size
    SH, SW = stride
    (pt, _), (pl, _) = padding
    top, left = i * SH - pt, j * SW - pl  # window origin in unpadded coordinates
    rows = slice(max(top, 0), min(top + PH, H))
    cols = slice(max(left, 0), min(left + PW, W))
    return rows, cols


def avg_pool2d_forward(x, *, pool_size, stride, padding):
    """Mean of each window over its **unpadded** elements (TensorFlow/Keras semantics).

    Parameters
    ----------
    x : ndarray
        Input activations.
    pool_size : tuple of int
        ``(PH, PW)``.
    stride : tuple of int
        ``(SH, SW)``.
    padding : tuple
        ``((PT, PB), (PL, PR))``; padded cells are excluded from both the sum and
        the count.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``.
    cache : tuple
        Private to :func:`avg_pool2d_backward`.

    Shape
    -----
    x ``(N, H, W, C)``, y ``(N, OH, OW, C)`` with ``OH = (H + PT + PB - PH) // SH + 1``.
    """
    N, H, W, C = x.shape
    (pt, pb), (pl, pr) = padding
    OH = out_size(H, pool_size[0], stride[0], pt, pb)
    OW = out_size(W, pool_size[1], stride[1], pl, pr)
    y = np.zeros((N, OH, OW, C), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                rows, cols = _unpadded_window(i, j, pool_size, stride, padding, H, W)
                for c in range(C):
                    y[n, i, j, c] = np.mean(x[n, rows, cols, c])
    return y, (x.shape, x.dtype, pool_size, stride, padding)


def avg_pool2d_backward(dy, cache):
    """Spread each window's gradient evenly over its unpadded elements.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : tuple
        From :func:`avg_pool2d_forward`.

    Returns
    -------
    dx : ndarray
        Gradient of ``x``, of ``x.dtype``; overlapping windows accumulate.

    Shape
    -----
    dy ``(N, OH, OW, C)``, dx ``(N, H, W, C)``.
    """
    x_shape, dtype, pool_size, stride, padding = cache
    _, H, W, _ = x_shape
    N, OH, OW, C = dy.shape
    dx = np.zeros(x_shape, dtype=dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                rows, cols = _unpadded_window(i, j, pool_size, stride, padding, H, W)
                count = (rows.stop - rows.start) * (cols.stop - cols.start)
                for c in range(C):
                    dx[n, rows, cols, c] += dy[n, i, j, c] / count
    return dx


def global_avg_pool2d_forward(x):
    """Mean over all spatial positions, per sample and channel.

    Parameters
    ----------
    x : ndarray
        Input activations.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``.
    cache : tuple
        Private to :func:`global_avg_pool2d_backward`.

    Shape
    -----
    x ``(N, H, W, C)``, y ``(N, C)``.
    """
    N, _, _, C = x.shape
    y = np.zeros((N, C), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            y[n, c] = np.mean(x[n, :, :, c])
    return y, (x.shape, x.dtype)


def global_avg_pool2d_backward(dy, cache):
    """Spread ``dy[n, c]`` evenly over the ``H * W`` positions it averaged.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : tuple
        From :func:`global_avg_pool2d_forward`.

    Returns
    -------
    dx : ndarray
        Gradient of ``x``, of ``x.dtype``.

    Shape
    -----
    dy ``(N, C)``, dx ``(N, H, W, C)``.
    """
    x_shape, dtype = cache
    N, H, W, C = x_shape
    dx = np.zeros(x_shape, dtype=dtype)
    for n in range(N):
        for c in range(C):
            dx[n, :, :, c] = dy[n, c] / (H * W)
    return dx
