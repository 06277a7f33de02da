"""Reference cross-entropy losses on integer labels, one batch row at a time.

``softmax_cross_entropy`` takes logits (softmax fused in, stable);
``sparse_categorical_crossentropy`` takes probabilities (Keras's
``from_logits=False``: normalized, clipped to ``[eps, 1 - eps]``, logged).

Both accept Keras's label smoothing (the one-hot target becomes
``onehot * (1 - label_smoothing) + label_smoothing / K``) and per-sample
weights (the loss is ``sum(w_n * loss_n) / N``, each gradient row scaled by
``w_n``; no weights means ``w_n = 1``).
"""

import numpy as np

__all__ = ["softmax_cross_entropy", "sparse_categorical_crossentropy", "EPSILON"]

#: Keras's ``backend.epsilon()``: probabilities are clipped to ``[EPSILON, 1 - EPSILON]``.
EPSILON = 1e-7


def softmax_cross_entropy(logits, labels, *, label_smoothing=0.0, sample_weight=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer labels, and its gradient.

    Per row, ``loss_n = logsumexp(z) - z[label]`` with ``logsumexp(z) = m +
    log(sum(exp(z - m)))`` and ``m = max(z)``: shifting by the maximum keeps every
    ``exp`` at most 1, so logits of magnitude ``1e4`` stay finite. The softmax is
    ``exp(z - m) / sum(exp(z - m))``, not ``exp(z - logsumexp(z))``: the latter
    rounds ``logsumexp`` at the scale of ``m`` first, which in float32 costs about
    ``5e-4`` relative error once ``|z| ~ 1e4``. With label smoothing ``ls`` the
    target puts ``ls / K`` on every class besides ``1 - ls`` on the label, which
    adds ``ls * (z[label] - mean(z))`` to the row's loss and subtracts the target
    from the softmax in the gradient.

    Parameters
    ----------
    logits : ndarray
        Unnormalized scores.
    labels : ndarray of int
        Class index of each row, in ``[0, K)``.
    label_smoothing : float in [0, 1]
    sample_weight : ndarray, optional
        One weight per row.

    Returns
    -------
    loss : float
        ``sum(w_n * loss_n) / N``, a Python float.
    dlogits : ndarray
        ``w_n * (softmax - target) / N`` in ``logits.dtype``.

    Shape
    -----
    logits ``(N, K)``, labels ``(N,)``, sample_weight ``(N,)``, dlogits ``(N, K)``.
    """
    N, K = logits.shape
    ls = float(label_smoothing)
    dlogits = np.zeros(logits.shape, dtype=logits.dtype)
    total = 0.0
    for n in range(N):
        z = logits[n, :]
        label = int(labels[n])
        m = np.max(z)
        e = np.exp(z - m)  # every entry in [0, 1], the largest exactly 1: no overflow
        s = np.sum(e)
        row = float((m - z[label]) + np.log(s))
        if ls:
            row += ls * float(z[label] - np.mean(z))
        p = e / s
        # p[label] - 1 == -(sum of the other classes' p): summing the small p's keeps
        # their precision where subtracting from 1 would round a confident row's gradient to 0.
        p[label] = 0
        p[label] = -np.sum(p)
        if ls:
            p -= p.dtype.type(ls / K)  # the target's ls / K on every class ...
            p[label] += p.dtype.type(ls)  # ... and 1 - ls + ls / K on the label: p[label] - 1 + ls - ls / K
        w = 1.0 if sample_weight is None else float(sample_weight[n])
        total += w * row
        dlogits[n, :] = p * p.dtype.type(w) / N if sample_weight is not None else p / N
    return total / N, dlogits


def sparse_categorical_crossentropy(outputs, labels, *, label_smoothing=0.0, sample_weight=None):
    """Mean cross-entropy of probabilities ``outputs`` against integer labels, and its gradient
    (Keras ``from_logits=False``).

    Per row, ``q = outputs / sum(outputs)`` is clipped to ``[EPSILON, 1 - EPSILON]``
    and ``loss_n = -sum_j t_j log(q_j)`` with ``t`` the (smoothed) one-hot target.
    The gradient with respect to ``outputs`` is ``sum_j t_j [j unclipped] / s -
    t_i [i unclipped] / outputs_i`` (``s`` the row sum); a clipped entry passes no
    gradient, as the clip does in Keras.

    Shape
    -----
    outputs ``(N, K)`` non-negative, labels ``(N,)``, sample_weight ``(N,)``, doutputs ``(N, K)``.
    """
    N, K = outputs.shape
    t = outputs.dtype.type
    ls = float(label_smoothing)
    low, high = t(EPSILON), t(1) - t(EPSILON)
    doutputs = np.zeros(outputs.shape, dtype=outputs.dtype)
    total = 0.0
    for n in range(N):
        o = outputs[n, :]
        label = int(labels[n])
        s = np.sum(o)
        q = o / s
        target = np.full(K, t(ls / K), dtype=outputs.dtype)
        target[label] += t(1.0 - ls)
        w = 1.0 if sample_weight is None else float(sample_weight[n])
        row = 0.0
        grad = np.zeros(K, dtype=outputs.dtype)
        inside = t(0)
        for j in range(K):
            if target[j] == 0:
                continue
            qj = min(max(q[j], low), high)
            row -= float(target[j]) * float(np.log(qj))
            if low <= q[j] <= high:
                inside += target[j]
                grad[j] -= target[j] / o[j]
        grad += inside / s
        total += w * row
        doutputs[n, :] = grad * t(w) / t(N)
    return total / N, doutputs
