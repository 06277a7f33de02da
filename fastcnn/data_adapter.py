"""What ``fit`` and ``evaluate`` accept as data, turned into batches ``(x, y, sample_weight)``.

Two kinds of input, as in Keras:

- arrays ``x, y`` (with optional ``sample_weight`` or ``class_weight``):
  :class:`ArrayBatches` slices them into batches, reshuffled each epoch with
  the model's Generator;
- any iterable or generator yielding ``(x, y)`` or ``(x, y, sample_weight)``
  batches (``y`` must then be omitted): :class:`IterableBatches` validates and
  converts each batch as it arrives.

Epochs of an iterable (Keras semantics):

- without ``steps_per_epoch``, each epoch runs until the iterable is exhausted,
  calling ``iter(data)`` again at the start of every epoch. A list of batches
  (or any re-iterable object) gives the same batches every epoch; a generator
  is used up by the first epoch, and the next one finds it empty and stops
  training with a warning. An endless generator without ``steps_per_epoch``
  never ends its first epoch: that cannot be detected, so pass
  ``steps_per_epoch`` with one;
- with ``steps_per_epoch``, one iterator is drawn from across epochs, each
  epoch taking that many batches; if it runs out first, training stops after
  the batches it gave, with a warning.

Validation data (and ``evaluate``'s) restarts with ``iter(data)`` at every
evaluation, with or without ``validation_steps``: a list gives the same
batches each time, a generator continues where it stopped.

Sample weights follow Keras's "sum over batch size" reduction: a batch's loss
is ``sum(w_i * loss_i) / N`` (divided by the batch size, not by the sum of the
weights), and ``class_weight={k: w}`` gives every sample of class ``k`` the
weight ``w`` (classes not listed weigh 1). Metrics (accuracy) are unweighted.
"""

import collections.abc
import numbers
import warnings

import numpy as np

__all__ = ["ArrayBatches", "IterableBatches", "is_batch_iterable", "check_sample_weight", "check_class_weight",
           "class_sample_weights", "sample_weights"]


def is_batch_iterable(x, y):
    """True when ``x`` is an iterable of batches (``y`` omitted) rather than an array."""
    if isinstance(x, np.ndarray) or y is not None:
        return False
    return isinstance(x, collections.abc.Iterable) and not isinstance(x, (str, bytes))


def check_sample_weight(sample_weight, num_samples, what="sample_weight"):
    """Validate per-sample weights and return them as a contiguous float64 ``(N,)`` array.

    Raises
    ------
    TypeError
        Weights that are not real numbers.
    ValueError
        A shape other than ``(N,)`` or ``(N, 1)``, or weights that are negative,
        NaN or infinite.
    """
    w = np.asarray(sample_weight)
    if w.dtype == bool or not (np.issubdtype(w.dtype, np.integer) or np.issubdtype(w.dtype, np.floating)):
        raise TypeError(f"{what} must be real numbers, received dtype {w.dtype} with shape {w.shape}")
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.shape != (num_samples,):
        raise ValueError(
            f"{what} must have one weight per sample, shape ({num_samples},); received shape {w.shape}"
        )
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{what} must be finite; received NaN or infinite weights")
    if w.size and w.min() < 0:
        first = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"{what} must be non-negative; received {w[first]} at index {first}")
    return w


def check_class_weight(class_weight, num_classes):
    """Validate ``{class: weight}`` and return it as a float64 ``(K,)`` table (unlisted classes weigh 1)."""
    if not isinstance(class_weight, collections.abc.Mapping):
        raise TypeError(f"class_weight must be a dict {{class index: weight}}, received {type(class_weight).__name__}")
    table = np.ones(num_classes, dtype=np.float64)
    unknown = []
    for key, weight in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, numbers.Integral):
            raise TypeError(f"class_weight keys must be int class indices, received {key!r}")
        if not 0 <= key < num_classes:
            unknown.append(int(key))
            continue
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not np.isfinite(weight) or weight < 0:
            raise ValueError(f"class_weight[{key}] must be a finite non-negative number, received {weight!r}")
        table[int(key)] = float(weight)
    if unknown:
        raise ValueError(
            f"class_weight names classes {sorted(unknown)} outside [0, {num_classes}) "
            f"(the model outputs {num_classes} classes)"
        )
    return table


def class_sample_weights(y, table):
    """Per-sample weights ``table[y]`` from a table made by :func:`check_class_weight`."""
    return table[y]


def sample_weights(y, sample_weight, class_weight, num_classes, what="sample_weight"):
    """The weights of the samples ``y`` from ``sample_weight`` or ``class_weight`` (not both); None if neither."""
    if sample_weight is not None and class_weight is not None:
        raise ValueError("pass either sample_weight or class_weight, not both (as Keras)")
    if sample_weight is not None:
        return check_sample_weight(sample_weight, y.shape[0], what)
    if class_weight is not None:
        return class_sample_weights(y, check_class_weight(class_weight, num_classes))
    return None


