"""Reference batch normalization over the last axis, as explicit loops."""

import numpy as np

__all__ = ["batch_norm_forward", "batch_norm_backward"]


def batch_norm_forward(x, gamma, beta, mean=None, var=None, *, epsilon):
    """``y = gamma * (x - mean) / sqrt(var + epsilon) + beta`` per channel (the last axis).

    Parameters
    ----------
    x : ndarray
        Input; every axis but the last is a sample axis.
    gamma, beta : ndarray or None
        Scale and offset ``(C,)``; ``None`` for 1 and 0.
    mean, var : ndarray or None
        Both None: training mode, the batch's mean and biased variance over
        the ``M = x.size // C`` samples of each channel. Both given: inference
        mode, these (moving) statistics.
    epsilon : float

    Returns
    -------
    y : ndarray
        Of ``x.dtype``.
    cache : tuple
        ``cache[0], cache[1]`` are the mean and variance used, ``(C,)`` of
        ``x.dtype`` (the layer updates its moving statistics from them); the
        rest is private to :func:`batch_norm_backward`.

    Shape
    -----
    x ``(N, H, W, C)`` or ``(N, C)``, gamma/beta/mean/var ``(C,)``, y like x.
    """
    C = x.shape[-1]
    rows = x.reshape(-1, C)  # (M, C); a copy if x is strided, same values
    M = rows.shape[0]
    training = mean is None
    mu = np.zeros(C, dtype=x.dtype)
    sigma2 = np.zeros(C, dtype=x.dtype)
    y = np.zeros(rows.shape, dtype=x.dtype)
    for c in range(C):
        if training:
            total = 0.0
            for m in range(M):
                total += float(rows[m, c])
            mu_c = total / M
            total = 0.0
            for m in range(M):
                total += (float(rows[m, c]) - mu_c) ** 2
            var_c = total / M
        else:
            mu_c, var_c = float(mean[c]), float(var[c])
        mu[c], sigma2[c] = mu_c, var_c
        inv_std = 1.0 / np.sqrt(var_c + epsilon)
        g = 1.0 if gamma is None else float(gamma[c])
        b = 0.0 if beta is None else float(beta[c])
        for m in range(M):
            y[m, c] = g * (float(rows[m, c]) - mu_c) * inv_std + b
    return y.reshape(x.shape), (mu, sigma2, rows.copy(), gamma, beta is not None, training, epsilon)


def batch_norm_backward(dy, cache):
    """Gradients of :func:`batch_norm_forward` with respect to ``x``, ``gamma`` and ``beta``.

    In training mode the mean and variance depend on ``x``:
    ``dx = gamma * inv_std / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))`` per channel;
    in inference mode ``dx = gamma * inv_std * dy``. Both: ``dgamma = sum(dy * xhat)``,
    ``dbeta = sum(dy)``.

    Returns
    -------
    dx, dgamma, dbeta : ndarray; ``dgamma``/``dbeta`` are None where ``gamma``/``beta`` were.

    Shape
    -----
    dy like x; dgamma, dbeta ``(C,)``.
    """
    mu, sigma2, rows, gamma, has_beta, training, epsilon = cache
    M, C = rows.shape
    d = dy.reshape(M, C)
    dx = np.zeros((M, C), dtype=rows.dtype)
    dgamma = np.zeros(C, dtype=rows.dtype)
    dbeta = np.zeros(C, dtype=rows.dtype)
    for c in range(C):
        inv_std = 1.0 / np.sqrt(float(sigma2[c]) + epsilon)
        g = 1.0 if gamma is None else float(gamma[c])
        sum_dy, sum_dy_xhat = 0.0, 0.0
        for m in range(M):
            xhat = (float(rows[m, c]) - float(mu[c])) * inv_std
            sum_dy += float(d[m, c])
            sum_dy_xhat += float(d[m, c]) * xhat
        dgamma[c], dbeta[c] = sum_dy_xhat, sum_dy
        for m in range(M):
            if training:
                xhat = (float(rows[m, c]) - float(mu[c])) * inv_std
                dx[m, c] = g * inv_std / M * (M * float(d[m, c]) - sum_dy - xhat * sum_dy_xhat)
            else:
                dx[m, c] = g * inv_std * float(d[m, c])
    return dx.reshape(dy.shape), (None if gamma is None else dgamma), (dbeta if has_beta else None)
