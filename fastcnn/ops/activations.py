"""Vectorized element-wise activations, softmax, flatten and dropout."""

import numpy as np

__all__ = [
    "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward",
    "softmax_forward", "softmax_backward",
    "flatten_forward", "flatten_backward",
    "dropout_forward", "dropout_backward",
]


def relu_forward(x):
    """``max(x, 0)``; NaN propagates. Any shape."""
    return np.maximum(x, x.dtype.type(0)), x > 0


def relu_backward(dy, mask):
    """``dy`` where ``x > 0``, else 0 (the gradient at exactly 0 is 0)."""
    return dy * mask


def leaky_relu_forward(x, *, alpha):
    """``x`` where ``x > 0``, else ``alpha * x``."""
    a = x.dtype.type(alpha)
    mask = x > 0
    return np.where(mask, x, a * x), (mask, a)


def leaky_relu_backward(dy, cache):
    mask, a = cache
    return np.where(mask, dy, a * dy)


def sigmoid_forward(x):
    """Logistic function, computed from ``exp(-|x|)`` so it never overflows."""
    e = np.exp(-np.abs(x))
    one = x.dtype.type(1)
    y = np.where(x >= 0, one / (one + e), e / (one + e))
    return y, y


def sigmoid_backward(dy, y):
    return dy * y * (y.dtype.type(1) - y)


def tanh_forward(x):
    y = np.tanh(x)
    return y, y


def tanh_backward(dy, y):
    return dy * (y.dtype.type(1) - y * y)


def softmax_forward(x):
    """Softmax over the last axis, shifted by the row maximum for stability."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    return y, y


def softmax_backward(dy, y):
    """Jacobian-vector product: ``y * (dy - sum(dy * y))`` per row.

    Taken relative to the largest class (``rel = dy - dy[argmax y]``), which is the
    same when ``sum(y) == 1`` and keeps a saturated row's tiny gradient accurate
    instead of the rounding noise of ``dy - sum(dy * y)``.
    """
    top = np.take_along_axis(dy, y.argmax(axis=-1)[..., None], axis=-1)  # (..., 1)
    rel = dy - top
    return y * (rel - np.sum(y * rel, axis=-1, keepdims=True))


def flatten_forward(x):
    """Shape: x (N, ...) -> y (N, prod(...)) in C order."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dy, shape):
    return dy.reshape(shape)


def dropout_forward(x, *, rate, rng):
    """Inverted dropout: keep each element with probability ``1 - rate``, scale by ``1/(1-rate)``.

    The mask is ``rng.random(x.shape) >= rate`` (one float64 draw per element, C
    order), so every implementation drops the same elements for the same seed.
    """
    if rate == 0:
        return x, None
    keep = rng.random(x.shape) >= rate
    scale = x.dtype.type(1.0 / (1.0 - rate))
    mask = keep * scale  # (x.shape), x.dtype: 0 or 1/(1-rate)
    mask = mask.astype(x.dtype, copy=False)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask
