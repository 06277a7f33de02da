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
    lse = np.log(np.exp(z).sum(axis=1, keepdims=True))  # (N, 1)
    logp = z - lse
    loss = -float(logp[rows, labels].sum(dtype=np.float64)) / N
    dlogits = np.exp(logp)
    dlogits[rows, labels] -= logits.dtype.type(1)
    dlogits /= logits.dtype.type(N)
    return loss, dlogits
