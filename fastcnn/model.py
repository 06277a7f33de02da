"""The Sequential model: a stack of layers with Keras's ``compile`` / ``fit`` /
``evaluate`` / ``predict``, ``summary`` and safe ``save`` / ``load``.

Training step (:meth:`Sequential.train_on_batch`, and each batch of ``fit``):
forward through the layers, the fused ``softmax_cross_entropy`` registry op on
the logits, backward through the layers in reverse, one optimizer step. Inputs
are validated and converted to the model dtype once per call; batches are then
taken through index arrays and the layers' checks are skipped in the hot loop.

Randomness: one ``np.random.default_rng(seed)`` is the root. It spawns the
model's Generator (``model.rng``: shuffling) and one child per layer (its
weight initialization; Dropout layers also draw their masks from it). The
same seed with the same implementations gives bit-identical training, and
``save`` stores every Generator's state so a resumed run continues exactly.
"""

import contextlib
import math
import numbers
import warnings

import numpy as np

from fastcnn import _checks, losses, metrics as metrics_lib, optim, registry
from fastcnn._atomic import atomic_step
from fastcnn.callbacks import CallbackList, History, TerminateOnNaN, check_callbacks
from fastcnn.errors import NonFiniteLossError
from fastcnn.layers import Layer, Softmax, fused
from fastcnn.layers.base import format_shape
from fastcnn.progress import EvaluationProgbar, ProgbarLogger, format_logs, is_dynamic_display

__all__ = ["Sequential", "load_model"]

DEFAULT_BATCH_SIZE = 32

#: Activation memory per forward pass in ``evaluate``/``predict``: a larger
#: ``batch_size`` runs as several passes of as many samples as keep the largest
#: activation of a pass within this (same results per sample), so the data of
#: a pass stays in cache and memory stays bounded.
INFERENCE_PASS_BYTES = 8 << 20


def _check_positive_int(value, name, owner):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive int, received {value!r}")
    return int(value)


def _check_verbose(verbose, owner):
    if verbose == "auto":
        return 1
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"{owner}: `verbose` must be 0, 1, 2 or 'auto', received {verbose!r}")
    return int(verbose)


