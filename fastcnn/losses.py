"""Loss functions on logits, validated at the public entry point.

The fused op itself lives in the registry (``softmax_cross_entropy``, one per
implementation); this module validates labels and resolves the implementation.
:class:`fastcnn.Sequential` validates the whole label array once per ``fit`` and
then calls the registry op directly in its training loop.
"""

import numpy as np

from fastcnn import registry

__all__ = ["LOSSES", "check_labels", "check_loss", "softmax_cross_entropy"]

#: Loss names ``Sequential.compile`` accepts (each is a registry op on logits).
LOSSES = ("softmax_cross_entropy",)


def check_loss(loss):
    """Return ``loss`` if it names a known loss, else raise ``ValueError``."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOSSES)}")
    return loss


def check_labels(labels, num_classes, *, num_samples=None, what="labels"):
    """Validate integer class labels and return them as a contiguous ``intp`` array.

    Parameters
    ----------
    labels : array-like of int, shape (N,) or (N, 1)
    num_classes : int
        Valid labels are ``0 <= label < num_classes``.
    num_samples : int, optional
        The number of inputs the labels go with.
    what : str
        Name used in error messages (``"y"``, ``"validation labels"``).

    Raises
    ------
    TypeError
        For non-integer labels (float, bool, object, strings).
    ValueError
        For a wrong shape, a length different from ``num_samples``, or labels
        outside ``[0, num_classes)``.
    """
    y = np.asarray(labels)
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        hint = ""
        if np.issubdtype(y.dtype, np.floating):
            hint = "; if they hold whole numbers, convert with y.astype(np.int64)"
        raise TypeError(
            f"{what} must be integer class indices in [0, {num_classes}); received dtype "
            f"{y.dtype} with shape {y.shape}{hint}"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = ""
        if y.ndim == 2 and y.shape[1] == num_classes:
            hint = "; they look one-hot encoded: pass y.argmax(axis=1)"
        raise ValueError(f"{what} must have shape (N,); received shape {y.shape}{hint}")
    if num_samples is not None and y.shape[0] != num_samples:
        raise ValueError(
            f"{what} has {y.shape[0]} entries but the inputs have {num_samples} samples; "
            f"expected labels of shape ({num_samples},), received shape {y.shape}"
        )
    if y.size:
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            bad = int(np.count_nonzero((y < 0) | (y >= num_classes)))
            first = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
            raise ValueError(
                f"{what} must be in [0, {num_classes}) (the model outputs {num_classes} classes); "
                f"received labels from {low} to {high}: {bad} out of range, the first at index "
                f"{first} ({int(y[first])})"
            )
    return np.ascontiguousarray(y, dtype=np.intp)


def softmax_cross_entropy(logits, labels, impl="auto", sample_weight=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient.

    Fused and stable (log-sum-exp); see docs/ops.md.

    Parameters
    ----------
    logits : float32 or float64 ndarray, shape (N, K)
    labels : int array-like, shape (N,), values in [0, K)
    impl : "auto", "reference", "numpy" or "numba"
    sample_weight : array-like of non-negative floats, shape (N,), optional
        Keras's "sum over batch size" reduction: the loss is ``sum(w * loss_n) / N``.

    Returns
    -------
    loss : float
        The mean over the batch.
    dlogits : ndarray, shape (N, K), dtype of ``logits``
        ``(softmax(logits) - onehot(labels)) / N``, row n times ``w[n]``.
    """
    if not isinstance(logits, np.ndarray) or logits.dtype not in (np.float32, np.float64):
        kind = f"dtype {logits.dtype}" if isinstance(logits, np.ndarray) else type(logits).__name__
        raise TypeError(f"softmax_cross_entropy: logits must be a float32 or float64 array, received {kind}")
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"softmax_cross_entropy: logits must have shape (N, K) with N > 0, received {logits.shape}")
    y = check_labels(labels, logits.shape[1], num_samples=logits.shape[0])
    op = registry.get("softmax_cross_entropy", impl)
    if sample_weight is None:
        return op.forward(logits, y)
    from fastcnn.data_adapter import check_sample_weight

    return op.forward(logits, y, sample_weight=check_sample_weight(sample_weight, logits.shape[0]))
