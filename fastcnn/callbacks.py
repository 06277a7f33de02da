"""Training callbacks with Keras semantics.

``fit`` calls, in this order: ``on_train_begin``, then per epoch
``on_epoch_begin(epoch)``, per batch ``on_train_batch_begin(batch)`` /
``on_train_batch_end(batch, logs)`` and ``on_epoch_end(epoch, logs)``, and
finally ``on_train_end``. ``epoch`` and ``batch`` are 0-based. Batch logs hold
the running means of the epoch so far (``loss``, ``accuracy``); epoch logs add
``val_loss`` / ``val_accuracy`` when there is validation data, and
``learning_rate`` (the rate the next step uses). A callback stops training by
setting ``self.model.stop_training = True``.
"""

import math
import os
import warnings

import numpy as np

__all__ = ["Callback", "CallbackList", "History", "EarlyStopping", "ModelCheckpoint", "TerminateOnNaN",
           "LearningRateScheduler", "ReduceLROnPlateau"]


class Callback:
    """Base class: every hook is a no-op. ``self.model`` and ``self.params`` are set by ``fit``.

    ``params`` holds ``epochs``, ``steps`` (batches per epoch), ``samples``,
    ``batch_size`` and ``verbose``.
    """

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def __repr__(self):
        return f"{type(self).__name__}()"


class CallbackList:
    """Dispatches every hook to a list of callbacks, in order."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params)

    def _call(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_train_begin(self, logs=None):
        self._call("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._call("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._call("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._call("on_train_batch_end", batch, logs)


def check_callbacks(callbacks):
    """Validate the ``callbacks`` argument of ``fit``; returns a list."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be fastcnn.callbacks.Callback instances, received {cb!r}")
    return callbacks


class History(Callback):
    """Records the epoch logs: ``history.history["loss"]`` is a list, one value per epoch.

    ``fit`` returns one (also kept as ``model.history``). ``history.epoch`` lists the
    0-based epoch numbers recorded.
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"


def _monitor_op(monitor, mode, owner):
    """``(better(a, b), initial best)`` for ``mode`` ("min", "max", "auto")."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: `mode` must be 'auto', 'min' or 'max', received {mode!r}")
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    if mode == "max":
        return np.greater, -math.inf
    return np.less, math.inf


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has stopped improving (Keras semantics).

    An epoch improves on the best so far if it beats it by more than
    ``min_delta``; after ``patience`` epochs without improvement training stops.
    With ``restore_best_weights=True`` the weights of the best epoch are restored
    when training ends (whether or not it stopped early).

    Parameters
    ----------
    monitor : str, default "val_loss"
    patience : int, default 0
    min_delta : float, default 0
    restore_best_weights : bool, default False
    mode : "auto", "min" or "max"; "auto" maximizes metrics whose name contains "acc"
    verbose : int, default 0; 1 prints a line when it stops or restores
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, restore_best_weights=False,
                 mode="auto", verbose=0):
        super().__init__()
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"EarlyStopping: `patience` must be a non-negative int, received {patience!r}")
        if not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta):
            raise ValueError(f"EarlyStopping: `min_delta` must be a finite float, received {min_delta!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = abs(float(min_delta))
        self.restore_best_weights = bool(restore_best_weights)
        self.mode = mode
        self.verbose = verbose
        self._better, self._initial = _monitor_op(monitor, mode, "EarlyStopping")
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = -1
        self.best = self._initial
        self.best_epoch = -1
        self.best_weights = None

    def _improved(self, current):
        delta = -self.min_delta if self._better is np.greater else self.min_delta
        return bool(self._better(current + delta, self.best))

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(
                f"EarlyStopping monitors {self.monitor!r}, which is not in the logs "
                f"(available: {sorted(logs or {})}); pass validation data for val_* metrics",
                RuntimeWarning, stacklevel=2,
            )
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()  # the first epoch is the best so far
            self.best_epoch = epoch
        self.wait += 1
        if self._improved(current):
            self.best = current
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch >= 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring the weights from the end of the best epoch: {self.best_epoch + 1}")
            self.model.set_weights(self.best_weights)

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, restore_best_weights={self.restore_best_weights})")


