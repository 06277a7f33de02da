"""Reference inverted dropout, element by element, drawing exactly as the contract says."""

import numpy as np

__all__ = ["dropout_forward", "dropout_backward"]


def dropout_forward(x, *, rate, rng):
    """Zero each element with probability ``rate`` and scale the survivors by ``1 / (1 - rate)``.

    The mask is ``keep = rng.random(x.shape) >= rate``: one float64 draw per
    element in C order, so every implementation given the same seeded ``rng``
    keeps the same elements. The scale is cast to ``x.dtype`` once and survivors
    are multiplied by it, so equal masks give bit-equal outputs.

    Parameters
    ----------
    x : ndarray
        Input of any shape.
    rate : float
        Drop probability in ``[0, 1)``; ``0`` returns ``x`` itself and draws nothing.
    rng : numpy.random.Generator
        Source of the mask.

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
    keep = rng.random(x.shape) >= rate
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
