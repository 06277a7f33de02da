"""Models: :class:`Model` (a graph of layers) and :class:`Sequential` (a chain, its special case),
with Keras's ``compile`` / ``fit`` / ``evaluate`` / ``predict``, ``summary`` and safe ``save`` / ``load``.

Structure. One engine: a model is its layers in topological order and, for
each, the tensors it reads (``_inputs_of``; tensor 0 is the model input,
tensor ``i + 1`` the output of ``layers[i]``, see :mod:`fastcnn.graph`).
:class:`Model` gets them from ``fc.Input`` and layer calls; :class:`Sequential`
is the chain ``_inputs_of[i] == [i]`` and keeps its lazy ``build(input_shape)``.
What a pass runs is a plan (:mod:`fastcnn.plan`, the one home of fusion and
of BatchNormalization folding): the training plan (``model.steps``) and, per
``fold`` setting, an inference plan that is rebuilt after anything changes
the weights or state (an optimizer step, a training-mode forward,
``set_weights``, ``load``). A gradient reaching a tensor along several paths
is summed in place into the first arrival's array when that array belongs to
no one else (see :meth:`Model._backward`).

Training step (:meth:`Model.train_on_batch`, and each batch of ``fit``):
forward through the training plan, the fused ``softmax_cross_entropy``
registry op on the logits, backward through the plan in reverse, one
optimizer step. Inputs are validated and converted to the model dtype once
per call; batches are then taken through index arrays and the layers' checks
are skipped in the hot loop.

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

from fastcnn import _checks, data_adapter, graph, losses, metrics as metrics_lib, optim, parallel, registry
from fastcnn._atomic import atomic_step
from fastcnn.callbacks import CallbackList, History, TerminateOnNaN, check_callbacks
from fastcnn.errors import NonFiniteLossError
from fastcnn.layers import Layer, Softmax
from fastcnn.layers.base import format_shape
from fastcnn.plan import build_plan, tensor_count
from fastcnn.progress import EvaluationProgbar, ProgbarLogger, format_logs, is_dynamic_display

__all__ = ["Model", "Sequential", "load_model"]

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


def _no_distributed_data_options(owner, **options):
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ValueError(f"{owner}: {', '.join(given)} cannot be used with a distributed {owner} yet (it takes "
                         f"arrays (x, y) only)")


class Model:
    """A graph of layers from one input to one output (logits), trained on the CPU.

    Build it with the functional API::

        x = fc.Input((28, 28, 1))
        y = L.Conv2D(16, 3, padding="same")(x)
        y = L.Add()([y, L.Conv2D(16, 1)(x)])
        ...
        model = fc.Model(x, logits)

    Parameters
    ----------
    inputs : symbolic tensor from :func:`fastcnn.Input` (or a list of one)
    outputs : symbolic tensor the graph computes from it (or a list of one); logits ``(N, K)``
    name : str, optional
    seed : int, optional
        Seeds weight initialization, shuffling and dropout masks.
    dtype : float32 (default) or float64
        The dtype of every weight and activation. Float inputs of the other
        dtype and uint8 images (scaled by 1/255) are converted once per call.
    fuse : bool, default True
        Run chains Conv2D -> ReLU -> MaxPool2D as fused ops (see
        :mod:`fastcnn.plan`): the same results, less memory traffic.
        ``model.steps`` shows the training plan.

    Attributes
    ----------
    fold : bool, default True
        At inference (``evaluate``, ``predict``, eval-mode calls), fold each
        BatchNormalization that directly follows a Conv2D or Dense into that
        layer's weights; ``predict(..., fold=False)`` overrides it per call.

    Shape:
        input (N, *input_shape) -> logits (N, K). fastcnn is NHWC: an NCHW batch
        must be transposed with ``x.transpose(0, 2, 3, 1)``.
    """

    def __init__(self, inputs, outputs, name=None, *, seed=None, dtype=np.float32, fuse=True):
        inputs, outputs = self._single(inputs, "inputs"), self._single(outputs, "outputs")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Model: `name` must be a str or None, received {name!r}")
        layers, inputs_of = graph.topology(inputs, outputs)
        self._setup(layers, inputs_of, seed, dtype, fuse, name, "Model")
        self._build(inputs.shape)

    @staticmethod
    def _single(t, what):
        if isinstance(t, (list, tuple)):
            if len(t) != 1:
                raise ValueError(f"Model: fastcnn models take one input and one output; `{what}` has {len(t)}")
            t = t[0]
        return t

    def _setup(self, layers, inputs_of, seed, dtype, fuse, name, owner):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"{owner}: `seed` must be a non-negative int or None, received {seed!r}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"{owner}: `dtype` must be float32 or float64, received {np.dtype(dtype)}")
        self.layers = layers
        self.name = name
        self._inputs_of = [list(ins) for ins in inputs_of]  # tensor indices each layer reads
        self._output = len(layers)  # the output tensor: the last layer's, in topological order
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
        self._metric_fns = []
        self.training = True
        self.stop_training = False
        self.history = None
        self.metadata = {}  # free-form JSON-serializable notes saved with the model (e.g. the dataset)
        self._fuse = bool(fuse)
        self.fold = True
        self._plan = None  # the training plan, once built
        self._inference_plans = {}  # fold -> (plan, frees); cleared whenever weights or state may change
        self._shapes = None  # per-sample shape of every tensor
        self._dist = None  # set by fastcnn.distributed while a data-parallel fit/evaluate runs
        self._n_tensors = len(layers) + 1  # with one per activation= once built (fastcnn.plan.tensor_count)

    # -- construction -----------------------------------------------------------------
    def _build(self, input_shape):
        """Build every layer for per-sample model inputs of ``input_shape``; seeded, in topological order."""
        rngs = self._root_rng.spawn(len(self.layers))
        shapes = [tuple(input_shape)]
        # Tensors whose gradient nobody needs: the model input, and the outputs of weightless
        # augmentation/padding layers (their backward accepts None) reading only such tensors.
        gradient_free = [True]
        for i, (layer, rng, ins) in enumerate(zip(self.layers, rngs, self._inputs_of)):
            received = [shapes[t] for t in ins] if getattr(layer, "merge", False) else shapes[ins[0]]
            if layer.built:
                if layer.input_shape != received or layer.dtype != self.dtype:
                    seen = received if isinstance(received, list) else format_shape((None,) + received)
                    built_for = (layer.input_shape if isinstance(layer.input_shape, list)
                                 else format_shape((None,) + layer.input_shape))
                    raise ValueError(
                        f"layers.{i} ({type(layer).__name__}) was already built for inputs "
                        f"{built_for} {layer.dtype}; at this position it receives {seen} {self.dtype}"
                    )
            else:
                try:
                    layer.build(received, self.dtype, rng=rng)
                except ValueError as e:
                    raise ValueError(f"layers.{i} ({type(layer).__name__}): {e}") from None
            if hasattr(layer, "reseed"):
                layer.reseed(rng)  # dropout masks from the model's seed
            layer.needs_input_grad = not all(gradient_free[t] for t in ins)
            gradient_free.append(getattr(layer, "accepts_no_gradient", False) and not layer.needs_input_grad)
            shapes.append(layer.output_shape)
        # The intermediate tensors of ``activation=`` layers (see fastcnn.plan.expand): the layer's shape.
        shapes += [layer.output_shape for layer in self.layers if layer.activation_layer is not None]
        self._n_tensors = tensor_count(self.layers)
        self._shapes = shapes
        self.input_shape = shapes[0]
        self.output_shape = shapes[self._output]
        self.built = True
        self._replan()
        return self

    def _replan(self):
        self._plan = build_plan(self.layers, self._inputs_of, self._output, fuse=self._fuse)
        self._inference_plans = {}

    def _folds(self, fold=None):
        """Whether an inference pass asked for with ``fold`` folds BatchNormalization."""
        return self.fold if fold is None else bool(fold)

    def _inference(self, fold=None):
        """``(plan, frees)`` for inference (folded BatchNormalization when ``fold``, default
        ``self.fold``), built on first use after any change to the weights or state."""
        fold = self._folds(fold)
        entry = self._inference_plans.get(fold)
        if entry is None:
            plan = build_plan(self.layers, self._inputs_of, self._output, fuse=self._fuse, fold=fold)
            entry = self._inference_plans[fold] = (plan, self._release_points(plan))
        return entry

    def inference_steps(self, fold=None):
        """What one inference pass runs (see ``steps``): folded layers replace Conv2D/Dense + BatchNormalization."""
        return [step.runner for step in self._inference(fold)[0]]

    def _weights_changed(self):
        """Forget the inference plans: their folded weights may be stale."""
        if self._inference_plans:
            self._inference_plans = {}

    def _release_points(self, plan):
        """``frees[k]``: tensors no step after step ``k`` reads (dropped during inference passes)."""
        last = {}
        for k, step in enumerate(plan):
            for t in step.inputs:
                last[t] = k
        frees = [[] for _ in plan]
        for t, k in last.items():
            if t != self._output:
                frees[k].append(t)
        return frees

    @property
    def steps(self):
        """What one training pass runs: layers, and fused steps where chains match (see :mod:`fastcnn.plan`)."""
        if self._plan is None:
            return list(self.layers)
        return [step.runner for step in self._plan]

    @property
    def fuse(self):
        """Whether matching runs of layers execute as fused ops (see ``steps``)."""
        return self._fuse

    @fuse.setter
    def fuse(self, value):
        self._fuse = bool(value)
        if self.built:
            self._replan()

    def compile(self, optimizer, loss="softmax_cross_entropy", metrics=("accuracy",), *, loss_impl="auto"):
        """Set the optimizer, the loss (on logits) and the metrics reported by ``fit``/``evaluate``.

        Parameters
        ----------
        optimizer : :class:`fastcnn.optim.Optimizer`, or "sgd" / "adam" / "adamw" / "rmsprop" (default settings)
        loss : "softmax_cross_entropy" (on logits), "sparse_categorical_crossentropy" (on
            probabilities, Keras's default) or a :class:`fastcnn.losses.SparseCategoricalCrossentropy`
        metrics : list of names ("accuracy", "acc", "top_k_accuracy", ...) or
            :class:`fastcnn.metrics.Metric` objects, default ["accuracy"]
        loss_impl : implementation of the loss op ("auto", "reference", "numpy", ...)
        """
        self.optimizer = optim.get(optimizer)
        self.loss = losses.check_loss(loss)
        self.metrics = metrics_lib.check_metrics(metrics)
        self._loss_op = losses.get(self.loss, loss_impl)
        self._metric_fns = [metrics_lib.get(m) for m in self.metrics]
        self.loss_impl = loss_impl
        if self._loss_op.from_logits and self._ends_with_softmax():
            warnings.warn(
                "the last layer applies a softmax, but the loss expects logits (from_logits=True): the "
                "softmax is applied twice in training. Remove it (predict() applies it) or use "
                'loss="sparse_categorical_crossentropy".',
                UserWarning, stacklevel=2,
            )
        elif not self._loss_op.from_logits and not self._ends_with_softmax():
            warnings.warn(
                "the loss expects probabilities (from_logits=False) but the last layer outputs no softmax: "
                'end the model with activation="softmax" (or a Softmax layer), or use '
                'loss="softmax_cross_entropy" / SparseCategoricalCrossentropy(from_logits=True) for logits.',
                UserWarning, stacklevel=2,
            )
        return self

    def _ends_with_softmax(self):
        """Whether the model's output is a softmax (a Softmax layer or ``activation="softmax"``)."""
        last = self.layers[-1]
        return isinstance(last, Softmax) or getattr(last, "activation", None) == "softmax"

    def _loss_split(self, plan):
        """``(steps, tensor, loss_fn)``: the steps of ``plan`` the loss needs, the tensor it takes and
        the function to call: the whole plan, the output and the loss; or, when the last step is a
        softmax writing the output (a Softmax layer or ``activation="softmax"``) and the loss takes
        probabilities (``from_logits=False``), the plan without it, that softmax's input (the
        logits) and the loss's fused path on logits."""
        last = plan[-1]
        if last.output == self._output and self._loss_op.folds(last.runner):
            return plan[:-1], last.inputs[0], self._loss_op.on_logits
        return plan, self._output, self._loss_op

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

    def states(self):
        """``[(name, array), ...]`` of the non-trainable state (BatchNormalization's moving
        statistics), named ``"layers.<i>.<state>"``; never given to the optimizer."""
        return [(f"layers.{i}.{key}", a) for i, layer in enumerate(self.layers) for key, a in layer.state.items()]

    def get_weights(self):
        """A copy of every parameter and state array: ``{"layers.<i>.<name>": array}``."""
        weights = {name: p.copy() for name, p, _ in self.params()}
        weights.update((name, a.copy()) for name, a in self.states())
        return weights

    def set_weights(self, weights):
        """Copy ``weights`` into the parameters and non-trainable state, in place.

        ``weights``: a dict as returned by :meth:`get_weights`, or a Keras-style list of
        arrays in the same order (``list(model.get_weights().values())``: the parameters,
        then the state arrays). Every array is checked (float dtype, shape, finite)
        before any parameter or state changes.
        """
        current = {name: p for name, p, _ in self.params()}
        current.update(self.states())
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
        self._weights_changed()

    def count_params(self):
        """Every weight, trained or not (the summary's "Total params")."""
        return int(sum(layer.count_params() for layer in self.layers))

    def count_trainable_params(self):
        return int(sum(layer.count_trainable_params() for layer in self.layers))

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
        """Forward ``x`` in the current mode (see :meth:`train`/:meth:`eval`); returns the logits.

        In evaluation mode this is the inference plan (BatchNormalization folded when ``fold``).
        """
        x = self._prepare_x(x)
        if self.training:
            return self._forward(x)
        return self._forward(x, self._inference())

    def _forward(self, x, inference=None, *, for_loss=False):
        """Run the training plan, or ``inference`` (``(plan, frees)`` from :meth:`_inference`),
        on a validated batch; returns the output tensor, or with ``for_loss`` the tensor the
        loss takes (the logits before a final softmax it folds, see :meth:`_loss_split`)."""
        if inference is None:
            plan, frees = self._plan, None
            self._weights_changed()  # a training forward updates BatchNormalization's moving statistics
        else:
            plan, frees = inference
        output = self._output
        if for_loss:
            plan, output, _ = self._loss_split(plan)
        values = [None] * self._n_tensors  # tensor index -> array
        values[0] = x
        for k, step in enumerate(plan):
            values[step.output] = step.forward(values)
            if frees is not None:  # inference: drop what no later step reads
                for t in frees[k]:
                    values[t] = None
        return values[output]

    def _backward(self, dy, plan=None, tensor=None):
        """Backward through the training plan (or ``plan``, a prefix of it from :meth:`_loss_split`)
        from ``dy``, the gradient of the output (or of ``tensor``); writes every layer's grads.

        A tensor read by several layers gets the sum of their gradients: the first
        arrival is kept and later ones are added into it **in place** when it is a
        writeable array of its own (not the incoming gradient itself or a view of it,
        and not handed to another input too, as ``Add`` hands one array to all its inputs);
        otherwise the first sum allocates one new array, which later arrivals reuse.
        In a data-parallel fit, ``self._dist.on_backward`` sees each step's runner once
        its gradients are written (they start their allreduce while backward goes on).
        """
        dist = self._dist
        n = self._n_tensors
        plan = self._plan if plan is None else plan
        tensor = self._output if tensor is None else tensor
        grads = [None] * n  # tensor index -> its gradient so far
        owned = [False] * n  # whether grads[t] may be added into in place
        grads[tensor], owned[tensor] = dy, True
        for step in reversed(plan):
            d = grads[step.output]
            grads[step.output] = None
            dins = step.backward(d)
            if dist is not None:
                dist.on_backward(step.runner)
            for k, (t, g) in enumerate(zip(step.inputs, dins)):
                if t == 0 or g is None:  # the model input's gradient is not needed
                    continue
                if grads[t] is None:
                    grads[t] = g
                    owned[t] = g.flags.writeable and not (
                        np.may_share_memory(g, d) or any(other is g for j, other in enumerate(dins) if j != k))
                elif owned[t]:
                    grads[t] += g
                else:
                    grads[t] = grads[t] + g
                    owned[t] = True

    def _loss(self, out, y, sample_weight=None, loss_fn=None):
        """``loss_fn`` (default the compiled loss) on ``out``, with the batch's weights if any."""
        loss_fn = self._loss_op if loss_fn is None else loss_fn
        if sample_weight is None:
            return loss_fn(out, y)
        return loss_fn(out, y, sample_weight=sample_weight)

    @parallel.adaptive("train")  # the thread count: see fastcnn.parallel
    def _train_step(self, x, y, sample_weight=None):
        """One optimizer step on a validated batch; returns ``(loss, logits)``.

        A non-finite loss returns before the backward pass: the weights and the
        non-trainable state (moving statistics) are left as they were.
        The step is all-or-nothing (:mod:`fastcnn._atomic`): an exception, Ctrl-C or a
        non-finite loss before the update leaves the model (weights, optimizer state,
        moving statistics, random generators) exactly as before, restored in place;
        the update itself completes before a Ctrl-C is delivered.
        In a data-parallel fit (``self._dist``, see :mod:`fastcnn.distributed`) ``x`` is
        this rank's slice of the batch; the loss gradient is scaled by the slice's share
        of the batch, each step's gradients are summed over the ranks as soon as backward
        has produced them (see :meth:`_backward`), the moving statistics are averaged over
        the ranks, and the loss returned is the whole batch's.
        """
        dist = self._dist
        if dist is not None and x.shape[0] == 0:
            loss, out = dist.empty_step(self)  # a last batch smaller than the number of ranks
            self._weights_changed()
            return loss, out
        plan, tensor, loss_fn = self._loss_split(self._plan)
        with atomic_step(self) as transaction:
            # A plain return before the commit (non-finite loss) rolls back the moving
            # statistics and the random generators (``atomic_step``'s exit).
            out = self._forward(x, for_loss=True)
            loss, dlogits = self._loss(out, y, sample_weight, loss_fn)
            if dist is not None:
                dlogits = dist.begin_backward(loss, dlogits, out, y)
            elif not math.isfinite(loss):
                return loss, out
            self._backward(dlogits, plan, tensor)
            if dist is not None:
                loss = dist.end_backward()  # waits for every gradient bucket before the update
                if not math.isfinite(loss):
                    return loss, out
            transaction.commit(self.optimizer, self.params())
        self._weights_changed()
        return loss, out

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None):
        """One optimizer step on the batch ``(x, y)`` (no shuffling, no output); returns the loss.

        ``sample_weight`` (N,) or ``class_weight`` {class: weight} weight the loss as in
        :meth:`fit`.

        Raises
        ------
        NonFiniteLossError
            If the loss is NaN or infinite (the step is then not applied).
        """
        self._check_compiled("train_on_batch")
        x, y = self._prepare_xy(x, y)
        w = data_adapter.sample_weights(y, sample_weight, class_weight, self.num_classes)
        with self._mode(True):
            loss, _ = self._train_step(x, y, w)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss is {loss} at optimizer step {self.optimizer.iterations + 1}; the step was "
                f"not applied. Lower the learning rate or check the inputs for NaN/inf."
            )
        return loss

    def fit(self, x, y=None, epochs=1, batch_size=32, shuffle=True, validation_data=None, validation_split=0.0,
            callbacks=None, verbose="auto", initial_epoch=0, distributed=False, *, sample_weight=None,
            class_weight=None, steps_per_epoch=None, validation_steps=None):
        """Train for ``epochs`` epochs; returns a :class:`fastcnn.callbacks.History`.

        Parameters
        ----------
        x : float32/float64 (N, H, W, C) or uint8 (N, H, W[, C]) images, or an iterable /
            generator of ``(x, y)`` or ``(x, y, sample_weight)`` batches (then omit ``y``;
            ``batch_size``, ``shuffle`` and ``validation_split`` do not apply). See
            :mod:`fastcnn.data_adapter` for how its epochs end.
        y : int (N,) class labels in [0, K)
        epochs : int
            Index of the last epoch (Keras semantics with ``initial_epoch``).
        batch_size : int, default 32
            The last batch of an epoch may be smaller; it counts with its true
            size in the epoch averages.
        shuffle : bool, default True
            Reshuffle the training samples each epoch, with ``model.rng``.
        validation_data : (x_val, y_val[, sample_weight_val]) or an iterable of batches, optional
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
        sample_weight : float (N,), optional
            Non-negative weight of each sample: a batch's loss is ``sum(w * loss) / N``
            (Keras's "sum over batch size").
        class_weight : {class index: weight}, optional
            The weight of every sample of a class (unlisted classes weigh 1); not
            with ``sample_weight``.
        steps_per_epoch : int, optional
            Batches per epoch; needed for an endless generator. With arrays, at most
            ``ceil(N / batch_size)`` batches of each shuffled epoch.
        validation_steps : int, optional
            Batches of ``validation_data`` per evaluation (default: all of them).
        distributed : bool, default False
            Train data-parallel on every MPI process (``mpiexec -n N python
            script.py``; needs the ``[mpi]`` extra): ``batch_size`` is the global
            batch. Same as :func:`fastcnn.distributed.fit`. Arrays only, without
            ``sample_weight``, ``class_weight``, ``steps_per_epoch`` or ``validation_steps``.

        Raises
        ------
        NonFiniteLossError
            If a batch gives a NaN or infinite loss, unless a
            :class:`~fastcnn.callbacks.TerminateOnNaN` callback is given.
        """
        if distributed:
            from fastcnn import distributed as _distributed

            _no_distributed_data_options("fit", sample_weight=sample_weight, class_weight=class_weight,
                                         steps_per_epoch=steps_per_epoch, validation_steps=validation_steps)
            return _distributed.fit(self, x, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                                    validation_data=validation_data, validation_split=validation_split,
                                    callbacks=callbacks, verbose=verbose, initial_epoch=initial_epoch)
        self._check_compiled("fit")
        verbose = _check_verbose(verbose, "fit")
        epochs = _check_positive_int(epochs, "epochs", "fit")
        batch_size = _check_positive_int(DEFAULT_BATCH_SIZE if batch_size is None else batch_size, "batch_size", "fit")
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral) or initial_epoch < 0:
            raise ValueError(f"fit: `initial_epoch` must be a non-negative int, received {initial_epoch!r}")
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"fit: `validation_split` must be a float in [0, 1), received {validation_split!r}")
        steps_per_epoch = None if steps_per_epoch is None else _check_positive_int(
            steps_per_epoch, "steps_per_epoch", "fit")
        validation_steps = None if validation_steps is None else _check_positive_int(
            validation_steps, "validation_steps", "fit")
        user_callbacks = check_callbacks(callbacks)
        shuffle = _checks.check_shuffle(shuffle)
        if self._dist is not None:  # fastcnn.distributed.fit(model, ..., **kwargs) lands here
            _no_distributed_data_options("fit", sample_weight=sample_weight, class_weight=class_weight,
                                         steps_per_epoch=steps_per_epoch, validation_steps=validation_steps)
        train, val = self._fit_data(x, y, sample_weight, class_weight, batch_size, shuffle, validation_data,
                                    validation_split, steps_per_epoch, validation_steps)
        history = History()
        all_callbacks = user_callbacks + [history] + ([ProgbarLogger(verbose)] if verbose else [])
        params = {"epochs": epochs, "steps": train.steps, "samples": train.samples, "batch_size": train.batch_size,
                  "verbose": verbose}
        hooks = CallbackList(all_callbacks, self, params)
        quiet_nan = any(isinstance(cb, TerminateOnNaN) for cb in user_callbacks)
        self.history = history
        self.stop_training = False
        logs = {}
        with self._mode(True):
            hooks.on_train_begin()
            for epoch in range(initial_epoch, epochs):
                hooks.on_epoch_begin(epoch)
                logs = self._fit_epoch(train, epoch, epochs, hooks, quiet_nan)
                if getattr(train, "exhausted", False):
                    if epoch == initial_epoch and not logs:
                        raise ValueError("fit: the data yielded no batches")
                    train.warn_exhausted(epochs - initial_epoch)
                    self.stop_training = True
                    if not logs:
                        break
                if val is not None:
                    with self._mode(False):
                        val_logs = self._evaluate(val, "fit: validation_data")
                    logs.update({f"val_{k}": v for k, v in val_logs.items()})
                logs["learning_rate"] = self.optimizer.learning_rate  # the rate the next step uses
                hooks.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
            hooks.on_train_end(logs)
        return history

    def _fit_data(self, x, y, sample_weight, class_weight, batch_size, shuffle, validation_data,
                  validation_split, steps_per_epoch, validation_steps):
        """The training and validation batch sources of ``fit`` (see :mod:`fastcnn.data_adapter`)."""
        if data_adapter.is_batch_iterable(x, y):
            if sample_weight is not None or validation_split:
                raise ValueError("fit: with a generator or iterable of batches, yield (x, y, sample_weight) "
                                 "batches and pass validation_data; sample_weight= and validation_split "
                                 "apply to arrays only")
            train = data_adapter.IterableBatches(x, steps_per_epoch, self._prepare_xy, lambda: self.num_classes,
                                                 class_weight, "fit")
        else:
            if y is None:
                raise ValueError("fit: `y` is required when `x` is an array (omit it only for an iterable "
                                 "of (x, y) batches)")
            x, y = self._prepare_xy(x, y)
            w = data_adapter.sample_weights(y, sample_weight, class_weight, self.num_classes)
            if validation_data is None and validation_split > 0.0:
                split_at = int(x.shape[0] * (1.0 - validation_split))
                if split_at == 0 or split_at == x.shape[0]:
                    raise ValueError(
                        f"fit: validation_split={validation_split} of {x.shape[0]} samples leaves "
                        f"{split_at} for training and {x.shape[0] - split_at} for validation; both must be > 0"
                    )
                _checks.check_finite(x[split_at:], "the validation_split samples of x")
                validation_data = (x[split_at:], y[split_at:]) + (() if w is None else (w[split_at:],))
                x, y, w = x[:split_at], y[:split_at], (None if w is None else w[:split_at])
            train = data_adapter.ArrayBatches(x, y, w, batch_size, self.rng if shuffle else None, steps_per_epoch,
                                              shard=None if self._dist is None else self._dist.shard)
        val = None
        if validation_data is not None:
            val = self._batches(validation_data, None, None, batch_size, validation_steps, "fit: validation_data")
        return train, val

    def _batches(self, x, y, sample_weight, batch_size, steps, owner):
        """Unshuffled batches for evaluation: of ``(x, y[, w])`` arrays or of an iterable."""
        arrays = isinstance(x, tuple) or (isinstance(x, list) and bool(x) and isinstance(x[0], np.ndarray))
        if owner != "evaluate" and arrays:  # validation_data=(x_val, y_val[, w_val]), a list of batches is not
            x = tuple(x)
            if len(x) not in (2, 3):
                raise ValueError(f"{owner} must be a tuple (x_val, y_val) or (x_val, y_val, sample_weight_val), "
                                 f"or an iterable of batches; received a tuple of length {len(x)}")
            x, y, sample_weight = (x + (None,))[:3]
        if data_adapter.is_batch_iterable(x, y):
            if sample_weight is not None:
                raise ValueError(f"{owner}: with an iterable of batches, yield (x, y, sample_weight) batches")
            return data_adapter.IterableBatches(x, steps, self._prepare_xy, lambda: self.num_classes, None, owner)
        if y is None:
            raise ValueError(f"{owner}: expected arrays (x, y) or (x, y, sample_weight), or an iterable of "
                             f"such batches; received {type(x).__name__}")
        what = "x" if owner == "evaluate" else "validation_data"
        x, y = self._prepare_xy(x, y, what=what, finite=True)  # predict, evaluate and validation refuse NaN/inf
        w = None if sample_weight is None else data_adapter.check_sample_weight(
            sample_weight, x.shape[0], "sample_weight" if owner == "evaluate" else f"{owner} sample weights")
        return data_adapter.ArrayBatches(x, y, w, batch_size, None, steps)

    def _fit_epoch(self, train, epoch, epochs, hooks, quiet_nan):
        """One epoch of ``train``'s batches; returns the epoch logs (means over samples)."""
        steps = train.steps
        hits = [0] * len(self._metric_fns)
        total_loss, seen = 0.0, 0
        logs = {}
        for batch, (xb, yb, wb) in enumerate(train.epoch()):
            hooks.on_train_batch_begin(batch)
            loss, logits = self._train_step(xb, yb, wb)
            if not math.isfinite(loss):
                if not quiet_nan:
                    raise NonFiniteLossError(
                        f"the loss is {loss} at epoch {epoch + 1}/{epochs}, batch {batch + 1}/{steps or '?'}; "
                        f"training stopped and that step was not applied. Lower the learning rate or "
                        f"check the inputs for NaN/inf (pass callbacks=[TerminateOnNaN()] to stop "
                        f"without an error)."
                    )
                logs = {"loss": loss}
                hooks.on_train_batch_end(batch, logs)
                break
            n = xb.shape[0] if self._dist is None else train.rows  # a data-parallel batch: all ranks' rows
            seen += n
            total_loss += loss * n
            logs = {"loss": total_loss / seen}
            counts = (metric.count(logits, yb) for metric in self._metric_fns) if self._dist is None \
                else self._dist.batch_counts  # summed over the ranks
            for i, (metric, count) in enumerate(zip(self._metric_fns, counts)):
                hits[i] += count
                logs[metric.name] = hits[i] / seen
            hooks.on_train_batch_end(batch, logs)
            if self.stop_training:
                break
        return dict(logs)

    @parallel.adaptive("infer", variant=lambda self, x, fold=None, for_loss=False: self._folds(fold))  # see parallel
    def _infer(self, x, fold=None, for_loss=False):
        """Logits of ``x`` through the inference plan, in passes sized by :data:`INFERENCE_PASS_BYTES`
        (``for_loss``: what the loss takes, see :meth:`_forward`)."""
        inference = self._inference(fold)
        step = self._inference_pass(fold)
        if x.shape[0] <= step:
            return self._forward(x, inference, for_loss=for_loss)
        return np.concatenate([self._forward(x[i:i + step], inference, for_loss=for_loss)
                               for i in range(0, x.shape[0], step)])

    def _inference_pass(self, fold=None):
        """Samples per inference pass: the largest tensor a step writes within INFERENCE_PASS_BYTES."""
        largest = max(math.prod(self._shapes[step.output]) for step in self._inference(fold)[0])
        return max(1, INFERENCE_PASS_BYTES // (largest * self.dtype.itemsize))

    def _evaluate_sums(self, x, y, batch_size, fold=None):
        """``(sum of per-batch loss x batch size, [count of each metric])`` over ``(x, y)``."""
        total_loss, hits, _ = self._batch_sums(data_adapter.ArrayBatches(x, y, None, batch_size), fold)
        return total_loss, hits

    def _batch_sums(self, batches, fold=None, bar=None):
        """``(sum of per-batch loss x batch size, [count of each metric], samples)`` over ``batches``;
        ``bar``: an :class:`~fastcnn.progress.EvaluationProgbar` updated before each batch."""
        loss_fn = self._loss_split(self._inference(fold)[0])[2]
        total_loss, hits, N = 0.0, [0] * len(self._metric_fns), 0
        for xb, yb, wb in batches.epoch():
            if bar is not None:
                bar.update(N)
            out = self._infer(xb, fold, for_loss=True)
            loss, _ = self._loss(out, yb, wb, loss_fn)
            total_loss += loss * xb.shape[0]
            for i, metric in enumerate(self._metric_fns):
                hits[i] += metric.count(out, yb)
            N += xb.shape[0]
        return total_loss, hits, N

    def _evaluate(self, batches, owner="evaluate", fold=None, progress=False):
        """Loss and metrics over every batch of ``batches`` (means over samples); ``progress``:
        a bar on a terminal (arrays only, one process)."""
        bar = None
        if progress and self._dist is None and isinstance(batches, data_adapter.ArrayBatches) \
                and is_dynamic_display():
            bar = EvaluationProgbar(batches.samples)
        if self._dist is None:
            total_loss, hits, N = self._batch_sums(batches, fold, bar)
        else:  # each rank evaluates its share of the batches; the sums are added up
            if not isinstance(batches, data_adapter.ArrayBatches) or batches.w is not None \
                    or batches.steps != -(-batches.samples // batches.batch_size):
                raise ValueError(f"{owner}: a distributed evaluation takes arrays (x, y), without sample "
                                 f"weights or a number of steps")
            total_loss, hits = self._dist.evaluate_sums(self, batches.x, batches.y, batches.batch_size, fold)
            N = batches.samples
        if N == 0:
            raise ValueError(f"{owner} yielded no batches (a generator is used up after one pass: pass a list "
                             f"or another re-iterable object, or an endless generator with a number of steps)")
        logs = {"loss": total_loss / N}
        for metric, count in zip(self._metric_fns, hits):
            logs[metric.name] = count / N
        if bar is not None:
            bar.done()
        return logs

    def evaluate(self, x, y=None, batch_size=None, verbose=0, sample_weight=None, steps=None, *, fold=None,
                 distributed=False):
        """Loss and metrics over ``(x, y)`` in evaluation mode: ``{"loss": ..., "accuracy": ...}``.

        ``x`` may also be an iterable of ``(x, y[, sample_weight])`` batches (omit ``y``),
        of which ``steps`` batches are used (default: all). ``sample_weight`` (N,) weights
        the loss as in :meth:`fit`; the accuracy is unweighted.
        ``fold``: fold BatchNormalization into the layer before it (default ``model.fold``).
        ``distributed=True``: every MPI process evaluates its share of the batches and
        all receive the totals (:func:`fastcnn.distributed.evaluate`).
        """
        if distributed:
            from fastcnn import distributed as _distributed

            _no_distributed_data_options("evaluate", sample_weight=sample_weight, steps=steps)
            return _distributed.evaluate(self, x, y, batch_size=batch_size, verbose=verbose, fold=fold)
        self._check_compiled("evaluate")
        verbose = _check_verbose(verbose, "evaluate")
        batch_size = _check_positive_int(DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                                         "batch_size", "evaluate")
        steps = None if steps is None else _check_positive_int(steps, "steps", "evaluate")
        batches = self._batches(x, y, sample_weight, batch_size, steps, "evaluate")
        with self._mode(False):
            logs = self._evaluate(batches, fold=fold, progress=verbose == 1)
        if verbose:
            print(format_logs(logs))
        return logs

    def predict(self, x, batch_size=None, verbose=0, *, fold=None):
        """Class probabilities ``(N, K)`` in evaluation mode: the softmax of the logits
        (not applied again when the last layer is a Softmax layer).

        ``fold``: fold BatchNormalization into the Conv2D/Dense before it (default
        ``model.fold``, True); the same results to rounding, without BN's cost.
        """
        _check_verbose(verbose, "predict")
        batch_size = _check_positive_int(DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                                         "batch_size", "predict")
        x = self._prepare_x(x, finite=True)
        self._check_classifier()
        softmax = None if self._ends_with_softmax() else registry.get("softmax", "auto")
        N = x.shape[0]
        probs = np.empty((N, self.output_shape[0]), dtype=self.dtype)  # (N, K)
        with self._mode(False):
            for start in range(0, N, batch_size):
                out = self._infer(x[start:start + batch_size], fold)
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

    def export_onnx(self, path, *, batch_size=None, opset=None):
        """Write the model as an ONNX graph that takes what :meth:`predict` takes (NHWC float32)
        and returns what it returns (probabilities); see :func:`fastcnn.onnx_export.export_onnx`
        and docs/onnx.md. Needs ``pip install 'fastcnn[onnx]'``; returns the path written."""
        from fastcnn.onnx_export import export_onnx

        return export_onnx(self, path, batch_size=batch_size, opset=opset)

    # -- description ------------------------------------------------------------------
    def _connected_to(self, i):
        return ", ".join("input" if t == 0 else f"layers.{t - 1}" for t in self._inputs_of[i])

    def _summary_title(self):
        title = type(self).__name__ + (f" {self.name!r}" if getattr(self, "name", None) else "")
        return f"{title}: input {format_shape((None,) + self.input_shape)}, {self.dtype}"

    def summary_string(self):
        """The table :meth:`summary` prints: each layer's output shape and weight count (trained
        and not), the layers it reads (functional models), and the totals."""
        if not self.built:
            raise ValueError("the model is not built yet: pass input_shape= to Sequential or call fit() first")
        chain = isinstance(self, Sequential)
        rows = [("Layer (type)", "Output shape", "Param #") + (() if chain else ("Connected to",))]
        for i, layer in enumerate(self.layers):
            label = f"layers.{i}" + (f" {layer.name!r}" if layer.name else "") + f" ({type(layer).__name__})"
            row = (label, format_shape((None,) + layer.output_shape), f"{layer.count_params():,}")
            rows.append(row + (() if chain else (self._connected_to(i),)))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = [self._summary_title()]

        def fmt(row):
            text = f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}"
            return text if chain else f"{text}  {row[3]}"

        rule = "=" * max(len(fmt(r)) for r in rows)
        lines += [fmt(rows[0]), rule] + [fmt(r) for r in rows[1:]] + [rule]
        total, trainable = self.count_params(), self.count_trainable_params()
        lines += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}"]
        return "\n".join(lines)

    def summary(self, print_fn=print):
        """Print the layers, their output shapes and parameter counts, and the totals."""
        print_fn(self.summary_string())

    def _repr_extra(self):
        extra = []
        if self.input_shape is not None:
            extra.append(f"input_shape={self.input_shape}")
        if self.dtype != np.float32:
            extra.append(f"dtype={self.dtype}")
        if self.seed is not None:
            extra.append(f"seed={self.seed}")
        if self.optimizer is not None:
            extra.append(f"optimizer={self.optimizer!r}")
        return ["  " + ", ".join(extra)] if extra else []

    def __repr__(self):
        lines = [f"  ({i}): {layer!r} <- {self._connected_to(i)}" for i, layer in enumerate(self.layers)]
        head = "Model(" + (f"name={self.name!r}" if self.name else "")
        return head + "\n" + "\n".join(lines + self._repr_extra()) + "\n)"


class Sequential(Model):
    """A linear stack of layers for classification: the :class:`Model` whose graph is a chain.

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
        :mod:`fastcnn.plan`): the same results, less memory traffic.
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
            if getattr(layer, "merge", False):
                raise TypeError(f"Sequential: layers[{i}] ({type(layer).__name__}) merges several tensors; "
                                f"build the graph with fc.Input and fc.Model")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer instance appears twice; create a new layer for each position")
        self._setup(layers, [[i] for i in range(len(layers))], seed, dtype, fuse, None, "Sequential")
        if input_shape is not None:
            self.build(input_shape)

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
        return self._build(shape)

    def __repr__(self):
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines + self._repr_extra()) + "\n)"


def load_model(path):
    """Rebuild a model saved with :meth:`Model.save` (see :mod:`fastcnn.saving`)."""
    from fastcnn.saving import load_model as _load_model

    return _load_model(path)
