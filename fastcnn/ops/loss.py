"""Fused, numerically stable softmax cross-entropy on logits."""

import numpy as np

__all__ = ["softmax_cross_entropy"]


def softmax_cross_entropy(logits, labels, sample_weight=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient.

    Uses log-sum-exp, so logits of +-1e4 give a finite loss.

    ``sample_weight`` (N,), optional: the loss is ``sum(w * loss_n) / N`` and row n's
    gradient is scaled by ``w[n]`` (Keras's "sum over batch size").

    Shape:
        logits (N, K), labels (N,) ints in [0, K) -> (loss: float, dlogits (N, K))
    """
    N = logits.shape[0]
    rows = np.arange(N)
    z = logits - logits.max(axis=1, keepdims=True)  # (N, K), max entry 0
    e = np.exp(z)  # (N, K), in (0, 1]
    s = e.sum(axis=1, keepdims=True)  # (N, 1)
    losses = np.log(s[:, 0]) - z[rows, labels]  # (N,)
    if sample_weight is not None:
        losses = losses * np.asarray(sample_weight, dtype=np.float64)
    loss = float(losses.sum(dtype=np.float64)) / N
    dlogits = e / s  # softmax
    # p[label] - 1 as minus the other classes' p: accurate for a confident row, where
    # subtracting 1 would round its gradient to 0.
    dlogits[rows, labels] = 0
    dlogits[rows, labels] = -dlogits.sum(axis=1)
    dlogits /= logits.dtype.type(N)
    if sample_weight is not None:
        dlogits *= np.asarray(sample_weight).astype(logits.dtype)[:, None]
    return loss, dlogits
