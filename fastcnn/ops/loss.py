"""Cross-entropy losses on integer labels, vectorized (see :mod:`fastcnn.reference.loss`)."""

import numpy as np

__all__ = ["softmax_cross_entropy", "sparse_categorical_crossentropy"]

EPSILON = 1e-7


def softmax_cross_entropy(logits, labels, *, label_smoothing=0.0, sample_weight=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient.

    Uses log-sum-exp, so logits of +-1e4 give a finite loss. Label smoothing and
    sample weights as in :func:`fastcnn.reference.loss.softmax_cross_entropy`.

    Shape:
        logits (N, K), labels (N,) ints in [0, K), sample_weight (N,) -> (loss: float, dlogits (N, K))
    """
    N, K = logits.shape
    t = logits.dtype.type
    rows = np.arange(N)
    z = logits - logits.max(axis=1, keepdims=True)  # (N, K), max entry 0
    e = np.exp(z)  # (N, K), in (0, 1]
    s = e.sum(axis=1, keepdims=True)  # (N, 1)
    per_row = np.log(s[:, 0]) - z[rows, labels]  # (N,)
    if label_smoothing:
        per_row = per_row + t(label_smoothing) * (logits[rows, labels] - logits.mean(axis=1))
    if sample_weight is None:
        loss = float(per_row.sum(dtype=np.float64)) / N
    else:
        loss = float(np.dot(per_row.astype(np.float64), np.asarray(sample_weight, dtype=np.float64))) / N
    dlogits = e / s  # softmax
    # p[label] - 1 as minus the other classes' p: accurate for a confident row, where
    # subtracting 1 would round its gradient to 0.
    dlogits[rows, labels] = 0
    dlogits[rows, labels] = -dlogits.sum(axis=1)
    if label_smoothing:
        dlogits -= t(label_smoothing / K)
        dlogits[rows, labels] += t(label_smoothing)
    if sample_weight is not None:
        dlogits *= np.asarray(sample_weight, dtype=logits.dtype)[:, None]
    dlogits /= t(N)
    return loss, dlogits


def sparse_categorical_crossentropy(outputs, labels, *, label_smoothing=0.0, sample_weight=None):
    """Mean cross-entropy of probabilities (Keras ``from_logits=False``), and its gradient.

    Shape:
        outputs (N, K) non-negative, labels (N,), sample_weight (N,) -> (loss: float, doutputs (N, K))
    """
    N, K = outputs.shape
    t = outputs.dtype.type
    rows = np.arange(N)
    s = outputs.sum(axis=1, keepdims=True)  # (N, 1)
    q = outputs / s
    low, high = t(EPSILON), t(1) - t(EPSILON)
    inside = (q >= low) & (q <= high)  # (N, K): where the clip passes the gradient
    target = np.full(outputs.shape, t(label_smoothing / K), dtype=outputs.dtype)  # (N, K)
    target[rows, labels] += t(1.0 - label_smoothing)
    logq = np.log(np.clip(q, low, high))
    per_row = -(np.where(target != 0, target * logq, t(0))).sum(axis=1, dtype=np.float64)  # (N,)
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    loss = float(per_row.sum() if weights is None else np.dot(per_row, weights)) / N
    live = np.where(inside, target, t(0))  # (N, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        doutputs = np.where(live != 0, -live / outputs, t(0))
    doutputs += live.sum(axis=1, keepdims=True) / s
    if weights is not None:
        doutputs *= weights.astype(outputs.dtype)[:, None]
    doutputs /= t(N)
    return loss, doutputs
