"""Fused softmax cross-entropy: one serial pass over ``(N, K)`` logits.

At training shapes (K classes, a batch of rows) the NumPy version is a dozen
tiny array operations whose call overhead dominates; the kernel is one call.
"""

import numpy as np

from fastcnn.kernels._jit import kernel

__all__ = ["softmax_cross_entropy"]


@kernel
def _softmax_cross_entropy_kernel(dlogits, logits, labels, smoothing, weights, weighted):
    # dlogits: (N, K) out; logits: (N, K); labels: (N,) intp; smoothing: label smoothing (dtype);
    # weights: (N,) per-sample weights, read when weighted. Returns the weighted summed loss (float64).
    N, K = logits.shape
    one = dlogits.dtype.type(1)
    inv_n = one / dlogits.dtype.type(N)
    off = smoothing / dlogits.dtype.type(K)  # the smoothed target of every class but the label
    total = 0.0
    for n in range(N):
        m = logits[n, 0]
        for k in range(1, K):
            v = logits[n, k]
            if v > m or v != v:  # NaN wins, so a NaN logit gives a NaN loss
                m = v
        s = dlogits.dtype.type(0)
        z_sum = dlogits.dtype.type(0)
        for k in range(K):
            e = np.exp(logits[n, k] - m)
            dlogits[n, k] = e
            s += e
            z_sum += logits[n, k]
        lse = np.log(s)  # log-sum-exp of the shifted row
        label = labels[n]
        row = -np.float64(logits[n, label] - m - lse)
        if smoothing != 0:
            row += np.float64(smoothing * (logits[n, label] - z_sum / dlogits.dtype.type(K)))
        w = weights[n] if weighted else one
        total += np.float64(w) * row
        # p[label] - 1 as minus the other classes' p: accurate for a confident row,
        # where subtracting 1 would round its gradient to 0.
        rest = dlogits.dtype.type(0)
        for k in range(K):
            if k != label:
                rest += dlogits[n, k]
        scale = inv_n / s
        for k in range(K):
            dlogits[n, k] *= scale
        dlogits[n, label] = -rest * scale
        if smoothing != 0:
            for k in range(K):
                dlogits[n, k] -= off * inv_n
            dlogits[n, label] += smoothing * inv_n
        if weighted:
            for k in range(K):
                dlogits[n, k] *= w
    return total


def softmax_cross_entropy(logits, labels, *, label_smoothing=0.0, sample_weight=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient
    (label smoothing and sample weights as in :mod:`fastcnn.reference.loss`).

    Shape:
        logits (N, K), labels (N,) ints in [0, K), sample_weight (N,) -> (loss: float, dlogits (N, K))
    """
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels, dtype=np.intp)  # one compiled signature per dtype
    t = logits.dtype.type
    N = logits.shape[0]
    dlogits = np.empty(logits.shape, dtype=logits.dtype)  # (N, K)
    weighted = sample_weight is not None
    weights = np.ascontiguousarray(sample_weight, dtype=logits.dtype) if weighted else logits[:, 0].copy()
    total = _softmax_cross_entropy_kernel(dlogits, logits, labels, t(label_smoothing), weights, weighted)
    return float(total) / N, dlogits
