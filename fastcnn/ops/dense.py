"""Vectorized fully connected layer: ``y = x @ w + b``."""

__all__ = ["dense_forward", "dense_backward"]


def dense_forward(x, w, b):
    """Shape: x (N, IN), w (IN, OUT), b (OUT,) or None -> y (N, OUT)."""
    y = x @ w
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def dense_backward(dy, cache):
    """Gradients ``(dx, dw, db)``; ``db`` is None without bias."""
    x, w, has_bias = cache
    return dy @ w.T, x.T @ dy, (dy.sum(axis=0) if has_bias else None)