class ModelCheckpoint(Callback):
    """Save the model (weights, optimizer and RNG state: a resumable checkpoint) after each epoch.

    Parameters
    ----------
    filepath : str or path
        May contain ``{epoch}`` (1-based) and any log key, e.g.
        ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``. ``.npz`` is appended if missing.
        Missing directories are created (as Keras does).
    monitor : str, default "val_loss"
    save_best_only : bool, default False
        Only save when ``monitor`` improves on the best seen so far.
    mode : "auto", "min" or "max"
    verbose : int, default 0

    ``self.saved`` lists the paths written, in order. An epoch that ends with a
    non-finite loss (stopped by :class:`TerminateOnNaN`) or non-finite weights is
    not saved (a warning says so): a checkpoint never holds NaN weights.
    """

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto", verbose=0):
        super().__init__()
        self.filepath = str(filepath)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.verbose = verbose
        self._better, self.best = _monitor_op(monitor, mode, "ModelCheckpoint")
        self.saved = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"ModelCheckpoint: cannot format filepath {self.filepath!r} with epoch and the "
                f"logs {sorted(logs)}: {e}"
            ) from e
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                warnings.warn(
                    f"ModelCheckpoint monitors {self.monitor!r}, which is not in the logs "
                    f"(available: {sorted(logs)}); skipping", RuntimeWarning, stacklevel=2,
                )
                return
            if not self._better(current, self.best):
                return
            self.best = current
        bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad or not all(np.isfinite(p).all() for _, p, _ in self.model.params()):
            what = f"{bad[0]} is {logs[bad[0]]}" if bad else "the weights hold NaN or infinite values"
            warnings.warn(f"ModelCheckpoint: not saving epoch {epoch + 1} to {path}: {what}",
                          RuntimeWarning, stacklevel=2)
            return
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        path = self.model.save(path)
        self.saved.append(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved model to {path}")

    def __repr__(self):
        return (f"ModelCheckpoint({self.filepath!r}, monitor={self.monitor!r}, "
                f"save_best_only={self.save_best_only})")


class TerminateOnNaN(Callback):
    """Stop training quietly when the loss becomes NaN or infinite.

    Without it, ``fit`` raises :class:`fastcnn.NonFiniteLossError`. Either way the
    step that produced the non-finite loss is not applied to the weights.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss {loss}, terminating training")
            self.model.stop_training = True


def _current_learning_rate(model, owner):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "learning_rate"):
        raise ValueError(f"{owner}: the model's optimizer must have a `learning_rate` attribute; compile it first")
    return float(optimizer.learning_rate)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch from ``schedule(epoch, lr)`` (Keras semantics).

    Parameters
    ----------
    schedule : callable
        ``schedule(epoch, lr) -> new lr``, ``epoch`` 0-based and ``lr`` the current
        rate; a one-argument ``schedule(epoch)`` is accepted too.
    verbose : int, default 0; 1 prints each change

    The optimizer must have a float learning rate (not a schedule of its own).
    The epoch logs record the rate in ``learning_rate``.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: `schedule` must be callable, received {schedule!r}")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = _current_learning_rate(self.model, "LearningRateScheduler")
        try:
            new = self.schedule(epoch, lr)
        except TypeError:  # the older one-argument form schedule(epoch)
            new = self.schedule(epoch)
        if isinstance(new, np.ndarray) and new.ndim == 0:
            new = new.item()
        if isinstance(new, bool) or not isinstance(new, (int, float, np.floating, np.integer)):
            raise ValueError(f"LearningRateScheduler: the schedule must return a float; at epoch {epoch} it "
                             f"returned {new!r}")
        self.model.optimizer.learning_rate = float(new)  # validated by the optimizer
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(new)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _current_learning_rate(self.model, "LearningRateScheduler")

    def __repr__(self):
        return f"LearningRateScheduler({self.schedule!r})"


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has stopped improving (Keras semantics).

    An epoch improves on the best so far when it beats it by more than
    ``min_delta``. After ``patience`` epochs without improvement the rate
    becomes ``max(lr * factor, min_lr)`` (if it is above ``min_lr``), then
    ``cooldown`` epochs pass before waiting starts again.

    Parameters
    ----------
    monitor : str, default "val_loss"
    factor : float in (0, 1), default 0.1
    patience : int, default 10
    verbose : int, default 0; 1 prints each reduction
    mode : "auto", "min" or "max"; "auto" maximizes metrics whose name contains "acc"
    min_delta : float, default 1e-4
    cooldown : int, default 0
    min_lr : float, default 0
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__()
        owner = "ReduceLROnPlateau"
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.0 < factor < 1.0:
            raise ValueError(f"{owner}: `factor` must be in (0, 1), received {factor!r}")
        for name, value in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{owner}: `{name}` must be a non-negative int, received {value!r}")
        for name, value in (("min_delta", min_delta), ("min_lr", min_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{owner}: `{name}` must be a finite float >= 0, received {value!r}")
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = mode
        self.min_delta = float(min_delta)
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self._better, self._initial = _monitor_op(monitor, mode, owner)
        self._reset()

    def _reset(self):
        self.best = self._initial
        self.wait = 0
        self.cooldown_counter = 0

    def _improved(self, current):
        if self._better is np.greater:
            return current > self.best + self.min_delta
        return current < self.best - self.min_delta

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        lr = _current_learning_rate(self.model, "ReduceLROnPlateau")
        if logs is not None:
            logs["learning_rate"] = lr
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(
                f"ReduceLROnPlateau monitors {self.monitor!r}, which is not in the logs "
                f"(available: {sorted(logs or {})}); pass validation data for val_* metrics",
                RuntimeWarning, stacklevel=2,
            )
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and lr > np.float32(self.min_lr):
                new = max(lr * self.factor, self.min_lr)
                self.model.optimizer.learning_rate = new
                if self.verbose:
                    print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def __repr__(self):
        return (f"ReduceLROnPlateau(monitor={self.monitor!r}, factor={self.factor}, patience={self.patience}, "
                f"cooldown={self.cooldown}, min_lr={self.min_lr})")
