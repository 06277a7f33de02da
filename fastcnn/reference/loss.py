"""Reference fused softmax + cross-entropy on logits, one batch row at a time."""

import numpy as np

__all__ = ["softmax_cross_entropy"]


def softmax_cross_entropy(logits, labels, sample_weight=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer labels, and its gradient.

    Per row, ``loss_n = logsumexp(z) - z[label]`` with ``logsumexp(z) = m +
    log(sum(exp(z - m)))`` and ``m = max(z)``: shifting by the maximum keeps every
    ``exp`` at most 1, so logits of magnitude ``1e4`` stay finite. The softmax is
    ``exp(z - m) / sum(exp(z - m))``, not ``exp(z - logsumexp(z))``: the latter
    rounds ``logsumexp`` at the scale of ``m`` first, which in float32 costs about
    ``5e-4`` relative error once ``|z| ~ 1e4``.

    Parameters
    ----------
    logits : ndarray
        Unnormalized scores.
    labels : ndarray of int
        Class index of each row, in ``[0, K)``.
    sample_weight : ndarray of float, optional
        Non-negative weight ``w_n`` of each row. Keras's "sum over batch size"
        reduction: the loss is ``sum(w_n * loss_n) / N`` (divided by N, not by the
        sum of the weights) and row ``n``'s gradient is scaled by ``w_n``.

    Returns
    -------
    loss : float
        Mean over the N rows (weighted), a Python float.
    dlogits : ndarray
        ``(softmax - onehot) / N`` in ``logits.dtype``, row ``n`` times ``w_n``.

    Shape
    -----
    logits ``(N, K)``, labels ``(N,)``, dlogits ``(N, K)``.
    """
    N, _ = logits.shape
    dlogits = np.zeros(logits.shape, dtype=logits.dtype)
    total = 0.0
    for n in range(N):
        z = logits[n, :]
        label = int(labels[n])
        m = np.max(z)
        e = np.exp(z - m)  # every entry in [0, 1], the largest exactly 1: no overflow
        s = np.sum(e)
        w = 1.0 if sample_weight is None else float(sample_weight[n])
        total += w * float((m - z[label]) + np.log(s))
        p = e / s
        # p[label] - 1 == -(sum of the other classes' p): summing the small p's keeps
        # their precision where subtracting from 1 would round a confident row's gradient to 0.
        p[label] = 0
        p[label] = -np.sum(p)
        dlogits[n, :] = p / N
        if sample_weight is not None:
            dlogits[n, :] *= logits.dtype.type(w)
    return total / N, dlogits
