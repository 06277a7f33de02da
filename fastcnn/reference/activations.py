"""Reference activations (relu, leaky_relu, sigmoid, tanh, softmax), element by element."""

import numpy as np

__all__ = [
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "softmax_forward",
    "softmax_backward",
]


def relu_forward(x):
    """``y = x if x > 0 else 0``.

    Parameters
    ----------
    x : ndarray
        Input of any shape.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``.
    cache : ndarray
        ``x``, private to :func:`relu_backward`.

    Shape
    -----
    y has the shape of x.
    """
    y = np.zeros(x.shape, dtype=x.dtype)
    for idx in np.ndindex(x.shape):
        if x[idx] > 0:
            y[idx] = x[idx]
    return y, x


def relu_backward(dy, cache):
    """``dx = dy where x > 0``, else 0 (including at exactly 0).

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : ndarray
        From :func:`relu_forward`.

    Returns
    -------
    dx : ndarray
        Gradient of ``x``, of ``x.dtype``.

    Shape
    -----
    dx has the shape of dy.
    """
    x = cache
    dx = np.zeros(x.shape, dtype=x.dtype)
    for idx in np.ndindex(x.shape):
        if x[idx] > 0:
            dx[idx] = dy[idx]
    return dx


def leaky_relu_forward(x, *, alpha):
    """``y = x if x > 0 else alpha * x``.

    Parameters
    ----------
    x : ndarray
        Input of any shape.
    alpha : float
        Slope for ``x <= 0``.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``.
    cache : tuple
        Private to :func:`leaky_relu_backward`.

    Shape
    -----
    y has the shape of x.
    """
    # Cast once so float32 math stays float32 and every impl multiplies by the same number.
    a = x.dtype.type(alpha)
    y = np.zeros(x.shape, dtype=x.dtype)
    for idx in np.ndindex(x.shape):
        y[idx] = x[idx] if x[idx] > 0 else a * x[idx]
    return y, (x, a)


def leaky_relu_backward(dy, cache):
    """``dx = dy if x > 0 else alpha * dy`` (so the slope at exactly 0 is ``alpha``).

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : tuple
        From :func:`leaky_relu_forward`.

    Returns
    -------
    dx : ndarray
        Gradient of ``x``, of ``x.dtype``.

    Shape
    -----
    dx has the shape of dy.
    """
    x, a = cache
    dx = np.zeros(x.shape, dtype=x.dtype)
    for idx in np.ndindex(x.shape):
        dx[idx] = dy[idx] if x[idx] > 0 else a * dy[idx]
    return dx


def sigmoid_forward(x):
    """Logistic function ``y = 1 / (1 + exp(-x))``, without overflow.

    Parameters
    ----------
    x : ndarray
        Input of any shape.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``.
    cache : ndarray
        ``y``, private to :func:`sigmoid_backward`.

    Shape
    -----
    y has the shape of x.
    """
    one = x.dtype.type(1)
    y = np.zeros(x.shape, dtype=x.dtype)
    for idx in np.ndindex(x.shape):
        v = x[idx]
        # exp of a non-positive number only: exp(-v) would overflow for very negative v.
        if v >= 0:
            y[idx] = one / (one + np.exp(-v))
        else:
            e = np.exp(v)
            y[idx] = e / (one + e)
    return y, y


def sigmoid_backward(dy, cache):
    """``dx = dy * y * (1 - y)``.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : ndarray
        From :func:`sigmoid_forward`.

    Returns
    -------
    dx : ndarray
        Gradient of ``x``, of ``x.dtype``.

    Shape
    -----
    dx has the shape of dy.
    """
    y = cache
    one = y.dtype.type(1)
    dx = np.zeros(y.shape, dtype=y.dtype)
    for idx in np.ndindex(y.shape):
        dx[idx] = dy[idx] * y[idx] * (one - y[idx])
    return dx


def tanh_forward(x):
    """Hyperbolic tangent.

    Parameters
    ----------
    x : ndarray
        Input of any shape.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``.
    cache : ndarray
        ``y``, private to :func:`tanh_backward`.

    Shape
    -----
    y has the shape of x.
    """
    y = np.zeros(x.shape, dtype=x.dtype)
    for idx in np.ndindex(x.shape):
        y[idx] = np.tanh(x[idx])
    return y, y


def tanh_backward(dy, cache):
    """``dx = dy * (1 - y**2)``.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : ndarray
        From :func:`tanh_forward`.

    Returns
    -------
    dx : ndarray
        Gradient of ``x``, of ``x.dtype``.

    Shape
    -----
    dx has the shape of dy.
    """
    y = cache
    one = y.dtype.type(1)
    dx = np.zeros(y.shape, dtype=y.dtype)
    for idx in np.ndindex(y.shape):
        dx[idx] = dy[idx] * (one - y[idx] * y[idx])
    return dx


def softmax_forward(x):
    """Softmax over the last axis, shifted by the row maximum so ``exp`` cannot overflow.

    Parameters
    ----------
    x : ndarray
        Input of any shape; each last-axis row is normalized separately.

    Returns
    -------
    y : ndarray
        Output of ``x.dtype``; every row sums to 1.
    cache : ndarray
        ``y``, private to :func:`softmax_backward`.

    Shape
    -----
    y has the shape of x, e.g. ``(N, K)``.
    """
    y = np.zeros(x.shape, dtype=x.dtype)
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx]
        e = np.exp(row - np.max(row))
        y[idx] = e / np.sum(e)
    return y, y


def softmax_backward(dy, cache):
    """Jacobian-vector product of softmax: ``dx = y * (dy - sum(dy * y))`` per row.

    Computed as ``y * ((dy - dy[m]) - sum(y * (dy - dy[m])))`` with ``m`` the row's
    largest ``y``: the same number when ``sum(y) == 1``, but for a saturated row
    (``y[m]`` rounded to 1) the textbook form subtracts two numbers of size ``|dy|``
    to get one of size ``1 - y[m]`` and keeps only rounding noise, while here every
    small term is computed from small terms.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient.
    cache : ndarray
        From :func:`softmax_forward`.

    Returns
    -------
    dx : ndarray
        Gradient of ``x``, of ``x.dtype``.

    Shape
    -----
    dx has the shape of dy.
    """
    y = cache
    dx = np.zeros(y.shape, dtype=y.dtype)
    for idx in np.ndindex(y.shape[:-1]):
        row = y[idx]
        rel = dy[idx] - dy[idx][np.argmax(row)]  # dy relative to the largest class's: 0 there
        dx[idx] = row * (rel - np.sum(row * rel))
    return dx
