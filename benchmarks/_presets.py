"""Data, state snapshots and float64 ground truth for the end-to-end benchmarks.

A timed training step must compute something checkable, so every timed step
starts from the same state ``S1``: the weights, optimizer state and dropout
generators of a float32 NumPy model after one step on the batch from seed 0.
Each round's (untimed) setup restores ``S1``; the truth is the same step taken
by a float64 model restored to ``S1``. Steady state, not a first step: buffers
and optimizer slots already exist, as in any step of ``fit``.
"""

import copy
import functools

import numpy as np

from fastcnn import models, registry
from fastcnn.layers import Dropout, ReLU

#: Presets whose reference implementation runs in seconds (one step of
#: tutorial_cnn is ~5 s at batch 64; mnist_cnn and vgg_mini take minutes).
REFERENCE_PRESETS = ("tutorial_cnn",)


def build(preset, impl="numpy", dtype=np.float32):
    return models.PRESETS[preset](seed=0, impl=impl, dtype=dtype)


@functools.lru_cache(maxsize=None)
def batch(n):
    """``n`` images (float32 NHWC in [0, 1], exactly representable) and int labels, from seed 0."""
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)  # (n, 28, 28, 1)
    y = rng.integers(0, 10, size=n)  # (n,)
    return x, y


def snapshot(model):
    """Weights, optimizer state and dropout generators of ``model`` (deep copies)."""
    return {
        "weights": model.get_weights(),
        "optimizer": {k: np.array(a, copy=True) for k, a in model.optimizer.state_arrays().items()},
        "dropout": {i: copy.deepcopy(layer.rng) for i, layer in enumerate(model.layers)
                    if isinstance(layer, Dropout)},
    }


def restore(model, state):
    """Put ``state`` (from :func:`snapshot`) into ``model``, cast to the model's dtype."""
    dtype = model.dtype
    model.set_weights({k: w.astype(dtype) for k, w in state["weights"].items()})
    model.optimizer.load_state_arrays(
        {k: a if k == "iterations" else a.astype(dtype) for k, a in state["optimizer"].items()}
    )
    for i, rng in state["dropout"].items():
        model.layers[i].reseed(copy.deepcopy(rng))


def grads(model):
    """The gradients of the last backward pass: ``{"layers.<i>.<param>": array}``."""
    return {name: g.copy() for name, _, g in model.params()}


@functools.lru_cache(maxsize=None)
def initial_weights(preset):
    """S0: the float32 weights every implementation starts from (seed 0)."""
    return build(preset).get_weights()


@functools.lru_cache(maxsize=None)
def state_after_one_step(preset, n):
    """S1 (see the module docstring) for a batch of ``n``."""
    model = build(preset)
    model.train_on_batch(*batch(n))
    return snapshot(model)


def truth_impl(preset):
    return "reference" if preset in REFERENCE_PRESETS else "numpy"


@functools.lru_cache(maxsize=None)
def train_truth(preset, n):
    """Loss and gradients of one float64 step from S1: ``(impl, loss, grads)``."""
    model = _truth_model(preset, n)
    loss = model.train_on_batch(*batch(n))
    return truth_impl(preset), loss, grads(model)


def _truth_model(preset, n):
    """A new float64 model of the truth's implementation, in state S1."""
    model = build(preset, truth_impl(preset), np.float64)
    restore(model, state_after_one_step(preset, n))
    return model


#: At most this share of the ReLU inputs (and at least one) may change sign between the
#: float32 step and the float64 truth (each such element can move the gradients upstream by
#: a few 1e-3, see :func:`train_truth_for`); more points at a wrong kernel, not at rounding.
MAX_FLIP_SHARE = 1e-5


def relu_signs(model, x):
    """``{tensor: input > 0}`` for every ReLU layer step of ``model``'s training plan, from one
    training forward of ``x`` (it moves BatchNormalization's moving statistics and the
    dropout generators: restore the model after). No ReLU layer step: ``{}``, with no forward
    (tutorial_cnn's reference forward takes about 2 s)."""
    if not any(isinstance(step.runner, ReLU) for step in model._plan):
        return {}
    values = [None] * model._n_tensors  # tensor index -> array
    values[0] = model._prepare_x(x)
    signs = {}
    for step in model._plan:
        if isinstance(step.runner, ReLU):
            signs[step.output] = values[step.inputs[0]] > 0
        values[step.output] = step.forward(values)
    return signs


