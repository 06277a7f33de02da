"""Vectorized element-wise activations, softmax, flatten and dropout."""

import sys

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


def dropout_bits(rng, size, offset=0, total=None):
    """``size`` 32-bit draws for dropout masks: the halves of ``ceil(total / 2)`` raw 64-bit
    draws, low half first (docs/ops.md), from position ``offset`` on. Half the cost of one
    ``rng.random()`` per element.

    ``total`` (default ``size``) draws are consumed either way. When they are more than
    the ``size`` wanted (one rank's slice of a batch) and the bit generator can jump
    (PCG64, NumPy's default), it jumps over the draws of the other rows instead of
    making them: the cost stays that of the slice however large the batch.
    """
    total = size if total is None else total
    bitgen = rng.bit_generator
    if total != size and type(bitgen).__name__ in _JUMPING:
        first, stop = offset // 2, (offset + size + 1) // 2  # raw draws holding the slice
        saved = bitgen.state
        bitgen.advance(first)
        raw = bitgen.random_raw(stop - first)  # (ceil(size / 2) or one more,) uint64
        bitgen.advance((total + 1) // 2 - stop)
        state = bitgen.state  # advance() drops a buffered 32-bit half; random_raw never uses it
        state["has_uint32"], state["uinteger"] = saved["has_uint32"], saved["uinteger"]
        bitgen.state = state
        offset -= 2 * first
    else:
        raw = bitgen.random_raw((total + 1) // 2)  # (ceil(total / 2),) uint64
    if sys.byteorder == "little":
        return raw.view(np.uint32)[offset:offset + size]
    bits = np.stack([raw & 0xFFFFFFFF, raw >> 32], axis=-1).astype(np.uint32).reshape(-1)
    return bits[offset:offset + size]


#: Bit generators whose ``advance(n)`` equals ``n`` calls of ``random_raw`` (NumPy documents it).
_JUMPING = ("PCG64", "PCG64DXSM")


def dropout_span(shape, rows):
    """``(offset, total)`` of the draws of an input of ``shape`` (see :func:`dropout_bits`).

    ``rows=None``: the input is the whole batch, ``(0, prod(shape))``. ``rows=(start,
    total_rows)``: the input holds rows ``[start, start + N)`` of a batch of ``total_rows``
    rows (data-parallel training, :mod:`fastcnn.distributed`); the mask is drawn for the
    whole batch, as one process would, and these rows of it are used.
    """
    size = int(np.prod(shape))
    if rows is None:
        return 0, size
    start, total_rows = (int(r) for r in rows)
    if not 0 <= start <= start + shape[0] <= total_rows:
        raise ValueError(f"dropout: rows=({start}, {total_rows}) cannot hold a batch of {shape[0]} rows")
    per_row = int(np.prod(shape[1:]))
    return start * per_row, total_rows * per_row


def dropout_threshold(rate):
    """Draws below this are dropped: ``P(drop) = rate`` to within 2**-32."""
    return np.uint32(min(round(rate * 2**32), 2**32 - 1))


def dropout_forward(x, *, rate, rng, rows=None):
    """Inverted dropout: keep each element with probability ``1 - rate``, scale by ``1/(1-rate)``.

    The mask is one 32-bit draw per element, C order (:func:`dropout_bits`), kept
    where ``bits >= round(rate * 2**32)``: every implementation drops the same
    elements for the same seed. ``rows=(start, total_rows)``: ``x`` is a slice of a
    larger batch and gets that slice of the batch's mask (:func:`dropout_span`).
    """
    if rate == 0:
        return x, None
    keep = (dropout_bits(rng, x.size, *dropout_span(x.shape, rows)) >= dropout_threshold(rate)).reshape(x.shape)
    scale = x.dtype.type(1.0 / (1.0 - rate))
    mask = keep * scale  # (x.shape), x.dtype: 0 or 1/(1-rate)
    mask = mask.astype(x.dtype, copy=False)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask
