"""Merge ops: element-wise ``add`` and ``concatenate``.

``add_backward`` hands the same ``dy`` array to every input (no copies): a
model that accumulates gradients must not add into it in place while another
input still holds it (:mod:`fastcnn.graph` tracks this).
"""

import numpy as np

__all__ = ["add_forward", "add_backward", "concatenate_forward", "concatenate_backward"]


def add_forward(*xs):
    """Shape: every x ``(N, ...)`` of one shape -> y the same shape."""
    y = xs[0] + xs[1]
    for x in xs[2:]:
        y += x
    return y, len(xs)


def add_backward(dy, cache):
    """``(dy, dy, ...)``: one entry per input, all the same array."""
    return (dy,) * cache


def concatenate_forward(*xs, axis):
    """Join along ``axis`` (non-negative, not 0). Shape: ``(N, ..., C_i, ...)`` -> ``(N, ..., sum C_i, ...)``."""
    return np.concatenate(xs, axis=axis), ([x.shape[axis] for x in xs], axis)


def concatenate_backward(dy, cache):
    """Each input's slice of ``dy``, copied C-contiguous (the ops after it read it as a whole)."""
    sizes, axis = cache
    bounds = np.cumsum([0] + sizes)
    index = [slice(None)] * dy.ndim
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        index[axis] = slice(int(start), int(stop))
        out.append(np.ascontiguousarray(dy[tuple(index)]))
    return tuple(out)