class ArrayBatches:
    """Batches of validated arrays ``x (N, ...)``, ``y (N,)``, ``w (N,)`` or None.

    ``steps`` (batches per epoch) is ``ceil(N / batch_size)``, or ``max_steps``
    when smaller. With ``rng``, each epoch draws a new permutation from it at
    its first batch. With ``shard`` (``(start, stop) -> (lo, hi)``, a data-parallel
    fit's), each batch is this process's rows ``[lo, hi)`` of the batch ``[start, stop)``,
    and ``rows`` is the whole batch's size.
    """

    def __init__(self, x, y, w, batch_size, rng=None, max_steps=None, shard=None):
        self.x, self.y, self.w = x, y, w
        self.shard = shard
        self.rows = 0
        self.batch_size = batch_size
        self.rng = rng
        self.samples = x.shape[0]
        self.steps = -(-self.samples // batch_size)
        if max_steps is not None:
            self.steps = min(self.steps, max_steps)

    def epoch(self):
        N, size = self.samples, self.batch_size
        order = self.rng.permutation(N) if self.rng is not None else None
        for batch in range(self.steps):
            start, stop = batch * size, min((batch + 1) * size, N)
            self.rows = stop - start
            if self.shard is not None:
                start, stop = self.shard(start, stop)
            idx = slice(start, stop) if order is None else order[start:stop]
            yield self.x[idx], self.y[idx], (None if self.w is None else self.w[idx])


class IterableBatches:
    """Batches drawn from an iterable of ``(x, y)`` / ``(x, y, sample_weight)`` tuples.

    Parameters
    ----------
    data : iterable
    steps : int or None
        Batches per epoch (``steps_per_epoch`` / ``validation_steps``); None runs
        each epoch until the iterable is exhausted.
    prepare : callable ``(x, y, what) -> (x, y)``
        The model's validation and conversion of one batch.
    num_classes : callable ``() -> K`` (the model may be built by the first batch)
    class_weight : dict or None
    owner : str
        "fit", "fit: validation_data" or "evaluate", used in messages.
    """

    def __init__(self, data, steps, prepare, num_classes, class_weight=None, owner="fit"):
        self.data = data
        self.steps = steps
        self.prepare = prepare
        self.num_classes = num_classes
        self.class_weight = class_weight
        self.owner = owner
        self.samples = None
        self.batch_size = None
        self.exhausted = False  # set when the data ran out before `steps` batches
        self._iterator = None
        self._count = 0  # batches drawn so far, over all epochs
        self._class_table = None  # class_weight as a (K,) table, once the model knows K

    def epoch(self):
        """Yield this epoch's validated ``(x, y, w)`` batches."""
        if self.steps is None or self.owner != "fit" or self._iterator is None:
            self._iterator = iter(self.data)
        produced = 0
        while self.steps is None or produced < self.steps:
            try:
                item = next(self._iterator)
            except StopIteration:
                if self.steps is not None or produced == 0:
                    self.exhausted = True
                return
            yield self._check(item)
            produced += 1

    def _check(self, item):
        index = self._count
        self._count += 1
        what = f"{self.owner}: batch {index} of the data"
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            kind = f"a {type(item).__name__} of length {len(item)}" if isinstance(item, (tuple, list)) \
                else f"a {type(item).__name__}"
            raise TypeError(f"{what} must be a tuple (x, y) or (x, y, sample_weight); received {kind}")
        x, y = self.prepare(item[0], item[1], what)
        w = None
        if len(item) == 3 and item[2] is not None:
            if self.class_weight is not None:
                raise ValueError(f"{what} yields sample weights; class_weight cannot be used as well")
            w = check_sample_weight(item[2], x.shape[0], f"{what}: sample_weight")
        elif self.class_weight is not None:
            if self._class_table is None:
                self._class_table = check_class_weight(self.class_weight, self.num_classes())
            w = class_sample_weights(y, self._class_table)
        return x, y, w

    def warn_exhausted(self, epochs_left):
        """Keras's warning when the data ran out and training stops early."""
        if self.steps is None:
            hint = "a generator is used up by one epoch: pass a list or another re-iterable object, or " \
                   "an endless generator with steps_per_epoch"
        else:
            hint = f"make sure it can give at least steps_per_epoch * epochs = {self.steps} * {epochs_left} batches"
        warnings.warn(f"{self.owner}: your input ran out of data; interrupting training ({hint})",
                      UserWarning, stacklevel=3)
