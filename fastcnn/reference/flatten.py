"""Reference flatten: ``(N, ...) -> (N, -1)`` in C order, copied element by element."""

import numpy as np

__all__ = ["flatten_forward", "flatten_backward"]


def flatten_forward(x):
    """Lay out each sample's elements in one row, last axis fastest (C order).

    Parameters
    ----------
    x : ndarray
        Input with a leading batch axis.

    Returns
    -------
    y : ndarray
        A new array of ``x.dtype``.
    cache : tuple
        The input shape, private to :func:`flatten_backward`.

    Shape
    -----
    x ``(N, H, W, C)`` (any trailing axes), y ``(N, H * W * C)``.
    """
    N = x.shape[0]
    D = int(np.prod(x.shape[1:], dtype=np.int64))
    y = np.zeros((N, D), dtype=x.dtype)
    for n in range(N):
        # np.ndindex walks the trailing axes in C order, which defines the layout.
        for k, idx in enumerate(np.ndindex(x.shape[1:])):
            y[n, k] = x[(n,) + idx]
    return y, (x.shape, x.dtype)


def flatten_backward(dy, cache):
    """Put each element of ``dy`` back at the position it was flattened from.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : tuple
        From :func:`flatten_forward`.

    Returns
    -------
    dx : ndarray
        Gradient of ``x``, of ``x.dtype``.

    Shape
    -----
    dy ``(N, D)``, dx the input shape, e.g. ``(N, H, W, C)``.
    """
    x_shape, dtype = cache
    dx = np.zeros(x_shape, dtype=dtype)
    for n in range(x_shape[0]):
        for k, idx in enumerate(np.ndindex(x_shape[1:])):
            dx[(n,) + idx] = dy[n, k]
    return dx
