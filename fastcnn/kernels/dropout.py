"""Inverted dropout: NumPy draws the mask, one kernel applies it.

The draw stays ``rng.random(x.shape) >= rate`` in the wrapper (one float64
per element, C order), so the same seed drops the same elements as every other
implementation, bit for bit. The kernel fuses compare, mask and scale into one
pass (NumPy needs three, each with a temporary); backward stays one NumPy
multiply.
"""

import numpy as np
from numba import prange

from fastcnn.kernels._jit import pick, twins

__all__ = ["dropout_forward", "dropout_backward"]


def _dropout_forward(y, mask, x, u, rate, scale):
    # y: (size,) out; mask: (size,) out, 0 or scale; x: (size,); u: (size,) float64 draws
    zero = y.dtype.type(0)
    for i in prange(x.shape[0]):
        m = scale if u[i] >= rate else zero
        mask[i] = m
        y[i] = x[i] * m  # a multiply, as NumPy: a dropped inf or NaN gives NaN


_dropout_forward_pair = twins(_dropout_forward)


def dropout_forward(x, *, rate, rng):
    """``y = x * keep / (1 - rate)`` with ``keep = rng.random(x.shape) >= rate``; ``rate == 0`` is the identity.

    Shape: any; y and the cached mask have ``x.shape`` and ``x.dtype``.
    """
    if rate == 0:
        return x, None
    x = np.ascontiguousarray(x)
    u = rng.random(x.shape)  # x.shape, float64 draws
    scale = x.dtype.type(1.0 / (1.0 - rate))
    y = np.empty(x.shape, dtype=x.dtype)  # x.shape
    mask = np.empty(x.shape, dtype=x.dtype)  # x.shape: 0 or 1/(1-rate)
    pick(_dropout_forward_pair, x.size)(y.reshape(-1), mask.reshape(-1), x.reshape(-1), u.reshape(-1),
                                        float(rate), scale)
    return y, mask


def dropout_backward(dy, mask):
    """``dy * mask``: already a single NumPy pass, which no kernel measurably beats."""
    if mask is None:
        return dy
    return np.asarray(dy, dtype=mask.dtype) * mask
