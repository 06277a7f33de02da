"""Metrics on model outputs (logits or probabilities: the argmax is the same)."""

import numpy as np

__all__ = ["METRICS", "check_metrics", "count_correct", "accuracy"]

#: Metric names ``Sequential.compile`` accepts.
METRICS = ("accuracy",)


def check_metrics(metrics):
    """Validate a list of metric names; returns it as a list."""
    if metrics is None:
        return []
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; expected a list drawn from {list(METRICS)}")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must not repeat a name, received {metrics}")
    return metrics


def count_correct(outputs, labels):
    """Number of rows whose argmax equals the label. Shape: (N, K), (N,) -> int."""
    return int(np.count_nonzero(outputs.argmax(axis=1) == labels))


def accuracy(outputs, labels):
    """Fraction of rows of ``outputs`` (N, K) whose argmax equals ``labels`` (N,)."""
    outputs = np.asarray(outputs)
    labels = np.asarray(labels)
    if outputs.ndim != 2 or labels.shape != (outputs.shape[0],):
        raise ValueError(
            f"accuracy expects outputs (N, K) and labels (N,); received {outputs.shape} and {labels.shape}"
        )
    if outputs.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return count_correct(outputs, labels) / outputs.shape[0]
