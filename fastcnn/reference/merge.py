"""Reference merge ops: element-wise sum (``add``) and ``concatenate``, as explicit loops."""

import numpy as np

__all__ = ["add_forward", "add_backward", "concatenate_forward", "concatenate_backward"]


def add_forward(*xs):
    """Element-wise sum of two or more arrays of one shape.

    Returns
    -------
    y : ndarray of ``xs[0].dtype``
    cache : int, the number of inputs

    Shape
    -----
    every x and y ``(N, ...)``, the same shape.
    """
    y = np.zeros(xs[0].shape, dtype=xs[0].dtype)
    for idx in np.ndindex(y.shape):
        total = 0.0
        for x in xs:
            total += float(x[idx])
        y[idx] = total
    return y, len(xs)


def add_backward(dy, cache):
    """Each input's gradient is ``dy``: a tuple of ``cache`` copies of it."""
    out = []
    for _ in range(cache):
        dx = np.zeros(dy.shape, dtype=dy.dtype)
        for idx in np.ndindex(dy.shape):
            dx[idx] = dy[idx]
        out.append(dx)
    return tuple(out)


def concatenate_forward(*xs, axis):
    """Join arrays along ``axis`` (a non-negative axis, not the batch axis).

    Returns
    -------
    y : ndarray of ``xs[0].dtype``
    cache : tuple, private to :func:`concatenate_backward`

    Shape
    -----
    x_i ``(N, ..., C_i, ...)`` -> y ``(N, ..., sum C_i, ...)``.
    """
    sizes = [x.shape[axis] for x in xs]
    shape = list(xs[0].shape)
    shape[axis] = sum(sizes)
    y = np.zeros(shape, dtype=xs[0].dtype)
    offset = 0
    for x in xs:
        for idx in np.ndindex(x.shape):
            out = list(idx)
            out[axis] += offset
            y[tuple(out)] = x[idx]
        offset += x.shape[axis]
    return y, ([x.shape for x in xs], axis)


def concatenate_backward(dy, cache):
    """The slice of ``dy`` each input was copied to, as a tuple of new arrays."""
    shapes, axis = cache
    out, offset = [], 0
    for shape in shapes:
        dx = np.zeros(shape, dtype=dy.dtype)
        for idx in np.ndindex(shape):
            src = list(idx)
            src[axis] += offset
            dx[idx] = dy[tuple(src)]
        out.append(dx)
        offset += shape[axis]
    return tuple(out)
