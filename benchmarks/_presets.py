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
from fastcnn.layers import Dropout

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
    impl = truth_impl(preset)
    model = build(preset, impl, np.float64)
    restore(model, state_after_one_step(preset, n))
    loss = model.train_on_batch(*batch(n))
    return impl, loss, grads(model)


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
