"""Reference fully connected layer, ``y = x @ w + b``, as explicit loops."""

import numpy as np

__all__ = ["dense_forward", "dense_backward"]


def dense_forward(x, w, b):
    """Affine map ``y[n, o] = sum_k x[n, k] * w[k, o] + b[o]``.

    Parameters
    ----------
    x : ndarray
        Input rows.
    w : ndarray
        Weights, ``(IN, OUT)``.
    b : ndarray or None
        Bias; ``None`` for no bias.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``.
    cache : tuple
        Private to :func:`dense_backward`.

    Shape
    -----
    x ``(N, IN)``, w ``(IN, OUT)``, b ``(OUT,)``, y ``(N, OUT)``.
    """
    N = x.shape[0]
    OUT = w.shape[1]
    y = np.zeros((N, OUT), dtype=x.dtype)
    for n in range(N):
        for o in range(OUT):
            y[n, o] = np.sum(x[n, :] * w[:, o])
            if b is not None:
                y[n, o] += b[o]
    return y, (x, w, b is not None)


def dense_backward(dy, cache):
    """Gradients of :func:`dense_forward` with respect to ``x``, ``w`` and ``b``.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : tuple
        From :func:`dense_forward`.

    Returns
    -------
    dx, dw, db : ndarray, ndarray, ndarray or None
        ``db`` is ``None`` when the forward had no bias.

    Shape
    -----
    dy ``(N, OUT)``, dx ``(N, IN)``, dw ``(IN, OUT)``, db ``(OUT,)``.
    """
    x, w, has_bias = cache
    N, OUT = dy.shape
    dx = np.zeros(x.shape, dtype=x.dtype)
    dw = np.zeros(w.shape, dtype=w.dtype)
    db = np.zeros(OUT, dtype=w.dtype) if has_bias else None
    for n in range(N):
        for o in range(OUT):
            g = dy[n, o]
            dx[n, :] += g * w[:, o]
            dw[:, o] += g * x[n, :]
            if has_bias:
                db[o] += g
    return dx, dw, db
