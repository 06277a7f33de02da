"""Vectorized batch normalization over the last axis (Keras ``axis=-1``).

Statistics are summed in float64 whatever the input dtype: a float32 sum over
the ``N * H * W`` samples of a channel would lose digits as the batch grows.
Everything else stays in the input dtype.
"""

import numpy as np

__all__ = ["batch_norm_forward", "batch_norm_backward", "batch_norm_fold"]


def batch_norm_fold(gamma, beta, mean, var, epsilon, dtype):
    """Per-channel ``(scale, shift)`` with ``batch_norm(x) == x * scale + shift`` for these statistics.

    ``scale = gamma / sqrt(var + epsilon)``, ``shift = beta - mean * scale``,
    computed in float64 and returned in ``dtype``. The inference-mode forward
    and the folding of a BatchNormalization into the layer before it both use it.
    """
    inv_std = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + epsilon)
    scale = inv_std if gamma is None else np.asarray(gamma, dtype=np.float64) * inv_std
    shift = -np.asarray(mean, dtype=np.float64) * scale
    if beta is not None:
        shift += np.asarray(beta, dtype=np.float64)
    return scale.astype(dtype), shift.astype(dtype)


def batch_norm_forward(x, gamma, beta, mean=None, var=None, *, epsilon):
    """Training mode (``mean``/``var`` None): batch mean and biased variance; else the given ones.

    ``cache[0], cache[1]`` are the mean and variance used, ``(C,)`` of ``x.dtype``.
    Shape: x ``(N, ..., C)``; gamma, beta, mean, var ``(C,)`` or None; y like x.
    """
    dtype = x.dtype
    C = x.shape[-1]
    rows = x.reshape(-1, C)  # (M, C)
    M = rows.shape[0]
    training = mean is None
    if training:
        mean64 = np.add.reduce(rows, axis=0, dtype=np.float64) / M
        mean = mean64.astype(dtype)
        centered = rows - mean  # (M, C)
        var64 = np.add.reduce(np.square(centered), axis=0, dtype=np.float64) / M
        var = var64.astype(dtype)
        inv_std = (1.0 / np.sqrt(var64 + epsilon)).astype(dtype)
        xhat = centered
        xhat *= inv_std  # (M, C), in place in the fresh centered copy
        y = xhat * gamma if gamma is not None else xhat.copy()
        if beta is not None:
            y += beta
        cache = (mean, var, xhat, inv_std, gamma, beta is not None, True)
        return y.reshape(x.shape), cache
    mean = np.asarray(mean, dtype=dtype)
    var = np.asarray(var, dtype=dtype)
    scale, shift = batch_norm_fold(gamma, beta, mean, var, epsilon, dtype)
    y = rows * scale
    y += shift
    inv_std = (1.0 / np.sqrt(var.astype(np.float64) + epsilon)).astype(dtype)
    return y.reshape(x.shape), (mean, var, rows, inv_std, gamma, beta is not None, False)


def batch_norm_backward(dy, cache):
    """Gradients ``(dx, dgamma, dbeta)``; ``dgamma``/``dbeta`` are None where gamma/beta were."""
    mean, var, saved, inv_std, gamma, has_beta, training = cache
    dtype = saved.dtype
    M, C = saved.shape
    d = dy.reshape(M, C)
    xhat = saved if training else (saved - mean) * inv_std  # (M, C)
    sum_dy = np.add.reduce(d, axis=0, dtype=np.float64)
    sum_dy_xhat = np.add.reduce(d * xhat, axis=0, dtype=np.float64)
    g = inv_std if gamma is None else gamma * inv_std  # (C,)
    if training:
        dx = d - (sum_dy / M).astype(dtype)
        dx -= xhat * (sum_dy_xhat / M).astype(dtype)
        dx *= g
    else:
        dx = d * g
    dgamma = None if gamma is None else sum_dy_xhat.astype(dtype)
    dbeta = sum_dy.astype(dtype) if has_beta else None
    return dx.reshape(dy.shape), dgamma, dbeta
