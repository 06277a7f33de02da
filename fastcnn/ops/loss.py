"""Fused, numerically stable softmax cross-entropy on logits."""

import numpy as np

__all__ = ["softmax_cross_entropy"]


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient.

    Uses log-sum-exp, so logits of +-1e4 give a finite loss.

    Shape:
        logits (N, K), labels (N,) ints in [0, K) -> (loss: float, dlogits (N, K))
    """
    N = logits.shape[0]
    rows = np.arange(N)
    z = logits - logits.max(axis=1, keepdims=True)  # (N, K), max entry 0
    e = np.exp(z)  # (N, K), in (0, 1]
    s = e.sum(axis=1, keepdims=True)  # (N, 1)
    loss = -float((z[rows, labels] - np.log(s[:, 0])).sum(dtype=np.float64)) / N
    dlogits = e / s  # softmax
    # p[label] - 1 as minus the other classes' p: accurate for a confident row, where
    # subtracting 1 would round its gradient to 0.
    dlogits[rows, labels] = 0
    dlogits[rows, labels] = -dlogits.sum(axis=1)
    dlogits /= logits.dtype.type(N)
    return loss, dlogits