class Sequential:
    """A linear stack of layers for classification, trained on the CPU.

    Parameters
    ----------
    layers : list of :class:`fastcnn.layers.Layer`
        Applied in order; the last one should output logits ``(N, K)``.
    input_shape : tuple of int, optional
        Per-sample shape without the batch axis, e.g. ``(28, 28, 1)`` (NHWC).
        Given: every layer is built now. Omitted: on the first ``fit`` / call.
    seed : int, optional
        Seeds weight initialization, shuffling and dropout masks.
    dtype : float32 (default) or float64
        The dtype of every weight and activation. Float inputs of the other
        dtype and uint8 images (scaled by 1/255) are converted once per call.
    fuse : bool, default True
        Run a Conv2D and the ReLU after it as one fused op (see
        :mod:`fastcnn.layers.fused`): the same results, less memory traffic.
        ``model.steps`` shows the plan.

    Shape:
        input (N, *input_shape) -> logits (N, K). fastcnn is NHWC: an NCHW batch
        must be transposed with ``x.transpose(0, 2, 3, 1)``.
    """

    def __init__(self, layers, input_shape=None, seed=None, dtype=np.float32, *, fuse=True):
        if isinstance(layers, Layer):
            layers = [layers]
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer, received an empty list")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layers[{i}] must be a fastcnn Layer, received {layer!r}")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer instance appears twice; create a new layer for each position")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"Sequential: `seed` must be a non-negative int or None, received {seed!r}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"Sequential: `dtype` must be float32 or float64, received {np.dtype(dtype)}")
        self.layers = layers
        self.seed = None if seed is None else int(seed)
        self.dtype = np.dtype(dtype)
        self._root_rng = np.random.default_rng(self.seed)
        self.rng = self._root_rng.spawn(1)[0]  # shuffling
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self.optimizer = None
        self.loss = None
        self.loss_impl = "auto"
        self.metrics = []
        self._loss_op = None
        self.training = True
        self.stop_training = False
        self.history = None
        self.metadata = {}  # free-form JSON-serializable notes saved with the model (e.g. the dataset)
        self._fuse = bool(fuse)
        self.steps = list(layers)  # the plan one pass runs; fused steps are set by build()
        if input_shape is not None:
            self.build(input_shape)

    # -- construction -----------------------------------------------------------------
    def build(self, input_shape):
        """Build every layer for per-sample inputs of ``input_shape`` (no batch axis)."""
        if self.built:
            raise ValueError(f"Sequential is already built for inputs {format_shape((None,) + self.input_shape)}")
        try:
            shape = tuple(int(s) for s in input_shape)
        except TypeError:
            raise TypeError(f"Sequential: `input_shape` must be a tuple of ints, received {input_shape!r}") from None
        if not shape or any(s < 1 for s in shape) or any(isinstance(s, bool) for s in input_shape):
            raise ValueError(
                f"Sequential: `input_shape` must be positive ints such as (28, 28, 1), received {input_shape!r}"
            )
        input_shape = shape
        rngs = self._root_rng.spawn(len(self.layers))
        for i, (layer, rng) in enumerate(zip(self.layers, rngs)):
            if layer.built:
                if layer.input_shape != shape or layer.dtype != self.dtype:
                    raise ValueError(
                        f"layers.{i} ({type(layer).__name__}) was already built for inputs "
                        f"{format_shape((None,) + layer.input_shape)} {layer.dtype}; at this position it "
                        f"receives {format_shape((None,) + shape)} {self.dtype}"
                    )
            else:
                try:
                    layer.build(shape, self.dtype, rng=rng)
                except ValueError as e:
                    raise ValueError(f"layers.{i} ({type(layer).__name__}): {e}") from None
            if hasattr(layer, "reseed"):
                layer.reseed(rng)  # dropout masks from the model's seed
            layer.needs_input_grad = i > 0  # nothing consumes the first layer's dx
            shape = layer.output_shape
        self.input_shape = input_shape
        self.output_shape = shape
        self.built = True
        self.steps = fused.plan(self.layers, self._fuse)
        return self

    @property
    def fuse(self):
        """Whether matching runs of layers execute as fused ops (see ``steps``)."""
        return self._fuse

    @fuse.setter
    def fuse(self, value):
        self._fuse = bool(value)
        if self.built:
            self.steps = fused.plan(self.layers, self._fuse)

    def compile(self, optimizer, loss="softmax_cross_entropy", metrics=("accuracy",), *, loss_impl="auto"):
        """Set the optimizer, the loss (on logits) and the metrics reported by ``fit``/``evaluate``.

        Parameters
        ----------
        optimizer : :class:`fastcnn.optim.Optimizer`, or "sgd" / "adam" (default settings)
        loss : "softmax_cross_entropy"
        metrics : list of str, default ["accuracy"]
        loss_impl : implementation of the loss op ("auto", "reference", "numpy", ...)
        """
        self.optimizer = optim.get(optimizer)
        self.loss = losses.check_loss(loss)
        self.metrics = metrics_lib.check_metrics(metrics)
        self._loss_op = registry.get(self.loss, loss_impl)
        self.loss_impl = loss_impl
        if isinstance(self.layers[-1], Softmax):
            warnings.warn(
                "the last layer is Softmax, but softmax_cross_entropy expects logits: the softmax "
                "is applied twice in training. Remove the Softmax layer; predict() applies it.",
                UserWarning, stacklevel=2,
            )
        return self

    @property
    def compiled(self):
        return self.optimizer is not None

    @property
    def num_classes(self):
        """``K``, the size of the last layer's output (once built)."""
        self._check_classifier()
        return self.output_shape[0]

    def _check_classifier(self):
        if not self.built:
            raise ValueError("the model is not built yet: pass input_shape= to Sequential or call fit() first")
        if len(self.output_shape) != 1:
            raise ValueError(
                f"the last layer outputs {format_shape((None,) + self.output_shape)}; a classifier "
                f"must output logits (None, K): end with Flatten() and Dense(K)"
            )

    def _check_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(f"call model.compile(optimizer=...) before {what}()")

    # -- parameters -------------------------------------------------------------------
    def params(self):
        """``[(name, param, grad), ...]`` with stable names ``"layers.<i>.<param>"``."""
        return [(f"layers.{i}.{key}", p, layer.grads[key])
                for i, layer in enumerate(self.layers) for key, p in layer.params.items()]

    def get_weights(self):
        """A copy of every parameter: ``{"layers.<i>.<param>": array}``."""
        return {name: p.copy() for name, p, _ in self.params()}

    def set_weights(self, weights):
        """Copy ``weights`` into the parameters, in place.

        ``weights``: a dict as returned by :meth:`get_weights`, or a Keras-style list of
        arrays in the same order (``list(model.get_weights().values())``). Every array
        is checked (float dtype, shape, finite) before any parameter changes.
        """
        current = {name: p for name, p, _ in self.params()}
        if isinstance(weights, (list, tuple)):
            if len(weights) != len(current):
                raise ValueError(f"set_weights: the model has {len(current)} weight arrays "
                                 f"({', '.join(current)}), received a list of {len(weights)}")
            weights = dict(zip(current, weights))
        elif not isinstance(weights, dict):
            raise TypeError(f"set_weights: expected a dict {{name: array}} as get_weights() returns, or a list "
                            f"of arrays in that order; received {type(weights).__name__}")
        if set(weights) != set(current):
            missing = sorted(set(current) - set(weights))
            extra = sorted(set(weights) - set(current))
            raise ValueError(f"set_weights: names do not match the model (missing {missing}, unexpected {extra})")
        checked = {name: _checks.check_weight(name, weights[name], p) for name, p in current.items()}
        for name, p in current.items():
            p[...] = checked[name]

    def count_params(self):
        return int(sum(layer.count_params() for layer in self.layers))

    def train(self, mode=True):
        """Training mode (dropout active) for direct calls ``model(x)``."""
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(self.training)
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def _mode(self, training):
        previous = self.training
        if previous != training:
            self.train(training)
        try:
            yield
        finally:
            if previous != training:
                self.train(previous)

    # -- inputs -----------------------------------------------------------------------
    def _prepare_x(self, x, what="x", finite=False):
        """Validate a batch and return it in the model dtype, C-contiguous, building the model if needed.

        Accepts float32/float64 ``(N, *input_shape)`` and uint8 images (scaled to
        [0, 1]); a missing channel axis of single-channel images is added. With
        ``finite=True``, NaN/inf values are refused (:class:`NonFiniteInputError`).
        """
        x = _checks.as_array(x, what)
        if x.dtype == np.uint8:
            kind = "uint8"
        elif x.dtype in (np.float32, np.float64):
            kind = "float"
        else:
            raise TypeError(
                f"{what} must be float32/float64 images in [0, 1] or uint8 images in [0, 255]; "
                f"received dtype {x.dtype} with shape {x.shape}"
            )
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"{what} must be a non-empty batch (N, ...); received shape {x.shape}")
        expected = self.input_shape
        if expected is not None and len(expected) == 3 and expected[2] == 1 and x.shape[1:] == expected[:2]:
            x = x[..., None]  # (N, H, W) grayscale -> (N, H, W, 1)
        elif expected is None and x.ndim == 3 and self.layers[0].ndim == 4:
            x = x[..., None]
        if not self.built:
            self.build(x.shape[1:])
            expected = self.input_shape
        if x.shape[1:] != expected:
            hint = _checks.single_image_hint(x.shape, expected)
            if len(expected) == 3 and x.ndim == 4 and x.shape[1:] == (expected[2], expected[0], expected[1]):
                hint = ". It looks like NCHW; fastcnn is NHWC: use x.transpose(0, 2, 3, 1)"
            raise ValueError(
                f"{what} must have shape {format_shape((None,) + expected)} (NHWC); received shape "
                f"{x.shape}{hint}"
            )
        if kind == "uint8":
            x = x.astype(self.dtype) / self.dtype.type(255)
        elif x.dtype != self.dtype:
            x = x.astype(self.dtype)
        x = np.ascontiguousarray(x)
        if kind == "float":
            if finite:
                _checks.check_finite(x, what)
            _checks.warn_unscaled(self, x, what)
        return x

    def _prepare_xy(self, x, y, what="x", finite=False):
        x = self._prepare_x(x, what, finite)
        self._check_classifier()
        label_name = "y" if what == "x" else f"{what} labels"
        y = losses.check_labels(y, self.output_shape[0], num_samples=x.shape[0], what=label_name)
        return x, y

    # -- running ----------------------------------------------------------------------
    def __call__(self, x):
        """Forward ``x`` in the current mode (see :meth:`train`/:meth:`eval`); returns the logits."""
        out = self._prepare_x(x)
        for step in self.steps:
            out = step.forward(out)
        return out

    def _train_step(self, x, y):
        """One optimizer step on a validated batch; returns ``(loss, logits)``.

        A non-finite loss returns before the backward pass: the weights are untouched.
        The step is all-or-nothing (:mod:`fastcnn._atomic`): an exception or Ctrl-C
        before the update leaves the model (weights, optimizer state, random
        generators) exactly as before; the update itself completes before a Ctrl-C
        is delivered.
        """
        with atomic_step(self) as transaction:
            out = x
            for step in self.steps:
                out = step.forward(out)
            loss, dlogits = self._loss_op.forward(out, y)
            if not math.isfinite(loss):
                return loss, out
            d = dlogits
            for step in reversed(self.steps):
                d = step.backward(d)
            transaction.commit(self.optimizer, self.params())
        return loss, out

    def train_on_batch(self, x, y):
        """One optimizer step on the batch ``(x, y)`` (no shuffling, no output); returns the loss.

        Raises
        ------
        NonFiniteLossError
            If the loss is NaN or infinite (the step is then not applied).
        """
        self._check_compiled("train_on_batch")
        x, y = self._prepare_xy(x, y)
        with self._mode(True):
            loss, _ = self._train_step(x, y)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss is {loss} at optimizer step {self.optimizer.iterations + 1}; the step was "
                f"not applied. Lower the learning rate or check the inputs for NaN/inf."
            )
        return loss

    def fit(self, x, y, epochs=1, batch_size=32, shuffle=True, validation_data=None, validation_split=0.0,
            callbacks=None, verbose="auto", initial_epoch=0):
        """Train for ``epochs`` epochs; returns a :class:`fastcnn.callbacks.History`.

        Parameters
        ----------
        x : float32/float64 (N, H, W, C) or uint8 (N, H, W[, C]) images
        y : int (N,) class labels in [0, K)
        epochs : int
            Index of the last epoch (Keras semantics with ``initial_epoch``).
        batch_size : int, default 32
            The last batch of an epoch may be smaller; it counts with its true
            size in the epoch averages.
        shuffle : bool, default True
            Reshuffle the training samples each epoch, with ``model.rng``.
        validation_data : (x_val, y_val), optional
            Evaluated after each epoch (``val_loss``, ``val_accuracy``). Takes
            precedence over ``validation_split``.
        validation_split : float in [0, 1)
            Hold out this fraction of the samples, taken from the **end** of
            ``x`` and ``y`` before any shuffling.
        callbacks : list of :class:`fastcnn.callbacks.Callback`
        verbose : 0, 1, 2 or "auto" (= 1)
            0 silent; 1 a progress bar on a terminal, else one line per epoch;
            2 one line per epoch.
        initial_epoch : int, default 0
            Epoch to start at (for resuming a run).

        Raises
        ------
        NonFiniteLossError
            If a batch gives a NaN or infinite loss, unless a
            :class:`~fastcnn.callbacks.TerminateOnNaN` callback is given.
        """
        self._check_compiled("fit")
        verbose = _check_verbose(verbose, "fit")
        epochs = _check_positive_int(epochs, "epochs", "fit")
        batch_size = _check_positive_int(DEFAULT_BATCH_SIZE if batch_size is None else batch_size, "batch_size", "fit")
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral) or initial_epoch < 0:
            raise ValueError(f"fit: `initial_epoch` must be a non-negative int, received {initial_epoch!r}")
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"fit: `validation_split` must be a float in [0, 1), received {validation_split!r}")
        user_callbacks = check_callbacks(callbacks)
        shuffle = _checks.check_shuffle(shuffle)
        x, y = self._prepare_xy(x, y)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("fit: `validation_data` must be a tuple (x_val, y_val)")
            val = self._prepare_xy(*validation_data, what="validation_data", finite=True)
        elif validation_split > 0.0:
            split_at = int(x.shape[0] * (1.0 - validation_split))
            if split_at == 0 or split_at == x.shape[0]:
                raise ValueError(
                    f"fit: validation_split={validation_split} of {x.shape[0]} samples leaves "
                    f"{split_at} for training and {x.shape[0] - split_at} for validation; both must be > 0"
                )
            val = (x[split_at:], y[split_at:])
            x, y = x[:split_at], y[:split_at]
            _checks.check_finite(val[0], "the validation_split samples of x")

        N = x.shape[0]
        steps = -(-N // batch_size)
        history = History()
        all_callbacks = user_callbacks + [history] + ([ProgbarLogger(verbose)] if verbose else [])
        params = {"epochs": epochs, "steps": steps, "samples": N, "batch_size": batch_size, "verbose": verbose}
        hooks = CallbackList(all_callbacks, self, params)
        quiet_nan = any(isinstance(cb, TerminateOnNaN) for cb in user_callbacks)
        self.history = history
        self.stop_training = False
        logs = {}
        with self._mode(True):
            hooks.on_train_begin()
            for epoch in range(initial_epoch, epochs):
                hooks.on_epoch_begin(epoch)
                order = self.rng.permutation(N) if shuffle else None
                logs = self._fit_epoch(x, y, order, batch_size, epoch, epochs, hooks, quiet_nan)
                if val is not None:
                    with self._mode(False):
                        val_logs = self._evaluate(*val, batch_size)
                    logs.update({f"val_{k}": v for k, v in val_logs.items()})
                hooks.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
            hooks.on_train_end(logs)
        return history

    def _fit_epoch(self, x, y, order, batch_size, epoch, epochs, hooks, quiet_nan):
        """One pass over ``x``; returns the epoch logs (sample-weighted means)."""
        N = x.shape[0]
        steps = -(-N // batch_size)
        track_accuracy = "accuracy" in self.metrics
        total_loss, correct, seen = 0.0, 0, 0
        logs = {}
        for batch in range(steps):
            start, stop = batch * batch_size, min((batch + 1) * batch_size, N)
            if order is None:
                xb, yb = x[start:stop], y[start:stop]
            else:
                idx = order[start:stop]
                xb, yb = x[idx], y[idx]
            hooks.on_train_batch_begin(batch)
            loss, logits = self._train_step(xb, yb)
            if not math.isfinite(loss):
                if not quiet_nan:
                    raise NonFiniteLossError(
                        f"the loss is {loss} at epoch {epoch + 1}/{epochs}, batch {batch + 1}/{steps}; "
                        f"training stopped and that step was not applied. Lower the learning rate or "
                        f"check the inputs for NaN/inf (pass callbacks=[TerminateOnNaN()] to stop "
                        f"without an error)."
                    )
                logs = {"loss": loss}
                hooks.on_train_batch_end(batch, logs)
                break
            n = stop - start
            seen += n
            total_loss += loss * n
            logs = {"loss": total_loss / seen}
            if track_accuracy:
                correct += metrics_lib.count_correct(logits, yb)
                logs["accuracy"] = correct / seen
            hooks.on_train_batch_end(batch, logs)
            if self.stop_training:
                break
        return dict(logs)

    def _infer(self, x):
        """Logits of ``x`` in the current mode, in passes sized by :data:`INFERENCE_PASS_BYTES`."""
        step = self._inference_pass()
        if x.shape[0] <= step:
            for layer in self.steps:
                x = layer.forward(x)
            return x
        return np.concatenate([self._infer(x[i:i + step]) for i in range(0, x.shape[0], step)])

    def _inference_pass(self):
        """Samples per inference pass: the largest activation of a pass within INFERENCE_PASS_BYTES."""
        largest = max(math.prod(step.layers[-1].output_shape if hasattr(step, "layers") else step.output_shape)
                      for step in self.steps)
        return max(1, INFERENCE_PASS_BYTES // (largest * self.dtype.itemsize))

    def _evaluate(self, x, y, batch_size, progress=False):
        N = x.shape[0]
        total_loss, correct = 0.0, 0
        bar = EvaluationProgbar(N) if progress and is_dynamic_display() else None
        for start in range(0, N, batch_size):
            if bar is not None:
                bar.update(start)
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            out = self._infer(xb)
            loss, _ = self._loss_op.forward(out, yb)
            total_loss += loss * xb.shape[0]
            correct += metrics_lib.count_correct(out, yb)
        logs = {"loss": total_loss / N}
        if "accuracy" in self.metrics:
            logs["accuracy"] = correct / N
        if bar is not None:
            bar.done()
        return logs

    def evaluate(self, x, y, batch_size=None, verbose=0):
        """Loss and metrics over ``(x, y)`` in evaluation mode: ``{"loss": ..., "accuracy": ...}``."""
        self._check_compiled("evaluate")
        verbose = _check_verbose(verbose, "evaluate")
        batch_size = _check_positive_int(DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                                         "batch_size", "evaluate")
        x, y = self._prepare_xy(x, y, finite=True)
        with self._mode(False):
            logs = self._evaluate(x, y, batch_size, progress=verbose == 1)
        if verbose:
            print(format_logs(logs))
        return logs

    def predict(self, x, batch_size=None, verbose=0):
        """Class probabilities ``(N, K)`` in evaluation mode: the softmax of the logits
        (not applied again when the last layer is a Softmax layer)."""
        _check_verbose(verbose, "predict")
        batch_size = _check_positive_int(DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                                         "batch_size", "predict")
        x = self._prepare_x(x, finite=True)
        self._check_classifier()
        softmax = None if isinstance(self.layers[-1], Softmax) else registry.get("softmax", "auto")
        N = x.shape[0]
        probs = np.empty((N, self.output_shape[0]), dtype=self.dtype)  # (N, K)
        with self._mode(False):
            for start in range(0, N, batch_size):
                out = self._infer(x[start:start + batch_size])
                if softmax is not None:
                    out, _ = softmax.forward(out)
                probs[start:start + out.shape[0]] = out
        return probs

    # -- saving -----------------------------------------------------------------------
    def save(self, path):
        """Write weights, optimizer state, RNG state and architecture to one ``.npz``
        (atomically); returns the path written (``.npz`` is appended if missing)."""
        from fastcnn.saving import save_model

        return save_model(self, path)

    def load(self, path):
        """Load a file written by :meth:`save` onto this model; the architecture must match."""
        from fastcnn.saving import load_into

        load_into(self, path)
        return self

    # -- description ------------------------------------------------------------------
    def summary_string(self):
        """The table :meth:`summary` prints."""
        if not self.built:
            raise ValueError("the model is not built yet: pass input_shape= to Sequential or call fit() first")
        rows = [("Layer (type)", "Output shape", "Param #")]
        for i, layer in enumerate(self.layers):
            label = f"layers.{i}" + (f" {layer.name!r}" if layer.name else "") + f" ({type(layer).__name__})"
            rows.append((label, format_shape((None,) + layer.output_shape), f"{layer.count_params():,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        lines = [f"Sequential: input {format_shape((None,) + self.input_shape)}, {self.dtype}"]

        def fmt(row):
            return f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}"

        rule = "=" * len(fmt(rows[0]))
        lines += [fmt(rows[0]), rule] + [fmt(r) for r in rows[1:]] + [rule]
        total = self.count_params()
        lines += [f"Total params: {total:,}", f"Trainable params: {total:,}", "Non-trainable params: 0"]
        return "\n".join(lines)

    def summary(self, print_fn=print):
        """Print the layers, their output shapes and parameter counts, and the totals."""
        print_fn(self.summary_string())

    def __repr__(self):
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        extra = []
        if self.input_shape is not None:
            extra.append(f"input_shape={self.input_shape}")
        if self.dtype != np.float32:
            extra.append(f"dtype={self.dtype}")
        if self.seed is not None:
            extra.append(f"seed={self.seed}")
        if self.optimizer is not None:
            extra.append(f"optimizer={self.optimizer!r}")
        if extra:
            lines.append("  " + ", ".join(extra))
        return "Sequential(\n" + "\n".join(lines) + "\n)"


def load_model(path):
    """Rebuild a model saved with :meth:`Sequential.save` (see :mod:`fastcnn.saving`)."""
    from fastcnn.saving import load_model as _load_model

    return _load_model(path)
