"""Losses on integer class labels, validated at the public entry point.

The fused ops live in the registry (``softmax_cross_entropy`` on logits,
``sparse_categorical_crossentropy`` on probabilities, one per
implementation); this module holds the Keras-style loss objects that pick
between them, validates labels and resolves the implementation.
:class:`fastcnn.Sequential` validates the whole label array once per ``fit``
and then calls the loss object in its training loop.

``loss=`` in ``compile`` accepts:

- ``"softmax_cross_entropy"``: the model outputs logits (fastcnn's original
  name; ``SparseCategoricalCrossentropy(from_logits=True)``);
- ``"sparse_categorical_crossentropy"``: Keras's default, the model outputs
  probabilities (``from_logits=False``);
- a :class:`SparseCategoricalCrossentropy` instance.

With ``from_logits=False`` and a model that ends in a softmax (a ``Softmax``
layer, or ``activation="softmax"`` on the last layer), training and
evaluation skip that softmax and run the fused, stable path on its input, as
Keras's TensorFlow backend does: the same loss, without the vanishing
gradient of a clipped probability.
"""

import numbers

import numpy as np

from fastcnn import registry
from fastcnn.layers.activations import Softmax

__all__ = ["LOSSES", "Loss", "SparseCategoricalCrossentropy", "get", "serialize", "check_labels", "check_loss",
           "softmax_cross_entropy"]

#: Loss names ``Sequential.compile`` accepts, and whether each takes logits.
LOSSES = {"softmax_cross_entropy": True, "sparse_categorical_crossentropy": False}


class Loss:
    """Base class: ``loss(outputs, labels, sample_weight=None) -> (mean loss, doutputs)``."""

    def get_config(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy between integer labels and the model's class scores (Keras semantics).

    Parameters
    ----------
    from_logits : bool, default False
        True: the outputs are logits (the fused, stable softmax cross-entropy).
        False: the outputs are probabilities; they are normalized per row and
        clipped to ``[1e-7, 1 - 1e-7]`` before the log, as in Keras. A final
        softmax of the model is folded into the fused path instead (see the
        module docstring).
    label_smoothing : float in [0, 1], default 0
        The one-hot target becomes ``onehot * (1 - label_smoothing) + label_smoothing / K``.
    impl : "auto", "reference", "numpy" or "numba"
        Implementation of the registry op.

    ``loss(outputs, labels, sample_weight=None)`` returns ``(loss, doutputs)``:
    ``sum(w_n * loss_n) / N`` and its gradient with respect to ``outputs``.
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, *, impl="auto", name="sparse_categorical_crossentropy"):
        owner = "SparseCategoricalCrossentropy"
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
                or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"{owner}: `label_smoothing` must be a float in [0, 1], received {label_smoothing!r}")
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)
        self.name = name
        self._logits_op = registry.get("softmax_cross_entropy", impl)
        self._probs_op = registry.get("sparse_categorical_crossentropy", impl)

    @property
    def impl(self):
        """The implementation the loss runs (after "auto" and FASTCNN_IMPL)."""
        return (self._logits_op if self.from_logits else self._probs_op).impl

    def __call__(self, outputs, labels, sample_weight=None):
        op = self._logits_op if self.from_logits else self._probs_op
        return op.forward(outputs, labels, label_smoothing=self.label_smoothing, sample_weight=sample_weight)

    forward = __call__

    def on_logits(self, logits, labels, sample_weight=None):
        """The loss and gradient from the logits of a softmax output (the fused, stable path)."""
        return self._logits_op.forward(logits, labels, label_smoothing=self.label_smoothing,
                                       sample_weight=sample_weight)

    def folds(self, last_step):
        """Whether training runs this loss on the input of ``last_step`` (a final softmax) instead."""
        return not self.from_logits and type(last_step) is Softmax

    def get_config(self):
        config = {"from_logits": self.from_logits, "label_smoothing": self.label_smoothing}
        if self.name != "sparse_categorical_crossentropy":
            config["name"] = self.name
        return config


def get(loss, impl="auto"):
    """The loss object for ``loss`` (a name in :data:`LOSSES`, a saved description, or a
    :class:`Loss`, returned as is)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, dict):  # as serialize() wrote it
        if loss.get("class") != "SparseCategoricalCrossentropy" or not isinstance(loss.get("config"), dict):
            raise ValueError(f"unknown loss description {loss!r}")
        return SparseCategoricalCrossentropy(**loss["config"], impl=impl)
    check_loss(loss)
    return SparseCategoricalCrossentropy(from_logits=LOSSES[loss], impl=impl, name=loss)


def serialize(loss):
    """A JSON value that :func:`get` turns back into ``loss``: names stay names."""
    if isinstance(loss, str):
        return loss
    return {"class": type(loss).__name__, "config": loss.get_config()}


def check_loss(loss):
    """Return ``loss`` if it names a known loss or is a :class:`Loss`, else raise ``ValueError``."""
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOSSES)} or a fastcnn.losses.Loss")
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


def softmax_cross_entropy(logits, labels, impl="auto"):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient.

    Fused and stable (log-sum-exp); see docs/ops.md.

    Parameters
    ----------
    logits : float32 or float64 ndarray, shape (N, K)
    labels : int array-like, shape (N,), values in [0, K)
    impl : "auto", "reference", "numpy" or "numba"

    Returns
    -------
    loss : float
        The mean over the batch.
    dlogits : ndarray, shape (N, K), dtype of ``logits``
        ``(softmax(logits) - onehot(labels)) / N``.
    """
    if not isinstance(logits, np.ndarray) or logits.dtype not in (np.float32, np.float64):
        kind = f"dtype {logits.dtype}" if isinstance(logits, np.ndarray) else type(logits).__name__
        raise TypeError(f"softmax_cross_entropy: logits must be a float32 or float64 array, received {kind}")
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"softmax_cross_entropy: logits must have shape (N, K) with N > 0, received {logits.shape}")
    y = check_labels(labels, logits.shape[1], num_samples=logits.shape[0])
    return registry.get("softmax_cross_entropy", impl).forward(logits, y)
