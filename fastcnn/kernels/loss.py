"""Fused softmax cross-entropy: one serial pass over ``(N, K)`` logits.

At training shapes (K classes, a batch of rows) the NumPy version is a dozen
tiny array operations whose call overhead dominates; the kernel is one call.
"""

import numpy as np

from fastcnn.kernels._jit import kernel

__all__ = ["softmax_cross_entropy"]


@kernel
def _softmax_cross_entropy_kernel(dlogits, logits, labels, weights):
    # dlogits: (N, K) out; logits: (N, K); labels: (N,) intp; weights: (N,) float64, or (0,)
    # for none (a weight of 1 would give the same bits). Returns the summed loss (float64).
    N, K = logits.shape
    weighted = weights.shape[0] > 0
    one = dlogits.dtype.type(1)
    inv_n = one / dlogits.dtype.type(N)
    total = 0.0
    for n in range(N):
        m = logits[n, 0]
        for k in range(1, K):
            v = logits[n, k]
            if v > m or v != v:  # NaN wins, so a NaN logit gives a NaN loss
                m = v
        s = dlogits.dtype.type(0)
        for k in range(K):
            e = np.exp(logits[n, k] - m)
            dlogits[n, k] = e
            s += e
        lse = np.log(s)  # log-sum-exp of the shifted row
        label = labels[n]
        row_loss = np.float64(logits[n, label] - m - lse)
        if weighted:
            row_loss *= weights[n]
        total -= row_loss
        # p[label] - 1 as minus the other classes' p: accurate for a confident row,
        # where subtracting 1 would round its gradient to 0.
        rest = dlogits.dtype.type(0)
        for k in range(K):
            if k != label:
                rest += dlogits[n, k]
        scale = inv_n / s
        if weighted:
            scale *= dlogits.dtype.type(weights[n])
        for k in range(K):
            dlogits[n, k] *= scale
        dlogits[n, label] = -rest * scale
    return total


_NO_WEIGHTS = np.empty(0, dtype=np.float64)


def softmax_cross_entropy(logits, labels, sample_weight=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient.

    ``sample_weight`` (N,), optional: the loss is ``sum(w * loss_n) / N`` and row n's
    gradient is scaled by ``w[n]`` (Keras's "sum over batch size").

    Shape:
        logits (N, K), labels (N,) ints in [0, K) -> (loss: float, dlogits (N, K))
    """
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels, dtype=np.intp)  # one compiled signature per dtype
    N = logits.shape[0]
    dlogits = np.empty(logits.shape, dtype=logits.dtype)  # (N, K)
    weights = _NO_WEIGHTS if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64)
    total = _softmax_cross_entropy_kernel(dlogits, logits, labels, weights)
    return float(total) / N, dlogits