def _masked_relus(model, signs):
    """Make each ReLU layer step of ``model`` whose output is a key of ``signs`` pass exactly
    where the mask says (forward and backward), whatever the sign of its input."""
    for step in model._plan:
        mask = signs.get(step.output)
        if mask is not None:
            zero = model.dtype.type(0)
            step.runner.forward = lambda v, mask=mask: np.where(mask, v, zero)
            step.runner.backward = lambda d, mask=mask: np.where(mask, d, zero)


@functools.lru_cache(maxsize=None)
def _truth_signs(preset, n):
    """:func:`relu_signs` of the float64 truth's step from S1."""
    return relu_signs(_truth_model(preset, n), batch(n)[0])


def train_truth_for(model, preset, n):
    """The float64 truth for ``model``'s (float32) step from S1: ``(impl, loss, grads, flips)``,
    ``flips`` the number of ReLU inputs (of ReLU layer steps in both plans) whose sign differs.

    A ReLU input within rounding of zero can take the other sign in float32 than in float64;
    the gradient then changes at that element and, through BatchNormalization's backward,
    in whole layers upstream (resnet_mini: one such element moved the gradients by 1e-3 to
    5e-3). Where the signs all agree this is :func:`train_truth`; where up to
    :data:`MAX_FLIP_SHARE` of them differ, the float64 step is taken with the float32 step's
    ReLU signs, so the check compares the arithmetic, not which side of zero a rounding fell.
    More flips than that raise ``AssertionError``. ``model`` is left in state S1."""
    x, _ = batch(n)
    state = state_after_one_step(preset, n)
    restore(model, state)
    signs = relu_signs(model, x)
    restore(model, state)
    impl, loss, grads_ = train_truth(preset, n)
    if not signs:
        return impl, loss, grads_, 0
    truth_signs = _truth_signs(preset, n)
    signs = {t: signs[t] for t in signs.keys() & truth_signs.keys()}  # ReLU layers unfused in both plans
    flips = sum(int(np.count_nonzero(signs[t] != truth_signs[t])) for t in signs)
    if flips == 0:
        return impl, loss, grads_, 0
    total = sum(m.size for m in signs.values())
    assert flips <= max(1.0, MAX_FLIP_SHARE * total), (
        f"{preset}: {flips} of {total} ReLU inputs have another sign in float32 than in float64 "
        f"(at most {MAX_FLIP_SHARE:g} of them, or one, can be rounding)")
    truth = _truth_model(preset, n)
    _masked_relus(truth, signs)
    loss = truth.train_on_batch(*batch(n))
    return impl, loss, grads(truth), flips


@functools.lru_cache(maxsize=None)
def predict_truth(preset, n):
    """Float64 class probabilities ``(n, 10)`` from S0: ``(impl, probs)``.

    The reference is used at batch 64 only; a 1000-image pass of it would take minutes.
    """
    impl = truth_impl(preset) if n <= 64 else "numpy"
    model = build(preset, impl, np.float64)
    model.set_weights(initial_weights(preset))
    return impl, model.predict(batch(n)[0], batch_size=n)


def loss_and_grads_without_dropout(model, x, y):
    """Loss and gradients of one forward/backward with every Dropout layer off (no update).

    The model's own training pass with its Dropout layers switched to evaluation
    (BatchNormalization stays in training mode): the check for PyTorch, whose
    dropout masks cannot match fastcnn's.
    """
    for layer in model.layers:
        layer.train(not isinstance(layer, Dropout))
    out = model._forward(x)
    loss, d = registry.get("softmax_cross_entropy", "numpy").forward(out, y)
    model._backward(d)
    model.train(True)
    return loss, grads(model)


@functools.lru_cache(maxsize=None)
def no_dropout_truth(preset, n):
    """Float64 NumPy loss and gradients from S0 with dropout off (see above)."""
    model = build(preset, "numpy", np.float64)
    model.set_weights(initial_weights(preset))
    x, y = batch(n)
    return loss_and_grads_without_dropout(model, x.astype(np.float64), y)
