"""Metrics on model outputs (logits or probabilities: the argmax and the ranking are the same).

``metrics=`` in ``compile`` takes names or :class:`Metric` objects; the name
is the key in the logs and in ``History`` (Keras's names):

- ``"accuracy"``, ``"acc"`` (same metric, logged as ``acc``),
  ``"sparse_categorical_accuracy"``: the label is the argmax;
- ``"top_k_accuracy"`` (k = 5), ``"sparse_top_k_categorical_accuracy"``, or
  :class:`SparseTopKCategoricalAccuracy` ``(k=5)``: the label is among the
  ``k`` highest scores. Ties straddling the k-th place count as in (as
  ``tf.math.in_top_k``): the label is in the top k when fewer than ``k``
  classes score strictly higher.
"""

import numbers

import numpy as np

__all__ = ["METRICS", "Metric", "Accuracy", "SparseTopKCategoricalAccuracy", "get", "serialize",
           "check_metrics", "count_correct", "accuracy", "top_k_accuracy"]


class Metric:
    """A mean over samples: ``count(outputs, labels)`` returns how many rows score 1."""

    name = None

    def count(self, outputs, labels):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Accuracy(Metric):
    """Fraction of rows whose argmax equals the label (Keras's sparse categorical accuracy)."""

    def __init__(self, name="accuracy"):
        self.name = str(name)

    def count(self, outputs, labels):
        return count_correct(outputs, labels)


class SparseTopKCategoricalAccuracy(Metric):
    """Fraction of rows whose label is among the ``k`` highest scores (ties count as in).

    Parameters
    ----------
    k : int, default 5
    name : str, default "sparse_top_k_categorical_accuracy" (the log key)
    """

    def __init__(self, k=5, name="sparse_top_k_categorical_accuracy"):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"SparseTopKCategoricalAccuracy: `k` must be a positive int, received {k!r}")
        self.k = int(k)
        self.name = str(name)

    def count(self, outputs, labels):
        return count_top_k(outputs, labels, self.k)

    def get_config(self):
        return {"k": self.k, "name": self.name}


#: Metric names ``Sequential.compile`` accepts -> the metric they make.
METRICS = {
    "accuracy": lambda: Accuracy("accuracy"),
    "acc": lambda: Accuracy("acc"),
    "sparse_categorical_accuracy": lambda: Accuracy("sparse_categorical_accuracy"),
    "top_k_accuracy": lambda: SparseTopKCategoricalAccuracy(5, name="top_k_accuracy"),
    "sparse_top_k_categorical_accuracy": lambda: SparseTopKCategoricalAccuracy(5),
}
_CLASSES = {"Accuracy": Accuracy, "SparseTopKCategoricalAccuracy": SparseTopKCategoricalAccuracy}


def get(metric):
    """The :class:`Metric` for a name, a saved description or a metric (returned as is)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, dict):  # as serialize() wrote it
        cls = _CLASSES.get(metric.get("class"))
        if cls is None or not isinstance(metric.get("config"), dict):
            raise ValueError(f"unknown metric description {metric!r}")
        return cls(**metric["config"])
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected names drawn from {list(METRICS)} or "
                         f"fastcnn.metrics.Metric objects")
    return METRICS[metric]()


def serialize(metric):
    """A JSON value :func:`get` turns back into ``metric``: names stay names."""
    return metric if isinstance(metric, str) else {"class": type(metric).__name__, "config": metric.get_config()}


def check_metrics(metrics):
    """Validate the ``metrics`` argument of ``compile``; returns it as a list (names and objects as given)."""
    if metrics is None:
        return []
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    metrics = list(metrics)
    names = [get(m).name for m in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"metrics must not repeat a name, received {names}")
    return metrics


def count_correct(outputs, labels):
    """Number of rows whose argmax equals the label. Shape: (N, K), (N,) -> int."""
    return int(np.count_nonzero(outputs.argmax(axis=1) == labels))


def count_top_k(outputs, labels, k):
    """Number of rows whose label has fewer than ``k`` strictly higher scores. Shape: (N, K), (N,) -> int.

    A NaN score of the label never counts as in the top k.
    """
    rows = np.arange(outputs.shape[0])
    scores = outputs[rows, labels][:, None]  # (N, 1)
    higher = np.count_nonzero(outputs > scores, axis=1)  # (N,)
    return int(np.count_nonzero((higher < k) & ~np.isnan(scores[:, 0])))


def _check(outputs, labels, what):
    outputs = np.asarray(outputs)
    labels = np.asarray(labels)
    if outputs.ndim != 2 or labels.shape != (outputs.shape[0],):
        raise ValueError(f"{what} expects outputs (N, K) and labels (N,); received {outputs.shape} and {labels.shape}")
    if outputs.shape[0] == 0:
        raise ValueError(f"{what} of an empty batch is undefined")
    return outputs, labels


def accuracy(outputs, labels):
    """Fraction of rows of ``outputs`` (N, K) whose argmax equals ``labels`` (N,)."""
    outputs, labels = _check(outputs, labels, "accuracy")
    return count_correct(outputs, labels) / outputs.shape[0]


def top_k_accuracy(outputs, labels, k=5):
    """Fraction of rows of ``outputs`` (N, K) whose label (N,) is among the ``k`` highest scores."""
    outputs, labels = _check(outputs, labels, "top_k_accuracy")
    return count_top_k(outputs, labels, SparseTopKCategoricalAccuracy(k).k) / outputs.shape[0]
