"""Reference 2-D convolution (NHWC activations, HWIO weights), as explicit loops."""

import numpy as np

from fastcnn.reference._window import out_size, pad_hw

__all__ = ["conv2d_forward", "conv2d_backward"]


def conv2d_forward(x, w, b, *, stride, padding, workspace=None, need_cache=True):
    """Cross-correlate ``x`` with the filters ``w`` and add ``b``.

    ``workspace`` and ``need_cache`` are hints this implementation ignores (see docs/ops.md).

    ``y[n, i, j, f] = sum(xp[n, i*SH:i*SH+KH, j*SW:j*SW+KW, :] * w[..., f]) + b[f]``
    where ``xp`` is ``x`` zero-padded by ``padding``.

    Parameters
    ----------
    x : ndarray
        Input activations.
    w : ndarray
        Filters, HWIO.
    b : ndarray or None
        Per-filter bias; ``None`` for no bias.
    stride : tuple of int
        ``(SH, SW)``.
    padding : tuple
        ``((PT, PB), (PL, PR))``.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``.
    cache : tuple
        Private to :func:`conv2d_backward`.

    Shape
    -----
    x ``(N, H, W, C)``, w ``(KH, KW, C, F)``, b ``(F,)``, y ``(N, OH, OW, F)``
    with ``OH = (H + PT + PB - KH) // SH + 1`` (likewise OW).
    """
    N, H, W, _ = x.shape
    KH, KW, _, F = w.shape
    SH, SW = stride
    (pt, pb), (pl, pr) = padding
    OH = out_size(H, KH, SH, pt, pb)
    OW = out_size(W, KW, SW, pl, pr)
    xp = pad_hw(x, padding, 0)  # (N, H + PT + PB, W + PL + PR, C)

    y = np.zeros((N, OH, OW, F), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                patch = xp[n, i * SH : i * SH + KH, j * SW : j * SW + KW, :]  # (KH, KW, C)
                for f in range(F):
                    y[n, i, j, f] = np.sum(patch * w[:, :, :, f])
                    if b is not None:
                        y[n, i, j, f] += b[f]
    cache = (x.shape, xp, w, b is not None, stride, padding)
    return y, cache


def conv2d_backward(dy, cache, need_dx=True):
    """Gradients of :func:`conv2d_forward` with respect to ``x``, ``w`` and ``b``.

    Each output position sends ``dy[n, i, j, f]`` back along the same window it
    read: to the patch (scaled by the filter) and to the filter (scaled by the
    patch).

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : tuple
        From :func:`conv2d_forward`.
    need_dx : bool
        ``False`` returns ``dx=None`` (the first layer's input needs no gradient).

    Returns
    -------
    dx, dw, db : ndarray, ndarray, ndarray or None
        ``db`` is ``None`` when the forward had no bias.

    Shape
    -----
    dy ``(N, OH, OW, F)``, dx ``(N, H, W, C)``, dw ``(KH, KW, C, F)``, db ``(F,)``.
    """
    x_shape, xp, w, has_bias, stride, padding = cache
    N, OH, OW, F = dy.shape
    KH, KW = w.shape[:2]
    SH, SW = stride
    (pt, _), (pl, _) = padding

    # Accumulate into the padded frame so windows that overhang the border
    # need no clipping; the padding's share is dropped when cropping below.
    dxp = np.zeros(xp.shape, dtype=xp.dtype)
    dw = np.zeros(w.shape, dtype=w.dtype)
    db = np.zeros(F, dtype=w.dtype) if has_bias else None
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                rows = slice(i * SH, i * SH + KH)
                cols = slice(j * SW, j * SW + KW)
                patch = xp[n, rows, cols, :]  # (KH, KW, C)
                for f in range(F):
                    g = dy[n, i, j, f]
                    dxp[n, rows, cols, :] += g * w[:, :, :, f]
                    dw[:, :, :, f] += g * patch
                    if has_bias:
                        db[f] += g
    _, H, W, _ = x_shape
    dx = dxp[:, pt : pt + H, pl : pl + W, :].copy() if need_dx else None
    return dx, dw, db
