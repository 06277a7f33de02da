"""Reference inverted dropout, element by element, drawing exactly as the contract says."""

import numpy as np

__all__ = ["dropout_forward", "dropout_backward"]


def dropout_forward(x, *, rate, rng, rows=None):
    """Zero each element with probability ``rate`` and scale the survivors by ``1 / (1 - rate)``.

    The mask is one 32-bit draw per element in C order: ``bits`` are the 32-bit
    halves of ``rng.bit_generator.random_raw(ceil(x.size / 2))`` (each 64-bit
    draw gives two, low half first, i.e. ``.view(np.uint32)`` on a little-endian
    machine) and ``keep = bits >= round(rate * 2**32)``. Every implementation
    given the same seeded ``rng`` keeps the same elements. The scale is cast to
    ``x.dtype`` once and survivors are multiplied by it, so equal masks give
    bit-equal outputs.

    Parameters
    ----------
    x : ndarray
        Input of any shape.
    rate : float
        Drop probability in ``[0, 1)``; ``0`` returns ``x`` itself and draws nothing.
    rng : numpy.random.Generator
        Source of the mask.
    rows : (start, total_rows), optional
        ``x`` holds rows ``[start, start + N)`` of a batch of ``total_rows`` rows
        (data-parallel training): the mask is drawn for the whole batch, in the
        same order, and element ``i`` of ``x`` takes draw ``start * (x.size // N) + i``.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype`` (``x`` itself when ``rate == 0``).
    cache : tuple
        Private to :func:`dropout_backward`.

    Shape
    -----
    y has the shape of x.
    """
    if rate == 0:
        return x, None
    offset, total = 0, x.size
    if rows is not None:
        start, total_rows = int(rows[0]), int(rows[1])
        if not 0 <= start <= start + x.shape[0] <= total_rows:
            raise ValueError(f"dropout: rows=({start}, {total_rows}) cannot hold a batch of {x.shape[0]} rows")
        per_row = 1
        for s in x.shape[1:]:
            per_row *= s
        offset, total = start * per_row, total_rows * per_row
    raw = rng.bit_generator.random_raw((total + 1) // 2)
    threshold = min(round(rate * 2**32), 2**32 - 1)
    keep = np.zeros(x.shape, dtype=bool)
    for i, idx in enumerate(np.ndindex(x.shape)):
        j = offset + i
        bits = (int(raw[j // 2]) >> (32 * (j % 2))) & 0xFFFFFFFF
        keep[idx] = bits >= threshold
    scale = x.dtype.type(1.0 / (1.0 - rate))
    y = np.zeros(x.shape, dtype=x.dtype)
    for idx in np.ndindex(x.shape):
        if keep[idx]:
            y[idx] = x[idx] * scale
    return y, (keep, scale)


def dropout_backward(dy, cache):
    """Pass the gradient through the kept elements, scaled like the forward.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : tuple or None
        From :func:`dropout_forward`; ``None`` means ``rate == 0`` (identity).

    Returns
    -------
    dx : ndarray
        Gradient of ``x`` (``dy`` itself when ``rate == 0``).

    Shape
    -----
    dx has the shape of dy.
    """
    if cache is None:
        return dy
    keep, scale = cache
    dx = np.zeros(dy.shape, dtype=scale.dtype)
    for idx in np.ndindex(dy.shape):
        if keep[idx]:
            dx[idx] = dy[idx] * scale
    return dx
